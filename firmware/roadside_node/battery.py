# Battery mode (config battery = true; the water role): the node sleeps between samples. One
# wake: restore the role's state from RTC memory, take one sample (records when due), send the
# journal if it holds anything (HELLO, RECORDS, a bounded wait for the ACK: awake_max_ms),
# save the state to RTC memory, deep sleep until the next sample. Nothing is sent on a wake
# with nothing to send. The wall clock runs on while asleep, so the session's time base is
# carried over too. The journal (flash) keeps seq across wakes as across any reboot.
import json

from micropython import const

_STATE_V = const(1)
_SENSOR_TRIES = const(10)  # a sensor just switched on may need a moment: 50 ms apart


def load_state(hw):
    if hw.reset_cause() == "power_on":  # RTC memory does not survive a power cut
        return {}
    raw = hw.rtc_load()
    if not raw:
        return {}
    try:
        st = json.loads(raw)
    except ValueError:
        return {}
    return st if isinstance(st, dict) and st.get("v") == _STATE_V else {}


def run_battery(app):
    hw = app.hw
    role = app.role
    j = app.journal
    s = app.session
    st = load_state(hw)
    if st:
        role.restore(st.get("r") or {})
        app.next_health = float(st.get("nh") or 0)
        tb = st.get("tb")
        if tb:
            s.time_base = (tb, hw.ticks_ms())
    t = hw.sim_s()
    for _ in range(_SENSOR_TRIES):
        if role.sample(t):
            break
        hw.feed_watchdog()
        hw.sleep_ms(50)
    if t >= app.next_health:
        app.next_health = t + app.config.get("health_interval_s")
        app.health()
    if j.count:
        deliver(app)
    if s.reboot_pending:
        app.log("reboot")
        j.close()
        hw.reset("soft")
    ms = max(0, int((role.next_sample - hw.sim_s()) * 1000))
    tb = None
    if s.time_base is not None:
        epoch_ms, at = s.time_base
        tb = epoch_ms + hw.ticks_diff(hw.ticks_ms(), at) + int(ms / hw.speed)
    hw.rtc_save(json.dumps({"v": _STATE_V, "r": role.save(), "nh": app.next_health,
                            "tb": tb}).encode())
    j.flush_state()
    j.close()
    app.guard.clear()  # a deliberate end of this boot, not a crash
    app.log("deep sleep %d ms state %d journal %d" % (ms, role.state, j.count))
    hw.deepsleep(ms)


def deliver(app):
    """HELLO, then the session until the journal is acked or awake_max_ms has passed."""
    hw = app.hw
    s = app.session
    j = app.journal
    s.hello()
    start = hw.ticks_ms()
    limit = app.config.get("awake_max_ms")
    while j.count and hw.ticks_diff(hw.ticks_ms(), start) < limit and not s.reboot_pending:
        data = hw.uart_read()
        while data:
            for payload in app.deframer.feed(data):
                s.on_payload(payload)
            data = hw.uart_read()
        s.tick()
        hw.feed_watchdog()
        hw.sleep_ms(10)
    if j.count:
        app.log("awake limit: %d records wait for the next wake" % j.count)
