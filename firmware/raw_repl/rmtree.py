# Run by `roadside deploy` on the board through the raw REPL (tools/install/deploy.py
# remove_stale), never stored on it: defines _rm(d), which removes a tree (files and empty
# directories); the tool then sends the _rm / os.remove calls.
import os
def _rm(d):
    try:
        for e in list(os.ilistdir(d)):
            p = d + '/' + e[0]
            if e[1] & 0x4000:
                _rm(p)
            else:
                os.remove(p)
        os.rmdir(d)
    except OSError:
        pass
