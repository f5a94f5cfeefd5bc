"""The demo's pure parts: the delivery check and the live view."""

from __future__ import annotations

import io
import subprocess
import sys

from rich.console import Console
from roadside.tools.sim.demo import Summary, compare
from roadside.tools.sim.status_view import progress_line, render


def test_compare_finds_missing_and_out_of_order():
    results = compare({"a": 4, "b": 3, "c": 2}, {"a": [1, 2, 3, 4], "b": [1, 3], "c": [2, 1]})
    by = {r.node: r for r in results}
    assert (by["a"].missing, by["a"].out_of_order, by["a"].delivered) == ([], 0, 4)
    assert by["b"].missing == [2]
    assert by["c"].missing == [] and by["c"].out_of_order == 1


def test_a_seq_left_in_a_stopped_nodes_journal_is_held_not_missing():
    (r,) = compare({"a": 4}, {"a": [1, 2]}, {"a": {4}})     # 4: unacked in its journal
    assert (r.missing, r.held, r.delivered) == ([3], 1, 2)  # 3: not there, not held: lost
    assert not Summary([r], 0, 0, 0).ok
    (r,) = compare({"a": 4}, {"a": [1, 2, 3]}, {"a": {3, 4}})  # 3 arrived, ACK did not
    assert (r.missing, r.held, r.delivered) == ([], 1, 3) and Summary([r], 0, 0, 0).ok
    assert "held by node" in Summary([r], 0, 0, 0).lines()[2]


def test_summary_ok_only_when_exactly_once_in_order():
    perfect = compare({"a": 2}, {"a": [1, 2]})
    assert Summary(perfect, 0, 3, 0).ok
    assert not Summary(perfect, 1, 0, 0).ok                       # a duplicate record
    assert not Summary(compare({"a": 2}, {"a": [1]}), 0, 0, 0).ok  # a missing one
    assert not Summary(compare({"a": 0}, {}), 0, 0, 0).ok          # produced nothing
    assert "FAILED" in Summary(compare({"a": 2}, {"a": [2]}), 0, 0, 0).lines()[-1]


def test_view_renders_whatever_the_status_has():
    status = {"nodes": [{"id": "wl-0001", "link": "up", "records": 7, "last_level": 12.25,
                         "alarm": "alert"}],
              "queue": {"depth": 3}, "uplinks": [{"name": "http", "state": "retrying",
                                                  "failures": 2}]}
    stats = {"batches": 2, "records": 5, "duplicate_batches": 0, "duplicate_records": 0,
             "nodes": {"wl-0001": {"records": 5}}}
    text = _text(render(1.0, ["wl-0001", "wl-0002"], {"wl-0001": "running"}, status, stats,
                        {}))
    row = next(line.split() for line in text.splitlines() if "wl-0001" in line)
    assert row == ["wl-0001", "running", "up", "7", "5", "12.2", "alert"]
    assert "queue depth: 3" in text and "http: retrying (2 failures)" in text
    assert "wl-0002" in text  # a node the gateway has not seen yet still has a row
    down = _text(render(1.0, ["wl-0001"], {}, None, None, {}))
    assert "gateway: not answering" in down and "receiver: not answering" in down
    assert "queue=3" in progress_line(2.0, status, stats)
    narrow = _text(render(1.0, ["wl-0001"], {}, status, stats, {}), width=40)
    assert max(len(line) for line in narrow.splitlines()) <= 40   # laid out for the width


def _text(view, width: int = 120) -> str:
    """The view as rich lays it out on a terminal `width` columns wide, without styles."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(view)
    return console.file.getvalue()


def test_demo_argument_errors_are_one_line():
    for args, word in ((["--nodes", "0"], "--nodes"), (["--uplink", "ftp://x"], "--uplink"),
                       (["--duration", "-1"], "--duration")):
        p = subprocess.run([sys.executable, "-m", "roadside.tools.cli", "demo", *args],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and word in p.stderr and p.stderr.count("\n") == 1, p.stderr
