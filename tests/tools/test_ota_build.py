"""`roadside ota build`: app bundles from the node package (mpy-cross) and firmware bundles
from a MicroPython app image, read back and verified with roadside.gateway.ota_bundle."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
from roadside.gateway import ota_bundle
from roadside.tools import cli


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "ota.key"
    assert cli.main(["ota", "key", "--key-file", str(path)]) == 0
    return path


def test_app_bundle_built_read_and_verified(tmp_path, key, capsys):
    out = tmp_path / "app.rsb"
    capsys.readouterr()
    assert cli.main(["ota", "build", "app", "-o", str(out), "--key-file", str(key),
                     "--version", "0.2.0", "--board", "sim", "--role", "water", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    b = ota_bundle.load(out)
    ota_bundle.verify(b, ota_bundle.load_key(key))
    assert doc["tag"] == b.tag.hex() and b.version == "0.2.0" and b.kind == "app"
    files = b.files()
    assert "roadside_node/session.mpy" in files and "roadside_node/hw/sim.mpy" in files
    assert all(f.endswith(".mpy") and files[f][:1] == b"M" for f in files)
    assert b"0.2.0" in files["roadside_node/__init__.mpy"]         # HELLO says the version
    assert len(cbor2.dumps(b.offer(True))) <= ota_bundle.OFFER_MAX
    with pytest.raises(ota_bundle.BundleError, match="mac does not match"):
        ota_bundle.verify(b, bytes(32))
    raw = bytearray(out.read_bytes())
    raw[-100] ^= 1                                                   # a payload bit flipped
    (tmp_path / "bad.rsb").write_bytes(bytes(raw))
    with pytest.raises(ota_bundle.BundleError, match="damaged"):
        ota_bundle.load(tmp_path / "bad.rsb")


def test_board_bundles_leave_the_sim_layer_out(tmp_path, key):
    out = tmp_path / "b.rsb"
    assert cli.main(["ota", "build", "app", "-o", str(out), "--key-file", str(key),
                     "--board", "esp32-devkitc-v4"]) == 0
    files = ota_bundle.load(out).files()
    assert not any(f.startswith("roadside_node/hw/sim") for f in files)


@pytest.mark.parametrize("argv, says", [
    (["--version", "1.x"], "not dotted numbers"),
    (["--key-file", "/nonexistent/ota.key"], "no ota key file"),
])
def test_app_build_errors_are_one_line(tmp_path, key, capsys, argv, says):
    args = ["ota", "build", "app", "-o", str(tmp_path / "x.rsb"), "--key-file", str(key)]
    assert cli.main(args + argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_firmware_bundle_from_an_app_image(tmp_path, key, capsys):
    from roadside.tools.sim import virtual_rom

    image = virtual_rom.build_test_image("esp32", tmp_path / "micropython.bin", 300 * 1024)
    out = tmp_path / "fw.rsb"
    assert cli.main(["ota", "build", "firmware", "--image", str(image), "--board",
                     "esp32-devkitc-v4", "--version", "1.24.1", "-o", str(out),
                     "--key-file", str(key)]) == 0
    b = ota_bundle.load(out)
    assert b.kind == "firmware" and b.payload == image.read_bytes()
    assert [s for s, _ in b.pieces][:-1] == [128 * 1024] * (len(b.pieces) - 1)
    capsys.readouterr()
    assert cli.main(["ota", "build", "firmware", "--image", str(image), "--board",
                     "esp32-s3-devkitc-1", "--version", "1.24.1", "-o", str(out),
                     "--key-file", str(key)]) == 2                   # another chip
    assert "is for esp32" in capsys.readouterr().err
