"""The simulated node is the board as far as its flash goes: its files live in a LittleFS2
image the size of the sim board's filesystem partition, mounted as / like the ESP32 port
mounts it, and nowhere on the host; the host reads them only through tools/sim/vflash.py. On that
image LittleFS behaves as on the board: a read handle does not see bytes appended later
through another handle (the journal bug of issue 9, invisible while nodes used the host's
filesystem)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from roadside.tools.sim.launcher import Simulation
from roadside.tools.sim.node_state import held_seqs
from roadside.tools.sim.vflash import BLOCK_SIZE, FlashError, VFlash, create_image, fs_blocks
from roadside.tools.sim.vflash import main as vflash_main
from support.install_support import virtual_board
from support.micropython import FIRMWARE, run_stdout

NODE_FILES = {"config.json", "journal.bin", "state.json", "bootguard.json", "secret.bin"}

# A read handle open at the end of a file; 100 bytes appended through a second handle; what
# the old handle and a fresh one read past the old end.
READ_AFTER_APPEND = """
with open("probe.bin", "wb") as f:
    f.write(b"a" * 100)
old = open("probe.bin", "rb")
assert len(old.read()) == 100
w = open("probe.bin", "ab")
w.write(b"b" * 100)
w.flush()
old.seek(100)
fresh = open("probe.bin", "rb")
fresh.seek(100)
print("old", len(old.read()), "fresh", len(fresh.read()))
"""


async def _wait_log(node, pattern: str, since: int, timeout: float = 60.0) -> re.Match[str]:
    """The first match of `pattern` in the node's log after byte `since` (bounded; the log is
    the node's stdout, so this is the node telling us it got there)."""
    deadline = time.monotonic() + timeout
    while True:
        text = node.log.read_bytes()[since:].decode(errors="replace") if node.log.exists() \
            else ""
        found = re.search(pattern, text)
        if found:
            return found
        if time.monotonic() > deadline or node.exit_status is not None:
            raise AssertionError(f"no {pattern!r} in {node.log} ({node.state}):\n{text[-2000:]}")
        await asyncio.sleep(0.1)


def test_a_nodes_files_are_in_its_flash_image_and_absent_from_the_host(tmp_path: Path):
    run = tmp_path / "run"

    async def session(pattern: str) -> tuple[re.Match[str], Simulation]:
        sim = Simulation.water(run, 1, speed=30)
        log = sim.nodes[0].log
        since = log.stat().st_size if log.exists() else 0
        await sim.start()
        try:
            return await _wait_log(sim.nodes[0], pattern, since), sim
        finally:
            await sim.stop()

    first, sim = asyncio.run(session(r"\nseq 3 "))        # three records journaled
    node = sim.nodes[0]
    host = sorted(p.name for p in node.dir.rglob("*"))
    assert not NODE_FILES & set(host), host                # no node file on the host
    assert {"flash.img", "wiring.json"} <= set(host)
    assert node.flash.image.stat().st_size == fs_blocks("sim") * BLOCK_SIZE == 2 * 1024 * 1024
    on_flash = set(node.flash.ls("/"))
    assert {"config.json", "journal.bin", "state.json"} <= on_flash, on_flash
    config = node.flash.get_json("config.json")
    assert config["node_id"] == "wl-0001" and "sim" not in config   # wiring stays outside
    wiring = json.loads((node.dir / "wiring.json").read_text())
    assert wiring["sim"]["uart"].startswith("/dev/pts/") and wiring["blocks"] == 512
    held = held_seqs(node.dir)             # no gateway: every journaled record is unacked
    assert {1, 2, 3} <= held and held == set(range(1, max(held) + 1)), held

    # a second power-up boots from the same image: its state continues, nothing on the host
    again, _ = asyncio.run(session(r"boot (\d+) cause \w+ node wl-0001 next_seq (\d+)"))
    assert int(again.group(1)) == 2 and int(again.group(2)) > 3, again.group(0)
    assert not NODE_FILES & {p.name for p in node.dir.rglob("*")}


def test_littlefs_read_after_append_shows_in_a_nodes_flash(tmp_path: Path):
    flash = VFlash(tmp_path / "node" / "flash.img", fs_blocks("sim"))
    flash.put_json("config.json", {"node_id": "wl-0001"})   # provisioned like SimNode does
    # on the node's flash, as on an ESP32: the old handle sees none of the appended bytes
    assert flash.run(READ_AFTER_APPEND).split() == ["old", "0", "fresh", "100"]
    # the host's filesystem (where nodes used to journal) shows all 100: it hid the bug
    assert run_stdout(READ_AFTER_APPEND, cwd=tmp_path).split() == ["old", "100",
                                                                    "fresh", "100"]


def test_vflash_reports_a_blank_image_and_a_missing_file_clearly(tmp_path: Path, capfd):
    image = tmp_path / "flash.img"
    create_image(image, 16)
    with pytest.raises(FlashError, match="holds no LittleFS filesystem"):
        VFlash(image).ls("/")                              # read-only: never formats it
    assert image.read_bytes() == b"\xff" * 16 * BLOCK_SIZE
    flash = VFlash(image)
    flash.put("a.txt", b"x")
    with pytest.raises(FileNotFoundError, match="b.txt is not in"):
        flash.get("b.txt")
    assert vflash_main([str(tmp_path), "ls"]) == 0             # the node dir or the image
    assert vflash_main([str(image), "get", "a.txt"]) == 0
    assert capfd.readouterr().out == "a.txt\nx"
    assert vflash_main([str(image), "get", "b.txt"]) == 1
    assert capfd.readouterr().err == f"error: b.txt is not in {image}\n"
    flash.rm("a.txt")
    assert flash.ls("/") == []
    with pytest.raises(FlashError, match="no flash image"):
        VFlash(tmp_path / "none.img").get("config.json")


def test_the_flash_driver_erases_without_allocating(tmp_path: Path):
    # a node's heap is 96 KiB: a 4 KiB buffer per erase failed there with MemoryError (on the
    # board the driver is C and uses no Python heap at all)
    out = run_stdout(f"""
import micropython
from vboard.blockdev import BLOCK_SIZE, FileBlockDev
dev = FileBlockDev({str(tmp_path / "f.img")!r}, 4)
buf = bytearray(BLOCK_SIZE)
dev.writeblocks(1, b"\\x00" * 64, 100)
micropython.heap_lock()
dev.erase(1)
dev.readblocks(1, buf)
micropython.heap_unlock()
print(buf == b"\\xff" * BLOCK_SIZE)
""")
    assert out.split() == ["True"]


def test_the_virtual_board_is_the_same_twin(tmp_path: Path):
    # its boot, machine and esp32 are firmware/vboard's files; its files are in its image,
    # read through vflash like a node's; RTC memory is hardware: in its host dir
    code = ("import machine, esp32; machine.RTC().memory(b'rtc!'); "
            "f = open('/x.txt', 'w'); f.write('on flash'); f.close(); "  # unclosed: not kept
            "print(machine.__file__, esp32.__file__)")
    with virtual_board(tmp_path / "board") as board:
        done = subprocess.run([sys.executable, "-m", "mpremote", "connect", board.port, "exec",
                               code], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.split() == [str(FIRMWARE / "vboard" / "vmachine.py"),
                                   str(FIRMWARE / "vboard" / "vesp32.py")]
    assert VFlash(board.image).get("x.txt") == b"on flash"
    assert (board.dir / "rtc.bin").read_bytes() == b"rtc!"
    assert not (board.dir / "x.txt").exists()
    assert board.image.stat().st_size == fs_blocks("esp32-devkitc-v4") * BLOCK_SIZE
