# Board entry: the roadside_node package lives in /lib, config.json and the journal in /.
# An exception that escapes the app resets the board (a crash counts towards safe mode, see
# roadside_node/bootguard.py); the watchdog covers a hang.
import sys

import machine
from roadside_node.app import App
from roadside_node.config import Config
from roadside_node.hw.esp32 import Esp32HW

config = Config.load()
hw = Esp32HW(config)
try:
    App(hw, config, hw.log).run()
except Exception as e:
    sys.print_exception(e)
    machine.reset()
