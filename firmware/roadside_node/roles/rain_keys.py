# The rain gauge's config keys (roles/water_keys.py says how), imported only on a rain node.
TABLE = (
    "debounce_ms", 100, int, 10, 2000,  # the tip contact's debounce
    "rain.tip_mm", 0.2, float, 0.01, 10,  # rain per tip of the bucket
    "rain.interval_s", 60, int, 10, 86400,  # a rainfall record per interval
    "rain.heavy_mm_h", 50, int, 1, 1000,  # intensity alarm at/above this
    "rain.hyst_mm_h", 10, int, 0, 1000,  # ...cleared below heavy_mm_h - hyst_mm_h
)
ORDER = "rain hyst_mm_h heavy_mm_h"
