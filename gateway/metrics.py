"""GET /metrics: Prometheus text exposition (format 0.0.4) from the daemon's live objects.

prometheus_client does the format (HELP/TYPE lines, label escaping, `_total` suffixes); a
custom collector reads the links, sessions, queue and uplinks when scraped, so nothing is
counted twice and the hot path (frames, records) carries no extra bookkeeping. Only the uplink
latency is observed as it happens, in a histogram, by wrapping each uplink's `send()`.

The registry is per gateway (never prometheus_client's global one), so several gateways in
one test process do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import storage_health

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LINK_ERRORS = ("crc", "cobs", "oversize", "malformed")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
NODE_STATES = ("up", "silent", "down")


class GatewayCollector(Collector):
    """Yields every gauge and counter from a `status.Status` (its links, sessions, queue,
    uplinks) at scrape time."""

    def __init__(self, status: Any) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        st = self.status
        yield from self._gateway(st)
        yield from self._links(st.links)
        yield from self._nodes(st.sessions)
        yield from self._identity(st)
        yield from self._queue(st.queue)
        yield from self._uplinks(st.uplinks)
        if getattr(st, "ota", None) is not None:
            yield from self._ota(st.ota)

    def _gateway(self, st: Any) -> Iterator[Any]:
        info = GaugeMetricFamily("roadside_gateway_info", "Gateway identity (always 1).",
                                 labels=["gateway", "site"])
        info.add_metric([st.gateway_id, st.site], 1)
        yield info
        # A timestamp, not an age (Prometheus: `time() - roadside_gateway_start_time_seconds`).
        yield GaugeMetricFamily("roadside_gateway_start_time_seconds",
                                "When the daemon started, Unix time in seconds.",
                                value=time.time() - (time.monotonic() - st.started))

    def _links(self, links: list[Any]) -> Iterator[Any]:
        frames = CounterMetricFamily("roadside_link_frames", "Valid frames received per link.",
                                     labels=["link"])
        nbytes = CounterMetricFamily("roadside_link_bytes",
                                     "Bytes received (in) and sent (out) per link.",
                                     labels=["link", "direction"])
        errors = CounterMetricFamily(
            "roadside_link_errors",
            "Frames dropped per link by reason: crc, cobs, oversize (framing) and malformed "
            "(good CRC, not a valid message).", labels=["link", "reason"])
        # No state label: a series per state would appear and vanish as the state changes
        # (the state is on /status).
        up = GaugeMetricFamily("roadside_link_up", "1 when the link's port is open, else 0.",
                               labels=["link"])
        for link in links:
            c = link.counters()
            frames.add_metric([link.name], c["frames"])
            nbytes.add_metric([link.name, "in"], c["bytes_in"])
            nbytes.add_metric([link.name, "out"], c["bytes_out"])
            for reason in LINK_ERRORS:
                errors.add_metric([link.name, reason], c.get(reason, 0))
            up.add_metric([link.name], 1 if link.is_open else 0)
        yield from (frames, nbytes, errors, up)
        yield from self._ble([link for link in links if link.type == "ble"])

    def _ble(self, links: list[Any]) -> Iterator[Any]:
        """BLE links (gateway/links/ble.py): signal strength, reconnects, refusals."""
        if not links:
            return
        rssi = GaugeMetricFamily("roadside_ble_rssi_dbm",
                                 "RSSI of the node's last advertisement (dBm).", labels=["link"])
        events = CounterMetricFamily(
            "roadside_ble_events",
            "BLE link events: connects, reconnects, rotations, auth_ok, auth_failures, and "
            "sealed frames refused (replayed, forged, sealed_malformed, unsealed).",
            labels=["link", "event"])
        for link in links:
            c = link.counters()
            if link.rssi is not None:
                rssi.add_metric([link.name], link.rssi)
            for key in ("connects", "reconnects", "rotations", "auth_ok", "auth_failures",
                        "replayed", "forged", "sealed_malformed", "unsealed"):
                events.add_metric([link.name, key], c.get(key, 0))
        yield from (rssi, events)

    def _nodes(self, sessions: Any) -> Iterator[Any]:
        now = sessions.mono()
        wall = time.time()
        seen = GaugeMetricFamily("roadside_node_last_seen_timestamp_seconds",
                                 "When the node last sent a message, Unix time in seconds"
                                 " (absent until it has sent one since the daemon started).",
                                 labels=["node"])
        state = GaugeMetricFamily("roadside_node_link_state",
                                  "1 for the node's current link state (up, silent, down).",
                                  labels=["node", "state"])
        records = CounterMetricFamily("roadside_node_records",
                                      "Records of the node stored in the queue.", labels=["node"])
        dups = CounterMetricFamily("roadside_node_duplicates",
                                   "Records of the node received again and dropped.",
                                   labels=["node"])
        gaps = CounterMetricFamily("roadside_node_gaps",
                                   "Records the node declared gone (the `from` rule).",
                                   labels=["node"])
        acked = GaugeMetricFamily("roadside_node_acked_seq",
                                  "The node's ACK: highest seq stored contiguously.",
                                  labels=["node"])
        level = GaugeMetricFamily("roadside_node_level_metres",
                                  "Last water level of the node, metres above the datum.",
                                  labels=["node"])
        for n in sorted(sessions.nodes.values(), key=lambda n: n.id):
            if n.last_seen is not None:
                seen.add_metric([n.id], wall - max(0.0, now - n.last_seen))
            current = sessions.link_state(n)
            for s in NODE_STATES:
                state.add_metric([n.id, s], 1 if s == current else 0)
            records.add_metric([n.id], n.records)
            dups.add_metric([n.id], n.duplicates)
            gaps.add_metric([n.id], n.gaps)
            acked.add_metric([n.id], n.acked)
            if n.last_level is not None:
                level.add_metric([n.id], n.last_level / 100)   # cm on the wire
        yield from (seen, state, records, dups, gaps, acked, level)

    def _identity(self, st: Any) -> Iterator[Any]:
        """HELLOs refused (session.py): identity (wrong node for the link), jump (seq beyond
        a journal), nodes_full (max node ids); REPLYs from the wrong link or node."""
        doc = st.identity()
        refused = CounterMetricFamily("roadside_gateway_hello_refused",
                                      "HELLOs refused by reason: identity, jump, nodes_full.",
                                      labels=["reason"])
        for reason, n in sorted(doc["refused"].items()):
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily("roadside_gateway_identity_alarms",
                                "Refused node ids waiting for an operator"
                                " (`roadside gateway accept`).", value=len(doc["alarms"]))
        yield CounterMetricFamily("roadside_gateway_foreign_replies",
                                  "REPLYs refused: not from the command's node and link.",
                                  value=doc["foreign_replies"])

    def _queue(self, q: Any) -> Iterator[Any]:
        counters: dict[str, int] = getattr(q, "counters", {})
        yield GaugeMetricFamily("roadside_queue_depth",
                                "Records held in the queue and not yet delivered.",
                                value=q.depth())
        yield GaugeMetricFamily("roadside_queue_bytes",
                                "Bytes of queued records and cut batches, counted against"
                                " [queue] max_bytes.", value=queue_bytes(q))
        if isinstance(getattr(q, "max_bytes", None), int):
            yield GaugeMetricFamily("roadside_queue_max_bytes", "The disk budget,"
                                    " [queue] max_bytes.", value=q.max_bytes)
        yield GaugeMetricFamily("roadside_queue_file_bytes",
                                "Bytes on disk of the queue (SQLite file, WAL, shared memory).",
                                value=file_bytes(q))
        yield GaugeMetricFamily("roadside_queue_batches_pending",
                                "Batches cut and not yet delivered to every uplink.",
                                value=q.batches_pending())
        yield GaugeMetricFamily("roadside_queue_backpressure",
                                "1 while the queue refuses records (nodes are told busy).",
                                value=1 if backpressure(q) else 0)
        yield CounterMetricFamily("roadside_queue_evictions",
                                  "Telemetry records evicted (oldest first) to stay in budget.",
                                  value=counters.get("evicted", counters.get("evictions", 0)))
        storage = getattr(q, "storage", None)
        if storage is not None:
            yield _storage_failing(storage)
            yield CounterMetricFamily("roadside_queue_storage_errors",
                                      "Commits of the queue that failed (storage errors).",
                                      value=storage.errors)
        for name, help_text in (
                ("recovered_files", "Damaged queue files moved aside at start (recovered)."),
                ("recovered_records", "Records re-queued from damaged queue files."),
                ("duplicates", "Records received again and dropped, all nodes."),
                ("gaps", "Records declared gone by nodes, all nodes."),
                ("delivered_records", "Records delivered to every uplink and deleted."),
                ("dead_letters", "Batches moved to the dead-letter table.")):
            yield CounterMetricFamily(f"roadside_queue_{name}", help_text,
                                      value=counters.get(name, 0))

    def _uplinks(self, uplinks: list[Any]) -> Iterator[Any]:
        fams = {
            "delivered": CounterMetricFamily("roadside_uplink_delivered_records",
                                             "Records delivered (2xx) per uplink.",
                                             labels=["uplink"]),
            "delivered_batches": CounterMetricFamily("roadside_uplink_delivered_batches",
                                                     "Batches delivered (2xx) per uplink.",
                                                     labels=["uplink"]),
            "failures": CounterMetricFamily("roadside_uplink_failures",
                                            "Failed delivery attempts per uplink.",
                                            labels=["uplink"]),
            "dead_letters": CounterMetricFamily("roadside_uplink_dead_letters",
                                                "Batches refused as malformed per uplink.",
                                                labels=["uplink"]),
        }
        up = GaugeMetricFamily("roadside_uplink_up",
                               "0 while the uplink cannot reach its backend, else 1.",
                               labels=["uplink"])
        for u in uplinks:
            s = u.status()
            name = str(s.get("name", getattr(u, "name", "?")))
            for key, fam in fams.items():
                fam.add_metric([name], float(s.get(key) or 0))
            state = str(s.get("state", "?"))
            up.add_metric([name], 0 if state == "down" else 1)
        yield from (*fams.values(), up)


    def _ota(self, ota: Any) -> Iterator[Any]:
        """Updates over the air (gateway/ota/): chunks sent, transfers by outcome, failures by
        reason, and each node's progress in the rollouts /status shows."""
        yield CounterMetricFamily("roadside_ota_chunks", "OTA chunks sent (resent ones too).",
                                  value=ota.chunks_sent)
        yield CounterMetricFamily("roadside_ota_chunk_bytes",
                                  "Bytes of OTA chunk frames sent.", value=ota.chunk_bytes)
        yield CounterMetricFamily("roadside_ota_busy",
                                  "OTA offers a node refused busy (an alarm, an unacked"
                                  " PRIORITY record, an update on trial): offered again"
                                  " after ota.retry_s, not a failure.", value=ota.busy)
        ended = CounterMetricFamily("roadside_ota_transfers",
                                    "OTA transfers ended, by outcome (done, failed, halted,"
                                    " cancelled, skipped).", labels=["outcome"])
        for outcome in ("done", "failed", "halted", "cancelled", "skipped"):
            ended.add_metric([outcome], ota.outcomes.get(outcome, 0))
        yield ended
        failures = CounterMetricFamily("roadside_ota_failures",
                                       "OTA transfers failed, by reason (refused:REASON,"
                                       " rolled_back:REASON, timeout, switch refused).",
                                       labels=["reason"])
        for reason, n in sorted(ota.refusals.items()):
            failures.add_metric([reason], n)
        yield failures
        progress = GaugeMetricFamily("roadside_ota_progress_ratio",
                                     "Payload share the node holds (its `have` / size) in the"
                                     " newest rollout that includes it.", labels=["node"])
        active = GaugeMetricFamily("roadside_ota_active",
                                   "1 while the node has a transfer under way, else 0.",
                                   labels=["node"])
        seen: set[str] = set()
        for r in sorted(ota.rollouts.values(), key=lambda r: -r.id):
            for t in r.transfers.values():
                if t.node in seen:
                    continue
                seen.add(t.node)
                progress.add_metric([t.node], t.have / t.size if t.size else 1.0)
                active.add_metric([t.node], 0 if t.ended else 1)
        yield from (progress, active)


