"""The broker settings GATEWAY.md asks for keep what mosquitto acknowledged across a SIGKILL
(all but the last message), where its defaults keep nothing: bench/bench_broker_persistence.py
with a small count, so the bench and the documented settings cannot rot."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

from support import system

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "bench_broker_persistence.py"
MOSQUITTO = Path("/usr/sbin/mosquitto")

pytestmark = system.needs(
    shutil.which("mosquitto") or MOSQUITTO.exists(),
    "mosquitto is not installed (apt-get install -y mosquitto)")


def test_documented_settings_keep_acknowledged_messages_across_sigkill(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_broker_persistence", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_broker_persistence"] = bench
    spec.loader.exec_module(bench)
    default = bench.run("default", 40, tmp_path)
    documented = bench.run("documented", 40, tmp_path)
    assert default["kept"] == 0, default
    assert documented["kept"] >= 39, documented
    # The settings measured are the ones GATEWAY.md shows.
    doc = (REPO / "docs" / "GATEWAY.md").read_text()
    block = re.search(r"roadside.conf`:\n\n```\n(.*?)```", doc, re.S).group(1)
    shown = {ln.strip() for ln in block.splitlines() if ln and not ln.startswith("#")}
    assert set(bench.SETTINGS["documented"].strip().splitlines()) <= shown, shown
