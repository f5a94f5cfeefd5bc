# A stand-in for the ESP32 port's `bluetooth` module under the unix port: the same API surface
# that ble.py uses (BLE().active/config/irq/gap_advertise/gap_disconnect/
# gatts_register_services/gatts_set_buffer/gatts_read/gatts_write/gatts_notify, UUID, FLAG_*),
# carried over a pty to a CPython bridge (tools/sim/ble_bridge.py) that runs a real bumble
# Device as the peripheral on a virtual controller. Events come back the other way and are
# delivered to the irq handler from pump() (ESP32: the stack's own scheduler does it).
#
# Wire format both ways: length (2 bytes LE, of op + body), op (1 byte), body.
#   node -> bridge: b"R" services (JSON), b"V" advertise (interval_us u32, adv len u8, adv,
#                   resp), b"N" notify (conn u16, handle u16, data), b"D" disconnect (conn),
#                   b"M" mtu (u16)
#   bridge -> node: b"C" connect (conn u16, addr type u8, addr 6), b"X" disconnect (conn),
#                   b"W" write (conn u16, handle u16, data), b"U" mtu (conn u16, mtu u16),
#                   b"K" credits (u16: notifications the controller has sent)
import json
import struct

import termios  # type: ignore[import-not-found]  # unix port only
from micropython import const

FLAG_READ = const(0x0002)
FLAG_WRITE_NO_RESPONSE = const(0x0004)
FLAG_WRITE = const(0x0008)
FLAG_NOTIFY = const(0x0010)
FLAG_INDICATE = const(0x0020)

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)
_INFLIGHT = const(8)  # notifications the "controller" holds; more raise OSError like NimBLE
_ENOMEM = const(12)
_EVENT_MAX = const(520)  # the longest event: a write of a 512-byte attribute value and its head
_VMIN = 6
_VTIME = 5

_path = None


def configure(path):
    """The pty to the bridge (config sim.ble); call before BLE()."""
    global _path
    _path = path


class UUID:
    def __init__(self, value):
        self.value = value

    def __str__(self):
        return str(self.value)


class _Attr:
    """An attribute's value: one buffer of its size, allocated when set (gatts_set_buffer),
    filled by writes in place, as the port's GATTS database holds it."""

    def __init__(self):
        self.buf = bytearray(20)
        self.n = 0
        self.append = False

    def put(self, data):
        """A write from the central: appended (append mode, the rest of a full buffer is
        lost like the port's) or replacing the value; truncated to the buffer."""
        at = self.n if self.append else 0
        k = min(len(data), len(self.buf) - at)
        if k > 0:
            self.buf[at:at + k] = data[:k]
        self.n = at + max(0, k)


_ble = None


def BLE():
    """The one BLE object, like bluetooth.BLE() on the board."""
    global _ble
    if _ble is None:
        _ble = _BLE()
    return _ble


