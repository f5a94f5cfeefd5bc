"""Log output of the daemon: text lines for a terminal, or one JSON object per line.

`[log] format = "json"` writes lines like

    {"ts": "2026-11-23T08:47:42.123Z", "level": "warning", "component": "link",
     "msg": "serial port /dev/ttyUSB0 not found: ...", "port": "/dev/ttyUSB0"}

`component` is the logger name below `roadside.gateway` (`gateway` for the daemon itself).
Extra fields come from `log.info(msg, extra=fields(port=..., node=...))`; any other
attribute set through `extra` is included too. Exceptions go in `exc` as one string.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_PREFIX = "roadside.gateway"


def fields(**kw: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured fields (shown as key=value in text format).
    Fields that are None are left out."""
    return {"fields": {k: v for k, v in kw.items() if v is not None}}


def batch_fields(batch: Any, **kw: Any) -> dict[str, Any]:
    """`extra=` for a log call about a batch: its id, record count and, per node, the seq
    range it carries (`seqs`: {node: [first, last]}), plus `kw`."""
    seqs: dict[str, list[int]] = {}
    for node, seq in batch.keys:
        lo_hi = seqs.setdefault(node, [seq, seq])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], seq), max(lo_hi[1], seq)
    return fields(batch=batch.id, records=len(batch.keys), seqs=seqs, **kw)


def component(name: str) -> str:
    if name == _PREFIX or name == "roadside":
        return "gateway"
    return name.removeprefix(_PREFIX + ".")


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD:
            continue
        if key == "fields" and isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, component, msg, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": component(record.name),
            "msg": record.getMessage(),
        }
        for key, value in _extra(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-11-23T08:47:42.123 INFO roadside.gateway.link: msg key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                         "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extra(record)
        if extra:
            tail = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extra.items())
            head, sep, rest = line.partition("\n")   # keep a traceback below the fields
            line = f"{head} {tail}{sep}{rest}"
        return line


def setup(fmt: str = "text", level: str = "info", stream: Any = None) -> None:
    """Send the `roadside` loggers to stderr (or `stream`) in `fmt` at `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("roadside")
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False


THROTTLE_S = 60.0


class Throttle:
    """One repeated error as few lines: the first occurrence, then at most once a `every_s`
    the count since the last line, then one line when it clears.

        disk = Throttle(log, "queue storage")
        disk.error(f"cannot commit: {exc}")     # logs the first, then counts
        disk.ok()                                # "queue storage: recovered after 37 errors"

    `mono` is injectable for tests; `level` is that of the error lines."""

    def __init__(self, logger: logging.Logger, what: str, every_s: float = THROTTLE_S,
                 level: int = logging.ERROR, mono: Any = time.monotonic) -> None:
        self.log = logger
        self.what = what
        self.every_s = every_s
        self.level = level
        self.mono = mono
        self.failing = False
        self.total = 0           # errors since it began failing
        self._unlogged = 0
        self._logged = 0.0
        self.last: str | None = None

    def error(self, message: str, extra: dict[str, Any] | None = None) -> None:
        """`extra`: the line's structured fields (fields()), on every line it writes."""
        now = self.mono()
        self.last = message
        self.total += 1
        if not self.failing:
            self.failing = True
            self._logged = now
            self._unlogged = 0
            self.log.log(self.level, message, extra=extra)
            return
        self._unlogged += 1
        if now - self._logged >= self.every_s:
            self.log.log(self.level, f"{self.what}: {self._unlogged} more times in"
                         f" {now - self._logged:.0f} s, still failing: {message}", extra=extra)
            self._logged = now
            self._unlogged = 0

    def reset(self) -> None:
        """Not failing any more, without a line (another throttle said it)."""
        self.failing = False
        self.total = 0
        self._unlogged = 0
        self.last = None

    def ok(self, message: str | None = None) -> None:
        """It works again: one line (only when it was failing)."""
        if not self.failing:
            return
        self.log.warning(message or f"{self.what}: recovered after {self.total} errors")
        self.reset()
