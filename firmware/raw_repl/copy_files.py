# Run by `roadside deploy` on the board through the raw REPL (tools/install/deploy.py
# copy_on_board), never stored on it: defines _cp(src, dst), which copies a file the board
# already has, in 1 KiB pieces; the tool then sends the _cp calls.
import os
_b = bytearray(1024)
def _cp(src, dst):
    with open(src, 'rb') as s, open(dst, 'wb') as d:
        while True:
            n = s.readinto(_b)
            if not n:
                break
            d.write(_b if n == len(_b) else memoryview(_b)[:n])
