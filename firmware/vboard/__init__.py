# The virtual board's own MicroPython (not deployed to a board): the flash a simulated node
# or virtual board mounts (filedev.py: the partition in a host file; flash.py: mount it as /
# like the ESP32 port), test devices (blockdev.py: RAM, power cuts), the virtual board's boot
# and the pieces of a board the unix port lacks (boot.py, vmachine.py, vesp32.py), and the
# host's access to an image (vflash.py, driven by tools/sim/vflash.py).
