# The node's BLE transport (PROTOCOL.md section 5): a GATT service carrying the same framed
# byte stream as the UART (the gateway writes RX, the node notifies TX), advertising node id,
# role and a short status, and the security of auth.py on every frame. Raw IRQ style on the
# ESP32 port's `bluetooth` module (hw.bluetooth(): the real one, or hw/sim_bluetooth.py).
# The session, journal and acks are the UART's: a dropped connection resumes from the last
# ACK because HELLO after re-authentication restarts the send window at first_unacked.
import struct

from micropython import const

from . import auth, framing, proto
from .framing import Deframer
from .roles import ROLES

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)
_FLAG_READ = const(0x0002)
_FLAG_WRITE_NO_RESPONSE = const(0x0004)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)

SERVICE_UUID = "7d2a0001-3c4e-4b8a-9f1d-52e0a1b2c3d4"
RX_UUID = "7d2a0002-3c4e-4b8a-9f1d-52e0a1b2c3d4"  # gateway -> node: write (no response)
TX_UUID = "7d2a0003-3c4e-4b8a-9f1d-52e0a1b2c3d4"  # node -> gateway: notify
COMPANY_ID = const(0xFFFF)  # "no company" (Bluetooth SIG: for tests and internal use)
ADV_VERSION = const(1)
ADV_ALARM = const(1)  # advertisement flag bits
ADV_SAFE_MODE = const(2)
ADV_BATTERY = const(4)
ADV_NO_SECRET = const(8)
ADV_INTERVAL_US = const(250000)
ADV_REFRESH_MS = const(10000)  # status in the advertisement is at most this old
PREFERRED_MTU = const(247)
_RX_BUF = const(1024)  # the RX attribute's append buffer (a whole frame and some)
_IN_MAX = const(1536)  # bytes written by the gateway not yet deframed
_OUT_MAX = const(2560)  # bytes waiting for notification; a frame that does not fit is dropped
_FRAME_MAX = const(1040)  # the longest frame: MAX_PAYLOAD sealed, COBS, CRC, delimiters
_BURST = const(16)  # notifications per step at most: the role and the UART get their turn


def site_tag(site):
    """Two bytes naming the site in the advertisement (0 when the node has no site)."""
    if not site:
        return 0
    import hashlib
    d = hashlib.sha256(site.encode()).digest()
    return d[0] << 8 | d[1] or 1


def adv_payload(node_id, role, flags, battery, site):
    """Advertising data: flags, manufacturer data (PROTOCOL.md 5.1), the node id as name."""
    mfr = struct.pack("<HBBBBBBH", COMPANY_ID, 0x52, 0x53, ADV_VERSION,
                      ROLES.index(role) + 1 if role in ROLES else 0, flags, battery, 0)[:8]
    mfr += struct.pack(">H", site_tag(site))
    out = bytearray(b"\x02\x01\x06")
    out.extend(bytes((len(mfr) + 1, 0xFF)))
    out.extend(mfr)
    name = node_id.encode()
    room = 31 - len(out) - 2
    kind = 0x09 if len(name) <= room else 0x08  # complete or shortened local name
    name = name[:room]
    out.extend(bytes((len(name) + 1, kind)))
    out.extend(name)
    return bytes(out)


def _uuid128_le(s):
    h = s.replace("-", "")
    b = bytes(int(h[i:i + 2], 16) for i in range(0, 32, 2))
    return bytes(reversed(b))


