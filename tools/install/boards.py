"""Board definitions (`boards/*.toml`): load one, validate it against the chip's facts.

A board file is data the hardware team owns::

    name = "esp32-devkitc-v4"
    chip = "esp32"                 # a key of chips.CHIPS
    flash_size = "4MB"
    micropython_port = "esp32"
    ble = true                     # the radio is on: ADC2 is unusable on an ESP32
    role = "water"                 # optional: the node role this board is built for
    strapping_ok = [2]             # strapping pins used on purpose (checked by the designer)

    [uart.link]                    # UARTs by function: id, tx, rx, baudrate
    id = 0
    tx = 1
    rx = 3
    baudrate = 115200

    [outputs]                      # GPIOs driven by the node, by function
    status_led = 2

    [inputs]                       # GPIOs read by the node, by function
    loop_1 = 34

    [adc]                          # analogue inputs by function; the channel follows from the pin
    battery = 35

Every rule breaks with one line that names the file, the key, the GPIO and the rule
(`BoardError`, a `ToolError`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roadside.gateway import roles
from roadside.tools import resources

from ..errors import ToolError
from .chips import CHIPS, FLASH_SIZES, Chip, ranges

BOARDS_DIR = resources.BOARDS  # boards/ in a checkout, package data in a wheel
ROLES = tuple(sorted(roles.NAMES))  # the one table of roles: gateway/roles.py
_TOP_KEYS = {"name", "description", "chip", "module", "flash_size", "micropython_port",
             "micropython_board", "ble", "role", "strapping_ok", "uart", "outputs", "inputs",
             "adc"}
_UART_KEYS = {"id", "tx", "rx", "baudrate", "rts", "cts", "de"}


class BoardError(ToolError):
    """A board file is missing, unreadable, or breaks a pin rule."""


@dataclass(frozen=True)
class Uart:
    """One UART by function: hardware id, pins and baud rate."""

    function: str
    id: int
    tx: int
    rx: int
    baudrate: int
    de: int | None = None  # RS-485 driver enable (an output), if the UART drives a transceiver


@dataclass(frozen=True)
class AdcInput:
    """An analogue input by function, with the ADC unit and channel its GPIO is wired to."""

    function: str
    gpio: int
    unit: int      # 1 or 2
    channel: int


@dataclass(frozen=True)
class Board:
    """A validated board definition."""

    path: Path
    name: str
    chip: Chip
    flash_size: str
    micropython_port: str
    ble: bool
    role: str | None = None
    description: str = ""
    micropython_board: str | None = None
    strapping_ok: frozenset[int] = frozenset()
    uarts: dict[str, Uart] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)
    adc: dict[str, AdcInput] = field(default_factory=dict)

    def pin_map(self) -> dict[int, str]:
        """GPIO -> the key that uses it ("uart.link.tx", "outputs.status_led", ...)."""
        pins: dict[int, str] = {}
        for u in self.uarts.values():
            pins[u.tx] = f"uart.{u.function}.tx"
            pins[u.rx] = f"uart.{u.function}.rx"
            if u.de is not None:
                pins[u.de] = f"uart.{u.function}.de"
        pins.update({g: f"outputs.{k}" for k, g in self.outputs.items()})
        pins.update({g: f"inputs.{k}" for k, g in self.inputs.items()})
        pins.update({a.gpio: f"adc.{k}" for k, a in self.adc.items()})
        return pins


def board_path(name_or_path: str | Path) -> Path:
    """A board name ("esp32-devkitc-v4") or a path to a .toml file -> the file's path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.parent != Path("."):
        return p
    return BOARDS_DIR / f"{p}.toml"


def shipped_boards() -> list[Path]:
    """The board files in the repository's boards/ directory."""
    return sorted(BOARDS_DIR.glob("*.toml"))


def load(name_or_path: str | Path) -> Board:
    """Read and validate a board file; raises BoardError with one line naming key and rule."""
    path = board_path(name_or_path)
    if not path.is_file():
        known = ", ".join(p.stem for p in shipped_boards()) or "none"
        raise BoardError(f"{path}: no such board file (shipped boards: {known})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BoardError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{path}: not valid TOML: {exc}") from exc
    return validate(data, path)


def validate(data: dict[str, Any], path: Path) -> Board:
    """Check a parsed board file against its chip's facts and return the Board."""
    v = _Validator(path)
    return v.run(data)


