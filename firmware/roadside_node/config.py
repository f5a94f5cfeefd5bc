# Node config: NODE_DIR/config.json merged over defaults, validated with messages that name
# the key, the bad value and what is allowed. Unknown keys are kept as they are.
# (CPython loads this module too: tools/node/schema.py checks values before they go out, so
# it imports nothing but json, journal and roles at the top; config_edit.py, imported on the
# first config command, sets keys and fills defaults.)
import json

from .journal import write_atomic  # noqa: F401 - config_edit.py saves through it (tests swap it)
from .roles import ROLES

# The whole config with defaults (config.get without a key) as CBOR at most: its REPLY fits
# one sealed BLE frame (ble.BlePort.max_payload 992) with room for the REPLY's own head.
MAX_CBOR = 900
_CLIP = 24  # characters of untrusted input an error text may quote


def clip(v):
    """A bounded view of untrusted input for an error text: short text and numbers as they
    are, a long text cut with its length, other values by type only. An error that quoted a
    990-character value whole would itself no longer fit a frame."""
    if isinstance(v, str):
        if len(v) <= _CLIP:
            return repr(v)
        return "%s... (%d chars)" % (repr(v[:_CLIP - 8]), len(v))
    if v is None or isinstance(v, (bool, int, float)):
        s = repr(v)
        return s if len(s) <= _CLIP else s[:_CLIP - 3] + "..."
    return "a " + type(v).__name__

PATH = "config.json"

# key, default, kind, low, high: one flat tuple, a key a line (a dict of 4-tuples held ~40 B
# more per key, docs/PERFORMANCE.md "Free heap at HELLO"); dotted keys live in a nested
# section. A float key's whole default is written as an int (a float constant held ~40 B;
# default() gives it as a float), a choice's choices (kind str) as one text split by spaces
# (a tuple constant's texts are held as copies, ~100 B each). These are the keys of every
# node; each role's own keys are in roles/<role>_keys.py (its TABLE, with lists as kind list,
# and ORDER, the values that must increase: "section key key ..." groups, ";" between, one
# text for the same reason), imported for the node's own role only: a water node holds no
# signal, toll or rain keys.
# Another role's key on a node (config.set) is checked by that role's module, imported for
# the call; at boot it is kept as it is, like any key the node does not use.
TABLE: tuple = (
    "journal_max_bytes", 32768, int, 1024, 1048576,
    "health_interval_s", 300, int, 10, 86400,
    "battery", False, bool, None, None,  # deep sleep between samples, state in RTC memory
    "awake_max_ms", 4000, int, 500, 60000,  # battery: longest wait for the gateway's ACK
    "safe_mode_after", 3, int, 1, 100,  # boots dying before a healthy minute -> safe mode
    "watchdog_ms", 8000, int, 1000, 120000,
    "ble", False, bool, None, None,  # GATT transport (ble.py); needs a secret (secret.set)
)


def role_keys(role):
    """roles/<role>_keys.py: the role's TABLE and ORDER (role one of ROLES)."""
    return __import__(__name__[:-6] + "roles." + role + "_keys", None, None, ("TABLE",))


def _at(t, key):
    """Where key's name is in TABLE t (its default, kind, low and high follow), or -1."""
    try:
        i = t.index(key)
    except ValueError:
        return -1
    return -1 if i % 5 else i  # a value that reads like a key is no key (no key is a value)


def default(t, i):
    """The default of the key at t[i] (TABLE t): a float key's as a float."""
    d = t[i + 1]
    return float(d) if t[i + 2] is float else d


def find(key, own=None):
    """(where key is in its TABLE, its role's keys module or None: every node's TABLE) for
    key: every node's TABLE, then the node's own role's (own), then the other roles'
    (imported for the call); (-1, None) if none."""
    i = _at(TABLE, key)
    if i >= 0:
        return i, None
    if own is not None:
        i = _at(own.TABLE, key)
        if i >= 0:
            return i, own
    for r in ROLES:
        m = role_keys(r)
        i = _at(m.TABLE, key)
        if i >= 0:
            return i, m
    return -1, None


class ConfigError(ValueError):
    pass


def _get(d, key):
    if "." in key:
        sec, sub = key.split(".", 1)
        s = d.get(sec)
        return s.get(sub) if isinstance(s, dict) else None
    return d.get(key)


def _put(d, key, v):
    if "." in key:
        sec, sub = key.split(".", 1)
        s = d.get(sec)
        if not isinstance(s, dict):
            s = {}
            d[sec] = s
        s[sub] = v
    else:
        d[key] = v


ALIASES = ("alert_cm", "alarm_cm", "critical_cm", "hysteresis_cm")  # short for thresholds.X


def canonical(key):
    return "thresholds." + key if key in ALIASES else key


