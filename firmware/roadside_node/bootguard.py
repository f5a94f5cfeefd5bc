# Boot counter with safe mode. Every boot counts as unhealthy until it has run for a healthy
# minute (role time) or ends on purpose (the reboot command, deep sleep). A node whose last
# `safe_mode_after` boots all died before that (a crash loop: exception -> reset, watchdog,
# brownout) starts in safe mode: link, session and config only, no role, so an installer can
# fix it over the link. A successful config.set or a reboot command clears the count, so the
# next boot tries the role again. NODE_DIR/bootguard.json: {"unhealthy": n}.
#
# A trial boot of an over-the-air update (PROTOCOL.md 2.6, the loader's otaboot.py chose it) is
# guarded too: `ota` here (main.py passes otaboot.select's ota/boot.json only once an update
# came), its trial confirmed or rolled back by ota.py's boot_step.
import json

from micropython import const

from .journal import write_atomic

PATH = "bootguard.json"
_HEALTHY_S = const(60)


class BootGuard:
    # otaboot.select's ota/boot.json when this boot has an update's trial to confirm or an
    # outcome to tell (ota.py's boot_step runs while set; it sets None when done), else None
    ota = None

    def __init__(self, after, ota=None, path=PATH):
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
        if ota:
            self.ota = ota

    def _write(self, n):
        write_atomic(self.path, json.dumps({"unhealthy": n}))

    def check(self, t):
        """Called from the main loop with role time (s); True once, when the minute is up."""
        if self.healthy or t < _HEALTHY_S:
            return False
        self.healthy = True
        if not self.safe:  # safe mode stays until the installer acts (config.set, reboot)
            self._write(0)
        return True

    def clear(self):
        """A deliberate end of this boot, or the installer fixed something: start afresh."""
        self._write(0)
