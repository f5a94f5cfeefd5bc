# Simulated RFID gantry reader speaking the line protocol of docs/READER.md, in process:
# every inventory round (round_ms) each antenna reads each tag in its field with probability
# read_p, with an RSSI that peaks when the vehicle is under the antenna; a vehicle with
# "cross" is also seen, weaker, by a neighbouring lane's antenna. Vehicles come from the
# scenario (tag, lane, at_ms, kmh, cross), repeated every loop_ms when looping.
import random
from array import array

# the reader's line format is the toll role's: one definition for both ends
from ..roles.toll import checksum, line

_HB_MS = 500


class SimReader:
    def __init__(self, data, seed=0):
        random.seed(seed)
        self.round_ms = int(data.get("round_ms", 20))
        self.read_p = float(data.get("read_p", 0.8))
        self.zone_m = float(data.get("zone_m", 6.0))
        rssi = data.get("rssi") or {}
        self.peak = float(rssi.get("peak", -45))
        self.edge = float(rssi.get("edge", -72))
        self.cross_db = float(rssi.get("cross_db", 12))
        self.noise = float(rssi.get("noise_db", 2))
        self.loop_ms = int(data.get("loop_ms", 0))
        vs = []
        for v in data.get("vehicles", []):
            dwell = int(self.zone_m / (float(v.get("kmh", 80)) / 3.6) * 1000)
            vs.append((int(v["at_ms"]), dwell, v["tag"], int(v["lane"]),
                       int(v.get("cross", 0))))
        vs.sort()
        # a few flat buffers, not one object per vehicle: they outlive the scenario's JSON,
        # and many small long-lived objects among its garbage would fragment a small heap
        n = len(vs)
        self.n = n
        self.at = array("i", [v[0] for v in vs])
        self.dwell = array("i", [v[1] for v in vs])
        self.lane = bytes([v[3] for v in vs])
        self.cross = bytes([v[4] for v in vs])
        self.tags = "".join([v[2] for v in vs]).encode()
        offs = [0]
        for v in vs:
            offs.append(offs[-1] + len(v[2]))
        self.tag_off = array("i", offs)
        self.status = data.get("status", "OK").encode()
        self.t = 0  # next inventory round
        self.hb = 0  # next heartbeat
        self.rseq = 0
        self.pending = []  # lines generated, not yet read by the node
        self.unacked = {}  # tag -> highest rseq sent and not acknowledged
        self.acks = 0
        self.reads = 0
        self.inbuf = b""

    def _round(self, tr):
        parts = self.pending
        lap_t = tr % self.loop_ms if self.loop_ms else tr
        for k in range(self.n):
            at = self.at[k]
            if at > lap_t:
                break
            dwell = self.dwell[k]
            if lap_t >= at + dwell:
                continue
            lane = self.lane[k]
            cross = self.cross[k]
            tag = self.tags[self.tag_off[k]:self.tag_off[k + 1]]
            x = (lap_t - at) / dwell
            base = self.edge + (self.peak - self.edge) * (1 - abs(2 * x - 1))
            for ant in (lane, cross):
                if not ant or random.random() >= self.read_p:
                    continue
                rssi = base - (self.cross_db if ant != lane else 0)
                rssi += (random.random() * 2 - 1) * self.noise
                self.rseq += 1
                self.reads += 1
                self.unacked[tag] = self.rseq
                parts.append(line(b"R,%d,%s,%d,%d,%d" % (self.rseq, tag, ant, int(rssi), tr)))

    def read(self, now):
        """What the reader has sent by `now` (ms): a few lines (up to ~256 bytes) a call."""
        p = self.pending
        while len(p) < 5 and (self.t <= now or self.hb <= now):
            if self.hb <= self.t:
                p.append(line(b"H,%d,%s" % (self.hb, self.status)))
                self.hb += _HB_MS
            else:
                self._round(self.t)
                self.t += self.round_ms
        n = min(len(p), 5)
        data = b"".join(p[:n])
        del p[:n]
        return data

    def write(self, data):
        """Bytes from the node: acknowledgements `$A,<tag>,<rseq>*CS`."""
        buf = self.inbuf + data
        while b"\n" in buf:
            ln, buf = buf.split(b"\n", 1)
            ln = ln.strip()
            if len(ln) < 4 or ln[:1] != b"$" or ln[-3:-2] != b"*":
                continue
            body = ln[1:-3]
            if int(ln[-2:], 16) != checksum(body):
                continue
            f = body.split(b",")
            if f[0] == b"A" and len(f) == 3:
                self.acks += 1
                if self.unacked.get(f[1], 0) <= int(f[2]):
                    self.unacked.pop(f[1], None)
        self.inbuf = buf


class IO:
    """roles/toll.py's view of the reader's UART; hw is the base layer (hw/sim.py)."""

    def __init__(self, hw, config):
        self.hw = hw
        self.reader = SimReader(hw.scenario(), hw.seed)

    def reader_read(self):
        return self.reader.read(self.hw.role_ms())

    def reader_write(self, data):
        self.reader.write(data)
