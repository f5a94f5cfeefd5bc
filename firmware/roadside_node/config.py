# Node config: NODE_DIR/config.json merged over defaults, validated with messages that name
# the key, the bad value and what is allowed. Unknown keys are kept as they are.
# (CPython loads this module too: tools/node/schema.py checks values before they go out, so
# it imports nothing but json and journal at the top.)
import json

from .journal import write_atomic
from .roles import ROLES

# The whole config with defaults (config.get without a key) as CBOR at most: its REPLY fits
# one sealed BLE frame (ble.BlePort.max_payload 992) with room for the REPLY's own head.
MAX_CBOR = 900
MAX_PAIRS = 64  # conflicts: a full 8-phase matrix is 28 pairs; field controllers ~20
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

# key -> (default, kind, low, high); dotted keys live in a nested section
SCHEMA: dict = {
    "journal_max_bytes": (32768, int, 1024, 1048576),
    "health_interval_s": (300, int, 10, 86400),
    "datum_mm": (3000, int, 100, 20000),  # sensor face height above the datum (level 0)
    "sample_interval_s": (2, int, 1, 3600),
    "report_interval_s": (60, int, 1, 86400),  # level records when calm
    "fast_interval_s": (10, int, 1, 3600),  # ...while rising or at/above alert
    "rise_cm_per_min": (5.0, float, 0.0, 1000.0),  # "rising" for the fast interval
    "outlier_mm": (300, int, 10, 10000),  # a sample this far from the median is rejected
    "thresholds.alert_cm": (100.0, float, -1000.0, 10000.0),
    "thresholds.alarm_cm": (150.0, float, -1000.0, 10000.0),
    "thresholds.critical_cm": (200.0, float, -1000.0, 10000.0),
    "thresholds.hysteresis_cm": (10.0, float, 0.0, 1000.0),
    # signal monitor (roles/signal.py); "conflicts" (pairs of phases) is checked in check()
    "phases": (4, int, 1, 16),
    "debounce_ms": (100, int, 10, 2000),  # a head input must hold this long to count
    "min_green_ms": (5000, int, 0, 120000),
    "amber_ms": (3000, int, 0, 10000),  # shortest amber (clearance) allowed
    "all_red_ms": (1000, int, 0, 10000),  # shortest red before a conflicting green
    "count_interval_s": (60, int, 5, 3600),  # loop detector counts per approach
    "plans": (8, int, 1, 32),  # timing plans 1..plans the controller knows
    # toll beacon (roles/toll.py); "antenna_lanes" (lane of antenna 1, 2, ...) in check()
    "window_ms": (1000, int, 50, 60000),  # a passage ends when its tag is unseen this long
    "reader_silent_ms": (5000, int, 500, 600000),  # no heartbeat this long: reader silent
    # water level: calm reporting, the level sensor (ultrasonic on a UART or trigger/echo
    # pulse: distance down to the water; or a pressure transducer on an ADC: depth above the
    # sensor, calibrated by zero/span), battery mode
    "calm_interval_s": (300, int, 1, 86400),  # level records while calm (normal, |rate| low)
    "calm_cm_per_min": (1.0, float, 0.0, 1000.0),  # |rate| below this (and normal) is calm
    "sensor.type": ("ultrasonic_uart", str, ("ultrasonic_uart", "ultrasonic_pulse",
                                             "pressure_adc"), None),
    "sensor.zero_raw": (11900, int, 0, 65535),  # ADC read_u16 at depth 0 (4 mA: 0.6 V)
    "sensor.span_raw": (59500, int, 1, 65535),  # ADC read_u16 at depth span_mm (20 mA)
    "sensor.span_mm": (5000, int, 1, 100000),  # the transducer's range
    "sensor.offset_mm": (0, int, -20000, 20000),  # pressure sensor height above the datum
    "battery": (False, bool, None, None),  # deep sleep between samples, state in RTC memory
    "awake_max_ms": (4000, int, 500, 60000),  # battery: longest wait for the gateway's ACK
    # rain gauge (roles/rain.py); the tip contact's debounce is debounce_ms
    "rain.tip_mm": (0.2, float, 0.01, 10.0),  # rain per tip of the bucket
    "rain.interval_s": (60, int, 10, 86400),  # a rainfall record per interval
    "rain.heavy_mm_h": (50, int, 1, 1000),  # intensity alarm at/above this
    "rain.hyst_mm_h": (10, int, 0, 1000),  # ...cleared below heavy_mm_h - hyst_mm_h
    # all roles
    "safe_mode_after": (3, int, 1, 100),  # boots dying before a healthy minute -> safe mode
    "watchdog_ms": (8000, int, 1000, 120000),
    "ble": (False, bool, None, None),  # GATT transport (ble.py); needs a secret (secret.set)
}
LISTS = ("conflicts", "antenna_lanes")


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


