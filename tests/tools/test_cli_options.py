"""The command line as esptool and mpremote users expect it (issue 12): --version, PORT and
-p/--port, -b/--baud, Ctrl-C that says what it stopped (exit 130), a port the gateway holds,
ports that are no serial port, and the completion scripts (shtab) in real shells.

Real processes where it matters: `roadside` is run as its own process and sent SIGINT, the
gateway daemon holds a real pty, bash and fish complete from the generated scripts.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from roadside.tools import cli
from roadside.tools.commands import completion
from roadside.tools.install import flashing, serial_ports
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import write as write_gateway_toml
from support.system import require

ROADSIDE = str(Path(sys.executable).parent / "roadside")
REPO = Path(__file__).resolve().parents[2]


def roadside(*argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([ROADSIDE, *argv], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def silent_pty() -> Iterator[tuple[int, str]]:
    """(master fd, slave path) of a pty nobody answers on: a board that says nothing. The
    slave stays open here too, as the virtual boards keep it, so the master never reads EIO."""
    master, slave = pty.openpty()
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        os.close(slave)
        os.close(master)


def wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    procs.wait_for_line(log, pattern, proc, timeout)


def ctrl_c(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT to the process group, as Ctrl-C in its terminal; its exit status."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout)
    finally:
        procs.stop(proc)


# -- --version, PORT | -p/--port, -b/--baud ------------------------------------------------------

def test_version_comes_from_the_package_metadata() -> None:
    done = roadside("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"roadside {version('roadside')}"


@pytest.mark.parametrize("argv", [
    ["config", "get", "/dev/ttyUSB9"], ["config", "get", "-p", "/dev/ttyUSB9"],
    ["config", "get", "--port", "/dev/ttyUSB9", "-b", "9600"],
    ["config", "secret", "-p", "/dev/ttyUSB9"], ["config", "set", "/dev/ttyUSB9", "a=1"],
    ["monitor", "/dev/ttyUSB9"], ["monitor", "-p", "/dev/ttyUSB9", "-b", "9600"],
    ["flash", "--board", "esp32-devkitc-v4", "--image", "x.bin", "/dev/ttyUSB9"],
    ["flash", "--board", "esp32-devkitc-v4", "--image", "x.bin", "-p", "/dev/ttyUSB9",
     "-b", "460800"],
    ["deploy", "--board", "esp32-devkitc-v4", "--role", "water", "/dev/ttyUSB9", "-b", "9600"],
    ["deploy", "--board", "esp32-devkitc-v4", "--role", "water", "--port", "/dev/ttyUSB9"],
])
def test_port_as_positional_or_option_and_baud_everywhere(argv: list[str]) -> None:
    from roadside.tools.commands import options

    args = cli.build_parser().parse_args(argv)
    if argv[0] == "config":   # the verb sorts PORT from its own arguments
        from roadside.tools.commands import config
        config._target(args)
        assert args.port == "/dev/ttyUSB9"
    else:
        assert options.port_of(args) == "/dev/ttyUSB9"
    assert args.baud == (int(argv[argv.index("-b") + 1]) if "-b" in argv
                         else 460800 if "460800" in argv else 115200)


def test_with_port_as_option_the_slot_is_the_key(capsys) -> None:
    from roadside.tools.commands import config

    args = cli.build_parser().parse_args(["config", "get", "-p", "/dev/x", "thresholds.alarm_cm"])
    config._target(args)
    assert (args.port, args.key) == ("/dev/x", "thresholds.alarm_cm")
    assert cli.main(["monitor", "/dev/x", "--port", "/dev/y"]) == 2
    assert "two ports given (/dev/x and --port /dev/y)" in capsys.readouterr().err


def test_config_and_monitor_at_a_baud_rate_on_a_live_node(silent_pty, tmp_path) -> None:
    """-b opens the port at that rate (the pty's termios says so while monitor runs)."""
    import termios

    master, path = silent_pty
    log = tmp_path / "monitor.log"
    proc = procs.spawn([ROADSIDE, "monitor", path, "-b", "57600"], log)
    try:
        wait_for(log, r"^monitoring ", proc)
        assert termios.tcgetattr(master)[4] == termios.B57600
    finally:
        assert ctrl_c(proc) == 130


# -- Ctrl-C ----------------------------------------------------------------------------------

def test_ctrl_c_mid_flash_says_the_board_has_a_partial_image(tmp_path) -> None:
    pytest.importorskip("esp32_mock_bootloader")
    from roadside.tools.sim import virtual_rom

    image = virtual_rom.build_test_image("esp32", tmp_path / "fw.bin", 1536 * 1024)
    rom = virtual_rom.start("esp32", "24:0a:c4:00:00:12", lifetime=60, state_dir=tmp_path / "rom")
    log = tmp_path / "flash.log"
    try:
        proc = procs.spawn([ROADSIDE, "flash", "--board", "roadside-water-level-r1", "-p", rom.url,
                            "--image", str(image)], log)
        wait_for(log, r"write \d+%", proc, timeout=30)
        assert ctrl_c(proc) == 130
    finally:
        rom.stop()
    last = log.read_text().strip().splitlines()[-1]
    assert re.fullmatch(
        r"roadside flash: interrupted while writing 0x1000 on socket://\S+ \(\d+%\): the board "
        r"has a partial image and will not boot it; run `roadside flash` again \(it rewrites "
        r"the whole image\)", last), last


def test_ctrl_c_while_config_waits_for_the_node(silent_pty, tmp_path) -> None:
    master, path = silent_pty
    log = tmp_path / "config.log"
    proc = procs.spawn([ROADSIDE, "config", "get", path], log)
    try:
        got = b""
        deadline = time.monotonic() + 15
        while b"\x00" not in got.lstrip(b"\x00"):   # a whole COBS frame: the command was sent
            assert time.monotonic() < deadline, f"no command on the port: {got!r}"
            got += os.read(master, 256)
        assert ctrl_c(proc) == 130
    finally:
        procs.stop(proc)
    assert log.read_text().strip().splitlines()[-1] == (
        f"roadside config: interrupted while reading the config of {path}: nothing was changed")


def test_ctrl_c_stops_monitor_with_its_summary_and_130(silent_pty, tmp_path) -> None:
    _master, path = silent_pty
    log = tmp_path / "monitor.log"
    proc = procs.spawn([ROADSIDE, "monitor", "--port", path], log)
    wait_for(log, r"^monitoring ", proc)
    assert ctrl_c(proc) == 130
    lines = log.read_text().strip().splitlines()
    assert lines[-2].startswith("frames 0, bad: crc 0")
    assert lines[-1] == (f"roadside monitor: interrupted while monitoring {path}: the node is "
                         "as it was: nothing was sent")


# -- what holds a port, what is no port ------------------------------------------------------------

def test_a_port_the_gateway_holds_is_named_with_its_pid(silent_pty, tmp_path, capsys) -> None:
    """The gateway takes no lock on its ports: config and monitor used to open the port beside
    it and time out while the gateway swallowed the node's reply."""
    _master, path = silent_pty
    cfg = write_gateway_toml(tmp_path / "gw.toml", [path], tmp_path / "data", None,
                             "127.0.0.1:0")
    log = tmp_path / "gw.log"
    gw = procs.spawn([sys.executable, "-m", "roadside.gateway.daemon", "--config", str(cfg)], log)
    try:
        wait_for(log, r"serial port \S+ open", gw, timeout=20)
        for argv in (["config", "get", path], ["config", "set", "-p", path, "alarm_cm=150"],
                     ["monitor", path]):
            started = time.monotonic()
            assert cli.main(argv) == 2
            err = capsys.readouterr().err
            assert f"{path} is held by roadside gateway (pid {gw.pid}): use `roadside gateway " \
                   f"cmd --config {cfg} NODE config.get`" in err, err
            assert len(err.strip().splitlines()) == 1 and time.monotonic() - started < 2
    finally:
        procs.stop(gw)


def test_a_gateway_started_as_roadside_gateway_run_is_recognised(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "roadside",
                             "gateway", "run", "--config", "site.toml"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "roadside",
                              "monitor"])
    try:
        deadline = time.monotonic() + 10
        while flashing.gateway_of(proc.pid) == (False, None) and time.monotonic() < deadline:
            time.sleep(0.01)   # until it has exec'd
        assert flashing.gateway_of(proc.pid) == (True, "site.toml")
        assert flashing.gateway_of(other.pid) == (False, None)
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()


