# The host's hands on a node's flash image (run by tools/sim/vflash.py, not on a board):
#   micropython vflash.py IMAGE BLOCKS get PATH HOSTFILE   copy PATH out of the image
#   micropython vflash.py IMAGE BLOCKS put HOSTFILE PATH   copy HOSTFILE into the image
#   micropython vflash.py IMAGE BLOCKS ls PATH             one name a line ("/" after a dir)
#   micropython vflash.py IMAGE BLOCKS rm PATH
#   micropython vflash.py IMAGE BLOCKS run HOSTFILE        exec a script with the image at /
# HOSTFILE paths are the host's (absolute). Reads mount the image read-only and never format
# it; `put` and `run` format a blank image, as the ESP32 port does at its first boot.
import os
import sys

sys.path.insert(0, __file__.rsplit("/", 2)[0] if __file__.count("/") > 1 else "..")

from vboard.flash import host_path, mount_image  # noqa: E402

_EXIT_MISSING = 4  # PATH is not in the image
_EXIT_NOFS = 5  # the image holds no LittleFS (never formatted, or damaged)
_CHUNK = 1024


def _copy(src, dst):
    with open(src, "rb") as i, open(dst, "wb") as o:
        while True:
            b = i.read(_CHUNK)
            if not b:
                break
            o.write(b)


def _ls(path):
    for name, kind, *_ in os.ilistdir(path):
        if path == "/" and name == "host":
            continue  # the host's mount point, not a file on the board
        print(name + ("/" if kind == 0x4000 else ""))


def main():
    image, blocks, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    args = sys.argv[4:]
    writes = cmd in ("put", "rm", "run")
    try:
        mount_image(image, blocks, format=cmd in ("put", "run"), readonly=not writes)
    except OSError as e:
        print("vflash: %s holds no LittleFS filesystem (%s)" % (image, e))
        sys.exit(_EXIT_NOFS)
    try:
        if cmd == "get":
            _copy(args[0], host_path(args[1]))
        elif cmd == "put":
            _copy(host_path(args[0]), args[1])
        elif cmd == "ls":
            _ls(args[0] if args else "/")
        elif cmd == "rm":
            os.remove(args[0])
        elif cmd == "run":
            with open(host_path(args[0])) as f:
                code = f.read()
            exec(code, {"__name__": "__main__"})
        else:
            print("vflash: no command %r; use get, put, ls, rm or run" % cmd)
            sys.exit(2)
    except OSError as e:
        if e.args and e.args[0] == 2:  # ENOENT
            print("vflash: no %s in %s" % (args[0] if cmd != "put" else args[1], image))
            sys.exit(_EXIT_MISSING)
        raise


main()
