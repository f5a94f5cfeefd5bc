"""The gateway daemon: links -> sessions -> queue -> batcher -> uplinks, plus /status.

    python -m roadside.gateway.daemon --config gateway.toml
    roadside gateway run --config gateway.toml

One asyncio loop; SQLite work runs on the queue's single writer thread. SIGTERM and SIGINT
stop it cleanly (exit 0); SIGHUP reloads the config file (a bad one is refused with one log
line and the daemon runs on). Under systemd (`Type=notify`, deploy/systemd/) it says READY,
RELOADING, STOPPING and sends watchdog pings (gateway/sdnotify.py). Log lines go to stderr,
one event per line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from . import api_token, logs, sdnotify
from .batcher import Batcher
from .commands import Commander
from .config import ConfigError, GatewayConfig, LinkConfig, UplinkConfig, load
from .errors import GatewayError
from .health import Health
from .links.base import Link
from .links.serial import SerialLink
from .links.usb import UsbMatch
from .ota.manager import OtaManager
from .queue import Queue
from .queue_recovery import open_queue
from .session import SessionManager
from .status import Status, serve
from .uplinks import Uplink, make_uplink

log = logging.getLogger("roadside.gateway")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Lines on stderr: text (time, level, component, message) or JSON ([log] format)."""
    logs.setup(fmt, level)


def _serial_link(lc: LinkConfig) -> Link:
    return SerialLink(lc.name, lc.baudrate,
                      usb=UsbMatch(lc.usb_serial, lc.vid_pid) if lc.port is None else None,
                      node=lc.node)


def make_links(config: GatewayConfig, ble_backend: Any = None) -> list[Link]:
    """Serial links, and BLE links sharing one adapter (`ble_backend`: tests only, a
    (scanner, client) pair of bleak backend classes, see gateway/links/ble.py)."""
    links: list[Link] = [_serial_link(lc) for lc in config.links if lc.type == "serial"]
    ble = [(lc.node, lc.address, lc.key_path) for lc in config.links if lc.type == "ble"]
    if ble:
        from .links.ble import make_ble_links  # bleak is imported only when BLE is used
        links += make_ble_links(ble, config.gateway.site,  # type: ignore[arg-type]
                                config.ble.max_connections, config.ble.hold_s, ble_backend)
    return links


