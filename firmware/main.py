# Board entry (docs/ARCHITECTURE.md): otaboot.py picks an update's app slot once an ota dir
# exists. An escaping exception resets the board (a trial's rolls it back); the watchdog too.
import os
import sys

import machine

ota = "ota" in os.listdir() and __import__("otaboot").select(
    ("roadside_node.app", "roadside_node.hw.esp32"), machine.reset)
from roadside_node.app import App  # noqa: E402
from roadside_node.config import Config  # noqa: E402
from roadside_node.hw.esp32 import Esp32HW  # noqa: E402

config = Config.load()
hw = Esp32HW(config)
try:
    App(hw, config, hw.log, ota).run()
except Exception as e:
    sys.print_exception(e)
    if ota:
        __import__("otaboot").rollback("crash")
    machine.reset()
