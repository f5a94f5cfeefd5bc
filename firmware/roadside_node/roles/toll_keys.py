# The toll beacon's config keys (roles/water_keys.py says how), imported only on a toll node.
# "antenna_lanes" (lane of antenna 1, 2, ...) is a list, checked by antenna_lanes() below.
from ..config import ConfigError, show_list


def antenna_lanes(value):
    if isinstance(value, list) and 0 < len(value) <= 16 and all(
            type(v) is int and 1 <= v <= 16 for v in value):
        return value
    raise ConfigError("antenna_lanes: bad value %s; allowed: a list of 1 to 16 lanes 1 to 16, "
                      "one per antenna, e.g. [1, 2, 3]" % show_list(value))


TABLE = (
    "window_ms", 1000, int, 50, 60000,  # a passage ends when its tag is unseen this long
    "reader_silent_ms", 5000, int, 500, 600000,  # no heartbeat this long: reader silent
    "antenna_lanes", None, list, antenna_lanes, None,
)
ORDER = ""
