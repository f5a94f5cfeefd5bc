"""What a simulated node has produced, read from its flash image after it stopped.

The count of records a node produced is its last seq: seqs start at 1 and are never reused.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Any

from ..errors import ToolError
from .vflash import FlashError, VFlash


class NodeStateError(ToolError):
    """The node's persisted state could not be read."""


# Where the node keeps its state, newest first, as journal.py's load reads them: a node stopped
# between the two renames of a save has no state.json; its newest whole copy is then the .tmp
# it had just written, else the previous one (state.bak).
STATE_FILES = ("state.json", "state.json.tmp", "state.bak")


def _state_crc(st: dict[str, Any]) -> int:
    """journal.py's _state_crc: a copy torn by the stop is refused as the node refuses it."""
    text = b"%d %d %d %d %d" % (st["next_seq"], st["acked"], st["boot_count"],
                                st["dropped_full"], st.get("unsure", 0))
    return zlib.crc32(text) & 0xFFFFFFFF


def read_state(flash: VFlash) -> dict[str, Any] | None:
    """The node's newest whole state in its flash image, or None when it has none."""
    for name in STATE_FILES:
        try:
            st = flash.get_json(name)
        except (FileNotFoundError, FlashError):
            continue
        try:
            if isinstance(st, dict) and ("crc" not in st or st["crc"] == _state_crc(st)):
                return st
        except (KeyError, TypeError):
            continue
    return None


def last_seq(node_dir: Path, log: Path | None = None) -> int:
    """The highest seq the node has assigned (0 when it produced nothing): the higher of its
    state's next_seq - 1 (which counts the seqs it has sent) and the last record in its
    journal (records not sent yet: a node stopped before its first ACK has journaled them),
    both in its flash image (NODE_DIR/flash.img); else the highest seq its log shows."""
    image = node_dir / "flash.img"
    found: list[int] = []
    if image.exists():
        flash = VFlash(image)
        st = read_state(flash)
        if st is not None and "next_seq" in st:
            found.append(int(st["next_seq"]) - 1)
        found.extend(journal_seqs(flash))
    if found:
        return max(found)
    if log is not None and log.exists():
        seqs = [int(m) for m in re.findall(r"\bseq[= ](\d+)", log.read_text(errors="replace"))]
        if seqs:
            return max(seqs)
    raise NodeStateError(f"cannot tell how many records {node_dir.name} produced: "
                         f"no state or journal in {image} and no seq in its log")


def held_seqs(node_dir: Path) -> set[int]:
    """Seqs still in the node's journal and not acknowledged (its state's `acked`): records
    a stopped node holds and would send after its next boot; not lost."""
    flash = VFlash(node_dir / "flash.img")
    st = read_state(flash)
    acked = int(st.get("acked", 0)) if st else 0  # no state: all it journaled is unacked
    return {seq for seq in journal_seqs(flash) if seq > acked}


def journal_seqs(flash: VFlash) -> list[int]:
    """The seqs of the whole records in the node's journal.bin, in file order."""
    try:
        journal = flash.get("journal.bin")
    except (FileNotFoundError, FlashError):
        return []
    seqs, i = [], 0
    while i + 6 <= len(journal):          # records: <u16 len><u32 crc> CBOR [seq, t, ...]
        size = struct.unpack_from("<H", journal, i)[0]
        seq = _cbor_uint(journal, i + 7)  # after the head and the array(5) byte
        if seq is None or i + 6 + size > len(journal):
            break                          # a torn tail: the node drops it at boot
        seqs.append(seq)
        i += 6 + size
    return seqs


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