class _Running:
    """The daemon's live parts, and the SIGHUP reload that changes only what changed.

    Kept across a reload: the queue, the session manager (so the nodes' sessions, ACK state
    and duplicate checks), every link and uplink whose config table did not change, and the
    status server unless `[status] listen` changed. A link or uplink whose table changed is
    closed and started again from the new table; new ones start, removed ones stop.
    """

    def __init__(self, config: GatewayConfig, queue: Queue, sessions: SessionManager,
                 batcher: Batcher, commander: Commander) -> None:
        self.config = config
        self.queue = queue
        self.sessions = sessions
        self.batcher = batcher
        self.commander = commander
        self.links: list[Link] = []          # shared with Health and Status (edited in place)
        self.uplinks: list[Uplink] = []
        self.link_tasks: dict[str, tuple[LinkConfig, Link, asyncio.Task[Any]]] = {}
        self.uplink_tasks: dict[str, tuple[Uplink, asyncio.Task[Any]]] = {}
        self.secrets: dict[str, tuple[str | None, ...]] = {}   # uplink name -> its secrets
        self.status: Status | None = None
        self.ota: OtaManager | None = None

    def ota_ended(self, rollout: Any) -> None:
        """A rollout ended: the MQTT uplinks publish the final outcome of those they started."""
        for u in self.uplinks:
            if hasattr(u, "ota_ended"):
                u.ota_ended(rollout)

    def tasks(self) -> list[asyncio.Task[Any]]:
        return ([t for _, _, t in self.link_tasks.values()]
                + [t for _, t in self.uplink_tasks.values()])

    async def start_link(self, lc: LinkConfig | None, link: Link) -> None:
        await link.open()
        self.links.append(link)
        task = asyncio.create_task(self.sessions.serve(link), name=f"session {link.port}")
        self.link_tasks[lc.name if lc is not None else link.name] = (
            lc or LinkConfig(link.type, None), link, task)

    async def stop_link(self, key: str) -> None:
        _, link, task = self.link_tasks.pop(key)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.close()
        self.sessions.forget(link)
        if link in self.links:
            self.links.remove(link)

    def start_uplink(self, uc: UplinkConfig) -> None:
        g = self.config.gateway
        names = [u.name for u in self.config.uplinks]
        u = make_uplink(uc, self.queue, names, self.batcher.wake, g.id, g.site,
                        commander=self.commander)   # remote commands over MQTT (command_topic)
        if self.status is not None:
            self.status.metrics.instrument(u)
        if hasattr(u, "ota"):           # MQTT: `ota.push` on the command topic
            u.ota = self.ota
        self.uplinks.append(u)
        self.uplink_tasks[uc.name] = (u, asyncio.create_task(u.run(), name=f"uplink {uc.name}"))
        self.secrets[uc.name] = _secrets(uc)
        self.batcher.on_cut = [x.notify for x in self.uplinks]

    async def settle(self) -> None:
        """Batches the configured uplinks all have, kept only for an uplink no longer there."""
        names = [u.name for u in self.config.uplinks]
        n = await self.queue.aio.settle(names)
        if n:
            log.info(f"{n} batches delivered by every configured uplink ({', '.join(names)})"
                     " were still waiting for an uplink no longer configured: deleted",
                     extra=logs.fields(batches=n))

    async def stop_uplink(self, name: str) -> None:
        u, task = self.uplink_tasks.pop(name)
        self.secrets.pop(name, None)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await u.close()
        if u in self.uplinks:
            self.uplinks.remove(u)
        self.batcher.on_cut = [x.notify for x in self.uplinks]

    async def reload(self, new: GatewayConfig, health: Health) -> list[str]:
        """Apply `new` (already validated); returns what changed, for the log line."""
        old, changes = self.config, []
        for section in ("gateway", "queue", "ble"):
            if getattr(old, section) != getattr(new, section):
                log.warning(f"reload: [{section}] changed: it takes effect at the next restart",
                            extra=logs.fields(section=section))
        if [lc for lc in old.links if lc.type == "ble"] != [
                lc for lc in new.links if lc.type == "ble"]:
            log.warning("reload: BLE [[link]] tables changed: they take effect at the next"
                        " restart", extra=logs.fields(section="link"))
        keep_ble = tuple(lc for lc in old.links if lc.type == "ble")
        new = dataclasses.replace(
            new, gateway=old.gateway, queue=old.queue, ble=old.ble,
            links=tuple(lc for lc in new.links if lc.type != "ble") + keep_ble)
        if old.log != new.log:
            logs.setup(new.log.format, new.log.level)
            changes.append("log")
        self.config = new
        # Links: by name (port, USB identity); BLE links are left as they are.
        wanted = {lc.name: lc for lc in new.links if lc.type == "serial"}
        for key, (lc, _, _) in list(self.link_tasks.items()):
            if lc.type == "serial" and wanted.get(key) != lc:
                await self.stop_link(key)
                changes.append(f"link {key} {'changed' if key in wanted else 'removed'}")
        for key, lc in wanted.items():
            if key not in self.link_tasks:
                await self.start_link(lc, _serial_link(lc))
                if not any(c.startswith(f"link {key} ") for c in changes):
                    changes.append(f"link {key} added")
        # Uplinks: each knows the names of all (a batch is done once every uplink has it), so
        # a change to the set of names restarts them all; else only the changed ones.
        all_new = {u.name: u for u in new.uplinks}
        same_names = [u.name for u in old.uplinks] == list(all_new)
        for name, (u, _) in list(self.uplink_tasks.items()):
            # A token or password file rewritten in place changes no key: compare secrets too.
            changed = name in all_new and (all_new[name] != u.config
                                           or _secrets(all_new[name]) != self.secrets.get(name))
            if not same_names or name not in all_new or changed:
                await self.stop_uplink(name)
                what = ("removed" if name not in all_new else
                        "changed" if changed else "restarted")
                changes.append(f"uplink {name} {what}")
        self.batcher.uplinks = tuple(all_new)
        if not same_names:
            await self.settle()
        for name, uc in all_new.items():
            if name not in self.uplink_tasks:
                self.start_uplink(uc)
                if not any(c.startswith(f"uplink {name} ") for c in changes):
                    changes.append(f"uplink {name} added")
        if old.batch != new.batch:
            self.batcher.config = new.batch
            changes.append("batch")
        if old.status != new.status:
            health.link_down_s = new.status.link_down_s
            health.uplink_down_s = new.status.uplink_down_s
            changes.append("status")
        return changes


