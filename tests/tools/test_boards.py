"""Board definitions: every shipped board validates, and each pin rule fails with its message."""

from __future__ import annotations

from pathlib import Path

import pytest
from roadside.tools.install import boards
from roadside.tools.install.boards import BoardError

BASE = """name = "t"
chip = "{chip}"
flash_size = "4MB"
micropython_port = "esp32"
ble = {ble}
"""


def write(tmp_path: Path, body: str, chip: str = "esp32", ble: str = "false") -> Path:
    path = tmp_path / "t.toml"
    path.write_text(BASE.format(chip=chip, ble=ble) + body, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", boards.shipped_boards(), ids=lambda p: p.stem)
def test_every_shipped_board_validates(path: Path) -> None:
    board = boards.load(path)
    assert board.name == path.stem
    assert board.chip.name in ("esp32", "esp32s3", "esp32c3", "sim")


def test_required_boards_are_shipped() -> None:
    names = {p.stem for p in boards.shipped_boards()}
    assert {"esp32-devkitc-v4", "esp32-s3-devkitc-1", "esp32-c3-devkitm-1", "sim"} <= names
    roles = {boards.load(p).role for p in boards.shipped_boards()}
    assert {"signal", "toll", "water"} <= roles


def test_signal_monitor_has_lamp_inputs_for_four_phases() -> None:
    board = boards.load("roadside-signal-monitor-r1")
    for phase in range(1, 5):
        for colour in ("red", "amber", "green"):
            assert f"phase{phase}_{colour}" in board.inputs
    assert {"plan_bit0", "plan_bit1", "plan_strobe"} <= set(board.outputs)


def test_adc_channel_follows_from_the_pin() -> None:
    board = boards.load("roadside-water-level-r1")
    assert (board.adc["battery"].unit, board.adc["battery"].channel) == (1, 7)


def test_load_by_name_and_missing_board() -> None:
    assert boards.load("esp32-devkitc-v4").chip.name == "esp32"
    with pytest.raises(BoardError, match=r"nope\.toml: no such board file \(shipped boards: "):
        boards.load("nope")


def test_pin_used_twice(tmp_path: Path) -> None:
    path = write(tmp_path, "[outputs]\nled = 4\n[inputs]\nloop = 4\n")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: inputs.loop: GPIO 4 is already used by outputs.led "
                              "(one function per pin)")


def test_uart_pin_used_twice(tmp_path: Path) -> None:
    path = write(tmp_path, "[uart.link]\nid = 0\ntx = 1\nrx = 3\nbaudrate = 115200\n"
                           "[outputs]\nled = 1\n")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: outputs.led: GPIO 1 is already used by uart.link.tx "
                              "(one function per pin)")


def test_output_on_input_only_pin(tmp_path: Path) -> None:
    path = write(tmp_path, "[outputs]\nrelay = 34\n")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: outputs.relay: GPIO 34 is input-only on esp32 "
                              "(GPIO 34-39 have no output driver); use another pin")


def test_uart_tx_on_input_only_pin(tmp_path: Path) -> None:
    path = write(tmp_path, "[uart.s]\nid = 2\ntx = 36\nrx = 16\nbaudrate = 9600\n")
    with pytest.raises(BoardError, match=r"uart\.s\.tx: GPIO 36 is input-only on esp32"):
        boards.load(path)


def test_strapping_pin_without_acknowledgement(tmp_path: Path) -> None:
    path = write(tmp_path, "[inputs]\nbutton = 12\n")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: inputs.button: GPIO 12 is a strapping pin on esp32 "
                              "(its level at reset selects the boot mode); move it, or "
                              "acknowledge it with strapping_ok = [12]")


def test_strapping_pin_acknowledged(tmp_path: Path) -> None:
    path = write(tmp_path, "strapping_ok = [12]\n[inputs]\nbutton = 12\n")
    assert boards.load(path).inputs == {"button": 12}


def test_strapping_ok_names_a_pin_that_is_not_strapping(tmp_path: Path) -> None:
    path = write(tmp_path, "strapping_ok = [13]\n")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: strapping_ok[0]: GPIO 13 is not a strapping pin on "
                              "esp32 (strapping pins: 0, 2, 5, 12, 15)")


def test_adc2_pin_on_ble_esp32(tmp_path: Path) -> None:
    path = write(tmp_path, "[adc]\nbattery = 4\n", ble="true")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: adc.battery: GPIO 4 is ADC2 channel 0 on esp32, "
                              "unusable while the radio is on (ble = true); use an ADC1 pin "
                              "(GPIO 32-39)")


def test_adc2_pin_without_radio_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "[adc]\nbattery = 4\n", ble="false")
    adc = boards.load(path).adc["battery"]
    assert (adc.unit, adc.channel) == (2, 0)


def test_adc_on_a_pin_without_adc(tmp_path: Path) -> None:
    path = write(tmp_path, "[adc]\nbattery = 5\n")
    with pytest.raises(BoardError, match=r"adc\.battery: GPIO 5 is not an ADC pin on esp32"):
        boards.load(path)


def test_pin_the_chip_does_not_have(tmp_path: Path) -> None:
    path = write(tmp_path, "[outputs]\nled = 24\n")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: outputs.led: GPIO 24 does not exist on esp32 "
                              "(GPIOs: 0-19, 21-23, 25-27, 32-39)")


def test_pin_the_c3_does_not_have(tmp_path: Path) -> None:
    path = write(tmp_path, "[inputs]\nloop = 34\n", chip="esp32c3")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: inputs.loop: GPIO 34 does not exist on esp32c3 "
                              "(GPIOs: 0-21)")


def test_flash_pin(tmp_path: Path) -> None:
    path = write(tmp_path, "[outputs]\nled = 6\n")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value) == (f"{path}: outputs.led: GPIO 6 is wired to the module's SPI flash "
                              "on esp32 (GPIO 6-11 are not usable)")


def test_sim_board_has_no_pins(tmp_path: Path) -> None:
    path = write(tmp_path, "[outputs]\nled = 2\n", chip="sim")
    with pytest.raises(BoardError, match=r"GPIO 2 does not exist on sim \(GPIOs: none"):
        boards.load(path)


@pytest.mark.parametrize(("body", "message"), [
    ('chip = "esp8266"\n', "chip: unknown chip 'esp8266'"),
    ("colour = 1\n", "colour: unknown key"),
    ("[uart.x]\nid = 5\ntx = 17\nrx = 16\nbaudrate = 9600\n",
     "uart.x.id: UART 5 does not exist on esp32 (UART 0-2)"),
    ("[uart.x]\nid = 2\ntx = 17\nrx = 16\n", "uart.x.baudrate: missing (required)"),
    ('[outputs]\nled = "2"\n', "outputs.led: must be an integer, not '2'"),
])
def test_schema_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "t.toml"
    text = BASE.format(chip="esp32", ble="false")
    if body.startswith("chip"):
        text = text.replace('chip = "esp32"\n', body)
    else:
        text += body
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BoardError) as exc:
        boards.load(path)
    assert str(exc.value).startswith(f"{path}: {message}")


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = \n", encoding="utf-8")
    with pytest.raises(BoardError, match=r"bad\.toml: not valid TOML"):
        boards.load(path)
