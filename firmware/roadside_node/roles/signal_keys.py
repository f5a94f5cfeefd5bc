# The signal monitor's config keys (roles/water_keys.py says how), imported only on a signal
# node. "conflicts" (pairs of phases) is a list, checked by conflicts() below.
from ..config import ConfigError, show_list

MAX_PAIRS = 64  # conflicts: a full 8-phase matrix is 28 pairs; field controllers ~20


def _phase(v):
    return type(v) is int and 1 <= v <= 16


def conflicts(value):
    if isinstance(value, list) and len(value) <= MAX_PAIRS and all(
            isinstance(p, list) and len(p) == 2 and _phase(p[0]) and _phase(p[1])
            and p[0] != p[1] for p in value):
        return value
    raise ConfigError("conflicts: bad value %s; allowed: a list of at most %d pairs of "
                      "different phases 1 to 16, e.g. [[1, 2], [2, 3]]"
                      % (show_list(value), MAX_PAIRS))


TABLE = (
    "phases", 4, int, 1, 16,
    "debounce_ms", 100, int, 10, 2000,  # a head input must hold this long to count
    "min_green_ms", 5000, int, 0, 120000,
    "amber_ms", 3000, int, 0, 10000,  # shortest amber (clearance) allowed
    "all_red_ms", 1000, int, 0, 10000,  # shortest red before a conflicting green
    "count_interval_s", 60, int, 5, 3600,  # loop detector counts per approach
    "plans", 8, int, 1, 32,  # timing plans 1..plans the controller knows
    "conflicts", None, list, conflicts, None,
)
ORDER = ""