def _secrets(uc: Any) -> tuple[str | None, ...]:
    """The uplink's token and password as they read now (files and environment)."""
    out: list[str | None] = []
    for read in ("token", "password"):
        try:
            out.append(getattr(uc, read)())
        except Exception:  # noqa: BLE001 - the config loader already said what is wrong
            out.append(None)
    return tuple(out)


async def main(config: GatewayConfig, stop: asyncio.Event | None = None,
               ble_backend: Any = None, notifier: sdnotify.Notifier | None = None) -> int:
    """Run until `stop` is set or SIGTERM/SIGINT; returns the exit status. SIGHUP reloads
    the config file (see _Running)."""
    stop = stop or asyncio.Event()
    notify = notifier or sdnotify.Notifier()
    hup = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, hup.set)
    g = config.gateway
    # A damaged queue file is moved aside and its readable rows re-queued (queue_recovery).
    queue = open_queue(config.queue_path, g.id, g.site, max_bytes=config.queue.max_bytes)
    sessions = SessionManager(queue)
    batcher = Batcher(queue, config.batch, uplinks=[u.name for u in config.uplinks])
    sessions.on_stored = batcher.wake
    commander = Commander(sessions, g.data_dir / "commands.sqlite")
    # Updates over the air: rollouts running when the gateway stopped go on (gateway/ota/).
    ota = OtaManager(config.ota, g.data_dir, sessions, commander)
    run = _Running(config, queue, sessions, batcher, commander)
    run.ota = ota
    ota.on_ended = run.ota_ended
    links, uplinks = run.links, run.uplinks
    health = Health(links, uplinks, queue, config.status.link_down_s,
                    config.status.uplink_down_s)
    status = Status(g.id, g.site, queue, sessions, links, uplinks, health, commander,
                    api_token.ensure(api_token.path_in(g.data_dir)), ota)
    run.status = status
    tasks: list[asyncio.Task[Any]] = []
    runner = None
    try:
        try:
            runner, port = await serve(status, config.status.host, config.status.port)
        except OSError as exc:
            log.error(f"cannot listen on {config.status.listen}: {exc.strerror};"
                      f" change [status] listen in {config.path or 'gateway.toml'}",
                      extra=logs.fields(error=exc.strerror))
            return EXIT_FAILED
        serial = {lc.name: lc for lc in config.links if lc.type == "serial"}
        for link in make_links(config, ble_backend):
            await run.start_link(serial.get(link.name), link)
        for uc in config.uplinks:
            run.start_uplink(uc)
        await run.settle()
        log.info(f"gateway {g.id} site {g.site}: queue {config.queue_path}"
                 f" ({queue.depth()} records, {queue.batches_pending()} batches pending),"
                 f" {len(links)} links, {len(uplinks)} uplinks")
        log.info(f"status on http://{config.status.host}:{port}/status")

        def spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
            tasks.append(asyncio.create_task(coro, name=name))

        spawn(sessions.resend_time(), "time")
        ota.resume()
        if uplinks:
            # Without an uplink records stay unbatched in the queue until one is configured.
            spawn(batcher.run(), "batcher")
        else:
            log.warning("no [[uplink]] configured: records are kept in the queue")
        if notify.watchdog_s:
            spawn(_watchdog(notify, notify.watchdog_s / 2), "watchdog")
        ready = f"{len(links)} links, {len(uplinks)} uplinks, status on port {port}"
        notify.ready(ready)
        stopper = asyncio.create_task(stop.wait(), name="stop")
        while True:
            hupper = asyncio.create_task(hup.wait(), name="sighup")
            done, _ = await asyncio.wait([stopper, hupper, *tasks, *run.tasks()],
                                         return_when=asyncio.FIRST_COMPLETED)
            hupper.cancel()
            for task in done:
                if task not in (stopper, hupper) and not task.cancelled() and task.exception():
                    failure = task.exception()
                    log.error(f"{task.get_name()} failed: {failure!r}", exc_info=failure,
                              extra=logs.fields(error=repr(failure)))
                    stopper.cancel()
                    return EXIT_FAILED
            if stopper in done:
                break
            if hup.is_set():
                hup.clear()
                notify.reloading()
                runner, port = await _reload(run, health, runner, port)
                if uplinks and not any(t.get_name() == "batcher" for t in tasks):
                    spawn(batcher.run(), "batcher")
                notify.ready(f"{len(links)} links, {len(uplinks)} uplinks, status on port {port}")
        log.info("stopping")
        return EXIT_OK
    finally:
        notify.stopping()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for key in list(run.link_tasks):
            await run.stop_link(key)
        for name in list(run.uplink_tasks):
            await run.stop_uplink(name)
        if runner is not None:
            await runner.cleanup()
        await ota.close()
        commander.close()
        # Waits for a commit in progress on the writer thread, then closes the file.
        queue.close()
        notify.close()


