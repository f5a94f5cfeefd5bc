"""Write a gateway.toml (keys of docs/ARCHITECTURE.md / the gateway's config loader)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def _q(text: str) -> str:
    """A TOML basic string (JSON string escaping is valid TOML)."""
    return json.dumps(text)


@dataclass
class GatewaySettings:
    gateway_id: str = "gw-demo"
    site: str = "demo"
    max_records: int = 200
    max_bytes: int = 64 * 1024
    max_age_s: float = 1.0
    baudrate: int = 115200
    # [ota] retry_s: how soon a node that refused an update busy (in alarm) is offered it
    # again; None: the gateway's default (30 s). Simulated time runs faster: the demo's is 2.
    ota_retry_s: float | None = None


def link_sections(ports: list[str], baudrate: int = 115200) -> str:
    """[[link]] tables for serial ports (what `roadside sim` prints)."""
    return "".join(
        f'[[link]]\ntype = "serial"\nport = {_q(p)}\nbaudrate = {baudrate}\n\n' for p in ports
    )


def render(ports: list[str], data_dir: Path, uplink_url: str | None, status_listen: str,
           settings: GatewaySettings | None = None) -> str:
    s = settings or GatewaySettings()
    text = (
        "# Written by roadside (demo / tests): a gateway for simulated nodes on virtual cables.\n"
        f"[gateway]\nid = {_q(s.gateway_id)}\nsite = {_q(s.site)}\n"
        f"data_dir = {_q(str(data_dir))}\n\n"
        + link_sections(ports, s.baudrate)
        + f"[batch]\nmax_records = {s.max_records}\nmax_bytes = {s.max_bytes}\n"
        f"max_age_s = {s.max_age_s}\n\n"
    )
    if uplink_url:
        text += f'[[uplink]]\ntype = "http"\nurl = {_q(uplink_url)}\n\n'
    text += f"[status]\nlisten = {_q(status_listen)}\n"
    if s.ota_retry_s is not None:
        text += f"\n[ota]\nretry_s = {s.ota_retry_s}\n"
    return text


def write(path: Path, ports: list[str], data_dir: Path, uplink_url: str | None,
          status_listen: str, settings: GatewaySettings | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(ports, data_dir, uplink_url, status_listen, settings))
    return path
