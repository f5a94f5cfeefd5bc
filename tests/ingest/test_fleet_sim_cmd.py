"""`roadside fleet-sim` as a user runs it: a small fleet with both kinds of process fault and
a partition into a throwaway PostgreSQL, 0 lost and 0 duplicated; a database that already
holds records is refused in one line."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-m", "roadside.tools.cli", "fleet-sim"]


def test_fleet_sim_counts_every_record_once_and_refuses_a_used_database(pg):
    run = subprocess.run([*CLI, "--db", pg.url, "--gateways", "2", "--nodes", "3",
                          "--period", "0.1", "--duration", "6", "--faults", "--partition", "2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "OK: 0 lost, 0 duplicated" in run.stdout
    assert "ingest 0 killed -9" in run.stdout or "ingest 1 killed -9" in run.stdout
    assert "gateway 1 killed -9" in run.stdout and "gateway 0 drained" in run.stdout
    again = subprocess.run([*CLI, "--db", pg.url, "--duration", "1"], capture_output=True,
                           text=True, timeout=60)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1 and "give it an empty database" in lines[0]
