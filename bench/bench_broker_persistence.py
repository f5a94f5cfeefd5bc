#!/usr/bin/env python3
"""What a broker keeps of what it acknowledged, when it is killed (SIGKILL) and restarted:
the reason GATEWAY.md asks for mosquitto's persistence and autosave settings.

    .venv/bin/python bench/bench_broker_persistence.py            # 300 messages, 3 settings
    .venv/bin/python bench/bench_broker_persistence.py --messages 1000 --json

A subscriber with a persistent session (fixed client id, clean_session false, QoS 1) connects
once and goes away, as a consumer that is down or slow. A publisher then sends --messages
messages with QoS 1, each only after the PUBACK of the one before (as the gateway's MQTT
uplink does: a batch is deleted from the queue on its PUBACK). The broker is killed with
SIGKILL right after the last PUBACK and started again; the subscriber comes back and counts
what the broker still had for it. Settings:

default        mosquitto's defaults (persistence false)
persistence    persistence true, autosave_interval left at 1800 s
documented     persistence true, autosave_on_changes true, autosave_interval 1,
               max_queued_messages 0 (docs/GATEWAY.md)
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SETTINGS = {
    "default": "",
    "persistence": "persistence true\n",
    "documented": ("persistence true\nautosave_on_changes true\nautosave_interval 1\n"
                   "max_queued_messages 0\n"),
}
TOPIC = "roadside/bench/gw/level"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(conf: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def subscriber(port: int, got: list[int] | None = None) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sub",
                    clean_session=False)
    subscribed = threading.Event()
    c.on_connect = lambda cl, *_: cl.subscribe(TOPIC, qos=1)
    c.on_subscribe = lambda *_: subscribed.set()
    if got is not None:
        c.on_message = lambda _c, _u, m: got.append(int(m.payload))
    c.connect("127.0.0.1", port, keepalive=5)
    c.loop_start()
    if not subscribed.wait(5):
        raise SystemExit("no SUBACK")
    return c


def run(setting: str, n: int, workdir: Path) -> dict[str, object]:
    d = workdir / setting
    d.mkdir()
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
                    f"persistence_location {d}/\n{SETTINGS[setting]}")
    broker = start(conf, port)
    try:
        sub = subscriber(port)
        sub.disconnect()                 # the session (and its queue) stays at the broker
        sub.loop_stop()
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        t0 = time.perf_counter()
        for i in range(n):
            pub.publish(TOPIC, str(i).encode(), qos=1).wait_for_publish(5)   # its PUBACK
        rate = n / (time.perf_counter() - t0)
        broker.send_signal(signal.SIGKILL)
        broker.wait(5)
        pub.disconnect()
        pub.loop_stop()
        broker = start(conf, port)
        got: list[int] = []
        sub = subscriber(port, got)
        last, deadline = -1, time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < n:   # until no more arrive
            time.sleep(0.3)
            if len(got) == last:
                break
            last = len(got)
        sub.disconnect()
        sub.loop_stop()
        return {"setting": setting, "acknowledged": n, "kept": len(set(got)),
                "lost": n - len(set(got)), "publish_per_s": round(rate)}
    finally:
        broker.kill()
        broker.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        rows = [run(s, args.messages, Path(tmp)) for s in SETTINGS]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['setting']:12} acknowledged {r['acknowledged']:5}  kept {r['kept']:5}"
                  f"  lost {r['lost']:5}  ({r['publish_per_s']} QoS 1 publishes/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
