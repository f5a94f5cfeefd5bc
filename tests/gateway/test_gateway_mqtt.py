"""MQTT uplink against a real mosquitto: QoS 1, broker restart mid-stream, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
import pytest
from roadside.gateway.batcher import Batcher
from roadside.gateway.config import BatchConfig, UplinkConfig
from roadside.gateway.protocol import FLAG_PRIORITY, KIND_ALARM, KIND_LEVEL, Record
from roadside.gateway.queue import Queue
from roadside.gateway.uplinks.mqtt import MqttUplink, split_by_kind
from support import system
from support.mosquitto import MOSQUITTO, SKIP_REASON, Broker, free_port  # noqa: F401

pytestmark = system.needs(MOSQUITTO, SKIP_REASON)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Subscriber:
    """A paho subscriber with a persistent session (QoS 1), so a broker restart loses nothing."""

    def __init__(self, port: int, topic: str, tls: dict[str, str] | None = None) -> None:
        self.lock = threading.Lock()
        self.records: list[tuple[str, int]] = []
        self.topics: set[str] = set()
        self.messages = 0
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-sub",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        if tls is not None:   # ca_certs, certfile, keyfile
            self.client.tls_set(**tls)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, msg) -> None:
        doc = cbor2.loads(msg.payload)
        with self.lock:
            self.messages += 1
            self.topics.add(msg.topic)
            self.records.extend((r["node"], r["seq"]) for r in doc["records"])

    def unique(self) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.records)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def level(seq: int, flags: int = 0, kind: int = KIND_LEVEL) -> Record:
    body = {1: "alarm", 2: 1.0, 3: "alert"} if kind == KIND_ALARM else {1: seq / 10, 3: seq}
    return Record(seq, 1_700_000_000 + seq, kind, flags, body)


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel the tasks and wait until each has ended."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def wait_until(cond, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_broker_restart_mid_stream_loses_nothing(tmp_path, broker, protocol):
    sub = Subscriber(broker.port, "roadside/site-m/gw-m/#")
    expected = {(f"wl-{n}", s) for n in range(2) for s in range(1, 201)}

    async def main():
        queue = Queue(tmp_path / "q.sqlite", "gw-m", "site-m")
        batcher = Batcher(queue, BatchConfig(20, 1 << 20, 0.05))
        cfg = UplinkConfig("mqtt", f"mqtt://127.0.0.1:{broker.port}", name="mqtt",
                           protocol=protocol, timeout_s=2.0, backoff_initial_s=0.05,
                           backoff_max_s=0.3)
        uplink = MqttUplink(cfg, queue, ["mqtt"], on_delivered=batcher.wake,
                            gateway_id="gw-m", site="site-m")
        batcher.on_cut = [uplink.notify]
        tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(uplink.run())]
        try:
            seq = 1
            for step in range(40):
                if step == 12:
                    await wait_until(lambda: uplink.delivered > 0, 10, "a first delivery")
                    await asyncio.get_running_loop().run_in_executor(None, broker.stop)
                if step == 28:
                    await wait_until(lambda: uplink.state == "down", 10, "uplink down")
                    assert queue.depth() > 0   # kept while the broker is away
                    await asyncio.get_running_loop().run_in_executor(None, broker.start)
                for n in range(2):
                    recs = [level(s, FLAG_PRIORITY, KIND_ALARM) if s % 50 == 0 else level(s)
                            for s in range(seq, seq + 5)]
                    await queue.call(queue.store, f"wl-{n}", "water", recs, seq)
                seq += 5
                batcher.wake()
                await asyncio.sleep(0.02)
            await wait_until(lambda: queue.depth() == 0, 20, "the queue to drain")
            await wait_until(lambda: sub.unique() >= expected, 10,
                             f"every record at the subscriber (missing"
                             f" {sorted(expected - sub.unique())[:50]})")
            assert uplink.connects >= 2 and uplink.failures >= 1
            assert uplink.delivered >= 400 and queue.counters["delivered_records"] == 400
        finally:
            await cancel_all(tasks)
            queue.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 50))
    finally:
        sub.close()
    assert sub.unique() == expected
    assert {"roadside/site-m/gw-m/level", "roadside/site-m/gw-m/alarm"} <= sub.topics
    # At-least-once: a batch whose PUBACK was lost in the restart may come twice, never less;
    # per node and topic, seqs arrive in order (first arrivals).
    for node in ("wl-0", "wl-1"):
        firsts: list[int] = []
        for n, s in sub.records:
            if n == node and s not in firsts:
                firsts.append(s)
        assert [s for s in firsts if s % 50] == sorted(s for s in firsts if s % 50)


def test_mixed_batch_is_split_by_kind_the_same_way_every_time(tmp_path):
    q = Queue(tmp_path / "q.sqlite", "gw", "s")
    q.store("a", "water", [level(1), level(2, FLAG_PRIORITY, KIND_ALARM), level(3)], 1)
    b = q.next_batch(10, 1 << 20)
    parts = split_by_kind(b)
    assert parts == split_by_kind(b)
    assert [k for k, _ in parts] == ["level", "alarm"]
    docs = [cbor2.loads(p) for _, p in parts]
    assert [d["batch"] for d in docs] == [f"{b.id}.level", f"{b.id}.alarm"]
    assert [[r["seq"] for r in d["records"]] for d in docs] == [[1, 3], [2]]
    q.store("a", "water", [level(4)], 4)
    single = q.next_batch(10, 1 << 20)
    assert split_by_kind(single) == [("level", single.body)]


def make_pki(tmp: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, by the openssl
    CLI (EC P-256, valid one day)."""
    openssl = shutil.which("openssl")
    system.require(openssl, "openssl CLI not installed (apt-get install -y openssl); needed to"
                            " make the test certificates")
    assert openssl is not None
    tmp.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=20)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(tmp / "ca.key"), "-out", str(tmp / "ca.pem"),
        "-days", "1", "-subj", "/CN=roadside test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (tmp / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + ext + "\n")
        run("req", *ec, "-keyout", str(tmp / f"{name}.key"), "-out", str(tmp / f"{name}.csr"),
            "-subj", f"/CN={'127.0.0.1' if name == 'server' else 'gw-m'}")
        run("x509", "-req", "-in", str(tmp / f"{name}.csr"), "-CA", str(tmp / "ca.pem"),
            "-CAkey", str(tmp / "ca.key"), "-CAcreateserial", "-days", "1",
            "-extfile", str(tmp / f"{name}.ext"), "-out", str(tmp / f"{name}.pem"))
    return {n: tmp / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                 "client.key")}


