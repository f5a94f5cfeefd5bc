"""A simulated node's or virtual board's flash from the host: read and write the files in its
LittleFS2 image with MicroPython itself (firmware/vboard/vflash.py mounts the image the way
the board does), never by looking in a host directory.

    flash = VFlash(run_dir / "nodes" / "wl-0001" / "flash.img")
    json.loads(flash.get("state.json")); flash.put("config.json", b"{...}"); flash.ls("/")

From a shell: `python -m roadside.tools.sim.vflash IMAGE ls|get PATH|put HOSTFILE PATH|rm PATH`.

Reading while the node runs is allowed (the image is mounted read-only): LittleFS commits
each file operation copy-on-write, so a read sees the last committed state; a read that
catches a block being rewritten fails and is retried. Write only while the node is stopped
(two writers would corrupt the filesystem, as two boards on one flash chip would).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from roadside.tools import resources

from ..errors import ToolError
from ..install import boards
from .micropython import micropython_binary

VFLASH = resources.FIRMWARE / "vboard" / "vflash.py"
BLOCK_SIZE = 4096  # firmware/vboard/blockdev.py BLOCK_SIZE: an ESP32 flash sector
APP_END = 0x200000  # MicroPython's ESP32 partition tables: the "vfs" partition starts here
HEAPSIZE = "128k"
TIMEOUT_S = 30.0
READ_TRIES = 5
_EXIT_MISSING = 4
_EXIT_NOFS = 5


class FlashError(ToolError):
    """The image is missing, holds no filesystem, or MicroPython failed on it."""


def fs_blocks(board: str = "sim") -> int:
    """Blocks of the board's filesystem partition: MicroPython's partitions-4MiB/8MiB/16MiB.csv
    put "vfs" from 0x200000 to the end of the flash (2 MiB on a 4 MB board)."""
    b = boards.load(board)
    size = int(b.flash_size.removesuffix("MB")) * 1024 * 1024
    if size <= APP_END:
        raise FlashError(f"board {board}: flash_size {b.flash_size} leaves no filesystem "
                         f"partition after MicroPython (needs more than 2MB)")
    return (size - APP_END) // BLOCK_SIZE


def create_image(path: Path, blocks: int) -> None:
    """An erased image (0xFF, as NOR flash reads): the first mount formats it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        blank = b"\xff" * BLOCK_SIZE
        for _ in range(blocks):
            f.write(blank)


class VFlash:
    """The files of one LittleFS2 image. `blocks` defaults to the image's size (or, for a
    new image, the sim board's filesystem partition)."""

    def __init__(self, image: Path, blocks: int | None = None) -> None:
        self.image = Path(image).resolve()
        if blocks is None:
            blocks = (self.image.stat().st_size // BLOCK_SIZE if self.image.exists()
                      else fs_blocks())
        self.blocks = blocks

    def _run(self, *args: str, tries: int = 1,
             heapsize: str = HEAPSIZE) -> subprocess.CompletedProcess[str]:
        cmd = [micropython_binary(), "-X", f"heapsize={heapsize}", str(VFLASH),
               str(self.image), str(self.blocks), *args]
        for attempt in range(tries):
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                raise FlashError(f"vflash {args[0]} {self.image}: no answer in "
                                 f"{TIMEOUT_S:.0f} s") from exc
            if done.returncode == 0 or done.returncode == _EXIT_MISSING:
                return done
            if attempt + 1 == tries:
                break
        msg = (done.stdout + done.stderr).strip().splitlines()
        raise FlashError(f"vflash {' '.join(args[:1])} on {self.image} failed: "
                         f"{msg[-1] if msg else f'status {done.returncode}'}")

    def _need_image(self) -> None:
        if not self.image.exists():
            raise FlashError(f"no flash image {self.image}: start the node (or put a file) "
                             f"first")

    def get(self, path: str) -> bytes:
        """The bytes of PATH in the image; FileNotFoundError when it is not there."""
        self._need_image()
        with tempfile.TemporaryDirectory(prefix="vflash-") as tmp:
            out = Path(tmp) / "out"
            done = self._run("get", path, str(out), tries=READ_TRIES)
            if done.returncode == _EXIT_MISSING:
                raise FileNotFoundError(f"{path} is not in {self.image}")
            return out.read_bytes()

    def get_json(self, path: str) -> Any:
        """PATH parsed as JSON (a read that raced a write is read again)."""
        for attempt in range(READ_TRIES):
            data = self.get(path)
            try:
                return json.loads(data)
            except ValueError as exc:
                if attempt + 1 == READ_TRIES:
                    raise FlashError(f"{path} in {self.image} is not JSON: {exc}") from exc
        raise AssertionError("unreachable")

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except FileNotFoundError:
            return False
        return True

    def put(self, path: str, data: bytes | str) -> None:
        """Write PATH in the image (created and formatted when missing). Node stopped."""
        raw = data.encode() if isinstance(data, str) else data
        self.image.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vflash-") as tmp:
            src = Path(tmp) / "in"
            src.write_bytes(raw)
            self._run("put", str(src), path)

    def put_json(self, path: str, obj: Any) -> None:
        self.put(path, json.dumps(obj, indent=2) + "\n")

    def ls(self, path: str = "/") -> list[str]:
        """Names in the image's directory PATH (directories end in "/")."""
        self._need_image()
        done = self._run("ls", path, tries=READ_TRIES)
        if done.returncode == _EXIT_MISSING:
            raise FileNotFoundError(f"{path} is not in {self.image}")
        return done.stdout.split()

    def rm(self, path: str) -> None:
        self._need_image()
        done = self._run("rm", path)
        if done.returncode == _EXIT_MISSING:
            raise FileNotFoundError(f"{path} is not in {self.image}")

    def run(self, code: str, heapsize: str = HEAPSIZE) -> str:
        """Exec MicroPython `code` with the image mounted at / (cwd /, the host at /host:
        sys.path entries for host code need that prefix); returns what it printed."""
        with tempfile.TemporaryDirectory(prefix="vflash-") as tmp:
            src = Path(tmp) / "snippet.py"
            src.write_text(code)
            return self._run("run", str(src), heapsize=heapsize).stdout


def main(argv: list[str] | None = None) -> int:
    """`python -m roadside.tools.sim.vflash IMAGE CMD ...`: look into a node's flash."""
    ap = argparse.ArgumentParser(prog="vflash", description=main.__doc__)
    ap.add_argument("image", type=Path, help="flash.img (or the node's directory)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ls").add_argument("path", nargs="?", default="/")
    sub.add_parser("get").add_argument("path")
    put = sub.add_parser("put")
    put.add_argument("hostfile", type=Path)
    put.add_argument("path")
    sub.add_parser("rm").add_argument("path")
    args = ap.parse_args(argv)
    image = args.image / "flash.img" if args.image.is_dir() else args.image
    flash = VFlash(image)
    try:
        if args.cmd == "ls":
            print("\n".join(flash.ls(args.path)))
        elif args.cmd == "get":
            sys.stdout.buffer.write(flash.get(args.path))
        elif args.cmd == "put":
            flash.put(args.path, args.hostfile.read_bytes())
        else:
            flash.rm(args.path)
    except (FlashError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
