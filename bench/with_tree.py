#!/usr/bin/env python3
"""Run a script with `roadside` imported from another checkout (a before/after comparison in
one session, docs/PERFORMANCE.md):

    git worktree add --detach /tmp/base main
    .venv/bin/python bench/with_tree.py /tmp/base bench/bench_ingest.py --links 10,100

The venv's editable install maps `roadside.*` to this worktree through a finder on
`sys.meta_path`, ahead of PYTHONPATH; this drops that finder and puts a directory whose
`roadside/gateway` and `roadside/tools` point into TREE first on `sys.path`. The script's own
child processes (bench_ingest.py's sink) import this worktree again, which only matters for
code they run.
"""

from __future__ import annotations

import runpy
import sys
import tempfile
from pathlib import Path


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    tree, script = Path(sys.argv[1]).resolve(), sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="with-tree-") as tmp:
        pkg = Path(tmp) / "roadside"
        pkg.mkdir()
        for sub in ("gateway", "tools", "firmware"):
            (pkg / sub).symlink_to(tree / sub)
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, tmp)
        sys.argv = sys.argv[2:]
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
