"""Uplinks: where the gateway delivers batches (HTTP and MQTT), each from its own cursor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def make_uplink(config: Any, queue: Any, all_uplinks: Sequence[str],
                on_delivered: Callable[[], None] | None = None, gateway_id: str = "gw",
                site: str = "site") -> Any:
    """The uplink object for one [[uplink]] table (HttpUplink or MqttUplink)."""
    if config.type == "mqtt":
        from .mqtt import MqttUplink  # imports paho only when an MQTT uplink is configured
        return MqttUplink(config, queue, all_uplinks, on_delivered=on_delivered,
                          gateway_id=gateway_id, site=site)
    from .http import HttpUplink
    return HttpUplink(config, queue, all_uplinks, on_delivered=on_delivered)
