"""roadside deploy, and the virtual MicroPython board it is tested against (mpremote)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from roadside.tools import cli
from roadside.tools.errors import ToolError
from roadside.tools.install import deploy
from support.install_support import virtual_board, wait_repl

BOARD = "roadside-water-level-r1"
MPREMOTE = [sys.executable, "-m", "mpremote"]


def mpremote(port: str, *args: str) -> str:
    done = subprocess.run([*MPREMOTE, "connect", port, *args], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_virtual_board_speaks_mpremote(tmp_path: Path):
    src = tmp_path / "hello.py"
    src.write_text("print('hello from', 'the board')\n" * 20)
    with virtual_board(tmp_path / "board") as board:
        mpremote(board.port, "fs", "cp", str(src), ":hello.py")
        assert "hello.py" in mpremote(board.port, "fs", "ls", ":")
        assert "2822" in mpremote(board.port, "exec", "import sys; print(sys.implementation._mpy)")
        assert "hello from the board" in mpremote(board.port, "run", str(src))
        out = mpremote(board.port, "fs", "sha256sum", ":hello.py")
        import hashlib
        assert hashlib.sha256(src.read_bytes()).hexdigest() in out
        # a soft reset restarts the interpreter and says so; the filesystem survives it
        from mpremote.transport_serial import SerialTransport
        before = board.soft_resets, board.starts
        t = SerialTransport(board.port)
        try:
            t.enter_raw_repl(soft_reset=True)  # waits for "soft reboot", then the raw REPL
            assert (board.soft_resets, board.starts) == (before[0] + 1, before[1] + 1)
            assert b"hello.py" in t.exec("import os; print(os.listdir('/'))")
        finally:
            t.close()
    # and a fresh start of the same directory finds the image as it was left
    with virtual_board(tmp_path / "board") as board:
        assert "hello.py" in mpremote(board.port, "fs", "ls", ":")


def test_deploy_while_the_board_still_boots(tmp_path: Path, capsys):
    # Regression: deploy's Ctrl-C used to reach a board still booting (a fresh board on
    # a loaded machine): it interrupted the boot and `-i` gave a bare unix REPL on the host's
    # root filesystem, so deploy surveyed and wrote / of the host ("copy 0 of 21 files" when
    # an earlier run had left files there) and the real board never said hello.
    with virtual_board(tmp_path / "board", boot_delay_ms=1000) as board:
        res = run_deploy(capsys, board)
        assert len(res["copied"]) == res["files"] and "/main.py" in res["copied"]
        assert res["hello"]["node"] == "wl-000001"
        log = (board.dir / "console.log").read_bytes()
        assert b"KeyboardInterrupt" not in log and b"vboard:ready" not in log


def test_virtual_board_ctrl_c_interrupts_main(tmp_path: Path):
    with virtual_board(tmp_path / "board") as board:
        busy = tmp_path / "main.py"
        busy.write_text("import time\nwhile True:\n    time.sleep_ms(10)\n")
        mpremote(board.port, "fs", "cp", str(busy), ":main.py")
        from mpremote.transport_serial import SerialTransport
        t = SerialTransport(board.port)
        t.exit_raw_repl()
        t.serial.write(b"\x04")  # friendly soft reset: main.py runs (for ever)
        time.sleep(0.5)
        t.enter_raw_repl(soft_reset=False)  # Ctrl-C must interrupt it
        assert t.exec("print(6 * 7)").strip() == b"42"
        t.close()


def run_deploy(capsys, board, *extra: str) -> dict:
    rc = cli.main(["deploy", "--board", BOARD, "--role", "water", "--port", board.port,
                   "--link-port", board.link_port, "--json", *extra])
    captured = capsys.readouterr()
    console = board.log.read_bytes()[-1500:].decode(errors="replace")
    assert rc == 0, f"{captured.err}\n--- board console.log (tail):\n{console}"
    return json.loads(captured.out)


def test_deploy_then_redeploy_copies_nothing(tmp_path: Path, capsys):
    with virtual_board(tmp_path / "board") as board:
        wait_repl(board)  # not about booting: see wait_repl
        first = run_deploy(capsys, board,
                           "--set", "thresholds.alarm_cm=160", "--set", "node_id=wl-0042")
        assert "/main.py" in first["copied"] and "/config.json" in first["copied"]
        assert not any("/hw/sim" in p for p in first["copied"])
        hello = first["hello"]
        assert hello["node"] == "wl-0042" and hello["role"] == "water"
        assert hello["board"] == BOARD and hello["fw"] and hello["boot_count"] >= 1
        assert first["board_mpy"] == "v6.3"

        t0 = time.monotonic()
        again = run_deploy(capsys, board,
                           "--set", "thresholds.alarm_cm=160", "--set", "node_id=wl-0042")
        # (copied != [] also when firmware/ was edited while the test ran: mtime rebuild)
        assert again["copied"] == [] and again["hello"]["node"] == "wl-0042", again
        assert again["hello"]["boot_count"] == hello["boot_count"] + 1, again["hello"]
        assert time.monotonic() - t0 < 5, again["seconds"]

        # a redeploy keeps what is on the board (node id, settings) and changes only config
        third = run_deploy(capsys, board, "--set", "report_interval_s=30")
        assert third["copied"] == ["/config.json"] and third["hello"]["node"] == "wl-0042"
        cfg = json.loads(_read(board.port, "/config.json"))
        assert cfg["report_interval_s"] == 30 and cfg["thresholds"]["alarm_cm"] == 160
        assert cfg["hw"]["uart"]["sensor"] == {"id": 2, "tx": 17, "rx": 16, "baudrate": 9600}
        assert cfg["sensor"]["type"] == "ultrasonic_uart"


def test_survey_of_a_board_holding_many_firmware_files(tmp_path: Path):
    # three firmware dirs of 60 files (a deploy cut mid-way leaves two; a package grows):
    # the survey's answer grows with them, but is never held whole in the board's heap
    dirs, per_dir = 3, 60
    make = ("import os\nos.mkdir('/fw')\n"
            f"for d in range({dirs}):\n"
            " os.mkdir('/fw/%012d' % d)\n os.mkdir('/fw/%012d/roadside_node' % d)\n"
            f" for i in range({per_dir}):\n"
            "  with open('/fw/%012d/roadside_node/m%03d.mpy' % (d, i), 'wb') as f:\n"
            "   f.write(b'x' * (300 + i))\n")
    with virtual_board(tmp_path / "board") as board:
        wait_repl(board)  # not about booting: see wait_repl
        t = deploy._transport(board.port)
        try:
            deploy._exec(t, make, board.port)
            info = deploy.survey(t, board.port)
        finally:
            t.close()
    hashes = info["hashes"]
    assert len(hashes) == dirs * per_dir + 2, len(hashes)
    assert hashes["/main.py"] is None and hashes["/config.json"] is None
    import hashlib
    assert hashes[f"/fw/{2:012d}/roadside_node/m059.mpy"] == hashlib.sha256(
        b"x" * 359).hexdigest()
    assert info["version"] and info["uid"] == "240ac4000001" and info["config"] is None


def _read(port: str, path: str) -> str:
    return mpremote(port, "fs", "cat", f":{path}")


def test_deploy_human_output(tmp_path: Path, capsys):
    with virtual_board(tmp_path / "board") as board:
        wait_repl(board)  # not about booting: see wait_repl
        rc = cli.main(["deploy", "--board", BOARD, "--role", "water", "--port", board.port,
                       "--link-port", board.link_port])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert "node id:      wl-000001" in out.out  # role prefix + MAC tail
        assert "copy " in out.err and "wait for the node's hello" in out.err


def test_wrong_mpy_version_is_refused_naming_both(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(deploy, "mpy_header", lambda path: (5, 0, 0))
    with virtual_board(tmp_path / "board") as board:
        wait_repl(board)  # not about booting: see wait_repl
        rc = cli.main(["deploy", "--board", BOARD, "--role", "water", "--port", board.port,
                       "--link-port", board.link_port])
        err = capsys.readouterr().err
        assert rc == 2
        assert "incompatible .mpy file" in err and "v6.3" in err and "v5.0" in err
        assert "1.29.0" in err
        assert "main.py" not in mpremote(board.port, "fs", "ls", ":")  # nothing copied


def test_check_mpy_rules():
    deploy.check_mpy((6, 3, 2), (6, 0, 0), "p", "1.29")  # bytecode: the version is enough
    with pytest.raises(ToolError, match="v6.2"):
        deploy.check_mpy((6, 2, 2), (6, 3, 3), "p", "1.22")  # native code: sub-version too
    assert deploy.board_mpy(2822) == (6, 3, 2)


def test_bad_set_is_refused_before_the_port_is_touched(capsys):
    rc = cli.main(["deploy", "--board", BOARD, "--role", "water", "--port", "/dev/nonexistent",
                   "--set", "thresholds.alarm_cm=high"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "thresholds.alarm_cm: bad value 'high'; allowed: a number from -1000 to 10000" in err
    rc = cli.main(["deploy", "--board", BOARD, "--role", "water", "--port", "/dev/nonexistent",
                   "--set", "colour=blue"])
    assert "colour: unknown key" in capsys.readouterr().err


def test_port_errors(tmp_path: Path, monkeypatch, capsys):
    rc = cli.main(["deploy", "--board", BOARD, "--role", "water", "--port", "/dev/nonexistent"])
    assert rc == 2 and "port /dev/nonexistent does not exist" in capsys.readouterr().err
    # a serial device that does not answer like MicroPython
    monkeypatch.setattr(deploy, "RAW_REPL_TIMEOUT_S", 0.5)
    master, slave = os.openpty()
    try:
        import tty
        tty.setraw(slave)
        rc = cli.main(["deploy", "--board", BOARD, "--role", "water",
                       "--port", os.ttyname(slave)])
        err = capsys.readouterr().err
        assert rc == 2 and "could not enter raw repl" in err and "reset (EN)" in err
    finally:
        os.close(master)
        os.close(slave)
