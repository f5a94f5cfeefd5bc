# The boot after an app's ota.switch (otaboot.py's header): the staged archive, ota/stage.bin
# (per file: name length, name, size LE32, bytes; PROTOCOL.md 2.6), unpacked into the trial's
# slot, emptied first; then the trial without "unpack" in one atomic write of ota/boot.json.
# A power cut while unpacking: the next boot unpacks again. Imported by the loader for that
# boot only (which then resets); like otaboot.py, bundles never replace it.
import os
import sys

import otaboot

STAGE = "ota/stage.bin"


def unpacked(b):
    """ota/boot.json b with its trial unpacked if it waits for that (the header): b as it is
    after, the old app's if the archive would not unpack (reason "unpack")."""
    t = b.get("trial")
    if t and t.get("unpack"):
        try:
            unpack("ota/" + t["slot"], t["size"])
        except Exception as e:  # noqa: BLE001 - a damaged archive: the old app boots
            sys.print_exception(e)
            otaboot.rollback("unpack")
            return otaboot.read()
        del t["unpack"]
        otaboot.write(b)
        remove(STAGE)
    return b


def remove(path):
    """A file or a directory tree; nothing if it is not there."""
    try:
        if os.stat(path)[0] & 0x4000:  # a directory
            for name in os.listdir(path):
                remove(path + "/" + name)
            os.rmdir(path)
        else:
            os.remove(path)
    except OSError:
        pass


def unpack(root, size):
    """The staged app archive (per file: name length, name, size LE32, bytes; PROTOCOL.md
    2.6) into the slot directory root, emptied first. ValueError if it is damaged."""
    remove(root)
    made = set()
    buf = bytearray(512)
    at = 0
    with open(STAGE, "rb") as f:
        while at < size:
            n = f.read(1)[0]
            name = f.read(n).decode()
            left = int.from_bytes(f.read(4), "little")
            at += 5 + n + left
            if not n or name[0] == "/" or ".." in name or at > size:
                raise ValueError("the staged archive is damaged")
            path = root + "/" + name
            d = path.rsplit("/", 1)[0]
            if d not in made:
                part = ""
                for p in d.split("/"):
                    part = part + "/" + p if part else p
                    try:
                        os.mkdir(part)
                    except OSError:
                        pass  # it exists
                made.add(d)
            with open(path, "wb") as out:
                while left:
                    mv = memoryview(buf)[:min(512, left)]
                    f.readinto(mv)
                    out.write(mv)
                    left -= len(mv)