def _storage_failing(storage: Any) -> GaugeMetricFamily:
    fam = GaugeMetricFamily("roadside_queue_storage_failing",
                            "1 while the queue cannot commit, by reason (disk_full, error).",
                            labels=["reason"])
    failing = storage.error is not None
    fam.add_metric(["disk_full"], 1 if failing and storage.disk_full else 0)
    fam.add_metric(["error"], 1 if failing and not storage.disk_full else 0)
    return fam


def queue_bytes(q: Any) -> int:
    """Bytes the queue counts against its budget (its file size when it does not count)."""
    fn = getattr(q, "bytes", None)
    if callable(fn):
        return int(fn())
    return file_bytes(q)


def file_bytes(q: Any) -> int:
    """The queue's size on disk: the SQLite file plus its WAL and shared-memory files."""
    return storage_health.file_bytes(q.path)


def backpressure(q: Any) -> bool:
    """Whether the queue is refusing records: the bounded queue sets `backpressure`, and a
    queue that cannot commit (a full disk) refuses every store too."""
    value = getattr(q, "backpressure", False)
    storage = getattr(q, "storage", None)
    return bool(value() if callable(value) else value) or \
        bool(storage is not None and storage.error is not None)


class Metrics:
    """The registry of one gateway: the live collector plus the uplink latency histogram."""

    def __init__(self, status: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(status))
        self.post_seconds = Histogram(
            "roadside_uplink_post_seconds",
            "Duration of one delivery attempt (a POST or publish) per uplink and outcome.",
            ["uplink", "outcome"], registry=self.registry, buckets=LATENCY_BUCKETS)

    def instrument(self, uplink: Any) -> None:
        """Time every delivery attempt of `uplink` (Uplink.send: an HTTP POST, an MQTT
        publish; outcome ok or error) in the histogram."""
        send: Callable[..., Awaitable[Any]] | None = getattr(uplink, "send", None)
        if send is None:
            return
        name = str(getattr(uplink, "name", "?"))
        hist = self.post_seconds

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            outcome = "error"
            try:
                result = await send(*args, **kwargs)
                outcome = "ok"
                return result
            finally:
                hist.labels(name, outcome).observe(time.perf_counter() - t0)

        uplink.send = timed

    def render(self) -> bytes:
        return generate_latest(self.registry)
