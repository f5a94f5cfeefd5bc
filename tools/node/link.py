"""The host side of a node's data link for the tools: frames in, COMMANDs out.

Framing and message decoding are the gateway's (`roadside.gateway.protocol`). Unlike the
gateway this never ACKs and never answers HELLO: the tools store nothing, so acking a record
would make the node drop it from its journal. `roadside config` only sends COMMANDs and reads
REPLYs (RECORDS and HELLOs are passed over); `roadside monitor` and deploy's hello wait send
nothing at all.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import serial
from roadside.gateway import ids, secret_files
from roadside.gateway import protocol as p
from roadside.gateway.errors import ProtocolError

from ..errors import ToolError
from ..install import flashing

BAUDRATE = 115200
ATTEMPT_TIMEOUT_S = 2.0  # the gateway's (gateway/commands.py): the node's ack timeout
ATTEMPTS = 3
# Request ids: the node answers a repeated id from a cache of its last 8 replies, so a new
# tool run must not reuse the ids of the previous one: start from the clock (ms, 30 bits).
_ids = itertools.count((int(time.time() * 1000) & 0x3FFFFFFF) or 1)


class LinkError(ToolError):
    """The node's data port could not be opened, or the node did not answer."""


class CommandFailed(ToolError):
    """The node answered a COMMAND with ok = false; str() is the node's reason."""


@dataclass
class Frame:
    """One thing seen on the link: a decoded message, or a payload that did not decode."""

    t: float                       # time.time() when it was read
    payload: bytes
    message: p.Message | None      # None when it did not decode
    error: str | None = None       # why it did not decode


def open_port(port: str, baudrate: int = BAUDRATE) -> serial.Serial:
    """Open a node's data port (device path or pyserial URL) with an error that says what to do."""
    # not flashing.check_port: its /proc scan can catch a process that is between fork and
    # exec (e.g. the virtual board restarting its interpreter); the exclusive lock decides.
    # But the gateway takes no lock: a port it holds would open, and the node's replies go to
    # the gateway (a 6 s timeout), so a gateway holding it is looked for by its command line.
    try:
        if flashing.is_url(port):
            flashing.check_url(port)
        elif not os.path.exists(port):
            flashing.check_port(port)  # raises "port P does not exist ..."
        else:
            flashing.check_serial_device(port)
            held = flashing.gateway_holder(port)
            if held:
                raise LinkError(held)
    except flashing.FlashError as exc:
        raise LinkError(str(exc)) from None
    try:
        ser = serial.serial_for_url(port, baudrate=baudrate, timeout=0, exclusive=True)
    except (serial.SerialException, OSError) as exc:
        raise LinkError(str(flashing._explain(port, exc))) from None
    return ser


def open_link(port: str | None, ble: str | None = None, secret_file: str | None = None,
              ble_timeout: float | None = None, baudrate: int = BAUDRATE) -> NodeLink:
    """The node's data link: its serial `port`, or with `ble` (a node id) an authenticated
    BLE session (ble_transport.BleSerial: found by its advertisement, key from `secret_file`
    or the default key file)."""
    if ble:
        from . import ble_transport
        try:   # the id names the key file NODE.key: nothing like ../../x
            ids.check(ble, "--ble")
        except ids.BadNodeId as exc:
            raise ToolError(str(exc)) from None
        warning = secret_files.readable_by_others(ble_transport.secret_path(ble, secret_file))
        if warning:
            sys.stderr.write(f"roadside: warning: {warning}\n")
        ser = ble_transport.BleSerial.open(
            ble, secret_file, timeout=ble_timeout or ble_transport.FIND_TIMEOUT_S)
        return NodeLink(f"ble:{ble}", ser=ser)
    if not port:
        raise ToolError("no port: give the node's data PORT, or --ble NODE")
    return NodeLink(port, baudrate)