def check(key, value, own=None):
    """The validated (and normalised) value for key, or ConfigError saying what is allowed
    (own: the node's role's keys module, looked up before the other roles')."""
    if key == "node_id":
        if isinstance(value, str) and 0 < len(value) <= 32:
            return value
        raise ConfigError("node_id: bad value %s; allowed: text of 1 to 32 characters"
                          % clip(value))
    if key == "role":
        if isinstance(value, str) and value in ROLES:  # (bytes in a str tuple: a warning)
            return value
        raise ConfigError("role: bad value %s; allowed: %s" % (clip(value), ", ".join(ROLES)))
    if key == "board":
        if isinstance(value, str) and 0 < len(value) <= 32:
            return value
        raise ConfigError("board: bad value %s; allowed: a board name (text of 1 to 32 "
                          "characters)" % clip(value))
    if key == "site":
        if isinstance(value, str) and len(value) <= 64:
            return value
        raise ConfigError("site: bad value %s; allowed: text of up to 64 characters"
                          % clip(value))
    i, m = find(key, own) if isinstance(key, str) else (-1, None)
    if i < 0:
        from .config_edit import all_keys  # an error's list of keys: not held at boot
        raise ConfigError("%s: unknown key; allowed keys: %s" % (
            key if isinstance(key, str) and len(key) <= 32 else clip(key), ", ".join(all_keys())))
    t = TABLE if m is None else m.TABLE  # (m None: every node's)
    kind, lo, hi = t[i + 2], t[i + 3], t[i + 4]
    if kind is list:  # its role's own check (lo), in roles/<role>_keys.py
        return lo(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError("%s: bad value %s; allowed: true or false" % (key, clip(value)))
    if kind is str:
        if isinstance(value, str) and value in lo.split():
            return value
        raise ConfigError("%s: bad value %s; allowed: %s" % (key, clip(value),
                                                           ", ".join(lo.split())))
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and isinstance(value, float) and (value != value or value - value != 0):
        # NaN or +-inf (JSON from a command API can carry them): int() would raise
        raise ConfigError("%s: bad value %s; allowed: a finite number from %s to %s" % (
            key, clip(value), _fmt(lo), _fmt(hi)))
    if ok and kind is int and isinstance(value, float):
        ok = value == int(value)
    if ok:
        value = kind(value)
        ok = lo <= value <= hi
    if not ok:
        what = "an integer" if kind is int else "a number"
        raise ConfigError("%s: bad value %s; allowed: %s from %s to %s" % (
            key, clip(value), what, _fmt(lo), _fmt(hi)))
    return value


def show_list(value):
    """A short list is shown as it is (its items are small numbers); a long one by length."""
    if isinstance(value, list) and len(value) <= 8:
        s = repr(value)
        if len(s) <= 48:
            return s
    return "a list of %d" % len(value) if isinstance(value, list) else clip(value)


def _fmt(x):
    return str(int(x)) if x == int(x) else str(x)


class Config:
    def __init__(self, data=None, path=PATH):
        self.path = path
        self.data = data if data is not None else {}
        role = self.data.get("role", "water")
        # the keys of the role this node runs (its role at boot: config.set role takes effect
        # at the next one); None for a role the firmware does not know (validate refuses it)
        self.keys = role_keys(role) if isinstance(role, str) and role in ROLES else None

    @classmethod
    def load(cls, path=PATH):
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError:
            data = {}
        except ValueError as e:
            raise ConfigError("%s is not JSON: %s" % (path, e))
        if not isinstance(data, dict):
            raise ConfigError("%s: must be a JSON object" % path)
        c = cls(data, path)
        c.validate()
        return c

    def validate(self, every_role=False):
        """Check (and normalise) every key of this node's role, and the cross-key rules; with
        every_role (the host's tools) every role's keys and rules. Other keys are kept as
        they are."""
        for key in ("node_id", "role", "board", "site"):
            if key in self.data:
                check(key, self.data[key])
        self._check(self.data, None)
        if every_role:
            for r in ROLES:
                self._check(self.data, role_keys(r))
        elif self.keys is not None:
            self._check(self.data, self.keys)

    def _check(self, data, m):
        """Check data's keys of keys module m (None: every node's TABLE) and m's ORDER."""
        t = TABLE if m is None else m.TABLE  # (m None: every node's)
        for i in range(0, len(t), 5):
            key = t[i]
            v = _get(data, key)
            if v is not None:
                _put(data, key, check(key, v, m))
        for group in m.ORDER.split(";") if m is not None and m.ORDER else ():
            names = group.split()
            sec = names.pop(0)
            vs = [self._value(data, sec + "." + n, m) for n in names]
            if any(not vs[i] < vs[i + 1] for i in range(len(vs) - 1)):
                raise ConfigError("%s: bad values %s; allowed: %s" % (
                    sec, " ".join(["%s=%s" % (n, v) for n, v in zip(names, vs)]),
                    " < ".join(names)))

    def _value(self, data, key, m):
        v = _get(data, key)
        return default(m.TABLE, _at(m.TABLE, key)) if v is None else v

    def get(self, key, data=None):
        d = self.data if data is None else data
        key = canonical(key)
        v = _get(d, key)
        if v is None:
            if key == "node_id":
                return "node"
            if key == "role":
                return "water"
            if key == "board":
                return "unknown"
            if key == "site":
                return None
            # another role's key: its default (its keys imported for the call, ~1 to 4 KB
            # until the next boot: a role's own code asks for its own keys only)
            i, m = find(key, self.keys)
            if i >= 0:
                return default(TABLE if m is None else m.TABLE, i)
        return v

    def effective(self, data=None):
        """The whole config with defaults filled in (config.get without a key)."""
        from .config_edit import effective
        return effective(self, data)

    def set(self, key, value):
        """Validate, apply and persist one key; returns the stored value."""
        from .config_edit import set_key
        return set_key(self, key, value)

    @property
    def sim(self):
        s = self.data.get("sim")
        return s if isinstance(s, dict) else {}
