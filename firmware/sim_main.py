# Unix-port entry: micropython -X heapsize=96k firmware/sim_main.py NODE_DIR [MPY_DIR]
# NODE_DIR is the node's flash (config.json, journal, state); a reset exits with status 3.
# MPY_DIR (optional): precompiled firmware (mpy-cross, see tools/sim.py build_mpy), imported
# ahead of the sources: compiling the sources needs more heap than a 64 KiB node has.
import os
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0] if "/" in __file__ else ".")
if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])

from roadside_node.app import App  # noqa: E402
from roadside_node.config import Config, ConfigError  # noqa: E402
from roadside_node.hw.sim import SimHW  # noqa: E402


def main():
    if len(sys.argv) < 2:
        print("usage: sim_main.py NODE_DIR [MPY_DIR]")
        sys.exit(2)
    os.chdir(sys.argv[1])
    try:
        config = Config.load()
    except ConfigError as e:
        print("config error:", e)
        sys.exit(2)
    hw = SimHW(config)
    try:
        App(hw, config).run()
    except Exception as e:  # a crash: like a board's main.py, print it and reset
        sys.print_exception(e)
        hw.reset("panic")


main()