@pytest.mark.parametrize("argv, message", [
    (["config", "get", "/dev/null"], "/dev/null is not a serial port (a mem device, not a "
                                     "terminal); give the board's port: `roadside nodes` lists"),
    (["monitor", "-p", "/dev/null"], "/dev/null is not a serial port"),
    (["flash", "--board", "esp32-devkitc-v4", "--image", "IMAGE", "-p", "/dev/null"],
     "/dev/null is not a serial port"),
    (["config", "get", "/"], "/ is not a serial port (a directory)"),
    (["config", "get", "socket://localhost"], "socket://localhost has no port number: give "
                                              "socket://HOST:PORT (e.g. socket://127.0.0.1:9876)"),
    (["monitor", "socket://localhost:99999"], "socket://localhost:99999 has no port number"),
    (["flash", "--board", "esp32-devkitc-v4", "--image", "IMAGE", "-p", "socket://localhost"],
     "socket://localhost has no port number"),
])
def test_what_is_no_serial_port_is_named(argv, message, capsys, tmp_path) -> None:
    pytest.importorskip("esp32_mock_bootloader")
    from roadside.tools.sim import virtual_rom

    image = virtual_rom.build_test_image("esp32", tmp_path / "fw.bin")
    argv = [str(image) if a == "IMAGE" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]   # flash prints its progress line ("failed") first
    assert message in last and "busy" not in err and "held open" not in err, err
    assert len(err.strip().splitlines()) == (2 if argv[0] == "flash" else 1)


