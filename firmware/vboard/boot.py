# The virtual board's boot (tools/sim/virtual_board.py runs it; it is not on the image):
#   micropython -i firmware/vboard/boot.py IMAGE BLOCKS MODE CAUSE RUN
# Installs this board's `machine` and `esp32` (vmachine.py, vesp32.py), mounts IMAGE as / the
# way the ESP32 port does (flash.py, shared with the simulated nodes' sim_main.py), then, in
# friendly MODE, runs /boot.py and /main.py from the image; `-i` leaves the REPL. RUN is the
# board's host directory (board.json: mac, link pty, sensor; rtc.bin).
import os
import sys

sys.path.insert(0, __file__.rsplit("/", 2)[0] if __file__.count("/") > 1 else "..")

from vboard import vesp32, vmachine  # noqa: E402
from vboard.flash import host_path, mount_image  # noqa: E402

_READY = "\x00vboard:ready\x00"  # tools/sim/virtual_board.py READY: the relay waits for it


def _boot(image, blocks, cause, run):
    sys.modules["machine"] = vmachine
    sys.modules["esp32"] = vesp32
    vmachine._init(cause, run)
    delay = vmachine._cfg.get("boot_delay_ms", 0)
    if delay:  # a slow boot (tests): e.g. a board formatting its filesystem
        import time
        time.sleep_ms(delay)
    if not image.startswith("/"):
        image = os.getcwd().rstrip("/") + "/" + image
    try:  # the OTA app partitions: files beside the image, once an update wrote them
        os.stat(image + ".otadata.json")
        vesp32.ROOT = image
        vesp32.bootloader()  # which one boots (the rollback rule), on the host's files
    except OSError:
        pass
    mount_image(image, blocks)
    vesp32.ROOT = host_path(image)  # the same files, as the board sees them now
    sys.path[:] = ["", ".frozen", "/lib"]  # the board's path: nothing from the host


def _run(path):
    try:
        os.stat(path)
    except OSError:
        return
    try:
        with open(path) as f:
            code = f.read()
        exec(code, {"__name__": "__main__", "__file__": path})
    except SystemExit:
        raise
    except BaseException as e:
        sys.print_exception(e)


def _main():
    image, blocks, mode, cause, run = sys.argv[1:6]
    up = False
    try:
        try:
            _boot(image, int(blocks), cause, run)
            up = True
        finally:
            # the relay holds the user's input until it sees READY; also after a failed
            # boot, whose traceback the user must see at the REPL
            sys.stdout.write(_READY)
        if mode != "raw":
            _run("/boot.py")
            _run("/main.py")
    except KeyboardInterrupt:
        if not up:
            raise  # cannot happen (input is held until READY); never hide a broken boot
        # a Ctrl-C just after READY, before main.py ran: to the REPL, as on a board


_main()
del _main, _boot, _run, _READY, host_path, mount_image, vmachine, vesp32
