# Boot select for over-the-air app updates (PROTOCOL.md 2.6): the loader's part, which app
# bundles never replace (it sits beside the roadside_node package, not in an app slot, and
# imports nothing of the app: a bundle that does not import must still be rolled back).
#
# ota/boot.json, written atomically (tmp + rename: a power cut leaves the old or the new):
#   {"app": slot or null, "trial": {"slot", "tag", "version", "kind", "boots"},
#    "report": {"state": "done" | "rolled_back", "tag", "version", "reason"}}
# "app" is the confirmed app slot (/ota/<slot>, put first on sys.path); null: the app the
# board was deployed (or the twin built) with. "trial" is a switched-to app not yet confirmed:
# each boot into it counts, and after TRIAL_BOOTS of them the next boot goes back to "app"
# (reason "boot"). main.py / sim_main.py roll back on an import error or a crash of a trial;
# roadside_node/ota.py's boot_step (while bootguard's `ota`, select's return, is set) confirms
# it (healthy session) or rolls it back (no session in time).
# "report" is what the node tells the gateway after its next HELLO.
# A trial with "unpack" set was switched to but not unpacked yet: ota.switch only writes the
# pointer, and the boot after it unpacks the staged archive into the trial's slot
# (otaunpack.py) before the app is imported, while the heap is whole, then resets: the trial
# boots clean (docs/PERFORMANCE.md "OTA over BLE").
import json
import os
import sys

BOOT = "ota/boot.json"
SLOTS = "/ota/"
TRIAL_BOOTS = 2

def read():
    try:
        with open(BOOT) as f:
            b = json.load(f)
        return b if isinstance(b, dict) else {}
    except (OSError, ValueError):
        return {}


def write(b):
    # journal.write_atomic's steps; the loader cannot import the app to reach it
    with open(BOOT + ".tmp", "w") as f:
        f.write(json.dumps(b))
    os.rename(BOOT + ".tmp", BOOT)


def select(modules, reset):
    """Put this boot's app slot first on sys.path. Returns ota/boot.json (a dict) when the app
    has work to do this boot (a trial to confirm, or an outcome not yet told: main.py passes
    it to App, for bootguard), else None. Unless this is a trial boot, this module leaves
    sys.modules: it is not needed again. A trial whose `modules` do not import is rolled back
    (reason "import") and reset()."""
    b = read()
    t = b.get("trial")
    if t and t.get("unpack"):
        __import__("otaunpack").unpacked(b)
        reset()  # none of the unpack's heap or names held by the trial's boot
        b = read()
        t = b.get("trial")
    if t:
        if t.get("boots", 0) >= TRIAL_BOOTS:
            rollback("boot")
            b = read()  # the report of it, not yet told
            t = None
        else:
            t["boots"] = t.get("boots", 0) + 1
            write(b)
    slot = t["slot"] if t else b.get("app")
    if slot:
        sys.path.insert(0, SLOTS + slot)
    if t:
        try:
            for name in modules:
                __import__(name)
        except Exception as e:  # noqa: BLE001 - whatever the new app raised
            sys.print_exception(e)
            rollback("import")
            reset()
    else:  # the loader's work is done: its heap is the app's
        del sys.modules[__name__]
    r = b.get("report")
    return b if t or r and not r.get("told") else None


def rollback(reason):
    """Back to the confirmed app at the next boot; the report says why."""
    b = read()
    t = b.pop("trial", None)
    if t:
        b["report"] = {"state": "rolled_back", "tag": t["tag"], "version": t["version"],
                       "reason": reason}
        write(b)
        if t.get("kind") == "firmware":  # the bootloader's rule does the rest at the reset
            try:
                import esp32
                p = esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]
                p.get_next_update().set_boot()
            except Exception:  # noqa: BLE001 - no OTA partitions: nothing to undo
                pass