class BlePort:
    """One GATT peripheral; at most one central (the gateway or an installer) at a time."""

    max_payload = framing.MAX_PAYLOAD - auth.SEAL_OVERHEAD
    # records in flight before an ACK (the UART's is 32, session.py _WINDOW): a BLE round trip is
    # longer, and room() keeps the output buffer from overflowing (Session.use_port/pump)
    window = 128

    def __init__(self, hw, config, session, log=print, app=None):
        self.hw = hw
        self.config = config
        self.session = session
        self.log = log
        self.app = app
        self.bt = hw.bluetooth()
        self.channel = auth.Channel(config.get("node_id"), hw, self._send_plain, log=log)
        self.channel.on_authed = self._authed
        self.channel.on_fail = self.drop
        self.dropping = False  # disconnect once the queued output (an auth ERROR) is out
        self.dropping_at = 0
        self.kicked = False  # gap_disconnect sent: the disconnect event is on its way
        self.connected_at = 0  # an unauthenticated central is dropped HANDSHAKE_MS after
        self.timed_out = 0  # centrals dropped for not authenticating in time
        self.failed = 0  # frames whose handling raised (answered, counted, no reset)
        self.deframer = Deframer()
        self.inbox = bytearray()
        # The output: one buffer allocated now, while the heap is whole (a buffer grown and
        # cut per frame fragments a small heap until a 2 KiB block cannot be found)
        self.out = bytearray(_OUT_MAX)
        self.out_mv = memoryview(self.out)
        self.out_at = 0  # out[out_at:out_end] waits to be notified
        self.out_end = 0
        self.conn = None
        self.mtu = 23
        self.adv_at = None
        self.adv_flags = None
        self.connects = 0
        self.dropped_in = 0
        self.dropped_out = 0
        self.notified = 0
        ble = self.bt.BLE()
        self.ble = ble
        ble.active(True)
        ble.config(mtu=PREFERRED_MTU)
        ble.irq(self._irq)
        svc = (self.bt.UUID(SERVICE_UUID), (
            (self.bt.UUID(RX_UUID), _FLAG_WRITE | _FLAG_WRITE_NO_RESPONSE),
            (self.bt.UUID(TX_UUID), _FLAG_NOTIFY | _FLAG_READ)))
        ((self.rx, self.tx),) = ble.gatts_register_services((svc,))
        ble.gatts_set_buffer(self.rx, _RX_BUF, True)
        self.resp = bytes((17, 0x07)) + _uuid128_le(SERVICE_UUID)
        self.advertise()

    # -- advertising ----------------------------------------------------------------------
    def status_flags(self):
        f = 0
        role = self.session.role
        state = getattr(role, "state", None)
        if state not in (None, 0, "ok", "normal"):
            f |= ADV_ALARM
        if self.session.safe_mode:
            f |= ADV_SAFE_MODE
        if self.config.get("battery"):
            f |= ADV_BATTERY
        if self.channel.secret is None:
            f |= ADV_NO_SECRET
        return f

    def advertise(self):
        c = self.config
        flags = self.status_flags()
        battery = self.hw.battery_pct() if hasattr(self.hw, "battery_pct") else 255
        self.ble.gap_advertise(ADV_INTERVAL_US, adv_payload(
            c.get("node_id"), c.get("role"), flags, battery, c.get("site")), self.resp)
        self.adv_at = self.hw.ticks_ms()
        self.adv_flags = flags

    # -- events (IRQ context on the board: keep it short, no allocation-heavy work) ----------
    def _irq(self, event, data):
        if event == _IRQ_GATTS_WRITE:
            conn, handle = data
            if handle == self.rx and conn == self.conn:
                chunk = self.ble.gatts_read(self.rx)
                if len(self.inbox) + len(chunk) > _IN_MAX:
                    self.dropped_in += len(chunk)  # the session's go-back-N recovers
                else:
                    self.inbox.extend(chunk)
        elif event == _IRQ_CENTRAL_CONNECT:
            conn = data[0]
            if self.conn is not None:
                self.ble.gap_disconnect(conn)  # one central at a time
                return
            self.conn = conn
            self.dropping = False
            self.connected_at = self.hw.ticks_ms()
            self.kicked = False
            self.mtu = 23
            self.connects += 1
            self.channel.reset()
            self.deframer.reset()  # nothing of an old partial frame survives
            self.inbox = bytearray()
            self.out[0] = 0  # ends whatever partial frame the gateway holds
            self.out_at = 0
            self.out_end = 1
            self.log("ble connected")
        elif event == _IRQ_CENTRAL_DISCONNECT:
            if data[0] != self.conn:
                return
            self.conn = None
            self.channel.abandon("disconnected")  # a started handshake counts as failed
            self.out_at = 0
            self.out_end = 0
            if self.session.port is self:
                self.session.up = False
                self.session.use_port(None)
            self.log("ble disconnected")
            self.adv_at = None  # advertise again at the next step
        elif event == _IRQ_MTU_EXCHANGED:
            self.mtu = data[1]

    # -- the byte stream ----------------------------------------------------------------------
    def _send_plain(self, payload):
        """Unsealed: the handshake and its errors only."""
        if len(payload) > framing.MAX_PAYLOAD:
            self.dropped_out += 1  # never raised into the loop (the callers keep it short)
            return
        self._queue(framing.encode(payload))

    def send(self, payload):
        """The session's send: sealed, framed, queued for notification (dropped if no room)."""
        if self.conn is None or not self.channel.authed:
            return
        if len(payload) > self.max_payload:
            self.dropped_out += 1  # the session keeps its payloads under max_payload
            return
        self._queue(framing.encode(self.channel.seal(payload)))

    def _queue(self, frame):
        if self.conn is None:
            return
        at, end, n = self.out_at, self.out_end, len(frame)
        if end - at + n > _OUT_MAX:
            self.dropped_out += 1
            return
        mv = self.out_mv
        if end + n > _OUT_MAX:  # compact: what was notified goes (copies that never overlap)
            end -= at
            i = 0
            while i < end:
                k = min(at, end - i)
                mv[i:i + k] = mv[at + i:at + i + k]
                i += k
            at = 0
            self.out_at = 0
        mv[end:end + n] = frame
        self.out_end = end + n
        # notify now, not at the next loop step: that may be a whole poll timeout away, and
        # an ACK round trip per window is what limits the throughput (docs/PERFORMANCE.md)
        self.flush()

    def _authed(self):
        s = self.session
        s.use_port(self)
        s.hello()  # resumes from first_unacked; the gateway ACKs where it stands

    def disconnect(self):
        self.dropping = False
        if self.conn is not None:
            self.kicked = True
            self.ble.gap_disconnect(self.conn)

    def drop(self):
        """Disconnect after what is queued (the auth ERROR saying why) has been notified."""
        self.dropping = True
        self.dropping_at = self.hw.ticks_ms()

    def _watch(self):
        """An unauthenticated central holds the node's only slot: drop it once the handshake
        time is over (the installer's laptop must be able to connect); a drop that waits for
        notifications the central never takes ends after a second anyway."""
        if self.conn is None or self.kicked:
            return
        if self.dropping:
            if self.hw.ticks_diff(self.hw.ticks_ms(), self.dropping_at) > 1000:
                self.disconnect()
            return
        if self.channel.expired(self.connected_at):
            self.timed_out += 1
            self.log("ble central not authenticated after %d ms: dropped" % auth.HANDSHAKE_MS)
            self._send_plain(proto.error(proto.E_AUTH, "not authenticated in time: "
                                         "disconnected", proto.T_AUTH))
            self.channel.abandon("handshake time over")
            self.drop()

    def set_secret(self, secret):
        self.channel.secret = secret
        self.adv_at = None

    def step(self):
        """Deframe what the gateway wrote, run the channel, send notifications, advertise."""
        pump = getattr(self.hw, "ble_pump", None)
        if pump is not None:
            pump()
        if self.inbox:
            data = self.inbox
            self.inbox = bytearray()
            try:  # a failure (a MemoryError too) costs these frames, never a reset
                for payload in self.deframer.feed(data):
                    inner = self.channel.handle(payload)
                    if inner is not None:
                        self.session.use_port(self)
                        self.session.on_payload(inner)
            except Exception as e:  # noqa: BLE001 - the guard itself
                self.failed += 1
                self.session.failure(e)
        self._watch()
        self.flush()
        if self.conn is None:
            now = self.hw.ticks_ms()
            if self.adv_at is None or self.hw.ticks_diff(now, self.adv_at) > ADV_REFRESH_MS \
                    or self.status_flags() != self.adv_flags:
                self.advertise()

    def room(self):
        """True when one more frame of the largest size fits in the output buffer."""
        return self.out_end - self.out_at + _FRAME_MAX <= _OUT_MAX

    def flush(self):
        """Notify what is queued, in MTU-sized pieces, until the controller is full."""
        if self.conn is None:
            return
        at, end = self.out_at, self.out_end
        chunk = self.mtu - 3
        mv = self.out_mv
        n = 0
        while at < end and n < _BURST:
            nxt = min(at + chunk, end)
            try:
                self.ble.gatts_notify(self.conn, self.tx, mv[at:nxt])
            except OSError:
                break  # the controller is full: the rest waits for the next step
            at = nxt
            n += 1
        self.notified += n
        if at >= end:
            at = end = 0
            if self.dropping:
                self.disconnect()
        self.out_at, self.out_end = at, end

    def stats(self):
        st = dict(self.channel.stats)
        st["connected"] = self.conn is not None
        st["connects"] = self.connects
        st["mtu"] = self.mtu
        st["secret"] = self.channel.secret is not None
        st["dropped_in"] = self.dropped_in
        st["dropped_out"] = self.dropped_out
        st["timed_out"] = self.timed_out
        st["failed"] = self.failed
        st["frames_bad"] = self.deframer.crc + self.deframer.cobs + self.deframer.oversize
        return st