def test_config_secret_offers_no_ble_and_refuses_it_with_the_reason(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["config", "secret", "--help"])
    assert "--ble" not in capsys.readouterr().out
    assert cli.main(["config", "secret", "--ble", "wl-0001"]) == 2
    assert "over the serial cable only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["config", "get", "--help"])
    assert "--ble NODE" in capsys.readouterr().out


# -- completion ------------------------------------------------------------------------------------

@pytest.fixture
def fake_ports(tmp_path: Path) -> str:
    """A PATH whose `roadside nodes --names` lists two boards, as on a machine with them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "roadside"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "nodes --names" ] && printf "/dev/ttyUSB7\\n'
                    '/dev/ttyACM3\\n"\n')
    fake.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def bash_complete(script: Path, words: list[str], path: str) -> list[str]:
    """What bash offers for `words` (the last one being typed), from the script."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (f"source {script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
               f'COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}\n'
               '_shtab_roadside; printf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=20,
                          cwd=REPO, env={**os.environ, "PATH": path})
    assert done.returncode == 0, done.stderr
    return sorted(line for line in done.stdout.splitlines() if line)


def test_bash_completes_commands_files_boards_and_ports(tmp_path, capsys, fake_ports) -> None:
    assert cli.main(["completion", "bash"]) == 0
    script = tmp_path / "roadside.bash"
    script.write_text(capsys.readouterr().out)
    assert "completion" in bash_complete(script, ["roadside", "c"], fake_ports)
    assert bash_complete(script, ["roadside", "flash", "--image", "pyproj"], fake_ports) == \
        ["pyproject.toml"]
    assert bash_complete(script, ["roadside", "flash", "--board", "esp32-d"], fake_ports) == \
        ["esp32-devkitc-v4"]
    assert "boards/esp32-devkitc-v4.toml" in bash_complete(
        script, ["roadside", "deploy", "--board", "boards/esp"], fake_ports)
    assert bash_complete(script, ["roadside", "monitor", "--port", "/dev/tty"], fake_ports) == \
        ["/dev/ttyACM3", "/dev/ttyUSB7"]
    assert bash_complete(script, ["roadside", "config", "get", "-p", "/dev/ttyU"], fake_ports) \
        == ["/dev/ttyUSB7"]
    assert bash_complete(script, ["roadside", "config", "set", "/dev/ttyA"], fake_ports) == \
        ["/dev/ttyACM3"]
    assert bash_complete(script, ["roadside", "config", "apply", "/dev/ttyUSB0", "pyproj"],
                         fake_ports) == ["pyproject.toml"]
    for argv in (["gateway", "run", "--config"], ["gateway", "dead-letters", "replay",
                                                  "--config"], ["receiver", "--db"]):
        assert bash_complete(script, ["roadside", *argv, "pyproj"], fake_ports) == \
            ["pyproject.toml"], argv
    assert bash_complete(script, ["roadside", "sim", "board", "--dir", "tool"], fake_ports) \
        == ["tools"]
    assert "--ble" not in bash_complete(script, ["roadside", "config", "secret", "--"],
                                        fake_ports)
    assert bash_complete(script, ["roadside", "completion", ""], fake_ports) == \
        ["bash", "fish", "tcsh", "zsh"]


