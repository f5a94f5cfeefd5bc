# The node config's editing half: config.set and the whole config with defaults (config.get
# without a key). Imported on the first config command, not at boot: a node that is never
# configured over the link does not hold this code (docs/PERFORMANCE.md "Free heap at HELLO").
# (CPython loads it too, through config.py: tools/node/schema.py; so json, config and roles
# only.) Also the list of every key (all_keys), which an unknown key's error names.
import json

from . import config
from .config import (MAX_CBOR, TABLE, ConfigError, _get, _put, canonical, check, default, find,
                     role_keys)
from .roles import ROLES


def all_keys():
    """Every key config.set takes, for any role: identity, numbers and choices, then lists."""
    keys = set()
    for t in [TABLE] + [role_keys(r).TABLE for r in ROLES]:
        keys.update([t[i] for i in range(0, len(t), 5)])
    lists = [k for k in ("conflicts", "antenna_lanes") if k in keys]
    return ["node_id", "role", "board"] + sorted([k for k in keys if k not in lists]) + lists


def effective(c, data=None):
    """Config c's data (or data) with defaults filled in: every node's keys and the node's
    role's; another role's keys only as stored."""
    # a copy: filling defaults must not touch data
    out = json.loads(json.dumps(c.data if data is None else data))
    for t in (TABLE, () if c.keys is None else c.keys.TABLE):
        for i in range(0, len(t), 5):
            if _get(out, t[i]) is None and t[i + 1] is not None:
                _put(out, t[i], default(t, i))
    return out


def set_key(c, key, value):
    """Validate, apply and persist one key of Config c; returns the stored value. Another
    role's key is checked by that role's keys (and its cross-key rules); a new role has the
    stored config checked against its keys, so the next boot takes it."""
    key = canonical(key)
    value = check(key, value, c.keys)
    trial = json.loads(json.dumps(c.data))  # deep copy to check cross-key rules
    _put(trial, key, value)
    m = role_keys(value) if key == "role" else find(key, c.keys)[1]
    if m is not None:
        c._check(trial, m)
    if c.keys is not None and m is not c.keys:
        c._check(trial, c.keys)
    from .cbor import dumps
    size = len(dumps(effective(c, trial)))
    if size > MAX_CBOR:
        raise ConfigError("%s: the config would be %d bytes, at most %d; remove what is "
                          "not in use first" % (key, size, MAX_CBOR))
    c.data = trial
    config.write_atomic(c.path, json.dumps(c.data))  # config.py's: the power-cut test swaps it
    return value