async def _watchdog(notify: sdnotify.Notifier, every_s: float) -> None:
    """WATCHDOG=1 while the loop turns (systemd restarts the daemon when these stop)."""
    while True:
        notify.watchdog()
        await asyncio.sleep(every_s)


async def _reload(run: _Running, health: Health, runner: Any, port: int) -> tuple[Any, int]:
    """SIGHUP: read the config file again; a bad one is refused with one line and the daemon
    keeps the config it runs on. Returns the (possibly new) status server and its port."""
    path = run.config.path
    if path is None:
        log.error("reload: the daemon was not started from a config file; nothing to reload")
        return runner, port
    try:
        new = load(path)
    except ConfigError as exc:
        log.error(f"reload refused: {path}: {exc}; still running on the previous config",
                  extra=logs.fields(error=str(exc)))
        return runner, port
    old_status = run.config.status
    if new.status.listen != old_status.listen:
        try:
            new_runner, new_port = await serve(run.status, new.status.host,  # type: ignore[arg-type]
                                               new.status.port)
        except OSError as exc:
            log.error(f"reload refused: cannot listen on {new.status.listen}: {exc.strerror};"
                      " still running on the previous config",
                      extra=logs.fields(error=exc.strerror))
            return runner, port
        await runner.cleanup()
        runner, port = new_runner, new_port
        log.info(f"status on http://{new.status.host}:{port}/status")
    try:
        changes = await run.reload(new, health)
    except Exception as exc:  # noqa: BLE001 - a reload must never stop the daemon
        log.error(f"reload of {path} failed part way: {exc!r}; the parts applied stay,"
                  " send SIGHUP again or restart", exc_info=exc,
                  extra=logs.fields(error=repr(exc)))
        return runner, port
    log.info(f"reloaded {path}: {', '.join(changes) if changes else 'nothing changed'}",
             extra=logs.fields(changes=changes))
    return runner, port


def run(config: GatewayConfig) -> int:
    """Blocking entry (for `roadside gateway run`): run the daemon until stopped."""
    setup_logging(config.log.format, config.log.level)
    try:
        return asyncio.run(main(config))
    except GatewayError as exc:
        log.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m roadside.gateway.daemon",
        description="The roadside gateway daemon: serial links, SQLite queue, HTTP uplinks.")
    parser.add_argument("--config", required=True, metavar="FILE", help="gateway TOML config")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"roadside gateway: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run(config)


if __name__ == "__main__":
    sys.exit(cli())
