# Provisioning over the serial cable (PROTOCOL.md section 5, SECURITY.md): the secret.set
# command stores the BLE secret (or, with "for": "ota", the over-the-air update key) and answers
# a fingerprint. Loaded by commands.py for that command only.
import hashlib
import os

from . import proto
from .auth import SECRET_FILE, SECRET_LEN


def fingerprint(secret):
    """What may be shown of a secret: 8 hex digits of its SHA-256."""
    return "".join("%02x" % b for b in hashlib.sha256(secret).digest()[:4])


def parse_secret(value):
    """32 bytes, or 64 hex digits -> bytes; ValueError saying what is allowed."""
    if isinstance(value, str) and len(value) == 2 * SECRET_LEN:
        try:
            value = bytes(int(value[i:i + 2], 16) for i in range(0, len(value), 2))
        except ValueError:
            pass
    if isinstance(value, (bytes, bytearray)) and len(value) == SECRET_LEN:
        return bytes(value)
    raise ValueError("secret.set: secret must be 32 bytes or 64 hex digits "
                     "(`roadside` generates one)")


def secret_command(session, args):
    """The secret.set command: over the UART only; replies a fingerprint, never the secret."""
    if session.port is not None:
        raise proto.CommandError("secret.set: refused over BLE; provision the secret over "
                                 "the serial cable")
    try:
        secret = parse_secret(args.get("secret"))
    except ValueError as e:
        raise proto.CommandError(str(e))
    if args.get("for") == "ota":  # the over-the-air update key (ota.py), not the BLE secret
        store_secret(secret, "ota.key")
    else:
        store_secret(secret)
        if session.ble is not None:
            session.ble.set_secret(secret)
    return {"fingerprint": fingerprint(secret)}


def store_secret(secret, path=SECRET_FILE):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(secret)
    os.rename(tmp, path)
