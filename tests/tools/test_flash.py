"""`roadside flash`, `fleet flash` and `nodes` against virtual ROM bootloaders (no hardware).

Each virtual ROM is an esp32-mock-bootloader process on a free loopback TCP port
(`socket://127.0.0.1:PORT`), started with a chosen chip and MAC and stopped after the test
(it also exits by itself after 60 s). Images are generated with esptool's image classes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pty
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from roadside.tools import cli
from roadside.tools.install import boards, flashing, serial_ports
from roadside.tools.install.flash_progress import ProgressView
from roadside.tools.sim import virtual_rom

pytest.importorskip("esp32_mock_bootloader")

DEVKIT = boards.load("esp32-devkitc-v4")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    return {chip: virtual_rom.build_test_image(chip, d / f"{chip}.bin", 96 * 1024)
            for chip in ("esp32", "esp32c3")}


@pytest.fixture
def start_rom(tmp_path: Path) -> Iterator:
    """Factory: start_rom(chip, mac) -> VirtualRom; every one is stopped after the test."""
    started: list[virtual_rom.VirtualRom] = []

    def start(chip: str = "esp32", mac: str | None = None) -> virtual_rom.VirtualRom:
        n = len(started)
        rom = virtual_rom.start(chip, mac or f"24:0a:c4:10:00:{n:02x}", lifetime=60,
                                state_dir=tmp_path / f"rom{n}")
        started.append(rom)
        return rom

    try:
        yield start
    finally:
        for rom in started:
            rom.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_flash_detects_writes_verifies_and_reports(start_rom, images, capsys) -> None:
    rom = start_rom("esp32", "24:0a:c4:12:34:56")
    code, out, err = run(capsys, "flash", "--board", "roadside-water-level-r1", "--port",
                         rom.url, "--image", str(images["esp32"]), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["result"] == "ok" and r["verified"] is True
    assert r["chip"].startswith("ESP32-D0WD")
    assert r["mac"] == "24:0a:c4:12:34:56"
    assert r["node_id"] == "wl-123456"
    assert r["flash_size"] == "4MB"
    assert r["offset"] == "0x1000"
    assert r["image_sha256"] == hashlib.sha256(images["esp32"].read_bytes()).hexdigest()
    # progress on stderr, plain lines (not a TTY), ending with the result
    lines = err.splitlines()
    assert any("write 50%" in line for line in lines)
    assert "verify" in err and lines[-1].endswith("s") and "ok in" in lines[-1]


def test_flash_human_output_with_erase(start_rom, images, capsys) -> None:
    rom = start_rom("esp32c3", "24:0a:c4:ab:cd:ef")
    code, out, err = run(capsys, "flash", "--board", "esp32-c3-devkitm-1", "--port", rom.url,
                         "--image", str(images["esp32c3"]), "--erase", "--role", "toll")
    assert code == 0, err
    assert "MAC:          24:0a:c4:ab:cd:ef" in out
    assert "chip:         ESP32-C3" in out
    assert "node id:      tb-abcdef" in out
    assert hashlib.sha256(images["esp32c3"].read_bytes()).hexdigest() in out
    assert "erase" in err


def test_image_of_another_chip_is_refused(images, capsys) -> None:
    code, out, err = run(capsys, "flash", "--board", "esp32-devkitc-v4", "--port",
                         "socket://127.0.0.1:9", "--image", str(images["esp32c3"]))
    assert code == 2 and out == ""
    assert err == (f"roadside flash: error: image esp32c3.bin is for esp32c3 (chip id 5 in its "
                   f"header) but board esp32-devkitc-v4 is esp32 ({flashing._show(DEVKIT.path)}); "
                   "use an image built for esp32 or the board file for esp32c3\n")


def test_board_of_another_chip_is_refused(start_rom, images, capsys) -> None:
    rom = start_rom("esp32c3")
    code, out, err = run(capsys, "flash", "--board", "esp32-devkitc-v4", "--port", rom.url,
                         "--image", str(images["esp32"]))
    assert code == 2
    assert err.splitlines()[-1] == (
        f"roadside flash: error: the chip on {rom.url} is esp32c3 (ESP32-C3) but board "
        f"esp32-devkitc-v4 is esp32 ({flashing._show(DEVKIT.path)}); connect a board with an "
        "esp32, or use the board file and image for esp32c3")


def test_fleet_flash_four_boards_one_wrong_chip(start_rom, images, capsys, tmp_path) -> None:
    roms = [start_rom("esp32", f"24:0a:c4:00:00:0{i}") for i in range(1, 4)]
    roms.insert(2, start_rom("esp32c3", "24:0a:c4:00:00:09"))
    report = tmp_path / "report"
    started = time.monotonic()
    code, out, err = run(capsys, "fleet", "flash", "--board", "roadside-toll-beacon-r1",
                         "--image", str(images["esp32"]), "--report", str(report),
                         "--ports", *(r.url for r in roms))
    elapsed = time.monotonic() - started
    assert code == 1
    assert "3/4 boards flashed" in out
    csv_files = list(report.glob("*.csv"))
    json_files = list(report.glob("*.json"))
    assert len(csv_files) == 1 and len(json_files) == 1
    rows = list(csv.DictReader(csv_files[0].open(encoding="utf-8")))
    assert [r["port"] for r in rows] == [r.url for r in roms]
    assert [r["result"] for r in rows] == ["ok", "ok", "failed", "ok"]
    assert [r["node_id"] for r in rows] == ["tb-000001", "tb-000002", "", "tb-000003"]
    assert "is esp32c3 (ESP32-C3) but board roadside-toll-beacon-r1 is esp32" in rows[2]["error"]
    sha = hashlib.sha256(images["esp32"].read_bytes()).hexdigest()
    assert all(r["image_sha256"] == sha for r in rows)
    assert all(r["flash_size"] == "4MB" and r["chip"] for r in rows if r["result"] == "ok")
    doc = json.loads(json_files[0].read_text(encoding="utf-8"))
    assert len(doc["boards"]) == 4 and doc["boards"][0]["mac"] == "24:0a:c4:00:00:01"
    for rom in roms:  # a progress line per board
        assert rom.url in err
    assert elapsed < 30


def test_fleet_flash_all_ok_exit_0_and_json(start_rom, images, capsys, tmp_path) -> None:
    roms = [start_rom("esp32", f"24:0a:c4:00:01:0{i}") for i in range(2)]
    code, out, err = run(capsys, "fleet", "flash", "--board", "esp32-devkitc-v4", "--image",
                         str(images["esp32"]), "--report", str(tmp_path), "--json",
                         "--ports", *(r.url for r in roms))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] == 2 and doc["failed"] == 0
    assert Path(doc["report_csv"]).is_file()


def test_fleet_flags_two_ports_with_the_same_mac(start_rom, images, capsys, tmp_path) -> None:
    roms = [start_rom("esp32", "24:0a:c4:00:02:00") for _ in range(2)]
    code, out, _ = run(capsys, "fleet", "flash", "--board", "esp32-devkitc-v4", "--image",
                       str(images["esp32"]), "--report", str(tmp_path), "--json",
                       "--ports", *(r.url for r in roms))
    assert code == 1
    errors = [b["error"] for b in json.loads(out)["boards"]]
    assert all("same MAC 24:0a:c4:00:02:00" in e for e in errors)


def test_missing_port(images, capsys) -> None:
    code, _, err = run(capsys, "flash", "--board", "esp32-devkitc-v4", "--port",
                       "/dev/ttyUSB-roadside-missing", "--image", str(images["esp32"]))
    assert code == 2
    assert err.splitlines()[-1] == (
        "roadside flash: error: port /dev/ttyUSB-roadside-missing does not exist; check the "
        "USB cable, then run `roadside nodes` to list attached boards")


def test_no_serial_data(images) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list = []
    threading.Thread(target=lambda: held.append(srv.accept()), daemon=True).start()
    try:
        port = f"socket://127.0.0.1:{srv.getsockname()[1]}"
        r = flashing.flash_board(port, DEVKIT, flashing.read_image(images["esp32"]),
                                 connect_attempts=1)
    finally:
        srv.close()
        for conn, _ in held:
            conn.close()
    assert r.result == "failed"
    assert r.error.startswith(f"no serial data from the board on {port}: it is not in the ROM "
                              "bootloader; hold BOOT while pressing EN (reset)")


def test_connection_refused(images) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = f"socket://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    r = flashing.flash_board(port, DEVKIT, flashing.read_image(images["esp32"]))
    assert r.error == (f"nothing is listening at {port} (connection refused); start the "
                       "serial server or check the address")


def test_busy_port_names_the_process(images) -> None:
    master, slave = pty.openpty()
    path = os.ttyname(slave)
    holder = subprocess.Popen(["sleep", "30"], stdin=slave)
    try:
        r = flashing.flash_board(path, DEVKIT, flashing.read_image(images["esp32"]))
    finally:
        holder.kill()
        holder.wait()
        os.close(master)
        os.close(slave)
    assert r.error == (f"port {path} is busy: held open by pid {holder.pid} (sleep); close that "
                       "program (a serial monitor, the gateway, another flash) and retry")


def test_permission_denied_message() -> None:
    err = flashing._explain("/dev/ttyUSB0", OSError("could not open port /dev/ttyUSB0: "
                                                    "[Errno 13] Permission denied"))
    assert str(err).startswith("permission denied on /dev/ttyUSB0 (owned by group ")
    assert "sudo usermod -aG " in str(err)


def test_not_an_image(tmp_path, capsys) -> None:
    bad = tmp_path / "firmware.elf"
    bad.write_bytes(b"\x7fELF" + bytes(60))
    code, _, err = run(capsys, "flash", "--board", "esp32-devkitc-v4", "--image", str(bad))
    assert code == 2
    assert err == (f"roadside flash: error: image {bad} is not an ESP firmware image (first "
                   "byte 0x7F, expected 0xE9); use the .bin the build produced\n")


def _dev(device: str, vid: int | None = 0x10C4, pid: int | None = 0xEA60) -> SimpleNamespace:
    return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number="0001",
                           description="CP2102 USB to UART Bridge Controller",
                           manufacturer="Silicon Labs")


def test_port_auto_detection(monkeypatch, images, capsys) -> None:
    from serial.tools import list_ports

    monkeypatch.setattr(list_ports, "comports", lambda: [_dev("/dev/ttyS0", None, None)])
    code, _, err = run(capsys, "flash", "--board", "esp32-devkitc-v4", "--image",
                       str(images["esp32"]))
    assert "no serial port found" in err and code == 2
    monkeypatch.setattr(list_ports, "comports",
                        lambda: [_dev("/dev/ttyUSB1"), _dev("/dev/ttyUSB0")])
    code, _, err = run(capsys, "flash", "--board", "esp32-devkitc-v4", "--image",
                       str(images["esp32"]))
    assert err.strip() == (
        "roadside flash: error: 2 serial ports attached, pick one with --port: /dev/ttyUSB0 "
        "(CP2102 USB to UART Bridge Controller), /dev/ttyUSB1 (CP2102 USB to UART Bridge "
        "Controller)")
    monkeypatch.setattr(list_ports, "comports", lambda: [_dev("/dev/ttyUSB0")])
    assert flashing.resolve_port(None) == "/dev/ttyUSB0"


def test_nodes_lists_usb_ids(monkeypatch, capsys) -> None:
    from serial.tools import list_ports

    monkeypatch.setattr(list_ports, "comports",
                        lambda: [_dev("/dev/ttyS0", None, None), _dev("/dev/ttyUSB0"),
                                 _dev("/dev/ttyACM0", 0x303A, 0x1001)])
    code, out, _ = run(capsys, "nodes", "--json")
    assert code == 0
    devices = json.loads(out)
    assert [d["device"] for d in devices] == ["/dev/ttyACM0", "/dev/ttyUSB0"]
    assert devices[1]["vid_pid"] == "10c4:ea60" and devices[1]["serial_number"] == "0001"
    code, out, _ = run(capsys, "nodes", "--all")
    assert "/dev/ttyS0" in out and "303a:1001" in out
    assert [d.device for d in serial_ports.candidates()] == ["/dev/ttyACM0", "/dev/ttyUSB0"]


def test_progress_view_tty_and_plain() -> None:
    plain = io.StringIO()
    view = ProgressView(["a", "bb"], plain, tty=False)
    cb = view.callback("a")
    for done in range(0, 101, 5):
        cb("write", done, 100)
    view.finish("a", "ok")
    assert plain.getvalue().splitlines() == [
        "a   write 0%", "a   write 25%", "a   write 50%", "a   write 75%", "a   write 100%",
        "a   ok"]
    # a terminal: rich.progress, a bar per board, fed from several threads at once
    tty = io.StringIO()
    with ProgressView(["a", "bb"], tty, tty=True) as view:
        threads = [threading.Thread(target=view.callback(label), args=("write", pct, 100))
                   for label, pct in (("a", 100), ("bb", 50))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        view.finish("a", "ok wl-000001 24:0a:c4:00:00:01 1.0 s")
    from rich.text import Text

    screen = Text.from_ansi(tty.getvalue()).plain     # the last frame is the final state
    last = {line.split()[0]: line for line in screen.splitlines() if line.strip()}
    assert "done" in last["a"] and "100%" in last["a"] and "ok wl-000001" in last["a"]
    assert "write" in last["bb"] and "50%" in last["bb"]
    assert "\x1b[?25h" in tty.getvalue()                # the cursor is shown again


def test_sim_board_has_nothing_to_flash(images, capsys) -> None:
    code, _, err = run(capsys, "flash", "--board", "sim", "--image", str(images["esp32"]))
    assert code == 2
    assert "is chip 'sim': nothing to flash; pick a hardware board" in err


def test_fast_slip_decoder_matches_the_mocks() -> None:
    import random

    from esp32_mock_bootloader.server import slip_decode_frames

    rng = random.Random(5)
    for _ in range(500):
        raw = bytes(rng.choice([0xC0, 0xDB, 0xDC, 0xDD, 0x01, 0x7F])
                    for _ in range(rng.randint(0, 60)))
        if b"\xdb\xc0" in raw:  # ESC before END: never sent by esptool, decoders differ
            continue
        assert virtual_rom.fast_slip_decode(raw) == slip_decode_frames(raw)


# --- a damaged image is refused before anything is written -----------------------------------

@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return virtual_rom.build_test_image("esp32", tmp_path_factory.mktemp("big") / "fw.bin",
                                        256 * 1024)


def _refusal(capsys, image: Path, *cmd: str) -> str:
    """Run flash (or fleet flash) at a port nobody listens on: only the image check can answer."""
    code, out, err = run(capsys, *cmd, "--board", "esp32-devkitc-v4", "--image", str(image),
                         *(("--port",) if cmd == ("flash",) else ("--ports",)),
                         "socket://127.0.0.1:9")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    return err


def test_a_truncated_image_is_refused_in_one_line(big_image, tmp_path, capsys) -> None:
    piece = tmp_path / "piece.bin"
    piece.write_bytes(big_image.read_bytes()[:5 * 1024])   # 5 KB of a 256 KB image
    for cmd in (("flash",), ("fleet", "flash")):
        err = _refusal(capsys, piece, *cmd)
        assert err.startswith(f"roadside {cmd[0]}: error: image {piece} is damaged: "
                              "the file ends inside the image (5120 bytes; esptool: End of "
                              "file reading segment 0x3ffb0000")
        assert err.endswith("the file is truncated; nothing was written: build or download "
                            "the image again\n")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(big_image.read_bytes()[:-10])          # only the digest's tail is gone
    assert "the appended SHA-256 digest is cut off" in _refusal(capsys, cut, "flash")


def test_a_corrupted_image_is_refused_by_digest_and_checksum(big_image, tmp_path,
                                                             capsys) -> None:
    data = bytearray(big_image.read_bytes())
    data[-1] ^= 0x01                                        # a bit of the appended SHA-256
    bad_digest = tmp_path / "digest.bin"
    bad_digest.write_bytes(data)
    assert _refusal(capsys, bad_digest, "flash") == (
        f"roadside flash: error: image {bad_digest} is damaged: its appended SHA-256 digest "
        "does not match its contents; nothing was written: build or download the image again\n")
    data = bytearray(big_image.read_bytes())
    data[5000] ^= 0x01                                      # a bit in a segment
    bad_data = tmp_path / "data.bin"
    bad_data.write_bytes(data)
    err = _refusal(capsys, bad_data, "flash")
    assert "is damaged: checksum 0x" in err and "computed: its contents changed" in err


def test_a_merged_image_is_checked_up_to_its_app(images, tmp_path) -> None:
    """MicroPython's ESP32 firmware.bin: bootloader at 0x1000, partition table at 0x8000 and
    the app at 0x10000, in one file written at 0x1000. Cut after the table, the app is gone."""
    boot = virtual_rom.build_test_image("esp32", tmp_path / "boot.bin", 8 * 1024).read_bytes()
    app = images["esp32"].read_bytes()
    entry = b"\xaa\x50" + bytes([0x00, 0x00]) + (0x10000).to_bytes(4, "little") + \
        (0x100000).to_bytes(4, "little") + b"factory".ljust(16, b"\0") + bytes(4)
    table = (entry + b"\xff" * 32).ljust(0x1000, b"\xff")
    merged = boot.ljust(0x7000, b"\xff") + table.ljust(0x8000, b"\xff") + app
    assert flashing.image_damage(merged, "esp32") is None
    assert flashing.image_damage(merged[:0x9000], "esp32") == (
        "it is a merged image whose partition table puts the app at 0x10000, but the file "
        "ends at 0xa000 (36864 bytes): the file is truncated")
    damaged = bytearray(merged)
    damaged[0xF000 + 3000] ^= 0x80
    assert flashing.image_damage(bytes(damaged), "esp32").startswith(
        "the app at 0x10000: checksum 0x")
