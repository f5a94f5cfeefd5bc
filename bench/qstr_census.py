"""Where a node's qstrs come from: every name it interns at HELLO and at ota.switch, per
module (docs/PERFORMANCE.md "OTA: heap and qstrs per role").

Qstrs are never freed, and a node's dynamic qstr pools hold 20+40+80+160+320 = 620 entries
before the next, one block of 640 that a fragmented heap cannot give (the MemoryError of a
signal node at OTA_OFFER): tests/firmware/test_ota_roles.py asserts the room left at
ota.switch; this says what to cut when it shrinks. A real simulated node (sim_main.py under
MicroPython at the board's heap, the test gateway of tests/firmware/test_session.py):

- `hello`: the node boots, its HELLO is answered, then the `reboot` command resets it;
- `switch`: an app bundle is sent (tests/support/ota_driver.py) and switched to.

At that reset hw/sim.py prints micropython.qstr_info(1) (NODE_DIR/qstr_verbose asks for it):
every dynamic qstr in the order it was interned. A module's file path is interned as it is
imported, then its .mpy's qstr table (every name and string literal of 10 characters or
less in it): the names up to the next path are counted for that module. Names interned while
the code runs (a dotted module name, a name from getattr or a dict of kwargs) count for the
module whose import came last, an approximation.

  PYTHONPATH=tests:tests/firmware .venv/bin/python bench/qstr_census.py [--role signal] [-v]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from roadside.tools.ota import bundle as builder
from roadside.tools.sim.launcher import write_node
from support.ota_driver import OtaDriver
from test_ota import KEY, boot, make, reset_exit
from test_session import Gateway

SCENARIO = {"water": "water/calm.json", "signal": "signal/normal.json",
            "toll": "toll/peak.json", "rain": "rain/storm.json"}
FIRST_POOL = 20  # py/qstr.c: 2 x MICROPY_ALLOC_QSTR_ENTRIES_INIT (10), then doubling
POOLS = 620  # 20+40+80+160+320


def dump(log: str) -> list[str]:
    """The qstrs of the verbose qstr_info in `log`, in the order they were interned (it lists
    the newest pool first)."""
    m = re.search(r"qstr pool: n_pool=(\d+), n_qstr=(\d+).*?\nQ\(", log)
    if not m:
        raise SystemExit("no qstr_info(1) in the node's log:\n" + log[-800:])
    n = int(m.group(2))  # "Q(name)" lines; a name may hold a newline itself ("\n")
    names = log[m.end():].split(")\nQ(", n - 1)
    names[-1] = names[-1].split(")\n", 1)[0]
    sizes = [FIRST_POOL << i for i in range(int(m.group(1)))]
    sizes[-1] = len(names) - sum(sizes[:-1])  # the newest pool: what it holds so far
    pools, at = [], 0
    for size in reversed(sizes):
        pools.append(names[at:at + size])
        at += size
    return [q for pool in reversed(pools) for q in pool]


def by_module(names: list[str]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = [("(before any module)", [])]
    for q in names:
        if q.startswith("/") and q.endswith((".mpy", ".py")):
            short = q.split("/build/mpy/")[-1].split("/firmware/")[-1]
            out.append((re.sub(r"^/ota/[ab]/", "", short), []))
        else:
            out[-1][1].append(q)
    return out


def run(role: str, tmp: Path, switch: bool) -> list[str]:
    g = Gateway(tmp / "node", role=role)
    g.set_sim(scenario=str(builder.launcher.SCENARIOS / SCENARIO[role]))
    write_node(g.dir, g.flash.get_json("config.json"), g.wiring(), g.flash, ota_key=KEY)
    try:
        files = builder.compile_package(builder.PACKAGE, "0.2.0", with_sim=True)
        b = make(files, roles=(role,))
        (g.dir / "qstr_verbose").touch()
        boot(g)
        d = OtaDriver(g, b)
        if switch:
            st = d.transfer()
            assert st[2] == "staged", st
            assert d.switch()[2] is True
        else:
            d.link.send({0: 4, 1: 1, 2: "reboot"})
        assert reset_exit(g) == 3, g.log.read_text()[-800:]
        return dump(g.log.read_text())
    finally:
        g.kill()
        os.close(g.master)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="signal", choices=sorted(SCENARIO))
    ap.add_argument("-v", action="store_true", help="list the names, not only their count")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        hello = run(a.role, Path(t) / "hello", switch=False)
        peak = run(a.role, Path(t) / "switch", switch=True)
    print(f"{a.role}: {len(hello)} qstrs at HELLO (after the reboot command), {len(peak)} at "
          f"ota.switch: {POOLS - len(peak)} of {POOLS} spare")
    seen = set(hello)
    for title, names in (("at HELLO", hello), ("added by ota.switch",
                                                [q for q in peak if q not in seen])):
        print(f"\n{title}: {len(names)}")
        for mod, qs in sorted(by_module(names), key=lambda mq: -len(mq[1])):
            if qs:
                print(f"{len(qs):4d}  {mod}" + (": " + " | ".join(qs) if a.v else ""))


if __name__ == "__main__":
    sys.exit(main())