def check(key, value):
    """The validated (and normalised) value for key, or ConfigError saying what is allowed."""
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
    if key in LISTS:
        return _check_list(key, value)
    spec = SCHEMA.get(key)
    if spec is None:
        raise ConfigError("%s: unknown key; allowed keys: %s" % (
            key if isinstance(key, str) and len(key) <= 32 else clip(key),
            ", ".join(["node_id", "role", "board"] + sorted(SCHEMA) + list(LISTS))))
    _, kind, lo, hi = spec
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError("%s: bad value %s; allowed: true or false" % (key, clip(value)))
    if kind is str:
        if isinstance(value, str) and value in lo:
            return value
        raise ConfigError("%s: bad value %s; allowed: %s" % (key, clip(value), ", ".join(lo)))
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


def _uint(v, hi):
    return type(v) is int and 1 <= v <= hi


def _check_list(key, value):
    if key == "conflicts":
        if isinstance(value, list) and len(value) <= MAX_PAIRS and all(
                isinstance(p, list) and len(p) == 2 and _uint(p[0], 16) and _uint(p[1], 16)
                and p[0] != p[1] for p in value):
            return value
        raise ConfigError("conflicts: bad value %s; allowed: a list of at most %d pairs of "
                          "different phases 1 to 16, e.g. [[1, 2], [2, 3]]"
                          % (_show_list(value), MAX_PAIRS))
    if isinstance(value, list) and 0 < len(value) <= 16 and all(_uint(v, 16) for v in value):
        return value
    raise ConfigError("antenna_lanes: bad value %s; allowed: a list of 1 to 16 lanes 1 to 16, "
                      "one per antenna, e.g. [1, 2, 3]" % _show_list(value))


def _show_list(value):
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

    def validate(self):
        for key in ("node_id", "role", "board", "site"):
            if key in self.data:
                check(key, self.data[key])
        for key in SCHEMA:
            v = _get(self.data, key)
            if v is not None:
                _put(self.data, key, check(key, v))
        for key in LISTS:
            if key in self.data:
                check(key, self.data[key])
        self._check_order(self.data)

    def _check_order(self, data):
        t = [self.get(k, data) for k in ("thresholds.alert_cm", "thresholds.alarm_cm",
                                          "thresholds.critical_cm")]
        if not t[0] < t[1] < t[2]:
            raise ConfigError("thresholds: bad values alert_cm=%s alarm_cm=%s critical_cm=%s; "
                              "allowed: alert_cm < alarm_cm < critical_cm" % tuple(t))
        h, y = self.get("rain.heavy_mm_h", data), self.get("rain.hyst_mm_h", data)
        if not y < h:
            raise ConfigError("rain: bad values heavy_mm_h=%s hyst_mm_h=%s; allowed: "
                              "hyst_mm_h < heavy_mm_h" % (h, y))
        z, s = self.get("sensor.zero_raw", data), self.get("sensor.span_raw", data)
        if not z < s:
            raise ConfigError("sensor: bad values zero_raw=%s span_raw=%s; allowed: "
                              "zero_raw < span_raw" % (z, s))

    def get(self, key, data=None):
        d = self.data if data is None else data
        key = canonical(key)
        v = _get(d, key)
        if v is None:
            spec = SCHEMA.get(key)
            if spec is not None:
                return spec[0]
            if key == "node_id":
                return "node"
            if key == "role":
                return "water"
            if key == "board":
                return "unknown"
        return v

    def effective(self, data=None):
        """The whole config with defaults filled in (config.get without a key)."""
        # a copy: filling defaults must not touch data
        out = json.loads(json.dumps(self.data if data is None else data))
        for key in SCHEMA:
            if _get(out, key) is None:
                _put(out, key, SCHEMA[key][0])
        return out

    def set(self, key, value):
        """Validate, apply and persist one key; returns the stored value."""
        key = canonical(key)
        value = check(key, value)
        trial = json.loads(json.dumps(self.data))  # deep copy to check cross-key rules
        _put(trial, key, value)
        self._check_order(trial)
        from .cbor import dumps
        size = len(dumps(self.effective(trial)))
        if size > MAX_CBOR:
            raise ConfigError("%s: the config would be %d bytes, at most %d; remove what is "
                              "not in use first" % (key, size, MAX_CBOR))
        self.data = trial
        write_atomic(self.path, json.dumps(self.data))
        return value

    @property
    def sim(self):
        s = self.data.get("sim")
        return s if isinstance(s, dict) else {}
