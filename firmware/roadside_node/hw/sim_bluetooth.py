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
    def __init__(self):
        self.value = b""
        self.size = 20
        self.append = False


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
        self._buf = bytearray()
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
        """Read what the bridge sent and deliver it to the irq handler."""
        f = self._open()
        while True:
            data = f.read(512)
            if not data:
                break
            self._buf.extend(data)
        buf = self._buf
        i = 0
        while len(buf) - i >= 2:
            n = buf[i] | buf[i + 1] << 8
            if len(buf) - i < 2 + n:
                break
            op = buf[i + 2]
            body = bytes(buf[i + 3:i + 2 + n])
            i += 2 + n
            self._event(op, body)
        if i:
            self._buf = buf[i:]

    def _event(self, op, body):
        irq = self._irq
        if op == 0x4B:  # K
            self._inflight = max(0, self._inflight - struct.unpack("<H", body)[0])
            return
        if op == 0x57:  # W
            conn, handle = struct.unpack("<HH", body[:4])
            a = self._attrs.get(handle)
            if a is None:
                return
            if a.append:
                room = a.size - len(a.value)
                a.value = a.value + body[4:4 + max(0, room)]
            else:
                a.value = body[4:4 + a.size]
            if irq:
                irq(_IRQ_GATTS_WRITE, (conn, handle))
        elif op == 0x43:  # C
            conn, atype = struct.unpack("<HB", body[:3])
            self._inflight = 0
            if irq:
                irq(_IRQ_CENTRAL_CONNECT, (conn, atype, memoryview(body[3:9])))
        elif op == 0x58:  # X
            conn = struct.unpack("<H", body)[0]
            self._inflight = 0
            if irq:
                irq(_IRQ_CENTRAL_DISCONNECT, (conn, 0, memoryview(b"\x00" * 6)))
        elif op == 0x55:  # U
            conn, mtu = struct.unpack("<HH", body)
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
        a.size = size
        a.append = append

    def gatts_read(self, handle):
        a = self._attrs[handle]
        v = a.value
        if a.append:
            a.value = b""
        return v

    def gatts_write(self, handle, data, send_update=False):
        self._attrs[handle].value = bytes(data)

    def gatts_notify(self, conn_handle, value_handle, data=None):
        if self._inflight >= _INFLIGHT:
            self.refused += 1
            raise OSError(_ENOMEM)  # the controller's buffers are full: try again later
        if data is None:
            data = self._attrs[value_handle].value
        self._inflight += 1
        self.notified += 1
        self._send(b"N", struct.pack("<HH", conn_handle, value_handle) + bytes(data))
