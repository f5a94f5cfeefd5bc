"""The Uplink base (gateway/uplinks/base.py) on its own: a scripted subclass with a connection
against a real SQLite queue shows the run loop's contract (reconnect with backoff, retry a
batch over a new connection, dead-letter a refusal and go on, in cut order, each batch
delivered once); make_uplink is typed and hands the Commander to the uplinks that take it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest
from roadside.gateway.commands import Commander
from roadside.gateway.config import UplinkConfig
from roadside.gateway.errors import UplinkError
from roadside.gateway.protocol import Record
from roadside.gateway.queue import Batch, Queue
from roadside.gateway.session import SessionManager
from roadside.gateway.uplinks import Uplink, make_uplink
from roadside.gateway.uplinks.http import HttpUplink
from roadside.gateway.uplinks.mqtt import MqttUplink
from support.waits import until


class Scripted(Uplink):
    """A connection that fails to open `refuse` times, a send that drops the connection once
    (batch 2) and refuses batch 3 as malformed."""

    type = "scripted"

    def __init__(self, *args, refuse: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refuse = refuse
        self.open = False
        self.opens = 0
        self.sent: list[str] = []
        self.calls = 0

    @property
    def connected(self) -> bool:
        return self.open

    async def connect(self) -> None:
        if self.refuse:
            self.refuse -= 1
            raise UplinkError("peer: connection refused", True) from OSError(111, "refused")
        self.open = True
        self.opens += 1

    async def disconnect(self) -> None:
        self.open = False

    async def send(self, batch: Batch) -> None:
        assert self.open, "send without a connection"
        self.calls += 1
        if self.calls == 2:
            raise UplinkError("peer: connection lost", True) from OSError(104, "reset")
        if self.calls == 4:
            raise UplinkError("refused: not a batch", False)
        self.sent.append(batch.id)


def store(queue: Queue, seqs: range) -> None:
    queue.store("wl-0001", "water",
                [Record(s, 1_700_000_000 + s, 1, 0, {1: s / 10, 3: s}) for s in seqs],
                seqs.start)


def test_run_loop_reconnects_retries_dead_letters_and_delivers_in_order(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="roadside.gateway.uplink")
    queue = Queue(tmp_path / "q.sqlite", "gw-b", "site-b")
    for start in range(1, 41, 10):
        store(queue, range(start, start + 10))
    cut = [queue.next_batch(10, 1 << 20) for _ in range(4)]
    ids = [b.id for b in cut if b is not None]
    cfg = UplinkConfig("http", "http://127.0.0.1:9/x", name="s", backoff_initial_s=0.01,
                       backoff_max_s=0.02)
    delivered = []
    up = Scripted(cfg, queue, ["s"], on_delivered=lambda: delivered.append(1),
                  rng=random.Random(1))
    assert up.state == "idle" and up.commander is None

    async def main() -> None:
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: queue.depth() == 0 and up.state == "idle",
                        "every batch delivered or dead-lettered")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(main(), 20))
    # batch 2 went out again over a new connection; batch 3 was refused and did not block 4
    assert up.sent == [ids[0], ids[1], ids[3]] and up.opens == 2 and not up.open
    assert up.delivered == 30 and up.delivered_batches == 3 and up.dead_letters == 1
    assert up.failures == 2 + 1 + 1 and len(delivered) == 4
    assert [(d[0], d[1], d[4]) for d in queue.dead_letters()] == [
        (ids[2], "s", "refused: not a batch")]
    st = up.status()
    assert st["type"] == "scripted" and st["last_error"] == "refused: not a batch"
    first = caplog.records[0]
    assert first.levelname == "WARNING" and first.getMessage().startswith(
        "uplink s: peer: connection refused; reconnecting (attempt 1, next in")
    assert first.fields == {"uplink": "s", "error": "peer: connection refused", "attempt": 1}
    retry = next(r for r in caplog.records if "connection lost" in r.getMessage())
    assert retry.getMessage().startswith(f"uplink s: batch {ids[1]}: peer: connection lost;"
                                         " retrying (attempt 1,")
    assert retry.fields["batch"] == ids[1] and retry.fields["uplink"] == "s"
    assert retry.fields["seqs"] == {"wl-0001": [11, 20]} and retry.fields["attempt"] == 1
    refused = next(r for r in caplog.records if r.levelname == "ERROR")
    assert refused.getMessage() == (f"uplink s: batch {ids[2]} (10 records) refused: refused:"
                                    " not a batch; moved to the dead-letter table")
    queue.close()


def test_make_uplink_is_typed_and_gives_the_commander_to_mqtt(tmp_path):
    queue = Queue(tmp_path / "q.sqlite", "gw-b", "site-b")
    commander = Commander(SessionManager(queue), tmp_path / "commands.sqlite")
    try:
        http = make_uplink(UplinkConfig("http", "http://127.0.0.1:9/x", name="h"), queue,
                           ["h", "m"], commander=commander)
        mqtt = make_uplink(UplinkConfig("mqtt", "mqtt://127.0.0.1:9", name="m",
                                        command_topic="r/{site}/{gateway}/cmd",
                                        reply_topic="r/{site}/{gateway}/cmd/reply"),
                           queue, ["h", "m"], gateway_id="gw-b", site="site-b",
                           commander=commander)
        assert isinstance(http, HttpUplink) and isinstance(mqtt, MqttUplink)
        assert isinstance(http, Uplink) and isinstance(mqtt, Uplink)
        assert http.status()["type"] == "http" and http.status()["state"] == "idle"
        assert mqtt.status()["state"] == "connecting" and not mqtt.connected
        assert mqtt.command_topic == "r/site-b/gw-b/cmd"     # commands on: it has a Commander
        bare = make_uplink(UplinkConfig("mqtt", "mqtt://127.0.0.1:9", name="m",
                                        command_topic="r/{site}/{gateway}/cmd",
                                        reply_topic="r/{site}/{gateway}/cmd/reply"),
                           queue, ["m"])
        assert bare.status()["command_topic"] is None        # no Commander: no commands
        with pytest.raises(TypeError):
            Uplink(UplinkConfig("http", "http://x/"), queue, ["http"])  # type: ignore[abstract]
    finally:
        commander.close()
        queue.close()


class DropsWhileIdle(Scripted):
    """Connected and idle, the connection ends once; the first connect after that fails."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, refuse=0, **kwargs)
        self.dropped = False

    async def wait_for_work(self, timeout: float) -> None:
        if not self.dropped:
            self.dropped = True
            self.refuse = 1
            raise UplinkError("peer: connection lost", True) from OSError(104, "reset")
        await super().wait_for_work(timeout)


def test_a_connection_lost_while_idle_is_reconnected_and_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="roadside.gateway.uplink")
    queue = Queue(tmp_path / "q.sqlite", "gw-b", "site-b")
    cfg = UplinkConfig("http", "http://127.0.0.1:9/x", name="s", backoff_initial_s=0.01,
                       backoff_max_s=0.02)
    up = DropsWhileIdle(cfg, queue, ["s"], rng=random.Random(1))

    async def main() -> None:
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.opens == 2 and up.state == "idle", "the reconnect")
            store(queue, range(1, 11))
            await queue.call(queue.next_batch, 10, 1 << 20)
            up.notify()
            await until(lambda: queue.depth() == 0, "the delivery after the reconnect")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(main(), 20))
    assert up.failures == 2 and up.delivered == 10 and up.last_error == "peer: connection refused"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(
        "uplink s: peer: connection lost; reconnecting (attempt 1, next in")   # not 1 again
    queue.close()