def test_tls_with_a_client_certificate(tmp_path):
    """A broker that requires client certificates: the uplink with ca_file + cert_file +
    key_file delivers everything; without its certificate it is refused, says so, and the
    records stay queued."""
    pki = make_pki(tmp_path / "pki")
    broker = Broker(tmp_path / "broker", extra=(
        f"cafile {pki['ca.pem']}\ncertfile {pki['server.pem']}\nkeyfile {pki['server.key']}\n"
        "require_certificate true\ntls_version tlsv1.2\n"))
    broker.start()
    sub = None
    try:
        sub = Subscriber(broker.port, "roadside/site-m/gw-m/#",
                         tls={"ca_certs": str(pki["ca.pem"]), "certfile": str(pki["client.pem"]),
                              "keyfile": str(pki["client.key"])})
        url = f"mqtts://127.0.0.1:{broker.port}"
        common = {"name": "mqtt", "timeout_s": 2.0, "backoff_initial_s": 0.05,
                  "backoff_max_s": 0.2, "ca_file": pki["ca.pem"]}

        async def main() -> None:
            queue = Queue(tmp_path / "q.sqlite", "gw-m", "site-m")
            for s in range(1, 31, 5):
                queue.store("wl-0", "water", [level(x) for x in range(s, s + 5)], s)
            batcher = Batcher(queue, BatchConfig(10, 1 << 20, 0.05))
            # no client certificate: the broker ends the handshake, nothing is delivered
            anon = MqttUplink(UplinkConfig("mqtt", url, **common), queue, ["mqtt"],
                              gateway_id="gw-m", site="site-m")
            tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(anon.run())]
            try:
                await wait_until(lambda: anon.failures >= 1, 10, "the refused connection")
                assert anon.state == "down" and anon.delivered == 0
                assert anon.last_error and f"127.0.0.1:{broker.port}" in anon.last_error
                assert "cert_file/key_file" in anon.last_error
                log = broker.dir / "mosquitto.log"   # refused for that reason
                await wait_until(lambda: "peer did not return a certificate" in log.read_text(),
                                 5, "the broker to log why it refused")
                assert queue.depth() == 30
                tasks[1].cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tasks[1]
                good = MqttUplink(UplinkConfig("mqtt", url, cert_file=pki["client.pem"],
                                               key_file=pki["client.key"], **common),
                                  queue, ["mqtt"], on_delivered=batcher.wake,
                                  gateway_id="gw-m", site="site-m")
                assert good.tls and good.port == broker.port
                batcher.on_cut = [good.notify]
                tasks[1] = asyncio.create_task(good.run())
                batcher.wake()
                await wait_until(lambda: queue.depth() == 0, 15, "the queue to drain over TLS")
                assert good.delivered == 30 and good.connects == 1
                await wait_until(lambda: len(sub.unique()) == 30, 10, "records at the subscriber")
            finally:
                await cancel_all(tasks)
                queue.close()

        asyncio.run(asyncio.wait_for(main(), 40))
        assert sub.unique() == {("wl-0", s) for s in range(1, 31)}
    finally:
        if sub is not None:
            sub.close()
        broker.stop()
