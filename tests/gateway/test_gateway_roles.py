"""The one table of roles (gateway/roles.py) and everything that must agree with it: the
gateway's kind names, the BLE advertisement codes, the tools' role lists, the firmware's own
list and record kind numbers, the scenarios, the board files and the protocol document."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cbor2
import pytest
from roadside.gateway import protocol as p
from roadside.gateway import roles
from roadside.gateway.errors import ProtocolError
from roadside.gateway.links import ble
from roadside.tools.install import boards, flashing
from roadside.tools.sim import launcher as sim

REPO = Path(__file__).resolve().parents[2]
FW = REPO / "firmware" / "roadside_node"


def _fw_constants(path: Path) -> dict[str, object]:
    """Top-level NAME = const(N) / NAME = (...) of a firmware module, without running it."""
    out: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            v = node.value
            if isinstance(v, ast.Call) and getattr(v.func, "id", "") == "const":
                v = v.args[0]
            try:
                out[node.targets[0].id] = ast.literal_eval(v)
            except ValueError:
                pass
    return out


def test_role_numbers_and_names_are_unique():
    assert len({r.name for r in roles.ROLES}) == len(roles.ROLES)
    assert len({r.ble_code for r in roles.ROLES}) == len(roles.ROLES)
    assert len({r.prefix for r in roles.ROLES}) == len(roles.ROLES)
    numbers = [k.number for r in roles.ROLES for k in r.kinds] + [roles.HEALTH.number]
    assert len(set(numbers)) == len(numbers)
    names = [k.name for r in roles.ROLES for k in r.kinds] + [roles.HEALTH.name]
    assert len(set(names)) == len(names)


def test_gateway_and_tools_read_the_table():
    assert p.ROLES == roles.NAMES
    assert {k: p.kind_name(k) for k in roles.KINDS} == {k: v.name for k, v in roles.KINDS.items()}
    assert p.body_to_data(30, {1: 3, 2: 0.6, 5: 9}) == {"tips": 3, "mm": 0.6, "total_tips": 9}
    assert ble.ROLES == {r.ble_code: r.name for r in roles.ROLES}
    assert sim.ROLES == roles.NAMES and set(boards.ROLES) == set(roles.NAMES)
    assert sim.node_id("rain", 1) == "rg-0001"
    assert flashing.node_id_for(boards.load("roadside-rain-gauge-r1"),
                                bytes.fromhex("246f28e29526")) == "rg-e29526"


def test_firmware_agrees_with_the_host_table():
    fw_roles = _fw_constants(FW / "roles" / "__init__.py")["ROLES"]
    assert fw_roles == roles.NAMES                     # advertisement code = index + 1
    assert [r.ble_code for r in roles.ROLES] == list(range(1, len(roles.ROLES) + 1))
    # record kinds are private consts where the node makes them: health in app.py, each
    # role's in roles/<role>.py (docs/PERFORMANCE.md "OTA: heap and qstrs per role")
    health = {v for k, v in _fw_constants(FW / "app.py").items() if k.startswith("_K_")}
    assert health == {roles.HEALTH.number}
    every = set(health)
    for r in roles.ROLES:
        made = {v for k, v in _fw_constants(FW / "roles" / f"{r.name}.py").items()
                if k.startswith("_K_")}
        assert made == {k.number for k in r.kinds}, r.name
        every |= made
    assert every == set(roles.KINDS)
    for r in roles.ROLES:                              # a role module and its hardware
        assert (FW / "roles" / f"{r.name}.py").is_file()
        assert (FW / "hw" / f"esp32_{r.name}.py").is_file()
        assert (FW / "hw" / f"sim_{r.name}.py").is_file()
        assert (REPO / "scenarios" / r.name / f"{r.scenario}.json").is_file()
        assert any(boards.load(b).role == r.name for b in boards.shipped_boards())


def test_protocol_document_lists_every_kind_and_role_code():
    doc = (REPO / "docs" / "PROTOCOL.md").read_text()
    for k in roles.KINDS.values():
        assert re.search(rf"^\| {k.number} \| `{k.name}`", doc, re.M), k.name
    codes = ", ".join(f"{r.ble_code} {r.name}" for r in roles.ROLES)
    assert f"role: {codes}" in doc


def test_every_kind_is_validated_like_the_others():
    """The hostile-input checks are per record, not per kind: a rain gauge's records are
    accepted and refused by the same rules as the water level's."""
    for kind in roles.KINDS:
        ok = cbor2.dumps({0: 2, 1: 5, 2: [[5, 1795420860, kind, 0, {1: 6, 2: 1.2}]]})
        rec = p.decode_message(ok).records[0]
        assert rec.kind == kind and set(p.body_to_data(kind, rec.body)) <= \
            set(roles.KINDS[kind].body.values())
        for bad in ([1 << 63, 1795420860, kind, 0, {1: 6}],      # seq beyond int64
                    [5, 1795420860, kind, 0, {-1: 6}],           # body key not a uint
                    [5, 1795420860, kind, 0, {1: [6]}]):         # body value not a scalar
            with pytest.raises(ProtocolError):
                p.decode_message(cbor2.dumps({0: 2, 1: 5, 2: [bad]}))
