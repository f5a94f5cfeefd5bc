"""The node roles, once, as data (docs/PROTOCOL.md 2.1 and 5.1, docs/ROLES.md).

One row per role: its name (HELLO key 2, config `role`), its code in BLE advertisements, the
prefix of its node ids, the record kinds it sends with their body field names, and the
scenario the simulator runs by default. The gateway (protocol.py, links/ble.py) and the tools
(sim, flashing, boards, demo) all read this table; the firmware has its own short list
(firmware/roadside_node/roles/__init__.py) that tests/gateway/test_gateway_roles.py keeps in
step with this one. Adding a role: one row here, one role module and one hardware module on
the node, its scenario, its tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One record kind: its number, uplink name and body field names by body key."""

    number: int
    name: str
    body: dict[int, str]


@dataclass(frozen=True)
class Role:
    name: str
    ble_code: int                # byte 3 of the advertisement (PROTOCOL.md 5.1)
    prefix: str                  # node ids: <prefix>-0001 (sim), <prefix>-<mac> (flash)
    kinds: tuple[Kind, ...]
    scenario: str                # the simulator's default scenario (scenarios/<name>/)
    description: str = ""


HEALTH = Kind(3, "health", {1: "free_heap", 2: "uptime_s", 3: "journal_records",
                            4: "dropped_full", 5: "boot_count", 6: "reset_cause",
                            7: "safe_mode"})

ROLES: tuple[Role, ...] = (
    Role("water", 1, "wl", (
        Kind(1, "level", {1: "level_cm", 2: "rate_cm_per_min", 3: "distance_mm"}),
        Kind(2, "alarm", {1: "state", 2: "level_cm", 3: "previous"}),
    ), "flood", "water level (flood monitoring)"),
    Role("signal", 2, "sg", (
        Kind(10, "phase", {1: "phase", 2: "state", 3: "previous", 4: "previous_ms",
                           5: "at_ms"}),
        Kind(11, "fault", {1: "fault", 2: "phase", 3: "other_phase", 4: "measured_ms",
                           5: "limit_ms", 6: "at_ms", 7: "latency_ms"}),
        Kind(12, "counts", {1: "approach", 2: "vehicles", 3: "interval_s"}),
        Kind(13, "plan", {1: "plan", 2: "previous"}),
    ), "normal", "signal monitor (traffic signals)"),
    Role("toll", 3, "tb", (
        Kind(20, "transaction", {1: "tag", 2: "lane", 3: "entry_ms", 4: "exit_ms",
                                 5: "reads", 6: "rssi_dbm", 7: "antennas",
                                 8: "reader_seq"}),
        Kind(21, "reader", {1: "state", 2: "reads", 3: "bad_lines", 4: "duplicates",
                            5: "detail"}),
    ), "peak", "toll beacon (free-flow tolling)"),
    Role("rain", 4, "rg", (
        Kind(30, "rainfall", {1: "tips", 2: "mm", 3: "interval_s", 4: "mm_per_h",
                              5: "total_tips"}),
        Kind(31, "intensity", {1: "state", 2: "mm_per_h", 3: "previous"}),
    ), "storm", "rain gauge (tipping bucket, drainage network)"),
)

BY_NAME: dict[str, Role] = {r.name: r for r in ROLES}
BY_CODE: dict[int, Role] = {r.ble_code: r for r in ROLES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
#: every record kind by number: the roles' and `health`, which any role sends
KINDS: dict[int, Kind] = dict(sorted(
    {HEALTH.number: HEALTH, **{k.number: k for r in ROLES for k in r.kinds}}.items()))


def prefix(role: str) -> str:
    """The node id prefix of a role; an unknown role's first two letters."""
    r = BY_NAME.get(role)
    return r.prefix if r is not None else role[:2]
