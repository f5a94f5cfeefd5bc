"""Write tests/vectors/frames.json: the protocol's conformance vectors (docs/PROTOCOL.md).

Run `python tests/vectors/make_vectors.py` after a change to the protocol; the JSON is
committed and both the firmware (under MicroPython) and the gateway (CPython) are tested
against it, so neither side can drift without a test failing on the other.

The frames are built here with cbor2 and the `cobs` package, independently of both
implementations. Encoding rule (section 2 of PROTOCOL.md): map keys in ascending order,
integers in their shortest form, floats as float64 (cbor2's default, not canonical=True).

JSON cannot hold integer map keys, so in `message` an object key made only of digits stands
for a uint key (the protocol never uses digit-only text keys).
"""

from __future__ import annotations

import binascii
import json
import struct
from pathlib import Path

import cbor2
from cobs import cobs

OUT = Path(__file__).with_name("frames.json")

MESSAGES: list[tuple[str, dict]] = [
    ("hello", {0: 1, 1: "wl-0001", 2: "water", 3: "0.1.0", 4: "sim", 5: 3, 6: "power_on",
               7: 42, 8: 1, 9: 40}),
    # a node that lost its saved counter: seqs from 1 on are unsure (section 2.2, rule 7)
    ("hello-unsure", {0: 1, 1: "wl-0001", 2: "water", 3: "0.1.0", 4: "sim", 5: 1,
                      6: "power_on", 7: 4, 8: 1, 9: 1, 12: 1}),
    ("records-level-alarm-health", {0: 2, 1: 40, 2: [
        [40, 1795420800, 1, 0, {1: 12.5, 2: -0.25, 3: 1874}],
        [41, 1795420805, 2, 2, {1: "alert", 2: 50.75, 3: "normal"}],
        [42, 310, 3, 1, {1: 61440, 2: 310, 3: 2, 4: 0, 5: 3}],
    ]}),
    # the rain gauge's kinds (30 rainfall, 31 intensity: priority)
    ("records-rainfall-intensity", {0: 2, 1: 7, 2: [
        [7, 1795420860, 30, 0, {1: 6, 2: 1.2, 3: 60, 4: 72.0, 5: 41}],
        [8, 1795420861, 31, 2, {1: "heavy", 2: 72.0, 3: "normal"}],
    ]}),
    ("records-empty", {0: 2, 1: 7, 2: []}),
    ("ack-none", {0: 3, 1: 0}),
    ("ack-small", {0: 3, 1: 23}),
    ("ack-one-byte", {0: 3, 1: 24}),
    ("ack-two-bytes", {0: 3, 1: 300}),
    ("ack-four-bytes", {0: 3, 1: 70000}),
    ("ack-resume", {0: 3, 1: 300, 2: 301}),
    ("command-ping", {0: 4, 1: 1, 2: "ping"}),
    ("command-config-set", {0: 4, 1: 513, 2: "config.set",
                            3: {"key": "alert_cm", "value": 60}}),
    ("reply-pong", {0: 5, 1: 1, 2: True, 3: "pong"}),
    ("reply-map", {0: 5, 1: 2, 2: True, 3: {"fw": "0.1.0", "node": "wl-0001", "next_seq": 43}}),
    ("reply-error", {0: 5, 1: 513, 2: False,
                     4: "alert_cm: must be a number 0..2000, got 'high'"}),
    ("time", {0: 6, 1: 1795420800123}),
    ("error-unknown-type", {0: 7, 1: 1, 2: "unknown message type 99", 3: 99}),
    ("error-no-session", {0: 7, 1: 3, 2: "send HELLO first"}),
    # more than 254 bytes without a zero: exercises COBS's 0xFF block code
    ("error-long-message", {0: 7, 1: 2, 2: "x" * 300}),
]


def payload_of(message: dict) -> bytes:
    return cbor2.dumps(message)


def frame_of(payload: bytes) -> bytes:
    body = payload + struct.pack("<I", binascii.crc32(payload) & 0xFFFFFFFF)
    return cobs.encode(body) + b"\x00"


