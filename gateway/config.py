"""gateway.toml: loaded once at start into frozen dataclasses, validated with clear messages.

Every error names the key, the bad value and what is allowed, in one line, e.g.
`batch.max_records: must be an integer 1..10000, got 'x'`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import ids, secret_files
from .errors import ConfigError
from .links.usb import VID_PID, UsbMatch

__all__ = ["ConfigError", "GatewayConfig", "load", "parse"]

log = logging.getLogger("roadside.gateway.config")

LINK_TYPES = ("serial", "ble")
BLE_LINK_KEYS = ("type", "node", "address", "secret_file")
BLE_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
UPLINK_TYPES = ("http", "mqtt")
MQTT_PROTOCOLS = ("3.1.1", "5")
TOPIC_FIELDS = ("site", "gateway", "kind")
DEFAULT_TOPIC = "roadside/{site}/{gateway}/{kind}"
BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1000000, 2000000)


@dataclass(frozen=True)
class GatewaySection:
    id: str
    site: str
    data_dir: Path


@dataclass(frozen=True)
class LinkConfig:
    type: str
    port: str | None              # a device path, or None when found by USB identity
    baudrate: int = 115200
    usb_serial: str | None = None  # the adapter's USB serial number (udevadm / lsusb -v)
    vid_pid: str | None = None     # "10c4:ea60": USB vendor:product id, lower case
    node: str | None = None        # ble: the node id it advertises
    address: str | None = None     # ble: its Bluetooth address, optional (pins it)
    # ble: the file of the node's 32-byte secret (toml key secret_file; docs/SECURITY.md)
    key_path: Path | None = None

    @property
    def name(self) -> str:
        """The link's stable name: its port, `usb:VID:PID,serial=SN` or `ble:NODE`."""
        if self.type == "ble":
            return f"ble:{self.node}"
        if self.port is not None:
            return self.port
        return UsbMatch(self.usb_serial, self.vid_pid).name


@dataclass(frozen=True)
class BatchConfig:
    max_records: int = 200
    max_bytes: int = 64 * 1024
    max_age_s: float = 1.0


@dataclass(frozen=True)
class UplinkConfig:
    type: str
    url: str
    name: str = "http"
    timeout_s: float = 10.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0
    # TLS: CA bundle to verify the server with (default: the system's), client cert and key.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # Secrets are never held here (`roadside gateway check` prints this): only where they are.
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    # MQTT
    topic: str = DEFAULT_TOPIC
    protocol: str = "3.1.1"
    client_id: str | None = None
    keepalive_s: int = 60
    # Remote commands (off unless command_topic is set): templates with {site} and {gateway}.
    command_topic: str | None = None
    reply_topic: str | None = None
    # The commands the command topic may run (the broker's ACL decides who may publish).
    command_allow: tuple[str, ...] = ()
    # HTTP
    gzip: bool = False
    token_file: Path | None = None
    token_env: str | None = None

    def token(self) -> str | None:
        """The HTTP bearer token, read now from token_file or token_env (None: none set)."""
        return secret(self.token_file, self.token_env, "token")

    def password(self) -> str | None:
        """The MQTT password, read now from password_file or password_env (None: none set)."""
        return secret(self.password_file, self.password_env, "password")


def secret(path: Path | None, env: str | None, key: str) -> str | None:
    """A secret from a file (first line, stripped) or an environment variable; ConfigError
    naming the key when it is configured but cannot be read."""
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file: cannot read {str(path)!r}: {exc.strerror};"
                              f" create it (mode 0600) or remove the key") from exc
        if not value:
            raise ConfigError(f"{key}_file: {str(path)!r} is empty; write the {key} in it")
        return value
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"{key}_env: environment variable {env!r} is not set or empty;"
                              f" set it for the gateway service or remove the key")
        return value
    return None


@dataclass(frozen=True)
class StatusConfig:
    listen: str = "127.0.0.1:8081"
    link_down_s: float = 60.0      # /healthz: 503 when a link is not open for longer
    uplink_down_s: float = 300.0   # /healthz: 503 when an uplink cannot reach its backend

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"           # "text" or "json" (one JSON object per line)
    level: str = "info"


