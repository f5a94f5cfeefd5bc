# Board entry: the roadside_node package lives in /lib (or the deployed /fw/<tag>), config.json
# and the journal in /. otaboot (never replaced by an app bundle) puts the app slot an
# over-the-air update switched to ahead of it on sys.path, and rolls back a trial of an update
# that does not import (PROTOCOL.md 2.6). An exception that escapes the app resets the board (a
# crash counts towards safe mode, see roadside_node/bootguard.py; in a trial it rolls the update
# back); the watchdog covers a hang.
import os
import sys

import machine

trial = None
if "ota" in os.listdir():  # else no update ever came: the loader is not even loaded
    trial = __import__("otaboot").select(("roadside_node.app", "roadside_node.hw.esp32"),
                                         machine.reset)
from roadside_node.app import App  # noqa: E402
from roadside_node.config import Config  # noqa: E402
from roadside_node.hw.esp32 import Esp32HW  # noqa: E402

config = Config.load()
hw = Esp32HW(config)
try:
    App(hw, config, hw.log).run()
except Exception as e:
    sys.print_exception(e)
    if trial:
        import otaboot
        otaboot.rollback("crash")
    machine.reset()
