"""Boot counter and safe mode, a whole simulated node (sim_main.py under MicroPython): a role
that crashes three times in a row -> the fourth boot starts only the link, session and config
(HELLO and info say safe mode, health records carry the flag, no role records), config.set
clears the count; a healthy (simulated) minute clears it too."""

from __future__ import annotations

import time

from roadside.tools.sim.cddl import protocol_schema
from test_session import Gateway


def _gateway(tmp_path, **cfg) -> Gateway:
    g = Gateway(tmp_path / "node", **cfg)
    g.other = []
    return g


def test_three_crashes_then_safe_mode_with_a_working_session(tmp_path):
    g = _gateway(tmp_path, health_interval_s=10)
    g.set_sim(crash_after_s=2, speed=20)
    try:
        for n in range(1, 4):
            g.start()
            assert g.proc.wait(timeout=10) == 3                  # crash -> reset (panic)
            assert g.read_json("bootguard.json") == {"unhealthy": n}
        assert "simulated crash" in g.log.read_text()
        g.buf = b""
        g.start()
        hello = g.expect(1)
        while hello[5] != 4:                                    # skip HELLOs of dead boots
            hello = g.expect(1)
        assert hello[11] is True and hello[6] == "panic" and hello[10] > 1000
        protocol_schema().validate(hello, "hello")              # keys 10, 11: in the CDDL
        g.send({0: 6, 1: 1795420800000})
        g.send({0: 3, 1: 0})
        recs: list = []
        deadline = time.monotonic() + 2                        # 40 simulated seconds
        while time.monotonic() < deadline:
            m = g.expect(2)
            recs += [r for r in m[2] if r[0] >= hello[7] and r not in recs]
            g.send({0: 3, 1: m[2][-1][0]})
        assert len(recs) >= 3 and {r[2] for r in recs} == {3}  # health only: no role
        health = recs[-1][4]
        assert health[7] is True and health[6] == "panic" and health[5] == 4
        g.send({0: 4, 1: 1, 2: "info"})
        info = g.expect(5)[3]
        assert info["safe_mode"] is True and info["reset_cause"] == "panic"
        time.sleep(0.5)                                         # still alive: role not run
        assert g.proc.poll() is None
        g.send({0: 4, 1: 2, 2: "config.set", 3: {"key": "datum_mm", "value": 2800}})
        assert g.expect(5)[2] is True
        assert g.read_json("bootguard.json") == {"unhealthy": 0}
        assert "safe mode: 3 boots died" in g.log.read_text()
    finally:
        g.kill()


def test_a_healthy_minute_clears_the_boot_counter(tmp_path):
    g = _gateway(tmp_path)
    g.set_sim(speed=60)
    g.write_json("bootguard.json", {"unhealthy": 2})
    try:
        g.start()
        hello = g.expect(1)
        assert 11 not in hello                                  # 2 < 3: not safe mode
        assert g.read_json("bootguard.json") == {"unhealthy": 3}
        deadline = time.monotonic() + 5
        while "healthy minute" not in g.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert g.read_json("bootguard.json") == {"unhealthy": 0}
    finally:
        g.kill()
