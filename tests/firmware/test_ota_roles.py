"""Over-the-air app updates of a SIGNAL and a TOLL node over serial at the board's heap (the
roles with the least heap to spare; tests/firmware/test_ota.py updates a water node): the whole
bundle staged, switched, booted on trial and confirmed. Before ota.py was split (ota_steps,
ota_trial, ota_fw: imported for their step and dropped after) the signal node
answered the OTA_OFFER with a MemoryError and the toll node failed ota.switch with one.

That MemoryError was the qstr pool: qstrs are never freed, a node's dynamic pools hold
20+40+80+160+320 = 620 entries (py/qstr.c doubles from 2 x 10, on the unix port and the esp32
port alike) and the next one is a single 640-entry block a fragmented heap cannot give. So the
node's own count (micropython.qstr_info(), printed by hw/sim.py at the reset ota.switch makes)
must leave QSTR_ROOM entries spare: a new name in what these roles intern eats into it
(docs/PERFORMANCE.md "OTA: heap and qstrs per role")."""

from __future__ import annotations

import os
import re

import pytest
from roadside.tools.ota import bundle as builder
from roadside.tools.sim.launcher import write_node
from support.ota_driver import OtaDriver
from test_ota import KEY, boot, make, reset_exit, unpack_boot
from test_session import Gateway

SCENARIO = {"signal": "signal/normal.json", "toll": "toll/peak.json"}
POOLS = 620       # 20+40+80+160+320: the dynamic qstr pools before the 640-entry one
QSTR_ROOM = 60    # entries left at the peak (ota.switch), for names added later


def qstrs_at_reset(log: str) -> tuple[int, int]:
    """(n_pool, n_qstr) of the first reset in the node's log (hw/sim.py prints qstr_info)."""
    m = re.search(r"qstr pool: n_pool=(\d+), n_qstr=(\d+)", log)
    assert m, "no qstr_info line in the node's log:\n" + log[-800:]
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def app_files() -> dict[str, bytes]:
    return builder.compile_package(builder.PACKAGE, "0.2.0", with_sim=True)


@pytest.mark.parametrize("role", ["signal", "toll"])
def test_role_updated_at_the_board_heap(tmp_path, app_files, role):
    g = Gateway(tmp_path / "node", role=role)
    g.set_sim(scenario=str(builder.launcher.SCENARIOS / SCENARIO[role]))
    write_node(g.dir, g.flash.get_json("config.json"), g.wiring(), g.flash, ota_key=KEY)
    g.other = []
    try:
        b = make(app_files, roles=(role,))
        boot(g)
        d = OtaDriver(g, b)
        st = d.transfer()
        assert st[2] == "staged" and st[3] == len(b.payload), (st, g.log.read_text()[-800:])
        r = d.switch()
        assert r[2] is True and r[3]["version"] == "0.2.0", (r, g.log.read_text()[-800:])
        assert reset_exit(g) == 3                              # the reboot into the trial
        pools, peak = qstrs_at_reset(g.log.read_text())
        assert pools <= 5 and POOLS - peak >= QSTR_ROOM, (
            f"{role}: {peak} qstrs at ota.switch ({pools} pools), {POOLS - peak} of {POOLS} "
            f"spare, want >= {QSTR_ROOM}")
        unpack_boot(g)                                         # the loader unpacks it
        assert boot(g)[3] == "0.2.0"
        d2 = OtaDriver(g, b)
        assert d2.state(timeout=10)[2] == "trial"
        done = d2.state(timeout=30)                            # records acked: healthy
        assert done[2] == "done" and done[5] == "0.2.0", done
        log = g.log.read_text()
        assert "MemoryError" not in log, log[-800:]
    finally:
        g.kill()
        os.close(g.master)