def test_fish_completes_files_boards_and_ports(tmp_path, capsys, fake_ports) -> None:
    require(shutil.which("fish"), "fish is not installed (apt-get install fish)")
    assert cli.main(["completion", "fish"]) == 0
    script = tmp_path / "roadside.fish"
    script.write_text(capsys.readouterr().out)

    def fish(line: str) -> list[str]:
        done = subprocess.run(["fish", "--no-config", "-c",
                               f"source {script}; complete -C {line!r}"],
                              capture_output=True, text=True, timeout=20, cwd=REPO,
                              env={**os.environ, "PATH": fake_ports})
        assert done.returncode == 0, done.stderr
        return sorted(x.split("\t")[0] for x in done.stdout.splitlines())

    assert "completion" in fish("roadside c")
    assert fish("roadside flash --image pyproj") == ["pyproject.toml"]
    assert fish("roadside flash --board esp32-d") == ["esp32-devkitc-v4"]
    assert fish("roadside monitor --port /dev/tty") == ["/dev/ttyACM3", "/dev/ttyUSB7"]
    assert fish("roadside gateway dead-letters ") == ["drop", "list", "replay"]
    assert fish("roadside gateway check --config pyproj") == ["pyproject.toml"]


@pytest.mark.parametrize("shell", ["zsh", "tcsh"])
def test_zsh_and_tcsh_scripts_load(shell, tmp_path, capsys) -> None:
    if not shutil.which(shell):
        pytest.skip(f"{shell} is not installed")
    assert cli.main(["completion", shell]) == 0
    script = tmp_path / f"roadside.{shell}"
    script.write_text(capsys.readouterr().out)
    check = ["zsh", "-n", str(script)] if shell == "zsh" else ["tcsh", "-c", f"source {script}"]
    done = subprocess.run(check, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert "roadside nodes --names" in script.read_text()
    assert all(b in script.read_text() for b in completion.board_names())


def test_nodes_names_lists_the_usb_serial_devices(monkeypatch, capsys) -> None:
    devices = [serial_ports.SerialDevice("/dev/ttyUSB0", "10c4:ea60", "0001", "CP2102", "SL", ""),
               serial_ports.SerialDevice("/dev/ttyS0", "", "", "", "", "")]
    monkeypatch.setattr("roadside.tools.commands.nodes.list_devices", lambda: devices)
    assert cli.main(["nodes", "--names"]) == 0
    assert capsys.readouterr().out == "/dev/ttyUSB0\n"