@dataclass(frozen=True)
class QueueConfig:
    # Disk budget of the queue (records and cut batches). Beyond it plain telemetry is evicted
    # oldest-first; priority records never are (the gateway answers busy instead).
    max_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class BleConfig:
    """[ble]: the adapter shared by every ble link."""

    max_connections: int = 4       # simultaneous connections; more nodes take turns
    hold_s: float = 30.0           # a connected, idle node keeps its slot this long at least


@dataclass(frozen=True)
class OtaConfig:
    """[ota]: updates over the air (gateway/ota/, PROTOCOL.md 2.6)."""

    link_share: float = 0.5        # share of a link's byte rate OTA chunks may use
    retry_s: float = 30.0          # a node answering busy (alarm burst) is offered again after
    stall_s: float = 10.0          # no OTA_STATE for this long while chunks are out: re-OFFER
    timeout_s: float = 1800.0      # no progress for this long: the transfer fails (timeout)
    trial_s: float = 300.0         # switch sent, no `done` within this: fails (timeout)


@dataclass(frozen=True)
class GatewayConfig:
    gateway: GatewaySection
    links: tuple[LinkConfig, ...] = ()
    batch: BatchConfig = field(default_factory=BatchConfig)
    uplinks: tuple[UplinkConfig, ...] = ()
    status: StatusConfig = field(default_factory=StatusConfig)
    path: Path | None = None
    log: LogConfig = field(default_factory=LogConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    ble: BleConfig = field(default_factory=BleConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)

    @property
    def queue_path(self) -> Path:
        return self.gateway.data_dir / "queue.sqlite"


# -- validation helpers ------------------------------------------------------------------


def _table(raw: dict[str, Any], key: str, known: tuple[str, ...], where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table [{key}], got {value!r}")
    _unknown(value, known, where)
    return value


def _unknown(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for k in table:
        if k not in known:
            raise ConfigError(f"{where}.{k}: unknown key; allowed keys: {', '.join(known)}")


def _text(t: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = t.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}: missing; must be a non-empty string")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}: must be a non-empty string, got {value!r}")
    return value


def _int(t: dict[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}.{key}: must be an integer {lo}..{hi}, got {value!r}")
    return value


def _float(t: dict[str, Any], key: str, where: str, default: float, lo: float,
           hi: float) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{where}.{key}: must be a number {lo:g}..{hi:g}, got {value!r}")
    return float(value)


def _choice(t: dict[str, Any], key: str, where: str, allowed: tuple[str, ...],
            default: str | None = None) -> str:
    value = t.get(key, default)
    if value not in allowed:
        raise ConfigError(f"{where}.{key}: must be one of {', '.join(map(repr, allowed))},"
                          f" got {value!r}")
    return value


def _listen(value: Any, where: str) -> str:
    ok = isinstance(value, str) and ":" in value
    if ok:
        host, _, port = value.rpartition(":")
        ok = bool(host) and port.isdigit() and 0 <= int(port) <= 65535
    if not ok:
        raise ConfigError(f"{where}: must be \"HOST:PORT\" (port 0..65535), got {value!r}")
    return value


def _array(raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{key}: must be an array of tables [[{key}]], got {value!r}")
    return value


def _link_target(t: dict[str, Any], where: str) -> tuple[str | None, str | None, str | None]:
    """A [[link]]'s port, or its USB identity (usb_serial and/or vid_pid), not both."""
    if "port" in t and ("usb_serial" in t or "vid_pid" in t):
        other = "usb_serial" if "usb_serial" in t else "vid_pid"
        raise ConfigError(f"{where}.{other}: set either port or usb_serial / vid_pid, not both"
                          f" (port = {t['port']!r})")
    if "usb_serial" not in t and "vid_pid" not in t:
        if "port" not in t:
            raise ConfigError(f"{where}.port: missing; set port (a device path such as"
                              f" \"/dev/ttyUSB0\") or usb_serial and/or vid_pid")
        return _text(t, "port", where), None, None
    usb_serial = _text(t, "usb_serial", where) if "usb_serial" in t else None
    vid_pid = t.get("vid_pid")
    if vid_pid is not None:
        if not isinstance(vid_pid, str) or not VID_PID.match(vid_pid):
            raise ConfigError(f"{where}.vid_pid: must be \"VVVV:PPPP\" (4 hex digits each,"
                              f" e.g. \"10c4:ea60\"), got {vid_pid!r}")
        vid_pid = vid_pid.lower()
    return None, usb_serial, vid_pid


def _file(t: dict[str, Any], key: str, where: str, base_dir: Path | None) -> Path | None:
    if key not in t:
        return None
    path = Path(_text(t, key, where)).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"{where}.{key}: no such file {str(path)!r}; give an existing file"
                          f" (relative paths are taken from the config's directory)")
    return path


def _secret_file(t: dict[str, Any], key: str, where: str, base_dir: Path | None) -> Path | None:
    """A file holding a secret: as _file, and a warning when others may read it."""
    path = _file(t, key, where, base_dir)
    warning = secret_files.readable_by_others(path) if path is not None else None
    if warning:
        log.warning(f"{where}.{key}: {warning}")
    return path


UPLINK_KEYS = ("type", "url", "name", "timeout_s", "backoff_initial_s", "backoff_max_s",
               "ca_file", "cert_file", "key_file", "insecure_credentials")
MQTT_KEYS = ("topic", "protocol", "client_id", "keepalive_s", "username", "password_file",
             "password_env", "command_topic", "reply_topic", "command_allow")
COMMAND_TOPIC_FIELDS = ("site", "gateway")
# Without command_allow a command topic runs only what reads; config.set, reboot,
# plan.select and fault.clear must be listed.
READ_ONLY_COMMANDS = ("ping", "info", "config.get", "signal.status", "toll.status")


def _command_allow(t: dict[str, Any], where: str) -> tuple[str, ...]:
    from .commands import COMMANDS  # here: commands is not needed to parse the rest

    value = t.get("command_allow", list(READ_ONLY_COMMANDS))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.command_allow: must be a list of command names, e.g."
                          f" [\"ping\", \"info\"], got {value!r}")
    # ota.push / ota.cancel: start / stop a rollout (gateway/ota/), never by default
    known = (*COMMANDS, "ota.push", "ota.cancel")
    for name in value:
        if name not in known:
            raise ConfigError(f"{where}.command_allow: unknown command {name!r}; known:"
                              f" {', '.join(known)}")
    return tuple(dict.fromkeys(value))


def _topic_template(t: dict[str, Any], key: str, where: str, allowed: tuple[str, ...],
                    default: str | None = None) -> str:
    """A topic template using only `allowed` {placeholders}, no MQTT wildcards."""
    topic = _text(t, key, where, default)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(topic) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}: bad template {topic!r}: {exc}") from exc
    bad = [f for f in fields if f not in allowed]
    if bad or "+" in topic or "#" in topic or not topic:
        raise ConfigError(f"{where}.{key}: {topic!r} may use only"
                          f" {', '.join('{' + f + '}' for f in allowed)} and no MQTT"
                          f" wildcards (+ #)")
    return topic
HTTP_KEYS = ("gzip", "token_file", "token_env")


def _uplink(t: dict[str, Any], i: int, base_dir: Path | None) -> UplinkConfig:
    where = f"uplink[{i}]"
    kind = _choice(t, "type", where, UPLINK_TYPES)
    _unknown(t, UPLINK_KEYS + (MQTT_KEYS if kind == "mqtt" else HTTP_KEYS), where)
    url = _text(t, "url", where)
    parsed = urlparse(url)
    schemes = ("mqtt", "mqtts") if kind == "mqtt" else ("http", "https")
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ConfigError(f"{where}.url: must be an {schemes[0]}:// or {schemes[1]}:// URL,"
                          f" got {url!r}")
    try:
        _ = parsed.port
    except ValueError as exc:
        raise ConfigError(f"{where}.url: bad port in {url!r}; use a number 1..65535") from exc
    extra: dict[str, Any] = {}
    if kind == "mqtt":
        topic = _topic_template(t, "topic", where, TOPIC_FIELDS, DEFAULT_TOPIC)
        command_topic = reply_topic = None
        command_allow: tuple[str, ...] = ()
        if "command_topic" in t:
            command_allow = _command_allow(t, where)
            command_topic = _topic_template(t, "command_topic", where, COMMAND_TOPIC_FIELDS)
            reply_topic = _topic_template(t, "reply_topic", where, COMMAND_TOPIC_FIELDS,
                                          command_topic + "/reply")
            if reply_topic == command_topic:
                raise ConfigError(f"{where}.reply_topic: must differ from command_topic"
                                  f" ({command_topic!r}), or the gateway reads its own replies")
        else:
            for key in ("reply_topic", "command_allow"):
                if key in t:
                    raise ConfigError(f"{where}.{key}: needs command_topic (remote commands"
                                      f" are off unless command_topic is set)")
        if "password_file" in t and "password_env" in t:
            raise ConfigError(f"{where}.password_env: set password_file or password_env,"
                              f" not both")
        extra = dict(
            topic=topic, command_topic=command_topic, reply_topic=reply_topic,
            command_allow=command_allow,
            protocol=_choice(t, "protocol", where, MQTT_PROTOCOLS, "3.1.1"),
            client_id=_text(t, "client_id", where) if "client_id" in t else None,
            keepalive_s=_int(t, "keepalive_s", where, 60, 5, 3600),
            username=_text(t, "username", where) if "username" in t else None,
            password_file=_secret_file(t, "password_file", where, base_dir),
            password_env=_text(t, "password_env", where) if "password_env" in t else None,
        )
        if (extra["password_file"] or extra["password_env"]) and not extra["username"]:
            raise ConfigError(f"{where}.username: missing; a password needs a username")
        try:
            secret(extra["password_file"], extra["password_env"], "password")
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    else:
        gz = t.get("gzip", False)
        if not isinstance(gz, bool):
            raise ConfigError(f"{where}.gzip: must be true or false, got {gz!r}")
        if "token_file" in t and "token_env" in t:
            raise ConfigError(f"{where}.token_env: set token_file or token_env, not both")
        extra = dict(gzip=gz, token_file=_secret_file(t, "token_file", where, base_dir),
                     token_env=_text(t, "token_env", where) if "token_env" in t else None)
        try:
            secret(extra["token_file"], extra["token_env"], "token")
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    _no_credentials_in_clear(t, kind, parsed, where)
    cert_file = _file(t, "cert_file", where, base_dir)
    key_file = _secret_file(t, "key_file", where, base_dir)
    if key_file is not None and cert_file is None:
        raise ConfigError(f"{where}.key_file: needs cert_file (the client certificate)")
    return UplinkConfig(
        kind, url, name=_text(t, "name", where, kind if i == 0 else f"{kind}{i}"),
        timeout_s=_float(t, "timeout_s", where, 10.0, 0.1, 600.0),
        backoff_initial_s=_float(t, "backoff_initial_s", where, 0.2, 0.01, 60.0),
        backoff_max_s=_float(t, "backoff_max_s", where, 30.0, 0.1, 3600.0),
        ca_file=_file(t, "ca_file", where, base_dir), cert_file=cert_file, key_file=key_file,
        **extra)


def _no_credentials_in_clear(t: dict[str, Any], kind: str, parsed: Any, where: str) -> None:
    """A token or password goes over TLS only, unless this uplink says otherwise explicitly
    (`insecure_credentials = true`: a lab, or a link encrypted below, e.g. a VPN)."""
    allow = t.get("insecure_credentials", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{where}.insecure_credentials: must be true or false, got {allow!r}")
    if kind == "http":
        tls = parsed.scheme == "https"
        keys: list[str] = [k for k in ("token_file", "token_env") if k in t]
    else:   # mqtt:// with a CA or client certificate is TLS too (MqttUplink)
        tls = parsed.scheme == "mqtts" or "ca_file" in t or "cert_file" in t
        keys = [k for k in ("password_file", "password_env") if k in t]
    if parsed.password is not None:
        keys.append("url")
    if keys and not tls and not allow:
        scheme = "https" if kind == "http" else "mqtts"
        what = "a password in the URL" if keys[0] == "url" else f"the {keys[0]}"
        raise ConfigError(f"{where}.{keys[0]}: {what} would be sent in clear over"
                          f" {parsed.scheme}://; use a {scheme}:// URL, or set"
                          f" insecure_credentials = true for this uplink (only on a network"
                          f" you trust)")


# -- loading -------------------------------------------------------------------------------


PIN_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _pinned_node(t: dict[str, Any], where: str) -> str | None:
    """A serial [[link]]'s `node`: the only node id its port serves (session.py)."""
    if "node" not in t:
        return None
    node = _text(t, "node", where)
    if not PIN_NODE_ID.fullmatch(node):
        raise ConfigError(f"{where}.node: {node[:40]!r} is not a node id (letters, digits,"
                          f" - and _, at most 32)")
    return node


def _pins_unique(links: list[LinkConfig]) -> None:
    owner: dict[str, str] = {}
    for lc in links:
        if lc.node is None:
            continue
        if lc.node in owner:
            raise ConfigError(f"link {lc.name}: node {lc.node!r} is already the node of link"
                              f" {owner[lc.node]}; a node id belongs to one [[link]]")
        owner[lc.node] = lc.name


def parse(raw: dict[str, Any], base_dir: Path | None = None) -> GatewayConfig:
    """Validate a decoded TOML document; relative data_dir is taken from `base_dir`."""
    sections = ("gateway", "link", "batch", "uplink", "status", "log", "queue", "ble", "ota")
    for k in raw:
        if k not in sections:
            raise ConfigError(f"{k}: unknown section or key at the top level; allowed:"
                              f" {', '.join(sections)}")
    g = _table(raw, "gateway", ("id", "site", "data_dir"), "gateway")
    data_dir = Path(_text(g, "data_dir", "gateway", "data")).expanduser()
    if not data_dir.is_absolute() and base_dir is not None:
        data_dir = base_dir / data_dir
    gateway = GatewaySection(_text(g, "id", "gateway"), _text(g, "site", "gateway"), data_dir)

    links = []
    seen_ports: set[str] = set()
    for i, t in enumerate(_array(raw, "link")):
        where = f"link[{i}]"
        if t.get("type") == "ble":
            lc = _ble_link(t, where, base_dir)
            if lc.name in seen_ports:
                raise ConfigError(f"{where}.node: {lc.node!r} is listed twice; one [[link]]"
                                  f" per node")
            seen_ports.add(lc.name)
            links.append(lc)
            continue
        _unknown(t, ("type", "port", "baudrate", "usb_serial", "vid_pid", "node"), where)
        kind = _choice(t, "type", where, LINK_TYPES)
        port, usb_serial, vid_pid = _link_target(t, where)
        name = LinkConfig(kind, port, usb_serial=usb_serial, vid_pid=vid_pid).name
        if name in seen_ports:
            key = "port" if port is not None else "usb_serial" if usb_serial else "vid_pid"
            raise ConfigError(f"{where}.{key}: {name!r} is listed twice; one [[link]] per port")
        seen_ports.add(name)
        baud = t.get("baudrate", 115200)
        if baud not in BAUDRATES or isinstance(baud, bool):
            raise ConfigError(f"{where}.baudrate: must be one of"
                              f" {', '.join(map(str, BAUDRATES))}, got {baud!r}")
        links.append(LinkConfig(kind, port, baud, usb_serial, vid_pid,
                                node=_pinned_node(t, where)))
    _pins_unique(links)

    b = _table(raw, "batch", ("max_records", "max_bytes", "max_age_s"), "batch")
    batch = BatchConfig(
        max_records=_int(b, "max_records", "batch", 200, 1, 10000),
        max_bytes=_int(b, "max_bytes", "batch", 64 * 1024, 1024, 16 * 1024 * 1024),
        max_age_s=_float(b, "max_age_s", "batch", 1.0, 0.0, 3600.0),
    )

    uplinks = []
    for i, t in enumerate(_array(raw, "uplink")):
        uplinks.append(_uplink(t, i, base_dir))
    names = [u.name for u in uplinks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"uplink[{i}].name: {name!r} is already the name of"
                              f" uplink[{names.index(name)}]; names must be unique")

    s = _table(raw, "status", ("listen", "link_down_s", "uplink_down_s"), "status")
    status = StatusConfig(_listen(s.get("listen", "127.0.0.1:8081"), "status.listen"),
                          link_down_s=_float(s, "link_down_s", "status", 60.0, 0.0, 86400.0),
                          uplink_down_s=_float(s, "uplink_down_s", "status", 300.0, 0.0,
                                               86400.0))
    lg = _table(raw, "log", ("format", "level"), "log")
    log = LogConfig(_choice(lg, "format", "log", LOG_FORMATS, "text"),
                    _choice(lg, "level", "log", LOG_LEVELS, "info"))
    qt = _table(raw, "queue", ("max_bytes",), "queue")
    queue = QueueConfig(_int(qt, "max_bytes", "queue", 256 * 1024 * 1024, 65536, 1 << 40))

    bt = _table(raw, "ble", ("max_connections", "hold_s"), "ble")
    ble = BleConfig(_int(bt, "max_connections", "ble", 4, 1, 32),
                    _float(bt, "hold_s", "ble", 30.0, 0.0, 86400.0))

    ot = _table(raw, "ota", ("link_share", "retry_s", "stall_s", "timeout_s", "trial_s"), "ota")
    ota = OtaConfig(_float(ot, "link_share", "ota", 0.5, 0.05, 1.0),
                    _float(ot, "retry_s", "ota", 30.0, 0.1, 86400.0),
                    _float(ot, "stall_s", "ota", 10.0, 0.5, 3600.0),
                    _float(ot, "timeout_s", "ota", 1800.0, 1.0, 7 * 86400.0),
                    _float(ot, "trial_s", "ota", 300.0, 1.0, 86400.0))

    return GatewayConfig(gateway, tuple(links), batch, tuple(uplinks), status, log=log, queue=queue,
                         ble=ble, ota=ota)


def _ble_link(t: dict[str, Any], where: str, base_dir: Path | None) -> LinkConfig:
    """A `[[link]] type = "ble"`: node (required), address (optional), secret_file."""
    _unknown(t, BLE_LINK_KEYS, where)
    node = _text(t, "node", where)
    try:
        ids.check(node, f"{where}.node")
    except ids.BadNodeId as exc:
        raise ConfigError(str(exc)) from None
    address = t.get("address")
    if address is not None and (not isinstance(address, str) or not BLE_ADDRESS.match(address)):
        raise ConfigError(f"{where}.address: must be a Bluetooth address like"
                          f" \"F0:00:00:00:00:01\" (`roadside scan` lists them), got {address!r}")
    if "secret_file" not in t:
        raise ConfigError(f"{where}.secret_file: missing; give the file holding {node}'s"
                          f" secret (the one provisioned with secret.set over serial)")
    secret_file = _secret_file(t, "secret_file", where, base_dir)
    from .ble_auth import AuthError, load_secret
    try:
        load_secret(secret_file)  # type: ignore[arg-type]
    except AuthError as exc:
        raise ConfigError(f"{where}.secret_file: {exc}") from exc
    return LinkConfig("ble", None, node=node, address=address.upper() if address else None,
                      key_path=secret_file)


def load(path: str | Path) -> GatewayConfig:
    """Read, validate and prepare a gateway.toml (creates data_dir); ConfigError otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("no such file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    config = parse(raw, path.resolve().parent)
    try:
        config.gateway.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"gateway.data_dir: cannot create {str(config.gateway.data_dir)!r}:"
                          f" {exc.strerror}") from exc
    return dataclasses.replace(config, path=path)
