"""Parsing and picking loopback addresses."""

from __future__ import annotations

import socket

from .errors import ToolError


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); raises ToolError with the expected form."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ToolError(f"--listen must look like 127.0.0.1:8080, got {text!r}")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (prefer port 0 where the server can report it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
