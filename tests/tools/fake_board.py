# A stand-in firmware entry for testing the launcher itself (not the firmware): it runs under
# the real MicroPython, reads NODE_DIR/config.json, opens the uart like sim_main.py does,
# announces itself, resets once (exit 3) and then waits to be stopped.
import json
import os
import sys
import time

node_dir = sys.argv[1]
os.chdir(node_dir)
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
uart = open(config["sim"]["uart"], "wb")
uart.write(b"%s boot %d\n" % (config["node_id"].encode(), boots))
print("booted", boots, "speed", config["sim"]["speed"])
if boots == 1:
    sys.exit(3)
while True:
    time.sleep(0.05)
