# The virtual board's own MicroPython (not deployed to a board): the flash a simulated node
# mounts, and the pieces of a board the unix port lacks. See flash.py and blockdev.py.
