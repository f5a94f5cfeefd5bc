# Run by `roadside deploy` on the board through the raw REPL (tools/install/deploy.py
# survey), never stored on it: one exec that prints what the tool needs to know, one round
# trip instead of one per file: versions, unique id, the current config, file hashes.
import sys, os, hashlib, binascii, machine
def _h(p):
    try:
        h = hashlib.sha256()
        b = bytearray(512)
        m = memoryview(b)
        with open(p, 'rb') as f:
            while True:
                n = f.readinto(b)
                if not n:
                    break
                h.update(m[:n])
        return binascii.hexlify(h.digest()).decode()
    except OSError:
        return None
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
try:
    with open('/config.json') as f:
        _cfg = f.read()
except OSError:
    _cfg = None
print(repr({'version': '.'.join(str(x) for x in sys.implementation.version[:3]),
            'mpy': getattr(sys.implementation, '_mpy', 0),
            'uid': binascii.hexlify(machine.unique_id()).decode(),
            'config': _cfg, 'hashes': dict((p, _h(p)) for p in _files)}))
