"""Shared pytest set-up: makes tests/support importable as `support`; the reference receiver
fixture used by the gateway, tools and e2e tests."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from roadside.tools.sim import procs  # noqa: E402
from roadside.tools.sim.cddl import PROTOCOL_CDDL  # noqa: E402
from support import system  # noqa: E402


def pytest_runtest_setup(item: pytest.Item) -> None:
    # support.system.needs(...): skip when a system program is missing, fail under CI=true
    for mark in item.iter_markers("system_dependency"):
        system.require(*mark.args)


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator:
    """Factory: start(db=None, fail_rate=..., fail_seed=...) -> ReceiverProcess; stopped after."""
    started: list[procs.ReceiverProcess] = []

    def start(db: Path | None = None, **kwargs) -> procs.ReceiverProcess:
        n = len(started)
        r = procs.start_receiver(db or tmp_path / f"receiver{n}.sqlite",
                                 tmp_path / f"receiver{n}.log",
                                 cddl=PROTOCOL_CDDL, **kwargs)
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            procs.stop(r.proc)
