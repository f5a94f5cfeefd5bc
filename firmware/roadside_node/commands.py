# The node's commands beyond ping and reboot (Session.run, PROTOCOL.md 2.4), imported at the
# first of them and held until the next boot: a node never commanded over the link does not
# hold their code (docs/PERFORMANCE.md "Free heap at HELLO").
from .config import clip
from .proto import CommandError

COMMANDS = ("ping", "info", "config.get", "config.set", "reboot", "secret.set", "ota.switch",
            "ota.state")


def run(s, name, args):
    """Command `name` of session `s`: its result, or CommandError / ConfigError."""
    j = s.journal
    if name == "info":
        c = s.config
        out = {"node": c.get("node_id"), "role": c.get("role"), "fw": s.fw,
               "board": c.get("board"), "boot_count": j.boot_count,
               "next_seq": j.next_seq, "journal_records": j.count,
               "dropped_full": j.dropped_full, "safe_mode": s.safe_mode,
               "journal_rereads": j.rereads, "journal_unreadable": j.unreadable,
               "reset_cause": s.hw.reset_cause(), "free_heap": s.hw.free_heap(),
               "errors_in": s.errors_in, "failed": s.failed}
        if s.ble is not None:
            out["ble"] = s.ble.stats()
        return out
    if name == "config.get":
        full = s.config.effective()
        key = args.get("key")
        if key is None:
            return full
        if not isinstance(key, str):
            raise CommandError("config.get: key must be text")
        v = full.get(key)
        if v is None:
            v = s.config.get(key)
        if v is None:
            raise CommandError("config.get: unknown key %s" % clip(key))
        return v
    if name == "config.set":
        if not isinstance(args.get("key"), str) or "value" not in args:
            raise CommandError("config.set: needs args key (text) and value")
        v = s.config.set(args["key"], args["value"])
        if args["key"] == "journal_max_bytes":
            j.max_bytes = v
        if s.guard is not None:
            s.guard.clear()
        return v
    if name == "secret.set":
        from . import provision
        return provision.secret_command(s, args)
    if name[:4] == "ota.":  # ota.switch, ota.state
        return s.ota().command(name, args)
    extra = getattr(s.role, "commands", ())
    if name in extra:
        return s.role.command(name, args)
    known = COMMANDS + extra
    raise CommandError("unknown command %s; known: %s" % (clip(name), ", ".join(known)))
