# Unix-port entry of a simulated node: micropython -X heapsize=N firmware/sim_main.py NODE_DIR
# [MPY_DIR] (N: tools/sim/launcher.py HEAPSIZE, the board's 96 KiB plus this twin's flash driver; a
# node started with less than the board has fails for the wrong reason). NODE_DIR is the node's host directory: flash.img, its flash (LittleFS2 mounted as
# / as the ESP32 port does: config.json, journal, state, secret), and what is not flash:
# wiring.json (pty, scenario, speed, seed...: tools/sim/launcher.py writes it), reset cause, RTC memory.
# The firmware is the board's "ROM": imported from the host (/host), from MPY_DIR (mpy-cross,
# see tools/sim/launcher.py build_mpy) ahead of the sources: compiling them needs more heap than a
# node has. A reset exits with status 3.
import json
import os
import sys


def _abs(path):
    return path if path.startswith("/") else os.getcwd().rstrip("/") + "/" + path


_FIRMWARE = _abs(__file__).rsplit("/", 1)[0]
_ROM = [_abs(sys.argv[2])] if len(sys.argv) > 2 else []
sys.path[:0] = _ROM + [_FIRMWARE]

from vboard.flash import host_path, mount_image  # noqa: E402


def _wiring(node_dir):
    """wiring.json with its host paths as the mounted board sees them (under /host)."""
    try:
        with open(node_dir + "/wiring.json") as f:
            wiring = json.load(f)
    except (OSError, ValueError) as e:
        print("no usable wiring.json in %s (%s): prepare NODE_DIR with tools/sim/launcher.py write_node"
              " (roadside sim does)" % (node_dir, e))
        sys.exit(2)
    sim = {}
    for key, value in wiring.get("sim", {}).items():
        sim[key] = host_path(value) if isinstance(value, str) and value.startswith("/") else value
    sim["hw_dir"] = host_path(node_dir)  # reset cause, RTC memory: hardware, not flash
    return wiring, sim


def main():
    if len(sys.argv) < 2:
        print("usage: sim_main.py NODE_DIR [MPY_DIR]")
        sys.exit(2)
    node_dir = _abs(sys.argv[1]).rstrip("/")
    wiring, sim = _wiring(node_dir)
    mount_image(node_dir + "/flash.img", int(wiring["blocks"]))
    sys.path[:] = [host_path(d) for d in _ROM + [_FIRMWARE]] + [".frozen"]

    # the app slot an update switched to, ahead of the ROM (main.py does the same)
    trial = None
    if "ota" in os.listdir():  # else no update ever came: the loader is not even loaded
        trial = __import__("otaboot").select(("roadside_node.app", "roadside_node.hw.sim"),
                                             lambda: _reset(node_dir, "panic"))
    from roadside_node.app import App
    from roadside_node.config import Config, ConfigError
    from roadside_node.hw.sim import SimHW

    class WiredConfig(Config):
        """The node's config.json from its flash; `sim` is the wiring, never stored."""

        wiring = {}  # type: dict

        @property
        def sim(self):
            return self.wiring

    try:
        config = WiredConfig.load()
    except ConfigError as e:
        print("config error:", e)
        sys.exit(2)
    config.wiring = sim
    hw = SimHW(config)
    try:
        App(hw, config).run()
    except Exception as e:  # a crash: like a board's main.py, print it and reset
        sys.print_exception(e)
        if trial:
            import otaboot
            otaboot.rollback("crash")
        hw.reset("panic")


def _reset(node_dir, cause):
    """A reset before the app's hw layer could load (hw/sim.py SimHW.reset's file, status)."""
    with open(host_path(node_dir) + "/reset_cause", "w") as f:
        f.write(cause)
    sys.exit(3)


main()
