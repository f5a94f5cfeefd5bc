# Mount a node's flash as the ESP32 port does (ports/esp32/modules/_boot.py: LittleFS2 on the
# "vfs" partition at /, formatted when it does not mount), from a block device in a host file.
# The host's filesystem stays reachable at /host for the simulation's wiring (ptys, scenario
# files, the firmware's "ROM"), never for the node's own files.
import os
import sys

import vfs

from .filedev import FileBlockDev

HOST = "/host"


def mount_root(dev, format=True, readonly=False):
    """Mount dev (LittleFS2) as /, the host at /host. A blank or damaged dev is formatted, as
    the ESP32 port does at boot, unless `format` is False (then OSError: a tool looking at a
    node's flash must never wipe it)."""
    try:
        fs = vfs.VfsLfs2(dev)  # type: ignore[abstract]  # the stub declares it abstract
    except OSError:
        if not format:
            raise
        vfs.VfsLfs2.mkfs(dev)
        fs = vfs.VfsLfs2(dev)  # type: ignore[abstract]  # the stub declares it abstract
    cwd = os.getcwd()
    vfs.umount("/")
    vfs.mount(fs, "/", readonly=readonly)
    vfs.mount(vfs.VfsPosix("/"), HOST)  # type: ignore[attr-defined]  # unix port only
    os.chdir("/")
    return fs, cwd


def mount_image(path, blocks, format=True, readonly=False):
    """The image file `path` (`blocks` blocks, created erased if missing) as /."""
    return mount_root(FileBlockDev(path, blocks), format, readonly)


def host_path(path):
    """A host path as seen from inside the mounted board ("/tmp/x" -> "/host/tmp/x")."""
    if path.startswith(HOST + "/"):
        return path
    if not path.startswith("/"):
        raise ValueError("host paths must be absolute: %r" % (path,))
    return HOST + path


def add_host_paths(*dirs):
    """Put host directories (the firmware's sources or .mpy) first on sys.path."""
    for d in reversed(dirs):
        if d:
            sys.path.insert(0, host_path(d))
