"""What a simulated node has produced, read from its NODE_DIR after it stopped.

The count of records a node produced is its last seq: seqs start at 1 and are never reused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import ToolError


class NodeStateError(ToolError):
    """The node's persisted state could not be read."""


def last_seq(node_dir: Path, log: Path | None = None) -> int:
    """The highest seq the node has assigned (0 when it produced nothing)."""
    state = node_dir / "state.json"
    if state.exists():
        try:
            data = json.loads(state.read_text())
        except ValueError as exc:
            raise NodeStateError(f"{state} is not JSON: {exc}") from exc
        if "next_seq" in data:
            return int(data["next_seq"]) - 1
    if log is not None and log.exists():
        seqs = [int(m) for m in re.findall(r"\bseq[= ](\d+)", log.read_text(errors="replace"))]
        if seqs:
            return max(seqs)
    raise NodeStateError(f"cannot tell how many records {node_dir.name} produced: "
                         f"no next_seq in {state} and no seq in its log")
