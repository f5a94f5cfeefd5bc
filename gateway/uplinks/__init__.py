"""Uplinks: where the gateway delivers batches (HTTP and MQTT), each from its own cursor.

base.py has the Uplink interface and everything they share; http.py and mqtt.py what differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..config import UplinkConfig
from ..queue import Queue
from .base import Uplink

if TYPE_CHECKING:
    from ..commands import Commander

__all__ = ["Uplink", "make_uplink"]


def make_uplink(config: UplinkConfig, queue: Queue, all_uplinks: Sequence[str],
                on_delivered: Callable[[], None] | None = None, gateway_id: str = "gw",
                site: str = "site", commander: Commander | None = None) -> Uplink:
    """The uplink for one [[uplink]] table (HttpUplink or MqttUplink). `commander` runs the
    remote commands of an uplink that takes them (MQTT with command_topic)."""
    if config.type == "mqtt":
        from .mqtt import MqttUplink  # imports paho only when an MQTT uplink is configured
        return MqttUplink(config, queue, all_uplinks, on_delivered=on_delivered,
                          gateway_id=gateway_id, site=site, commander=commander)
    from .http import HttpUplink
    return HttpUplink(config, queue, all_uplinks, on_delivered=on_delivered)
