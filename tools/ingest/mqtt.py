"""The MQTT way in: a member of a subscriber group on the broker uplink's topics (PROTOCOL.md
3.1), writing each message as one batch, exactly as POST /batches does.

Every ingest process with the same --group subscribes to `$share/GROUP/<topic>`: the broker
hands each message to one member. The session is persistent (clean session off, a stable client
id), and a message is acknowledged (PUBACK) only after its transaction committed: a process
killed before that gets the message again when it reconnects with the same client id, and
(node, seq) and the part's batch id make the second write a no-op. PostgreSQL down: the
message waits unacknowledged and is retried with backoff; nothing is acknowledged unstored.
A message that is not a valid batch is acknowledged, counted and logged (it would come back
forever otherwise): MQTT has no "malformed" answer.

paho-mqtt (the gateway's MQTT engine under aiomqtt) is used directly: aiomqtt acknowledges on
receipt, and this needs the acknowledgement after the commit (paho's manual_ack).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho

from ..errors import ToolError
from .store import Store, StoreUnavailable
from .validate import BadBatch, check_batch, check_seq_order, decode

log = logging.getLogger("roadside.ingest.mqtt")

DEFAULT_TOPIC = "roadside/+/+/+"      # the uplink's default template roadside/{site}/{gw}/{kind}


@dataclass
class MqttOptions:
    url: str                          # mqtt://host:port (mqtts:// for TLS with the system CAs)
    group: str
    topic: str = DEFAULT_TOPIC
    client_id: str = ""               # stable per process: its session survives a restart
    username: str | None = None
    password: str | None = None


class MqttIngest:
    def __init__(self, options: MqttOptions, store: Store) -> None:
        parts = urlsplit(options.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ToolError(f"--mqtt {options.url!r}: expected mqtt://HOST[:PORT] or"
                            " mqtts://HOST[:PORT]")
        if not options.group or "/" in options.group or "+" in options.group \
                or "#" in options.group:
            raise ToolError(f"--group {options.group!r}: a name without / + #")
        self.options = options
        self.host = parts.hostname
        self.tls = parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.filter = f"$share/{options.group}/{options.topic}"
        self.client_id = options.client_id or f"roadside-ingest-{options.group}"
        self.store = store
        self.messages = 0
        self.stored_batches = 0
        self.refused = 0
        self.retries = 0
        self.connects = 0
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._inbox: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        self._client: paho.Client | None = None

    def counters(self) -> dict[str, Any]:
        return {"messages": self.messages, "stored_batches": self.stored_batches,
                "refused": self.refused, "retries": self.retries, "connects": self.connects,
                "connected": self.connected.is_set()}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=False, protocol=paho.MQTTv311, manual_ack=True)
        client.enable_logger(logging.getLogger("roadside.ingest.paho"))
        if self.options.username is not None:
            client.username_pw_set(self.options.username, self.options.password)
        if self.tls:
            client.tls_set()
        client.reconnect_delay_set(1, 5)

        def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                log.warning(f"mqtt: broker {self.host}:{self.port} refused: {reason}")
                return
            self.connects += 1
            loop.call_soon_threadsafe(self.connected.set)
            c.subscribe(self.filter, qos=1)

        def on_subscribe(_c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
            if any(getattr(c, "is_failure", False) for c in codes):
                print(f"ingest mqtt: the broker refused the subscription {self.filter}:"
                      f" {codes}; does it support shared subscriptions (MQTT 5 brokers and"
                      " mosquitto do)?", flush=True)
                return
            print(f"ingest mqtt: subscribed {self.filter}", flush=True)
            loop.call_soon_threadsafe(self.subscribed.set)

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            loop.call_soon_threadsafe(self.connected.clear)

        def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
            loop.call_soon_threadsafe(self._inbox.put_nowait, msg)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        self._client = client
        client.connect_async(self.host, self.port, keepalive=15)
        client.loop_start()
        print(f"ingest mqtt: {self.filter} on {self.host}:{self.port} as {self.client_id}",
              flush=True)
        try:
            while True:
                msg = await self._inbox.get()
                await self._handle(msg)
                client.ack(msg.mid, msg.qos)
        finally:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    async def _handle(self, msg: paho.MQTTMessage) -> None:
        self.messages += 1
        try:
            batch = check_batch(decode(msg.payload))
            check_seq_order(batch)
        except BadBatch as exc:
            self.refused += 1
            log.warning(f"mqtt: {msg.topic}: not a batch, dropped (acknowledged): {exc}")
            return
        delay = 0.1
        while True:
            try:
                await self.store.store_batch(batch)
                self.stored_batches += 1
                return
            except StoreUnavailable as exc:
                self.retries += 1
                log.warning(f"mqtt: batch {batch['batch']!r} not stored, retrying in"
                            f" {delay:.1f} s: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
