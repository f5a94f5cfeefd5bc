"""Over-the-air app updates of a SIGNAL and a TOLL node over serial at the board's heap (the
roles with the least heap to spare; tests/firmware/test_ota.py updates a water node): the whole
bundle staged, switched, booted on trial and confirmed. Before ota.py was split (ota_steps,
ota_trial, ota_fw: imported for their step and dropped after) the signal node
answered the OTA_OFFER with a MemoryError and the toll node failed ota.switch with one."""

from __future__ import annotations

import os

import pytest
from roadside.tools.ota import bundle as builder
from roadside.tools.sim.launcher import write_node
from support.ota_driver import OtaDriver
from test_ota import KEY, boot, make, reset_exit, unpack_boot
from test_session import Gateway

SCENARIO = {"signal": "signal/normal.json", "toll": "toll/peak.json"}


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
