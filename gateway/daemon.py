"""The gateway daemon: links -> sessions -> queue -> batcher -> uplinks, plus /status.

    python -m roadside.gateway.daemon --config gateway.toml
    roadside gateway run --config gateway.toml

One asyncio loop; SQLite work runs on the queue's single writer thread. SIGTERM and SIGINT
stop it cleanly (exit 0). Log lines go to stderr, one event per line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from . import api_token, logs
from .batcher import Batcher
from .commands import Commander
from .config import ConfigError, GatewayConfig, load
from .errors import GatewayError
from .health import Health
from .links.base import Link
from .links.serial import SerialLink
from .links.usb import UsbMatch
from .queue_recovery import open_queue
from .session import SessionManager
from .status import Status, serve
from .uplinks import make_uplink

log = logging.getLogger("roadside.gateway")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Lines on stderr: text (time, level, component, message) or JSON ([log] format)."""
    logs.setup(fmt, level)


def make_links(config: GatewayConfig, ble_backend: Any = None) -> list[Link]:
    """Serial links, and BLE links sharing one adapter (`ble_backend`: tests only, a
    (scanner, client) pair of bleak backend classes, see gateway/links/ble.py)."""
    links: list[Link] = [
        SerialLink(lc.name, lc.baudrate,
                   usb=UsbMatch(lc.usb_serial, lc.vid_pid) if lc.port is None else None,
                   node=lc.node)
        for lc in config.links if lc.type == "serial"]
    ble = [(lc.node, lc.address, lc.key_path) for lc in config.links if lc.type == "ble"]
    if ble:
        from .links.ble import make_ble_links  # bleak is imported only when BLE is used
        links += make_ble_links(ble, config.gateway.site,  # type: ignore[arg-type]
                                config.ble.max_connections, config.ble.hold_s, ble_backend)
    return links


async def main(config: GatewayConfig, stop: asyncio.Event | None = None,
               ble_backend: Any = None) -> int:
    """Run until `stop` is set or SIGTERM/SIGINT; returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    g = config.gateway
    # A damaged queue file is moved aside and its readable rows re-queued (queue_recovery).
    queue = open_queue(config.queue_path, g.id, g.site, max_bytes=config.queue.max_bytes)
    sessions = SessionManager(queue)
    links = make_links(config, ble_backend)
    batcher = Batcher(queue, config.batch, uplinks=[u.name for u in config.uplinks])
    names = [u.name for u in config.uplinks]
    uplinks = [make_uplink(u, queue, names, batcher.wake, g.id, g.site)
               for u in config.uplinks]
    batcher.on_cut = [u.notify for u in uplinks]
    sessions.on_stored = batcher.wake
    health = Health(links, list(uplinks), queue, config.status.link_down_s,
                    config.status.uplink_down_s)
    commander = Commander(sessions, g.data_dir / "commands.sqlite")
    for u in uplinks:
        if getattr(u.config, "command_topic", None):
            u.commander = commander     # remote commands over MQTT (command_topic)
    status = Status(g.id, g.site, queue, sessions, links, uplinks, health, commander,
                    api_token.ensure(api_token.path_in(g.data_dir)))
    tasks: list[asyncio.Task[Any]] = []
    runner = None
    try:
        try:
            runner, port = await serve(status, config.status.host, config.status.port)
        except OSError as exc:
            log.error(f"cannot listen on {config.status.listen}: {exc.strerror};"
                      f" change [status] listen in {config.path or 'gateway.toml'}")
            return EXIT_FAILED
        log.info(f"gateway {g.id} site {g.site}: queue {config.queue_path}"
                 f" ({queue.depth()} records, {queue.batches_pending()} batches pending),"
                 f" {len(links)} links, {len(uplinks)} uplinks")
        log.info(f"status on http://{config.status.host}:{port}/status")

        def spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
            tasks.append(asyncio.create_task(coro, name=name))

        for link in links:
            await link.open()
            spawn(sessions.serve(link), f"session {link.port}")
        spawn(sessions.resend_time(), "time")
        if uplinks:
            # Without an uplink records stay unbatched in the queue until one is configured.
            spawn(batcher.run(), "batcher")
        else:
            log.warning("no [[uplink]] configured: records are kept in the queue")
        for u in uplinks:
            spawn(u.run(), f"uplink {u.name}")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception():
                failure = task.exception()
                log.error(f"{task.get_name()} failed: {failure!r}", exc_info=failure)
                return EXIT_FAILED
        log.info("stopping")
        return EXIT_OK
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in links:
            await link.close()
        for u in uplinks:
            await u.close()
        if runner is not None:
            await runner.cleanup()
        commander.close()
        # Waits for a commit in progress on the writer thread, then closes the file.
        queue.close()


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
