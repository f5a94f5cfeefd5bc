"""One exception hierarchy for the gateway: callers catch `GatewayError` for anything we raise."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose; str() is one line."""


class ConfigError(GatewayError):
    """gateway.toml is missing, unreadable or invalid; the message names the key and value."""


class LinkError(GatewayError):
    """A link (serial port) could not be opened or failed while in use."""


class ProtocolError(GatewayError):
    """A frame payload is not a valid message; `code` is the ERROR code to answer with."""

    def __init__(self, code: int, message: str, msg_type: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.msg_type = msg_type


class QueueError(GatewayError):
    """The SQLite queue could not be opened or written."""

    # The RECORDS message (protocol.Records) a refused store was for, decoded on the queue's
    # writer thread: the session logs its seqs.
    records: Any = None


class QueueFullError(QueueError):
    """The queue holds as much as it may; the session answers ERROR 6 (busy)."""


class UplinkError(GatewayError):
    """A batch could not be delivered; `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after   # seconds the backend asked us to wait (Retry-After)
