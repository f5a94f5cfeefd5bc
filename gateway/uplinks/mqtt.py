"""MQTT uplink (PROTOCOL.md section 3.1): each batch published with QoS 1, delivered on PUBACK.

The payload is the same CBOR batch as the HTTP body. The topic comes from a template with
{site}, {gateway} and {kind}; a batch whose records are all of one kind is published as cut
(same bytes, same batch id); a mixed batch is split by kind, in a fixed way, into batches with
the id "<batch id>.<kind>", so a retry publishes exactly the same messages again. The batch
counts as delivered (its cursor moves, and it is deleted once every uplink has it) only when
the broker has answered PUBACK for every part; a disconnect before that means the whole batch
is published again after reconnecting (at-least-once: subscribers dedupe by (node, seq)).

Remote commands (off unless `command_topic` is set): the uplink subscribes (QoS 1) to the
command topic, runs only the commands in its `command_allow` (default: the read-only ones;
whoever may publish on the topic, which the broker's ACL decides, may run those); each
message is a CBOR or JSON map {"id", "node", "name", "args", "who"}, run through the
Commander (request ids, retries, audit log with origin "mqtt"), and answered on the reply
topic (QoS 1) in the request's encoding: {"id", "ok", "result" | "error", "request_id",
"node", "name", "outcome"}. A repeated id (a QoS 1 redelivery) is answered from the recent
replies without running the command again.

Connection: one aiomqtt (paho-mqtt) client, MQTT 3.1.1 or 5, optional TLS with a CA file and a
client certificate, username and password from a file or the environment. Any error drops the
connection; it is re-established with exponential backoff and full jitter. The run loop, the
backoff and the bookkeeping are the Uplink base's (base.py); this module is the connection,
the publishing and the commands. The Commander comes at construction (`commander`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import aiomqtt
import cbor2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .. import ids, logs
from ..commands import COMMANDS, CommandError
from ..config import UplinkConfig
from ..errors import UplinkError
from ..ota.manager import OtaError
from ..queue import Batch, Queue
from .base import CONNECTING, Uplink

if TYPE_CHECKING:
    from ..commands import Commander
    from ..ota.manager import OtaManager

log = logging.getLogger("roadside.gateway.uplink")

# What ends a connection (or keeps one from opening): the uplink reconnects with backoff.
CONNECTION_ERRORS = (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError)
RECENT_REPLIES = 256      # command ids remembered, so a QoS 1 redelivery is not run twice


def split_by_kind(batch: Batch) -> list[tuple[str, bytes]]:
    """(kind, payload) messages for one batch: the batch itself when it has a single kind."""
    doc = cbor2.loads(batch.body)
    groups: dict[str, list[object]] = {}
    for rec in doc["records"]:
        groups.setdefault(rec["kind"], []).append(rec)
    if len(groups) == 1:
        return [(next(iter(groups)), batch.body)]
    return [(kind, cbor2.dumps({**doc, "batch": f"{batch.id}.{kind}", "records": recs}))
            for kind, recs in groups.items()]


class MqttUplink(Uplink):
    """Publishes the queue's batches to one MQTT broker, in cut order, from its own cursor."""

    type = "mqtt"
    initial_state = CONNECTING

    def __init__(self, config: UplinkConfig, queue: Queue, all_uplinks: Sequence[str],
                 on_delivered: Callable[[], None] | None = None, gateway_id: str = "gw",
                 site: str = "site", rng: random.Random | None = None,
                 commander: Commander | None = None) -> None:
        super().__init__(config, queue, all_uplinks, on_delivered, rng, commander)
        parsed = urlparse(config.url)
        self.host = parsed.hostname or "localhost"
        self.tls = parsed.scheme == "mqtts" or config.ca_file is not None \
            or config.cert_file is not None
        self.port = parsed.port or (8883 if self.tls else 1883)
        self.gateway_id = gateway_id
        self.site = site
        self.ota: OtaManager | None = None     # rollouts (`ota.push`); the daemon sets it
        self.client_id = config.client_id or f"roadside-{gateway_id}-{config.name}"
        self.connects = 0
        self._password = config.password()   # read once at start (ConfigError if gone)
        self._ssl = self.tls_context(self.tls)
        # The connection: the client (entered on `_stack`) and the task reading its messages
        # (commands, and the disconnect of an idle connection).
        self._conn: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._watch: asyncio.Task[None] | None = None
        self.commands = 0                 # command messages received
        self._replies: OrderedDict[str, tuple[str, bytes] | None] = OrderedDict()
        self._command_tasks: set[asyncio.Task[None]] = set()
        # The rollouts `ota.push` started here: rollout id -> (the request's id, JSON?), for
        # the final outcome published on the reply topic when the rollout ends; and final
        # outcomes not yet published (no connection then), sent after the next connect.
        self._ota_started: dict[int, tuple[Any, bool]] = {}
        self._ota_unsent: list[bytes] = []

    def status(self) -> dict[str, object]:
        return {**super().status(), "connects": self.connects,
                "command_topic": self.command_topic, "commands": self.commands}

    def topic(self, kind: str) -> str:
        return self.config.topic.format(site=self.site, gateway=self.gateway_id, kind=kind)

    @property
    def command_topic(self) -> str | None:
        if self.config.command_topic is None or self.commander is None:
            return None
        return self.config.command_topic.format(site=self.site, gateway=self.gateway_id)

    @property
    def reply_topic(self) -> str:
        assert self.config.reply_topic is not None
        return self.config.reply_topic.format(site=self.site, gateway=self.gateway_id)

    def _where(self, exc: BaseException) -> str:
        return f"{self.host}:{self.port}: {str(exc) or type(exc).__name__}"

    def _client(self) -> aiomqtt.Client:
        v5 = self.config.protocol == "5"
        return aiomqtt.Client(
            self.host, self.port, identifier=self.client_id,
            username=self.config.username, password=self._password,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else True, keepalive=self.config.keepalive_s,
            timeout=self.config.timeout_s, tls_context=self._ssl,
            logger=logging.getLogger("roadside.gateway.uplink.paho"))

    def _properties(self) -> Properties | None:
        if self.config.protocol != "5":
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/cbor"
        return props

    # -- the connection (Uplink's connect / disconnect / wait_for_work / send) ------------

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def connect(self) -> None:
        """Connect, subscribe to the command topic, and start reading messages."""
        stack = contextlib.AsyncExitStack()
        self._stack = stack
        try:
            client = await stack.enter_async_context(self._client())
            self.connects += 1
            log.info(f"uplink {self.name}: connected to {self.host}:{self.port}"
                     f" (MQTT {self.config.protocol}{', TLS' if self.tls else ''})",
                     extra=logs.fields(uplink=self.name))
            if self.command_topic is not None:
                await client.subscribe(self.command_topic, qos=1,
                                       timeout=self.config.timeout_s)
        except CONNECTION_ERRORS as exc:
            message = self._where(exc)
            if self.tls and self.connects == 0:
                # a broker that rejects our certificate often just closes the socket, which
                # the client sees as a timeout: point at the likely cause
                message += ("; if the broker requires TLS client certificates, check"
                            " cert_file/key_file and that ca_file signs its certificate")
            raise UplinkError(message, True) from exc
        self._conn = client
        if self._ota_unsent:
            self._spawn(self._publish_finals())
        # Iterating the messages ends, with MqttError, only on a disconnect, which is how an
        # idle uplink notices that the broker went away; it also receives the commands.
        self._watch = asyncio.create_task(self._read(client), name=f"mqtt read {self.name}")

    async def disconnect(self) -> None:
        watch, stack = self._watch, self._stack
        self._conn = self._watch = self._stack = None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch
        if stack is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await stack.aclose()

    async def wait_for_work(self, timeout: float) -> None:
        watch = self._watch
        if watch is None:
            await super().wait_for_work(timeout)
            return
        waiter = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({waiter, watch}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if watch.done():
            exc = watch.exception() if not watch.cancelled() else None
            err = exc if exc is not None else aiomqtt.MqttError("disconnected")
            raise UplinkError(self._where(err), True) from err

    async def send(self, batch: Batch) -> None:
        """Publish every part of `batch` with QoS 1; returns once each has its PUBACK."""
        client = self._conn
        if client is None:
            raise UplinkError(f"{self.host}:{self.port}: not connected", True) \
                from aiomqtt.MqttError("not connected")
        props = self._properties()
        try:
            for kind, payload in split_by_kind(batch):
                await client.publish(self.topic(kind), payload, qos=1, properties=props,
                                     timeout=self.config.timeout_s)
        except CONNECTION_ERRORS as exc:
            raise UplinkError(self._where(exc), True) from exc

    async def close(self) -> None:
        """Stop the commands still running, then the connection."""
        for task in list(self._command_tasks):
            task.cancel()
        await asyncio.gather(*self._command_tasks, return_exceptions=True)
        await self.disconnect()

    # -- remote commands ------------------------------------------------------------------

    async def _read(self, client: aiomqtt.Client) -> None:
        """Receive until the connection ends (raises MqttError); commands run as tasks."""
        async for message in client.messages:
            if self.command_topic is None or not message.topic.matches(self.command_topic):
                continue
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode()
            self._spawn(self._command(client, bytes(payload)))

    async def _command(self, client: aiomqtt.Client, payload: bytes) -> None:
        """Run one command message and publish its reply (in the request's encoding)."""
        self.commands += 1
        use_json = False
        try:
            doc = cbor2.loads(payload)
        except Exception:  # noqa: BLE001 - not CBOR: try JSON
            try:
                doc = json.loads(payload)
                use_json = True
            except ValueError:
                doc = None
        cid = doc.get("id") if isinstance(doc, dict) else None
        key = repr(cid) if cid is not None else None
        if key is not None and key in self._replies:
            cached = self._replies[key]
            if cached is not None:            # answered already: the same reply again
                await self._publish_reply(client, cached[1])
            return                            # else still running: its reply will come
        if key is not None:
            self._replies[key] = None
            while len(self._replies) > RECENT_REPLIES:
                self._replies.popitem(last=False)
        reply = await self._run_command(doc, cid, payload)
        if reply.get("name") == "ota.push" and reply.get("ok"):   # its end: ota_ended
            self._ota_started[reply["rollout"]["id"]] = (cid, use_json)
        body = (json.dumps(reply).encode() if use_json else cbor2.dumps(reply))
        if key is not None:
            self._replies[key] = (self.reply_topic, body)
        await self._publish_reply(client, body)

    async def _run_command(self, doc: Any, cid: Any, payload: bytes) -> dict[str, Any]:
        if not isinstance(doc, dict):
            log.warning(f"uplink {self.name}: command message on {self.command_topic} is not a"
                        f" CBOR or JSON map ({len(payload)} bytes); answered with an error",
                        extra=logs.fields(uplink=self.name, error="not a CBOR or JSON map"))
            return {"id": None, "ok": False, "status": 400,
                    "error": "the command must be a CBOR or JSON map"
                             " {\"id\", \"node\", \"name\", \"args\"}"}
        node, name, args = doc.get("node"), doc.get("name"), doc.get("args")
        who = doc.get("who")
        if name in ("ota.push", "ota.cancel"):
            return self._ota(name, doc, cid)
        base: dict[str, Any] = {"id": cid, "node": node, "name": name}
        if not ids.valid(node):
            base["node"] = ids.shown(node)    # not echoed whole
            return {**base, "ok": False, "status": 400,
                    "error": f"node: bad node id {ids.shown(node)}; use {ids.RULE}"}
        if name in COMMANDS and name not in self.config.command_allow:   # unknown: 400
            # Who may publish here is the broker's ACL; what it may run is this list.
            shown = repr(name)[:40]
            log.warning(f"uplink {self.name}: command {shown} to {node[:40]!r} refused: not"
                        f" in command_allow", extra=logs.fields(
                            uplink=self.name, node=node[:40], command=shown,
                            error="not in command_allow"))
            return {**base, "ok": False, "status": 403, "outcome": "refused",
                    "error": f"command {shown} is not allowed on this command topic; allowed:"
                             f" {', '.join(self.config.command_allow) or 'none'} (the"
                             f" uplink's command_allow in gateway.toml)"}
        assert self.commander is not None   # else command_topic is None: nothing is read
        try:
            result = await self.commander.run(
                node, name, args, who=str(who)[:100] if who else "mqtt", origin="mqtt")
        except CommandError as exc:
            out = {**base, "ok": False, "status": exc.status, "error": str(exc),
                   "outcome": "timeout" if exc.status == 504 else "refused"}
            if exc.request_id is not None:
                out["request_id"] = exc.request_id
            return out
        out = {**base, "ok": result.ok, "request_id": result.request_id,
               "outcome": result.outcome, "attempts": result.attempts}
        if result.ok:
            out["result"] = result.result
        else:
            out["error"] = result.error
        return out

    def _ota(self, name: str, doc: dict[Any, Any], cid: Any) -> dict[str, Any]:
        """ota.push / ota.cancel, each only when command_allow lists it."""
        base: dict[str, Any] = {"id": cid, "name": name}
        if name not in self.config.command_allow:
            return {**base, "ok": False, "status": 403, "outcome": "refused",
                    "error": f"{name} is not allowed on this command topic; add it to the"
                             f" uplink's command_allow in gateway.toml"}
        if self.ota is None:
            return {**base, "ok": False, "status": 503, "error": "no OTA on this gateway"}
        if name == "ota.cancel":
            return self._ota_cancel(doc, base)
        return self._ota_push(doc, base)

    def _ota_cancel(self, doc: dict[Any, Any], base: dict[str, Any]) -> dict[str, Any]:
        """{"name": "ota.cancel", "rollout": ID (default: the one running), "who"}: stop a
        rollout (gateway/ota/rollout.py cancel); the reply carries it as cancelled."""
        assert self.ota is not None
        rid = doc.get("rollout")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int)):
            return {**base, "ok": False, "status": 400,
                    "error": "rollout: must be a rollout id (an integer), or left out for the"
                             " one running"}
        who = doc.get("who")
        try:
            rollout = self.ota.cancel(rid, who=str(who)[:100] if who else "mqtt")
        except OtaError as exc:
            return {**base, "ok": False, "status": exc.status, "error": str(exc)}
        return {**base, "ok": True, "status": 200, "rollout": rollout.doc()}

    def _ota_push(self, doc: dict[Any, Any], base: dict[str, Any]) -> dict[str, Any]:
        """{"name": "ota.push", "bundle": bytes (CBOR) or base64 text (JSON), "nodes": [ids]
        or "site": true, "canary", "force", "who"}: start a rollout (gateway/ota/); the
        reply carries the rollout as started (its progress: /status, the audit log)."""
        assert self.ota is not None
        bundle = doc.get("bundle")
        if isinstance(bundle, str):
            try:
                bundle = base64.b64decode(bundle, validate=True)
            except ValueError:
                bundle = None
        if not isinstance(bundle, bytes):
            return {**base, "ok": False, "status": 400,
                    "error": "bundle: give the .rsb bytes (CBOR bytes, or base64 text in JSON)"}
        nodes, site, canary = doc.get("nodes"), doc.get("site") is True, doc.get("canary", 1)
        if site == (nodes is not None) or nodes is not None and (
                not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes)):
            return {**base, "ok": False, "status": 400,
                    "error": "give \"nodes\": [ids] or \"site\": true, not both"}
        if isinstance(canary, bool) or not isinstance(canary, int):
            return {**base, "ok": False, "status": 400, "error": "canary: must be an integer"}
        who = doc.get("who")
        try:
            rollout = self.ota.start(bundle, None if site else nodes, canary,
                                     doc.get("force") is True,
                                     who=str(who)[:100] if who else "mqtt", origin="mqtt")
        except OtaError as exc:
            return {**base, "ok": False, "status": exc.status, "error": str(exc)}
        return {**base, "ok": True, "status": 202, "rollout": rollout.doc()}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro, name=f"mqtt command {self.name}")
        self._command_tasks.add(task)
        task.add_done_callback(self._command_tasks.discard)

    def ota_ended(self, rollout: Any) -> None:
        """A rollout ended (gateway/ota/manager.py on_ended): one started by `ota.push` on
        this command topic gets its final outcome on the reply topic, in the request's
        encoding: {"id": the request's id, "name": "ota.push", "final": true, "ok": done,
        "state": done | halted | cancelled, "reason", "rollout": its document with each node's
        state}. One resumed after a restart (its request id forgotten) gets "id": null."""
        if self.command_topic is None:
            return
        cid, use_json = self._ota_started.pop(rollout.id, (None, False))
        if cid is None and rollout.origin != "mqtt":
            return
        doc = rollout.doc()
        final = {"id": cid, "name": "ota.push", "final": True, "ok": rollout.state == "done",
                 "state": rollout.state, "reason": rollout.reason, "rollout": doc}
        self._ota_unsent.append(json.dumps(final).encode() if use_json else cbor2.dumps(final))
        if len(self._ota_unsent) > RECENT_REPLIES:      # bounded while the broker is away
            del self._ota_unsent[0]
            log.warning(f"uplink {self.name}: an unsent final outcome of a rollout dropped"
                        f" (more than {RECENT_REPLIES} wait for the broker)",
                        extra=logs.fields(uplink=self.name, rollout=rollout.id))
        if self._conn is not None:
            self._spawn(self._publish_finals())

    async def _publish_finals(self) -> None:
        while self._ota_unsent and self._conn is not None:
            body = self._ota_unsent.pop(0)
            if not await self._publish_reply(self._conn, body):
                self._ota_unsent.insert(0, body)    # after the next connect
                return

    async def _publish_reply(self, client: aiomqtt.Client, body: bytes) -> bool:
        try:
            await client.publish(self.reply_topic, body, qos=1,
                                 timeout=self.config.timeout_s)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            # The connection went away meanwhile: the client's wait times out; it may send
            # the command again with the same id and gets this reply from the cache.
            log.warning(f"uplink {self.name}: cannot publish a command reply on"
                        f" {self.reply_topic}: {exc}",
                        extra=logs.fields(uplink=self.name, error=str(exc)))
            return False
        return True
