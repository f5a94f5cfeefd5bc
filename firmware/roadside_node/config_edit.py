# The node config's editing half: config.set and the whole config with defaults (config.get
# without a key). Imported on the first config command, not at boot: a node that is never
# configured over the link does not hold this code (docs/PERFORMANCE.md "Free heap at HELLO").
# (CPython loads it too, through config.py: tools/node/schema.py; so json and config only.)
import json

from . import config
from .config import MAX_CBOR, SCHEMA, ConfigError, _get, _put, canonical, check, find, role_keys


def effective(c, data=None):
    """Config c's data (or data) with defaults filled in: every node's keys and the node's
    role's; another role's keys only as stored."""
    # a copy: filling defaults must not touch data
    out = json.loads(json.dumps(c.data if data is None else data))
    for schema in (SCHEMA, {} if c.keys is None else c.keys.SCHEMA):
        for key in schema:
            if _get(out, key) is None and schema[key][0] is not None:
                _put(out, key, schema[key][0])
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