class _BLE:
    def __init__(self):
        self._active = False
        self._irq = None
        self._attrs = {}
        self._inflight = 0
        # the bridge's events are read one at a time into this buffer, never grown or
        # copied: on a board the stack's own memory holds the radio's bytes, not this heap
        self._rx = bytearray(_EVENT_MAX)
        self._rx_mv = memoryview(self._rx)
        self._rx_n = 0
        self.too_long = 0  # events longer than _EVENT_MAX: skipped
        self._skip = 0
        self._f = None
        self._mtu = 23
        self.notified = 0
        self.refused = 0

    # -- the link to the bridge ----------------------------------------------------------
    def _open(self):
        if self._f is None:
            if _path is None:
                raise OSError("sim_bluetooth: no bridge pty (config sim.ble)")
            self._f = open(_path, "r+b")
            fd = self._f.fileno()
            termios.setraw(fd)
            attr = termios.tcgetattr(fd)
            attr[6][_VMIN] = 0
            attr[6][_VTIME] = 0
            termios.tcsetattr(fd, termios.TCSANOW, attr)
        return self._f

    def _send(self, op, body):
        f = self._open()
        f.write(struct.pack("<H", len(body) + 1) + op + body)

    def poll_obj(self):
        return self._open()

    def pump(self):
        """Deliver what the bridge sent to the irq handler, one event at a time from the
        fixed buffer (no allocation but the irq's own)."""
        f = self._open()
        mv = self._rx_mv
        rx = self._rx
        while True:
            if self._skip:  # the rest of an event too long for the buffer
                k = f.readinto(mv[:min(self._skip, _EVENT_MAX)])
                if not k:
                    return
                self._skip -= k
                continue
            n = self._rx_n
            need = 2 + (rx[0] | rx[1] << 8) if n >= 2 else 2
            if n < min(need, _EVENT_MAX):
                k = f.readinto(mv[n:min(need, _EVENT_MAX)])
                if not k:
                    return
                self._rx_n = n + k
                continue
            self._rx_n = 0
            if need > _EVENT_MAX:
                self.too_long += 1
                self._skip = need - n
            elif need > 2:  # a length of 0 has no op: nothing to deliver
                self._event(rx[2], mv[3:need])

    def _event(self, op, body):
        irq = self._irq
        if op == 0x4B:  # K
            self._inflight = max(0, self._inflight - struct.unpack_from("<H", body)[0])
            return
        if op == 0x57:  # W
            conn, handle = struct.unpack_from("<HH", body)
            a = self._attrs.get(handle)
            if a is None:
                return
            a.put(body[4:])
            if irq:
                irq(_IRQ_GATTS_WRITE, (conn, handle))
        elif op == 0x43:  # C
            conn, atype = struct.unpack_from("<HB", body)
            self._inflight = 0
            if irq:
                irq(_IRQ_CENTRAL_CONNECT, (conn, atype, memoryview(bytes(body[3:9]))))
        elif op == 0x58:  # X
            conn = struct.unpack_from("<H", body)[0]
            self._inflight = 0
            if irq:
                irq(_IRQ_CENTRAL_DISCONNECT, (conn, 0, memoryview(b"\x00" * 6)))
        elif op == 0x55:  # U
            conn, mtu = struct.unpack_from("<HH", body)
            if irq:
                irq(_IRQ_MTU_EXCHANGED, (conn, mtu))

    # -- the bluetooth.BLE API -----------------------------------------------------------
    def active(self, on=None):
        if on is not None:
            self._active = bool(on)
            if on:
                self._open()
        return self._active

    def config(self, *args, **kwargs):
        if "mtu" in kwargs:
            self._mtu = kwargs["mtu"]
            self._send(b"M", struct.pack("<H", self._mtu))
        if args:
            if args[0] == "mtu":
                return self._mtu
            if args[0] == "mac":
                return (0, b"\xc0\x00\x00\x00\x00\x01")
        return None

    def irq(self, handler):
        self._irq = handler

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        adv = bytes(adv_data or b"")
        resp = bytes(resp_data or b"")
        self._send(b"V", struct.pack("<IB", interval_us or 0, len(adv)) + adv + resp)

    def gap_disconnect(self, conn_handle):
        self._send(b"D", struct.pack("<H", conn_handle))
        return True

    def gatts_register_services(self, services):
        out = []
        spec = []
        h = 0
        for uuid, chars in services:
            h += 1
            handles = []
            cs = []
            for c in chars:
                h += 2
                handles.append(h)
                self._attrs[h] = _Attr()
                cs.append([str(c[0]), c[1], h])
                if c[1] & (FLAG_NOTIFY | FLAG_INDICATE):
                    h += 1  # the CCCD
            out.append(tuple(handles))
            spec.append([str(uuid), cs])
        self._send(b"R", json.dumps(spec).encode())
        return tuple(out)

    def gatts_set_buffer(self, handle, size, append=False):
        a = self._attrs[handle]
        a.buf = bytearray(size)
        a.n = 0
        a.append = append

    def gatts_read(self, handle):
        """A new bytes of the value (the port's mp_obj_new_bytes); append mode empties it."""
        a = self._attrs[handle]
        v = bytes(memoryview(a.buf)[:a.n])
        if a.append:
            a.n = 0
        return v

    def gatts_write(self, handle, data, send_update=False):
        a = self._attrs[handle]
        if not a.append and len(data) > len(a.buf):
            a.buf = bytearray(len(data))  # the port grows a value written locally
        a.n = 0
        a.put(data)

    def gatts_notify(self, conn_handle, value_handle, data=None):
        if self._inflight >= _INFLIGHT:
            self.refused += 1
            raise OSError(_ENOMEM)  # the controller's buffers are full: try again later
        if data is None:
            a = self._attrs[value_handle]
            data = memoryview(a.buf)[:a.n]
        self._inflight += 1
        self.notified += 1
        self._send(b"N", struct.pack("<HH", conn_handle, value_handle) + bytes(data))
