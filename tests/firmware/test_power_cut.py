"""Power cuts at every write (issue 9, docs/RELIABILITY.md): the sweep in
firmware/vboard/power_cut.py cuts a node's LittleFS flash at every block program/erase of a
journal append, the state saves on send and on ACK, a compaction, a boot, a config save, a
secret provisioning and a toll transaction, remounts, boots and checks what the gateway (and
the toll reader) was promised. Here in a
bounded form (every write index, three ways for the cut write to land); bench/bench_power_cut.py
runs it in full. The tests named test_sweep_sees_* break the firmware on purpose to show the
sweep sees it."""

from __future__ import annotations

import json

from support.micropython import run

# The sweep keeps flash images and their copies in RAM: the harness needs more heap than a
# board, the firmware under test is the same code.
HEAP = "8m"
OPS = {"journal append", "state save on send", "state save on ack", "compaction on ack",
       "boot", "config save", "secret provisioning", "toll transaction"}


def sweep(prelude: str = "", **kwargs: object) -> tuple[dict, dict, list[str]]:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    out = run(prelude + f"from vboard import power_cut\npower_cut.main({args})\n",
              heapsize=HEAP, timeout=240).stdout.decode()
    ops, total, violations = {}, {}, []
    for line in out.splitlines():
        if line.startswith("VIOLATION"):
            violations.append(line)
        elif line.startswith("{"):
            d = json.loads(line)
            if "op" in d:
                ops[d["op"]] = d
            else:
                total = d
    return ops, total, violations


def test_every_write_cut_leaves_a_node_that_keeps_its_promises():
    keeps = (0, 7, 2048)  # nothing, a torn program, a whole program (half an erase) lands
    ops, total, violations = sweep(full=False, keeps=keeps)
    assert violations == [], "\n".join(violations[:20])
    assert OPS <= set(ops), sorted(ops)
    for name in OPS:
        assert ops[name]["writes"] > 0, name
        assert ops[name]["cuts"] == ops[name]["writes"] * len(keeps), ops[name]
    assert total["violations"] == 0
    assert total["total_cuts"] >= 1000, total


def test_sweep_sees_a_config_save_that_is_not_atomic():
    # config.json written in place: on LittleFS the file is created before its bytes land
    broken = (
        "import roadside_node.config as C\n"
        "def in_place(path, text):\n"
        "    with open(path, 'w') as f:\n"
        "        f.write(text)\n"
        "C.write_atomic = in_place\n"
    )
    ops, total, violations = sweep(broken, full=False, keeps=(0,), only="config")
    assert total["violations"] > 0
    assert any("config broken" in v for v in violations), violations
    assert set(ops) == {"config save"}


def test_sweep_sees_an_ack_that_is_not_saved():
    # an ACK kept only in RAM: after a later cut the acknowledged records come back
    broken = (
        "import roadside_node.journal as J\n"
        "_ack = J.Journal.ack\n"
        "def ack(self, upto):\n"
        "    self._save = lambda: None\n"
        "    try:\n"
        "        return _ack(self, upto)\n"
        "    finally:\n"
        "        del self._save\n"
        "J.Journal.ack = ack\n"
    )
    ops, total, violations = sweep(broken, full=False, keeps=(0,), only="appends, sends")
    assert total["violations"] > 0
    assert any("acknowledged records come back" in v for v in violations), violations[:5]


def test_a_cut_in_the_boot_after_a_cut_is_survived_too():
    # the boot after a cut writes too (state, boot guard, compaction of acked records): cut
    # it at every write, after every 10th cut of sends, ACKs and a compaction of 4 KiB
    ops, total, violations = sweep(full=False, keeps=(0,), only="compaction", recovery=10)
    assert violations == [], "\n".join(violations[:20])
    assert ops["boot after a cut"]["cuts"] >= 200, ops


def test_sweep_sees_a_toll_role_that_forgets_its_acknowledgements():
    # a toll beacon that does not load its acknowledgement log at boot: a cut after the
    # transaction is journaled, before the reader heard the ack, charges the resent reads twice
    broken = (
        "import roadside_node.roles.toll as T\n"
        "T.TollRole._load = lambda self: None\n"
    )
    ops, total, violations = sweep(broken, full=False, keeps=(0, 2048), only="toll")
    assert total["violations"] > 0
    assert any("charged 2 times" in v for v in violations), violations[:5]