def to_json(value):
    """Integer map keys become digit strings (see the module docstring)."""
    if isinstance(value, dict):
        return {str(k) if isinstance(k, int) else k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def check_reason(frame: bytes) -> str | None:
    """The reference judgement of one frame (without its 0x00): None when valid."""
    if len(frame) > 1040:
        return "oversize"
    try:
        body = cobs.decode(frame)
    except cobs.DecodeError:
        return "cobs"
    if len(body) < 5:
        return "crc"
    if struct.pack("<I", binascii.crc32(body[:-4]) & 0xFFFFFFFF) != body[-4:]:
        return "crc"
    return None


def crc_broken(payload: bytes) -> bytes:
    """A well-formed COBS frame whose payload had one bit flipped after its CRC was taken."""
    crc = struct.pack("<I", binascii.crc32(payload) & 0xFFFFFFFF)
    flipped = bytearray(payload)
    flipped[-1] ^= 0x04
    return cobs.encode(bytes(flipped) + crc) + b"\x00"


def invalid_frames() -> list[dict]:
    cases = [
        ("crc-bit-flip", crc_broken(payload_of({0: 3, 1: 5}))),
        ("crc-too-short", cobs.encode(b"\x01\x02\x03") + b"\x00"),
        ("cobs-block-past-end", b"\x05ab\x00"),
        ("oversize", b"\x01" * 1100 + b"\x00"),
    ]
    out = []
    for name, frame in cases:
        reason = check_reason(frame[:-1])
        assert reason is not None, name
        out.append({"name": name, "frame": frame.hex(), "error": reason})
    return out


def stream_vector() -> dict:
    """Garbage, a truncated frame and noise between good frames: what a receiver must yield."""
    a = payload_of({0: 3, 1: 1})
    b = payload_of({0: 6, 1: 1795420800123})
    c = payload_of({0: 7, 1: 3, 2: "send HELLO first"})
    fa, fb, fc = frame_of(a), frame_of(b), frame_of(c)
    stream = (b"\x13\x37garbage" + b"\x00" + fa + fb[: len(fb) // 2] + b"\x00\x00"
              + b"\x00" + fc + crc_broken(a) + b"\x01" * 1050 + b"\x00" + fb)
    payloads, counts = [], {"crc": 0, "cobs": 0, "oversize": 0}
    for chunk in stream.split(b"\x00")[:-1]:
        if not chunk:
            continue
        reason = check_reason(chunk)
        if reason:
            counts[reason] += 1
        else:
            payloads.append(cobs.decode(chunk)[:-4].hex())
    return {"name": "stream-resync", "stream": stream.hex(), "payloads": payloads,
            "counts": counts}


def build() -> dict:
    valid = []
    for name, message in MESSAGES:
        payload = payload_of(message)
        assert cbor2.loads(payload) == message
        valid.append({"name": name, "type": message[0], "frame": frame_of(payload).hex(),
                      "payload": payload.hex(), "message": to_json(message)})
    return {"about": "roadside protocol v1 conformance vectors; see tests/vectors/make_vectors.py",
            "max_payload": 1024, "max_encoded": 1040,
            "valid": valid, "invalid": invalid_frames(), "streams": [stream_vector()]}


# -- updates over the air (PROTOCOL.md 2.6): tests/vectors/ota.json -------------------------
OTA_OUT = Path(__file__).with_name("ota.json")
OTA_KEY = bytes(range(32))


def ota_messages() -> list[tuple[str, dict]]:
    """A small app bundle (two files, one 8 KiB piece) and the messages that carry it."""
    import hashlib
    import hmac

    files = {"roadside_node/__init__.mpy": b"M\x06" + b"i" * 30,
             "roadside_node/app.mpy": b"M\x06" + b"a" * 90}
    payload = b"".join(bytes([len(n)]) + n.encode() + len(d).to_bytes(4, "little") + d
                       for n, d in sorted(files.items()))
    manifest = {1: "0.2.0", 2: ["sim"], 3: ["water"], 4: 1,
                5: [[len(payload), hashlib.sha256(payload).digest()]], 6: 2,
                7: len(payload), 8: hashlib.sha256(payload).digest(),
                9: "2026-12-03T06:00:00Z", 10: 40960}
    mb = cbor2.dumps(manifest)
    mac = hmac.new(OTA_KEY, mb, hashlib.sha256).digest()
    tag = hashlib.sha256(mb).digest()[:8]
    return [
        ("ota-offer", {0: 10, 1: "app", 2: mb, 3: mac}),
        ("ota-offer-forced", {0: 10, 1: "app", 2: mb, 3: mac, 4: True}),
        ("ota-chunk", {0: 11, 1: tag, 2: 0, 3: payload[:64]}),
        ("ota-state-idle", {0: 12, 2: "idle", 3: 0, 5: "0.1.0"}),
        ("ota-state-receiving", {0: 12, 1: tag, 2: "receiving", 3: 64, 5: "0.1.0"}),
        ("ota-state-staged", {0: 12, 1: tag, 2: "staged", 3: len(payload), 5: "0.1.0"}),
        ("ota-state-refused", {0: 12, 1: tag, 2: "refused", 3: 0, 4: "version", 5: "0.1.0"}),
        ("ota-state-trial", {0: 12, 1: tag, 2: "trial", 3: len(payload), 5: "0.2.0"}),
        ("ota-state-done", {0: 12, 1: tag, 2: "done", 3: len(payload), 5: "0.2.0"}),
        ("ota-state-rolled-back", {0: 12, 1: tag, 2: "rolled_back", 3: 0, 4: "import",
                                   5: "0.1.0"}),
    ]


def ota_vectors() -> dict:
    valid = []
    for name, message in ota_messages():
        payload = payload_of(message)
        valid.append({"name": name, "type": message[0], "frame": frame_of(payload).hex(),
                      "payload": payload.hex()})
    return {"about": "OTA messages (PROTOCOL.md 2.6); key: bytes 0..31; see make_vectors.py",
            "key": OTA_KEY.hex(), "valid": valid}


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    OTA_OUT.write_text(json.dumps(ota_vectors(), indent=1) + "\n")
    print(f"wrote {OUT}, {OTA_OUT}")
