# Boot counter with safe mode. Every boot counts as unhealthy until it has run for a healthy
# minute (role time) or ends on purpose (the reboot command, deep sleep). A node whose last
# `safe_mode_after` boots all died before that (a crash loop: exception -> reset, watchdog,
# brownout) starts in safe mode: link, session and config only, no role, so an installer can
# fix it over the link. A successful config.set or a reboot command clears the count, so the
# next boot tries the role again. NODE_DIR/bootguard.json: {"unhealthy": n}.
#
# A trial boot of an over-the-air update (PROTOCOL.md 2.6, the loader's otaboot.py chose it) is
# guarded here too: confirmed once the session is healthy (HELLO answered and records acked,
# or TRIAL_IDLE_S of session with nothing to send), rolled back when it is not within TRIAL_S.
import json

from micropython import const

from .journal import write_atomic

PATH = "bootguard.json"
HEALTHY_S = const(60)
TRIAL_S = const(120)  # a trial boot without a healthy session for this long is rolled back
TRIAL_IDLE_S = const(30)  # a session up this long with nothing to send is healthy too


class BootGuard:
    def __init__(self, after, path=PATH):
        self.path = path
        n = 0
        try:
            with open(path) as f:
                n = int(json.load(f).get("unhealthy", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            n = 0
        self.unhealthy = n  # boots before this one that died before a healthy minute
        self.safe = n >= after
        self.healthy = False
        self._write(n + 1)  # this boot counts until it proves itself
        try:
            import otaboot  # the loader beside the package (absent where no loader ran)
            ota = otaboot.state
        except ImportError:
            ota = {}
        self.trial = ota.get("trial")  # this boot runs an update on trial
        r = ota.get("report")  # the outcome of the last update, told once after a HELLO
        self.report = bool(self.trial or r and not r.get("told"))
        self.acked = False  # the session's records were acked this boot (trial: healthy)
        self.up_at = None

    def _write(self, n):
        write_atomic(self.path, json.dumps({"unhealthy": n}))

    def check(self, t):
        """Called from the main loop with role time (s); True once, when the minute is up."""
        if self.healthy or t < HEALTHY_S:
            return False
        self.healthy = True
        if not self.safe:  # safe mode stays until the installer acts (config.set, reboot)
            self._write(0)
        return True

    def clear(self):
        """A deliberate end of this boot, or the installer fixed something: start afresh."""
        self._write(0)

    def trial_step(self, session, t):
        """A trial boot, from the main loop with seconds since boot: confirm it once the
        session is healthy; True when it failed (rolled back: reset now)."""
        if session.up and self.up_at is None:
            self.up_at = t
        idle = session.journal.first_unacked == session.journal.next_seq
        if session.up and (self.acked or idle and t - self.up_at >= TRIAL_IDLE_S):
            session.ota().confirm()
            self.trial = None
            return False
        if t < TRIAL_S:
            return False
        import otaboot
        otaboot.rollback("no_session")
        return True
