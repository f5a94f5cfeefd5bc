"""`roadside sim board` / `roadside sim rom` as a user starts them, and the port-busy rule
that lets the install tools use a board whose pty another process serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from roadside.tools import cli
from roadside.tools.commands import sim as sim_command
from roadside.tools.errors import ToolError
from roadside.tools.install import flashing
from roadside.tools.sim import procs

ROADSIDE = str(Path(sys.executable).parent / "roadside")

# a device behind a pty: holds its master (and its slave, as the virtual board does)
DEVICE = textwrap.dedent("""
    import os, sys, time
    master, slave = os.openpty()
    print(os.ttyname(slave), flush=True)
    time.sleep(60)
""")
# a rival: a program that has the port open (a serial monitor, a shell)
RIVAL = textwrap.dedent("""
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
    print("open", flush=True)
    time.sleep(60)
""")


def _python(code: str, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()  # blocks until the child is ready


def test_the_process_behind_a_pty_is_not_busy_a_rival_still_is():
    device, port = _python(DEVICE)
    rival = None
    try:
        assert port.startswith("/dev/pts/")
        flashing.check_port(port)  # only the device holds it: free for a tool
        rival, said = _python(RIVAL, port)
        assert said == "open"
        with pytest.raises(ToolError, match=rf"port {port} is busy: held open by pid "
                                            rf"{rival.pid} \(python"):
            flashing.check_port(port)
        assert [pid for pid, _ in flashing.port_holders(port)] == [rival.pid]
    finally:
        for p in (rival, device):
            if p is not None:
                p.kill()
                p.wait(5)


def test_plain_sim_keeps_its_options_and_the_counterparts_parse():
    args = cli.build_parser().parse_args(["sim", "--role", "toll", "--count", "2"])
    assert args.handler is sim_command.handle and args.counterpart is None and args.count == 2
    args = cli.build_parser().parse_args(["sim", "board", "--deploy", "water"])
    assert args.handler is sim_command.handle_board and args.board == "roadside-water-level-r1"
    args = cli.build_parser().parse_args(["sim", "rom", "--chip", "esp32s3"])
    assert args.handler is sim_command.handle_rom and args.mac == sim_command.DEFAULT_MAC


def test_sim_board_with_the_firmware_deployed_serves_config_until_ctrl_c(tmp_path: Path):
    log = tmp_path / "board.log"
    proc = procs.spawn([ROADSIDE, "sim", "board", "--dir", str(tmp_path / "b"), "--deploy",
                        "water", "--set", "node_id=wl-0042", "--json"], log)
    try:
        m = procs.wait_for_line(log, r"^(\{.*\})$", proc, timeout=60)
        ports = json.loads(m.group(1))
        assert ports["hello"]["node"] == "wl-0042" and ports["hello"]["role"] == "water"
        got = subprocess.run([ROADSIDE, "config", "get", ports["data_link"], "node_id"],
                             capture_output=True, text=True, timeout=30)
        assert got.returncode == 0 and "wl-0042" in got.stdout, got.stderr
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in its terminal
        assert proc.wait(15) == 0
        assert log.read_text().rstrip().endswith("stopped")
    finally:
        procs.stop(proc)
