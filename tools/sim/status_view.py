"""Render the demo's live view from the gateway's /status and the receiver's /stats.

On a terminal the view is a rich table (`render`), shown by rich.live in `demo.py`: redrawn
in place and re-laid out for the terminal's width when it is resized. Off a terminal the
demo prints `progress_line` every few seconds instead, so logs and tests read plain lines.

The gateway owns its /status shape; this reads it tolerantly (a missing field shows as "-")
so the view never crashes while the pieces start or stop.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

ALARM_STYLES = {"alert": "yellow", "alarm": "bold red", "critical": "bold white on red"}


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def status_nodes(status: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The gateway's per-node entries as {node id: fields}, from a dict or a list."""
    nodes = (status or {}).get("nodes") or {}
    if isinstance(nodes, list):
        return {str(n.get("id") or n.get("node") or n.get("node_id")): n for n in nodes}
    return dict(nodes)


def _pick(d: dict[str, Any], *names: str) -> Any:
    for name in names:
        if d.get(name) is not None:
            return d[name]
    return None


def queue_depth(status: dict[str, Any] | None) -> Any:
    q = (status or {}).get("queue")
    if isinstance(q, dict):
        return _pick(q, "depth", "pending", "records", "size")
    return q


def uplink_states(status: dict[str, Any] | None) -> str:
    ups = (status or {}).get("uplinks") or []
    if isinstance(ups, dict):
        ups = [dict(v, name=k) if isinstance(v, dict) else {"name": k, "state": v}
               for k, v in ups.items()]
    parts = []
    for u in ups:
        if isinstance(u, dict):
            name = _pick(u, "name", "url", "type") or "uplink"
            state = _pick(u, "state", "status") or "-"
            extra = _pick(u, "failures", "retries", "errors")
            parts.append(f"{name}: {state}" + (f" ({extra} failures)" if extra else ""))
    return "; ".join(parts) or "-"


def render(elapsed: float, node_ids: list[str], node_states: dict[str, str],
           status: dict[str, Any] | None, stats: dict[str, Any] | None,
           readings: dict[str, dict[str, Any]]) -> RenderableType:
    """The whole view: a title, a row per node, the gateway's and the receiver's totals."""
    gw_nodes = status_nodes(status)
    rx_nodes = (stats or {}).get("nodes") or {}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("process")
    table.add_column("link")
    for name in ("at gateway", "delivered", "level cm"):
        table.add_column(name, justify="right")
    table.add_column("alarm")
    for nid in node_ids:
        g = gw_nodes.get(nid, {})
        r = readings.get(nid, {})
        link = _pick(g, "link", "link_state", "state", "session") or "-"
        at_gw = _pick(g, "records", "stored", "acked", "ack")
        level = _pick(g, "last_level", "level_cm")
        level = level if level is not None else r.get("level_cm")
        alarm = str(_pick(g, "alarm", "alarm_state") or r.get("alarm") or "-")
        table.add_row(Text(nid), Text(node_states.get(nid, "-")), Text(str(link)),
                      _num(at_gw), _num(rx_nodes.get(nid, {}).get("records")), _num(level),
                      Text(alarm, style=ALARM_STYLES.get(alarm, "")))
    st = stats or {}
    footer = Text.assemble(
        ("gateway: ", "bold"), "up" if status is not None else ("not answering", "red"),
        f"   queue depth: {_num(queue_depth(status))}   uplinks: {uplink_states(status)}\n",
        ("receiver: ", "bold"), "up" if stats is not None else ("not answering", "red"),
        f"   batches {_num(st.get('batches'))}   records {_num(st.get('records'))}   "
        f"duplicate batches {_num(st.get('duplicate_batches'))}   "
        f"duplicate records {_num(st.get('duplicate_records'))}")
    heading = Text.assemble(("roadside demo", "bold"), f"  {elapsed:6.1f} s   ",
                            ("(Ctrl-C stops everything)", "dim"))
    return Group(heading, table, footer)


def progress_line(elapsed: float, status: dict[str, Any] | None,
                  stats: dict[str, Any] | None) -> str:
    """One plain line for a non-TTY stdout."""
    return (
        f"[{elapsed:6.1f}s] gateway {'up' if status is not None else 'down'}"
        f" queue={_num(queue_depth(status))} receiver records={_num((stats or {}).get('records'))}"
        f" batches={_num((stats or {}).get('batches'))}"
    )
