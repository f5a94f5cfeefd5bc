"""The node fuzz driver in its bounded form: a few thousand mutated frames into the real
firmware under MicroPython at the board's heap, on the UART and on BLE before and after
authentication (bench/bench_fuzz_node.py runs the long form). A reset is any exception that
leaves the main loop's step (or the BLE irq handler): there must be none."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_fuzz_node.py"
FRAMES = 3000  # per link: 2-5 s each here; the bench runs 100,000 in all


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_fuzz_node", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_fuzz_node"] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("bench_fuzz_node", None)


@pytest.mark.parametrize("mode", ["uart", "ble_pre", "ble_auth"])
def test_mutated_frames_never_reset_the_node(bench, mode, tmp_path):
    r = bench.run(mode, FRAMES, seed=10, workdir=tmp_path, timeout=120)
    assert r["resets"] == 0, "\n".join(r["traces"])
    # skipped: frames the driver itself had no heap to build (rare)
    assert r["frames"] == FRAMES and r["skipped"] < FRAMES // 100
    assert r["answers"] > FRAMES // 2  # the frames reached the node and it answered
    if mode == "ble_pre":  # nobody without the secret ever got a session
        assert r["ble"]["auth_ok"] == 0 and r["ble"]["unauthenticated"] > 0
    if mode == "ble_auth":  # sealed frames reached the session (commands, replies)
        assert r["ble"]["auth_ok"] >= 1
