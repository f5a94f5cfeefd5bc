"""Chip facts as data: which GPIOs a chip has, which are input-only, strapping, wired to the
module's flash, and which GPIO is which ADC channel.

Sources: the ESP32, ESP32-S3 and ESP32-C3 datasheets (pin lists, strapping pins), and
ESP-IDF's ADC channel tables. `boards.py` validates board files against these; `flashing.py`
uses `image_chip_id` and `flash_offset` to refuse an image of another chip and to know where a
MicroPython image goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _span(first: int, last: int) -> frozenset[int]:
    return frozenset(range(first, last + 1))


@dataclass(frozen=True)
class Chip:
    """What a board validator and the flasher need to know about one chip."""

    name: str                       # as in board files: "esp32", "esp32s3", ...
    title: str                      # as esptool prints it: "ESP32", "ESP32-S3", ...
    gpios: frozenset[int]           # GPIOs the chip has
    input_only: frozenset[int]      # no output driver
    strapping: frozenset[int]       # level at reset selects boot mode / flash voltage / logging
    flash_pins: frozenset[int]      # wired to the module's SPI flash: never usable
    adc1: dict[int, int]            # GPIO -> ADC1 channel
    adc2: dict[int, int]            # GPIO -> ADC2 channel
    adc2_radio_conflict: bool       # ADC2 unusable while the radio (BLE / Wi-Fi) is on
    uarts: int                      # hardware UART count (ids 0..uarts-1)
    image_chip_id: int | None       # chip id in the image extended header (esptool IMAGE_CHIP_ID)
    flash_offset: int               # where a MicroPython firmware.bin is written
    notes: dict[int, str] = field(default_factory=dict)

    def gpio_ranges(self) -> str:
        """The chip's GPIOs as compact ranges: '0-19, 21-23, 25-27, 32-39'."""
        return ranges(sorted(self.gpios))


def ranges(pins: list[int]) -> str:
    """Sorted GPIO numbers as compact ranges: [0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    i = 0
    while i < len(pins):
        j = i
        while j + 1 < len(pins) and pins[j + 1] == pins[j] + 1:
            j += 1
        out.append(str(pins[i]) if i == j else f"{pins[i]}-{pins[j]}")
        i = j + 1
    return ", ".join(out)


CHIPS: dict[str, Chip] = {
    "esp32": Chip(
        name="esp32", title="ESP32",
        gpios=_span(0, 19) | _span(21, 23) | _span(25, 27) | _span(32, 39),
        input_only=_span(34, 39),
        strapping=frozenset({0, 2, 5, 12, 15}),
        flash_pins=_span(6, 11),
        adc1={36: 0, 37: 1, 38: 2, 39: 3, 32: 4, 33: 5, 34: 6, 35: 7},
        adc2={4: 0, 0: 1, 2: 2, 15: 3, 13: 4, 12: 5, 14: 6, 27: 7, 25: 8, 26: 9},
        adc2_radio_conflict=True,
        uarts=3, image_chip_id=0, flash_offset=0x1000,
    ),
    "esp32s3": Chip(
        name="esp32s3", title="ESP32-S3",
        gpios=_span(0, 21) | _span(26, 48),
        input_only=frozenset(),
        strapping=frozenset({0, 3, 45, 46}),
        flash_pins=_span(26, 32),
        adc1={g: g - 1 for g in range(1, 11)},
        adc2={g: g - 11 for g in range(11, 21)},
        adc2_radio_conflict=False,
        uarts=3, image_chip_id=9, flash_offset=0x0,
    ),
    "esp32c3": Chip(
        name="esp32c3", title="ESP32-C3",
        gpios=_span(0, 21),
        input_only=frozenset(),
        strapping=frozenset({2, 8, 9}),
        flash_pins=_span(12, 17),
        adc1={g: g for g in range(0, 5)},
        adc2={5: 0},
        adc2_radio_conflict=False,
        uarts=2, image_chip_id=5, flash_offset=0x0,
    ),
    # The simulated board (MicroPython unix port): no GPIOs, nothing to flash.
    "sim": Chip(
        name="sim", title="simulated",
        gpios=frozenset(), input_only=frozenset(), strapping=frozenset(),
        flash_pins=frozenset(), adc1={}, adc2={}, adc2_radio_conflict=False,
        uarts=0, image_chip_id=None, flash_offset=0,
    ),
}

FLASH_SIZES = ("1MB", "2MB", "4MB", "8MB", "16MB", "32MB")


def chip_for_image_id(chip_id: int) -> Chip | None:
    """The chip whose images carry `chip_id` in their extended header, if we know it."""
    for chip in CHIPS.values():
        if chip.image_chip_id == chip_id:
            return chip
    return None


def chip_for_title(title: str) -> Chip | None:
    """The chip esptool reports as `title` ("ESP32-S3"), if we know it."""
    for chip in CHIPS.values():
        if chip.title.lower() == title.lower():
            return chip
    return None
