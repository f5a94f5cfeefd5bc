"""Blank virtual board -> node saying hello (time per deploy step), then a redeploy with
nothing changed (goal < 1 s), then a deploy started while a fresh board is still booting
(its 0.5 s boot must delay the connect, never break it).  .venv/bin/python bench/bench_install.py"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from roadside.tools.install import boards, deploy
from roadside.tools.sim.virtual_board import VirtualBoard


def main() -> None:
    board = boards.load("roadside-water-level-r1")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        vb = VirtualBoard(Path(tmp) / "board").start()
        try:
            boot = time.monotonic() - t0
            first = deploy.deploy(board, "water", vb.port, link_port=vb.link_port)
            again = deploy.deploy(board, "water", vb.port, link_port=vb.link_port)
        finally:
            vb.close()
        vb = VirtualBoard(Path(tmp) / "booting", boot_delay_ms=500).start()
        try:
            booting = deploy.deploy(board, "water", vb.port, link_port=vb.link_port)
        finally:
            vb.close()
    print(f"virtual board start      {boot:.3f} s")
    print(f"blank board -> hello     {first.total_s:.3f} s  ({len(first.copied)} files, "
          f"{first.bytes_copied} bytes)  {first.seconds}")
    print(f"redeploy, nothing changed {again.total_s:.3f} s  ({len(again.copied)} files)  "
          f"{again.seconds}  goal < 1 s: {'ok' if again.total_s < 1 else 'MISSED'}")
    print(f"deploy while booting     {booting.total_s:.3f} s  ({len(booting.copied)} files)  "
          f"connect {booting.seconds['connect']:.3f} s (boot 0.5 s)")


if __name__ == "__main__":
    main()