class _Validator:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.used: dict[int, str] = {}
        self.chip: Chip = CHIPS["sim"]
        self.ble = False
        self.strapping_ok: frozenset[int] = frozenset()

    def fail(self, key: str, message: str) -> BoardError:
        return BoardError(f"{self.path}: {key}: {message}")

    def _str(self, data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing (required)")
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, not {value!r}")
        return value

    def _int(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {value!r}")
        return value

    def _table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table ([{key}]), not {value!r}")
        return value

    def run(self, data: dict[str, Any]) -> Board:
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise self.fail(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
        name = self._str(data, "name")
        chip_name = self._str(data, "chip")
        if chip_name not in CHIPS:
            raise self.fail("chip", f"unknown chip {chip_name!r} (known: {', '.join(CHIPS)})")
        self.chip = CHIPS[chip_name]
        flash_size = self._str(data, "flash_size")
        if flash_size not in FLASH_SIZES:
            raise self.fail("flash_size",
                            f"{flash_size!r} is not one of {', '.join(FLASH_SIZES)}")
        port = self._str(data, "micropython_port")
        ble = data.get("ble")
        if not isinstance(ble, bool):
            raise self.fail("ble", f"must be true or false, not {ble!r}")
        self.ble = ble
        role = self._str(data, "role", required=False)
        if role is not None and role not in ROLES:
            raise self.fail("role", f"{role!r} is not one of {', '.join(ROLES)}")
        ok = data.get("strapping_ok", [])
        if not isinstance(ok, list):
            raise self.fail("strapping_ok", f"must be a list of GPIO numbers, not {ok!r}")
        for i, pin in enumerate(ok):
            self._int(f"strapping_ok[{i}]", pin)
            if pin not in self.chip.strapping:
                raise self.fail(f"strapping_ok[{i}]", f"GPIO {pin} is not a strapping pin on "
                                f"{self.chip.name} (strapping pins: "
                                f"{_list(self.chip.strapping)})")
        self.strapping_ok = frozenset(ok)

        uarts = self._uarts(self._table(data, "uart"))
        outputs = {k: self._pin(f"outputs.{k}", v, output=True)
                   for k, v in self._table(data, "outputs").items()}
        inputs = {k: self._pin(f"inputs.{k}", v, output=False)
                  for k, v in self._table(data, "inputs").items()}
        adc = {k: self._adc(f"adc.{k}", k, v) for k, v in self._table(data, "adc").items()}
        return Board(
            path=self.path, name=name or "", chip=self.chip, flash_size=flash_size or "",
            micropython_port=port or "", ble=ble, role=role,
            description=self._str(data, "description", required=False) or "",
            micropython_board=self._str(data, "micropython_board", required=False),
            strapping_ok=self.strapping_ok, uarts=uarts, outputs=outputs, inputs=inputs,
            adc=adc,
        )

    def _uarts(self, table: dict[str, Any]) -> dict[str, Uart]:
        uarts: dict[str, Uart] = {}
        ids: dict[int, str] = {}
        for function, spec in table.items():
            key = f"uart.{function}"
            if not isinstance(spec, dict):
                raise self.fail(key, "must be a table with id, tx, rx, baudrate")
            extra = sorted(set(spec) - _UART_KEYS)
            if extra:
                raise self.fail(f"{key}.{extra[0]}",
                                f"unknown key (known: {', '.join(sorted(_UART_KEYS))})")
            for req in ("id", "tx", "rx", "baudrate"):
                if req not in spec:
                    raise self.fail(f"{key}.{req}", "missing (required)")
            uid = self._int(f"{key}.id", spec["id"])
            if self.chip.uarts == 0:
                raise self.fail(key, f"{self.chip.name} has no UARTs")
            if not 0 <= uid < self.chip.uarts:
                raise self.fail(f"{key}.id", f"UART {uid} does not exist on {self.chip.name} "
                                f"(UART 0-{self.chip.uarts - 1})")
            if uid in ids:
                raise self.fail(f"{key}.id", f"UART {uid} is already used by uart.{ids[uid]}")
            ids[uid] = function
            baud = self._int(f"{key}.baudrate", spec["baudrate"])
            if baud <= 0:
                raise self.fail(f"{key}.baudrate", f"must be positive, not {baud}")
            tx = self._pin(f"{key}.tx", spec["tx"], output=True)
            rx = self._pin(f"{key}.rx", spec["rx"], output=False)
            de = (self._pin(f"{key}.de", spec["de"], output=True) if "de" in spec else None)
            uarts[function] = Uart(function, uid, tx, rx, baud, de)
        return uarts

    def _pin(self, key: str, value: Any, *, output: bool) -> int:
        """Check one GPIO against every pin rule, then mark it used by `key`."""
        pin = self._int(key, value)
        chip = self.chip
        if pin not in chip.gpios:
            have = chip.gpio_ranges() or "none: it is simulated"
            raise self.fail(key, f"GPIO {pin} does not exist on {chip.name} (GPIOs: {have})")
        if pin in chip.flash_pins:
            raise self.fail(key, f"GPIO {pin} is wired to the module's SPI flash on "
                            f"{chip.name} (GPIO {_list(chip.flash_pins)} are not usable)")
        if pin in self.used:
            raise self.fail(key, f"GPIO {pin} is already used by {self.used[pin]} "
                            "(one function per pin)")
        if output and pin in chip.input_only:
            raise self.fail(key, f"GPIO {pin} is input-only on {chip.name} (GPIO "
                            f"{_list(chip.input_only)} have no output driver); use another pin")
        if pin in chip.strapping and pin not in self.strapping_ok:
            raise self.fail(key, f"GPIO {pin} is a strapping pin on {chip.name} (its level at "
                            f"reset selects the boot mode); move it, or acknowledge it with "
                            f"strapping_ok = [{pin}]")
        self.used[pin] = key
        return pin

    def _adc(self, key: str, function: str, value: Any) -> AdcInput:
        pin = self._int(key, value)
        chip = self.chip
        if pin in chip.gpios and pin not in chip.adc1 and pin not in chip.adc2:
            raise self.fail(key, f"GPIO {pin} is not an ADC pin on {chip.name} (ADC1: GPIO "
                            f"{_list(chip.adc1)}; ADC2: GPIO {_list(chip.adc2)})")
        if pin in chip.adc2 and self.ble and chip.adc2_radio_conflict:
            raise self.fail(key, f"GPIO {pin} is ADC2 channel {chip.adc2[pin]} on {chip.name}, "
                            "unusable while the radio is on (ble = true); use an ADC1 pin "
                            f"(GPIO {_list(chip.adc1)})")
        pin = self._pin(key, pin, output=False)
        if pin in chip.adc1:
            return AdcInput(function, pin, 1, chip.adc1[pin])
        return AdcInput(function, pin, 2, chip.adc2[pin])


def _list(pins: Any) -> str:
    """GPIO numbers as ranges, sorted: '34-39' or '0, 2, 5, 12, 15'."""
    return ranges(sorted(pins))
