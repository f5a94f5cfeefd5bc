"""Child processes for the launcher, the demo and the tests: own process group, log file,
bounded start-up, and a stop that always ends with nothing left behind."""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LaunchError

_LIVE: set[subprocess.Popen] = set()


def spawn(cmd: list[str], log: Path, *, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in its own process group with stdout+stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, env=env, start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(f"cannot start {cmd[0]}: {exc.strerror}") from exc
    _LIVE.add(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> int | None:
    """SIGTERM the process group, then SIGKILL after `timeout`; returns the exit status."""
    try:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        # Grandchildren may outlive the leader; the group is ours, so clear it.
        _signal_group(proc, signal.SIGKILL)
    finally:
        _LIVE.discard(proc)
    return proc.returncode


def kill(proc: subprocess.Popen) -> None:
    """kill -9 the process group at once (a power cut), and reap it."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait(5)
    _LIVE.discard(proc)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def stop_all() -> None:
    """Stop every child still running (atexit, and the demo's finally)."""
    for proc in list(_LIVE):
        stop(proc, timeout=2.0)


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> re.Match:
    """Poll `log` until a line matches `pattern`; LaunchError if the process dies or times out."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            m = rx.search(line)
            if m:
                return m
        if proc.poll() is not None:
            tail = " | ".join(text.strip().splitlines()[-3:])
            cmd = proc.args if isinstance(proc.args, list) else [proc.args]
            raise LaunchError(f"{Path(str(cmd[0])).name} exited {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise LaunchError(f"no {pattern!r} in {log} after {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class ReceiverProcess:
    proc: subprocess.Popen
    url: str          # base URL, e.g. http://127.0.0.1:43121
    db: Path
    log: Path

    @property
    def batches_url(self) -> str:
        return self.url + "/batches"


def start_gateway(config: Path, log: Path, timeout: float = 20) -> tuple[subprocess.Popen, str]:
    """Run the gateway daemon on `config`; return once it serves its status (process, URL)."""
    proc = spawn([sys.executable, "-m", "roadside.gateway.daemon", "--config", str(config)], log)
    try:
        m = wait_for_line(log, r"status on (http://\S+)", proc, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc, m.group(1)


def start_receiver(db: Path, log: Path, *, fail_rate: float = 0.0, fail_seed: int | None = None,
                   host: str = "127.0.0.1", cddl: Path | None = None) -> ReceiverProcess:
    """Run `roadside receiver` on a free port (port 0) and return once it listens."""
    cmd = [sys.executable, "-m", "roadside.tools.cli", "receiver", "--listen", f"{host}:0",
           "--db", str(db), "--fail-rate", str(fail_rate)]
    if fail_seed is not None:
        cmd += ["--fail-seed", str(fail_seed)]
    if cddl is not None:
        cmd += ["--cddl", str(cddl)]
    proc = spawn(cmd, log)
    try:
        m = wait_for_line(log, r"listening on (http://\S+)", proc, timeout=20)
    except BaseException:
        stop(proc)
        raise
    return ReceiverProcess(proc, m.group(1), db, log)


@dataclass
class IngestProcess:
    proc: subprocess.Popen
    url: str          # base URL, e.g. http://127.0.0.1:43121
    log: Path

    @property
    def batches_url(self) -> str:
        return self.url + "/batches"


def start_ingest(db_url: str, log: Path, *, listen: str = "127.0.0.1:0",
                 extra: list[str] | None = None, timeout: float = 30) -> IngestProcess:
    """Run `roadside ingest` (port 0: a free one) and return once it listens."""
    cmd = [sys.executable, "-m", "roadside.tools.cli", "ingest", "--db", db_url,
           "--listen", listen, *(extra or [])]
    proc = spawn(cmd, log)
    try:
        m = wait_for_line(log, r"ingest listening on (http://\S+)", proc, timeout)
    except BaseException:
        stop(proc)
        raise
    return IngestProcess(proc, m.group(1), log)
