"""The fleet on one machine, small (issue 15 item 2): 3 gateway daemons x 5 light nodes, two
`roadside ingest` processes, one throwaway PostgreSQL; one fault of each kind (an ingest
process killed -9, a gateway killed -9, PostgreSQL restarted, a gateway partitioned from the
backend and its backlog drained). At the end every record a node made is exactly one row.
bench/bench_fleet.py runs the same at 20 x 50 and prints the figures."""

from __future__ import annotations

import asyncio

import pytest
from roadside.tools.sim import procs
from roadside.tools.sim.fleet import Fleet, FleetOptions, fleet_rows
from support.postgres import PgCluster, require_postgres

pytestmark = pytest.mark.slow


def test_fleet_with_one_fault_of_each_kind_loses_and_duplicates_nothing(tmp_path):
    require_postgres()

    async def main(pg: PgCluster) -> None:
        fleet = Fleet(FleetOptions(db_url=pg.url, run_dir=tmp_path / "run", gateways=3,
                                   nodes=5, ingests=2, period=0.1, alarm_every=50,
                                   max_records=50, max_age_s=0.3, uplink_timeout_s=2.0))
        try:
            await fleet.start(partitionable=0)
            rows = lambda: pg.query("SELECT count(*) FROM records")[0][0]  # noqa: E731
            await fleet.wait(lambda: rows() >= 100, 30, "the first rows")
            await fleet.kill_ingest(down_s=1.0)
            await fleet.kill_gateway(down_s=1.0, spare=0)
            await asyncio.to_thread(pg.restart)
            fleet.log("PostgreSQL restarted")
            held, took = await fleet.partition(0, seconds=3.0, drain_timeout=30)
            assert held > 0
            await fleet.drain(timeout=40)
            got, stored = await asyncio.to_thread(fleet_rows, pg.url)
            c = fleet.count(got, stored)
            fleet.log(f"made {c.made}, rows {c.rows}, lost {c.lost}, extra {c.extra},"
                      f" p99 node->row {c.quantile(0.99):.2f} s")
            assert (c.lost, c.extra) == (0, 0)
            assert c.rows == c.made == c.stored_by_batches
            stats = await fleet.ingest_stats()
            assert all(s is not None for s in stats)
        finally:
            await fleet.stop()

    with PgCluster() as pg:
        try:
            asyncio.run(asyncio.wait_for(main(pg), 110))
        finally:
            procs.stop_all()
