# A stand-in firmware entry for testing the launcher itself (not the firmware): it runs under
# the real MicroPython, mounts NODE_DIR/flash.img as / like sim_main.py does, reads its
# config.json there and the uart from NODE_DIR/wiring.json, announces itself, resets once
# (exit 3) and then waits to be stopped.
import json
import sys
import time

node_dir = sys.argv[1]
sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/firmware")
from vboard.flash import host_path, mount_image  # noqa: E402

with open(node_dir + "/wiring.json") as f:
    wiring = json.load(f)
mount_image(node_dir + "/flash.img", wiring["blocks"])
with open("config.json") as f:
    config = json.load(f)
try:
    with open("boots") as f:
        boots = int(f.read())
except OSError:
    boots = 0
boots += 1
with open("boots", "w") as f:
    f.write(str(boots))
uart = open(host_path(wiring["sim"]["uart"]), "wb")
uart.write(b"%s boot %d\n" % (config["node_id"].encode(), boots))
print("booted", boots, "speed", wiring["sim"]["speed"])
if boots == 1:
    sys.exit(3)
while True:
    time.sleep(0.05)
