"""Battery mode, a whole simulated node over a pty: it samples, says HELLO only when it has
records, sends its journal, waits (bounded) for the ACK and deep-sleeps; each sleep ends the
MicroPython process (EXIT_RESET, reset cause `deepsleep`) and the restart restores its RTC
memory from NODE_DIR/rtc.bin (hardware, outside the flash image). Across many wakes the alarm
state and the filter survive, no seq is reused, and everything is delivered."""

from __future__ import annotations

import time
from itertools import pairwise

from test_session import Gateway


def test_battery_node_across_sleep_and_wake_cycles_keeps_state_and_seq(tmp_path):
    g = Gateway(tmp_path / "node", battery=True, sample_interval_s=5, fast_interval_s=10,
                report_interval_s=60, calm_interval_s=300, health_interval_s=600,
                awake_max_ms=1500)
    g.set_sim(speed=50, seed=5)
    g.other = []
    stored: dict[int, list] = {}
    hellos: list[dict] = []
    starts = 1

    def contiguous() -> int:
        n = 0
        while n + 1 in stored:
            n += 1
        return n

    try:
        g.start()
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            if g.proc.poll() is not None:
                assert g.proc.returncode == 3, g.log.read_text()[-2000:]
                if any(r[2] == 2 and r[4][1] == "alarm" for r in stored.values()) and \
                        starts >= 8:
                    break
                g.start()
                starts += 1
                continue
            try:
                m = g.recv(timeout=0.1)
            except AssertionError:
                continue
            if m[0] == 1:
                hellos.append(m)
                g.send({0: 6, 1: 1795420800000 + int(time.monotonic() * 1000)})
                g.send({0: 3, 1: contiguous()})
            elif m[0] == 2:
                for r in m[2]:
                    if r[0] in stored:
                        assert stored[r[0]] == r               # a resend, never a new record
                    stored[r[0]] = r
                g.send({0: 3, 1: contiguous()})
    finally:
        g.kill()
        log = g.log.read_text()
    assert starts >= 8, log[-3000:]
    assert sorted(stored) == list(range(1, len(stored) + 1))    # nothing lost, seq not reused
    assert g.read_json("state.json")["next_seq"] == len(stored) + 1
    assert all(h[6] == "deepsleep" for h in hellos[1:]) and hellos[0][6] == "power_on"
    assert len(hellos) < starts                                 # quiet wakes send nothing
    assert log.count("deep sleep") >= starts - 1
    alarms = [r[4] for r in sorted(stored.values()) if r[2] == 2]
    # one chain normal -> alert -> alarm: a wake that forgot its state would start over
    assert [a[1] for a in alarms[:2]] == ["alert", "alarm"]
    assert all(b[3] == a[1] for a, b in pairwise(alarms))
    assert alarms[0][3] == "normal"
    levels = [r for r in sorted(stored.values()) if r[2] == 1]
    assert levels and all(r[3] & 1 == 0 for r in levels[1:])    # clock carried over sleep
