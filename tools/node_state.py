"""What a simulated node has produced, read from its flash image after it stopped.

The count of records a node produced is its last seq: seqs start at 1 and are never reused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import ToolError
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
