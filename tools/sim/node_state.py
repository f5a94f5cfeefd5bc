"""What a simulated node has produced, read from its flash image after it stopped.

The count of records a node produced is its last seq: seqs start at 1 and are never reused.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

from ..errors import ToolError
from .vflash import FlashError, VFlash


class NodeStateError(ToolError):
    """The node's persisted state could not be read."""


def last_seq(node_dir: Path, log: Path | None = None) -> int:
    """The highest seq the node has assigned (0 when it produced nothing): state.json in its
    flash image (NODE_DIR/flash.img), else the highest seq its log shows."""
    image = node_dir / "flash.img"
    state = f"state.json in {image}"
    data: Any = {}
    if image.exists():
        try:
            data = VFlash(image).get_json("state.json")
        except FileNotFoundError:
            pass
        except FlashError as exc:
            raise NodeStateError(f"{state}: {exc}") from exc
    if isinstance(data, dict) and "next_seq" in data:
        return int(data["next_seq"]) - 1
    if log is not None and log.exists():
        seqs = [int(m) for m in re.findall(r"\bseq[= ](\d+)", log.read_text(errors="replace"))]
        if seqs:
            return max(seqs)
    raise NodeStateError(f"cannot tell how many records {node_dir.name} produced: "
                         f"no next_seq in {state} and no seq in its log")


def held_seqs(node_dir: Path) -> set[int]:
    """Seqs still in the node's journal and not acknowledged (state.json's `acked`): records
    a stopped node holds and would send after its next boot; not lost."""
    flash = VFlash(node_dir / "flash.img")
    try:
        journal = flash.get("journal.bin")
        acked = int(flash.get_json("state.json").get("acked", 0))
    except (FileNotFoundError, FlashError, ValueError):
        return set()
    held, i = set(), 0
    while i + 6 <= len(journal):          # records: <u16 len><u32 crc> CBOR [seq, t, ...]
        size = struct.unpack_from("<H", journal, i)[0]
        seq = _cbor_uint(journal, i + 7)  # after the head and the array(5) byte
        if seq is None or i + 6 + size > len(journal):
            break                          # a torn tail: the node drops it at boot
        if seq > acked:
            held.add(seq)
        i += 6 + size
    return held


def _cbor_uint(buf: bytes, at: int) -> int | None:
    if at >= len(buf) or buf[at] >> 5 != 0:
        return None
    info = buf[at] & 0x1F
    if info < 24:
        return info
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if width is None or at + 1 + width > len(buf):
        return None
    return int.from_bytes(buf[at + 1:at + 1 + width], "big")