class NodeLink:
    """A node's data link: `frames()` to read, `command()` to ask."""

    def __init__(self, port: str, baudrate: int = BAUDRATE, ser: Any = None) -> None:
        self.port = port   # "ble:NODE" for a BLE session (ser: ble_transport.BleSerial)
        self.over_ble = port.startswith("ble:")
        self.ser = ser if ser is not None else open_port(port, baudrate)
        self.decoder = p.FrameDecoder()
        self.undecodable = 0
        self.raw_chunks: list[tuple[float, bytes]] | None = None  # set to a list to capture

    def close(self) -> None:
        try:
            self.ser.close()
        except (OSError, serial.SerialException):
            pass

    def __enter__(self) -> NodeLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_frames(self, wait: float = 0.05) -> list[Frame]:
        """What arrived within `wait` seconds (returns early once something arrived)."""
        end = time.monotonic() + wait
        out: list[Frame] = []
        while True:
            try:
                chunk = self.ser.read(4096)
            except (serial.SerialException, OSError) as exc:
                if self.over_ble:
                    raise LinkError(f"{exc}: move closer to the node, check that it is"
                                    " powered, and retry") from None
                raise LinkError(f"{self.port}: read failed: {exc}; is the board still "
                                "connected?") from None
            if chunk:
                now = time.time()
                if self.raw_chunks is not None:
                    self.raw_chunks.append((now, chunk))
                for payload in self.decoder.feed(chunk):
                    try:
                        out.append(Frame(now, payload, p.decode_message(payload)))
                    except ProtocolError as exc:
                        self.undecodable += 1
                        out.append(Frame(now, payload, None, str(exc)))
                continue
            if out or time.monotonic() >= end:
                return out
            time.sleep(0.005)

    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """Frames as they arrive, until `timeout` seconds (None: for ever)."""
        end = None if timeout is None else time.monotonic() + timeout
        while end is None or time.monotonic() < end:
            left = 0.1 if end is None else max(0.0, min(0.1, end - time.monotonic()))
            yield from self.read_frames(left)

    def wait_hello(self, timeout: float) -> p.Hello | None:
        """The next HELLO within `timeout` s, or None."""
        for frame in self.frames(timeout):
            if isinstance(frame.message, p.Hello):
                return frame.message
        return None

    def send(self, message: p.Message) -> None:
        try:
            self.ser.write(p.encode_frame(message))
            self.ser.flush()
        except (serial.SerialException, OSError) as exc:
            hint = ": move closer to the node and retry" if self.over_ble else ""
            raise LinkError(f"{self.port}: write failed: {exc}{hint}") from None

    def command(self, name: str, args: dict[str, Any] | None = None, *,
                attempt_timeout: float = ATTEMPT_TIMEOUT_S, attempts: int = ATTEMPTS) -> Any:
        """Send COMMAND `name` and return the REPLY's result; retried with the same request
        id (the node answers a retry from its cache without running the command twice).
        CommandFailed when the node says no, LinkError when it never answers."""
        rid = next(_ids)
        cmd = p.Command(rid, name, args)
        for _ in range(attempts):
            self.send(cmd)
            for frame in self.frames(attempt_timeout):
                msg = frame.message
                if isinstance(msg, p.Reply) and msg.request_id == rid:
                    if msg.ok:
                        return msg.result
                    raise CommandFailed(msg.error or f"{name} refused")
                if isinstance(msg, p.Error) and msg.ref_type == p.COMMAND:
                    raise CommandFailed(f"the node answered ERROR {msg.code}: {msg.message}")
        if self.over_ble:
            raise LinkError(f"no REPLY from {self.port[4:]} over BLE to {name} after {attempts}"
                            f" attempts of {attempt_timeout:g} s: move closer to it and retry")
        raise LinkError(f"no REPLY from the node on {self.port} to {name} after {attempts} "
                        f"attempts of {attempt_timeout:g} s: is a node running on that port "
                        "(not the REPL/USB port when the link is a separate UART)? close the "
                        "gateway or anything else reading it")


def hello_dict(h: p.Hello) -> dict[str, Any]:
    """A HELLO as the tools print it (JSON-friendly)."""
    d: dict[str, Any] = {"node": h.node, "role": h.role, "fw": h.fw, "board": h.board,
                         "boot_count": h.boot_count, "reset_cause": h.reset_cause,
                         "next_seq": h.next_seq, "first_unacked": h.first_unacked,
                         "proto": h.proto}
    if 10 in h.raw:
        d["free_heap"] = h.raw[10]
    if h.raw.get(11) is True:
        d["safe_mode"] = True
    return d
