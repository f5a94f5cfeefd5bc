# Board entry: the roadside_node package lives in /lib (or the deployed /fw/<tag>), config.json
# and the journal in /. otaboot (never replaced by an app bundle) first puts the app slot an
# over-the-air update switched to ahead of it on sys.path (PROTOCOL.md 2.6). An exception that
# escapes the app resets the board (a crash counts towards safe mode, see
# roadside_node/bootguard.py; in a trial boot of an update it rolls the update back); the
# watchdog covers a hang.
import sys

import machine
import otaboot

trial = otaboot.select()
try:
    from roadside_node.app import App
    from roadside_node.config import Config
    from roadside_node.hw.esp32 import Esp32HW
except Exception as e:
    if not trial:
        raise
    sys.print_exception(e)
    otaboot.rollback("import")
    machine.reset()

config = Config.load()
hw = Esp32HW(config)
try:
    App(hw, config, hw.log).run()
except Exception as e:
    sys.print_exception(e)
    if trial:
        otaboot.rollback("crash")
    machine.reset()
