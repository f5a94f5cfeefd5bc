# Run by `roadside deploy` on the board through the raw REPL (tools/install/deploy.py
# survey), never stored on it: one exec that prints what the tool needs to know, one round
# trip instead of one per file: a line "HASH PATH" per file ("-" for a file it cannot read),
# then versions, unique id, the current config and the number of file lines.
# Each file's line is printed as it is hashed, through one read buffer: the answer is never
# held whole in the heap. (Held whole, as one dict and its repr, it took one block of ~7 KB
# for two firmware dirs of 36 files, in a heap the hashing had just cut up into pieces of
# the size of a file object: a MemoryError on a board with 128 KB free.)
import sys, os, hashlib, binascii, machine
_b = bytearray(512)
_m = memoryview(_b)
def _h(p):
    try:
        h = hashlib.sha256()
        with open(p, 'rb') as f:
            while True:
                n = f.readinto(_b)
                if not n:
                    break
                h.update(_m[:n])
        return binascii.hexlify(h.digest()).decode()
    except OSError:
        return '-'
def _walk(d, out):
    try:
        for e in os.ilistdir(d):
            p = d + '/' + e[0]
            if e[1] & 0x4000:
                _walk(p, out)
            else:
                out.append(p)
    except OSError:
        pass
_files = []  # type: list[str]
_walk('/fw', _files)
_walk('/lib/roadside_node', _files)
for _p in ('/main.py', '/config.json'):
    _files.append(_p)
for _p in _files:
    print(_h(_p), _p)
try:
    with open('/config.json') as f:
        _cfg = f.read()
except OSError:
    _cfg = None
print(repr({'version': '.'.join(str(x) for x in sys.implementation.version[:3]),
            'mpy': getattr(sys.implementation, '_mpy', 0),
            'uid': binascii.hexlify(machine.unique_id()).decode(),
            'config': _cfg, 'files': len(_files)}))
