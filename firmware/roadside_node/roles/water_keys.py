# The water role's config keys (config.py TABLE's form: key, default, kind, low, high, one
# key a line; dotted keys live in a nested section; a float key's whole default as an int, a
# choice's choices as one text), imported only on a water node (and by the host's tools,
# tools/node/schema.py, for every role). ORDER: "section key key ..." groups (";" between)
# whose values must increase.
TABLE = (
    "datum_mm", 3000, int, 100, 20000,  # sensor face height above the datum (level 0)
    "sample_interval_s", 2, int, 1, 3600,
    "report_interval_s", 60, int, 1, 86400,  # level records when calm
    "fast_interval_s", 10, int, 1, 3600,  # ...while rising or at/above alert
    "rise_cm_per_min", 5, float, 0, 1000,  # "rising" for the fast interval
    "outlier_mm", 300, int, 10, 10000,  # a sample this far from the median is rejected
    "thresholds.alert_cm", 100, float, -1000, 10000,
    "thresholds.alarm_cm", 150, float, -1000, 10000,
    "thresholds.critical_cm", 200, float, -1000, 10000,
    "thresholds.hysteresis_cm", 10, float, 0, 1000,
    # calm reporting, the level sensor (ultrasonic on a UART or trigger/echo pulse: distance
    # down to the water; or a pressure transducer on an ADC: depth above the sensor,
    # calibrated by zero/span)
    "calm_interval_s", 300, int, 1, 86400,  # level records while calm (normal, |rate| low)
    "calm_cm_per_min", 1, float, 0, 1000,  # |rate| below this (and normal) is calm
    "sensor.type", "ultrasonic_uart", str, "ultrasonic_uart ultrasonic_pulse pressure_adc", None,
    "sensor.zero_raw", 11900, int, 0, 65535,  # ADC read_u16 at depth 0 (4 mA: 0.6 V)
    "sensor.span_raw", 59500, int, 1, 65535,  # ADC read_u16 at depth span_mm (20 mA)
    "sensor.span_mm", 5000, int, 1, 100000,  # the transducer's range
    "sensor.offset_mm", 0, int, -20000, 20000,  # pressure sensor height above the datum
)
ORDER = "thresholds alert_cm alarm_cm critical_cm;sensor zero_raw span_raw"
