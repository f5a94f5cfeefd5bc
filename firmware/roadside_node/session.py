# The node's side of a session (PROTOCOL.md 2.2): HELLO, the send window over the journal
# with go-back-N, cumulative ACKs, TIME, commands with a reply cache, ERROR handling.
# All timeouts here are in real milliseconds, whatever the simulation speed.
from micropython import const

from . import framing, proto
from .config import ConfigError, clip

# protocol v1 numbers (PROTOCOL.md 2.2) only this module uses (proto.py has the shared ones)
_WINDOW = const(32)  # records in flight before an ACK (a port may raise it: ble.py)
_ACK_TIMEOUT_MS = const(2000)
_E_NO_SESSION = const(3)
_E_BUSY = const(6)
_F_CLOCK_UNSYNCED = const(1)
_HELLO_RETRY_MS = const(3000)  # no answer to HELLO: say it again
_SILENCE_MS = const(30000)  # nothing heard for this long: the gateway may have restarted
_BUSY_MS = const(1000)  # backoff after ERROR 6
_CACHE = const(8)  # recent command replies kept for retried request ids
# A noisy line (PROTOCOL.md 2.2, "Frame size on a noisy line"): a frame of n bytes survives a
# bit error rate p with probability (1-p)^(8n), so after a loss the node halves the record
# bytes it puts in a frame, and grows them back by a quarter per ACK that makes progress:
# at BER 1e-3 that settles near one record a frame, at 1e-4 near 300 bytes.
_BUDGET_MIN = const(48)  # record bytes per frame at the least (one record always goes)
_BUDGET_STEP = const(32)  # added per ACK that makes progress, at the least
_RTO_MIN_MS = const(300)  # the ACK timer never fires sooner than this
# a reply longer than this is not kept (a retry runs the command again: the big answers are
# reads, config.get and info): 8 kept replies of 1 KB each would hold 8 KB of a small heap
_CACHE_REPLY = const(160)


class Session:
    # class defaults, set on the instance only when used (no bigger instance dict at boot)
    prio_seq = 0  # the last PRIORITY record's seq (App.emit): unacked -> an OTA offer is busy
    _ota = None  # ota.Ota, imported at the first OTA message or command

    def __init__(self, hw, journal, config, fw, log=print):
        self.hw = hw
        self.journal = journal
        self.config = config
        self.fw = fw
        self.log = log
        self.up = False  # the gateway answered our HELLO
        now = hw.ticks_ms()
        self.hello_at = None
        self.heard_at = now
        self.progress_at = now
        self.busy_until = None
        self.no_session_at = None  # last ERROR 3 answered with a HELLO
        self.send_seq = journal.first_unacked
        self.time_base = None  # (epoch ms, ticks ms) from the last TIME
        self.cache = []  # [(request id, reply payload)]
        self.reboot_pending = False
        self.ble = None  # the App sets it when BLE is on (ble.BlePort)
        self.role = None  # the App sets it: role.commands (names), role.command(name, args)
        self.safe_mode = False  # the App sets these two (bootguard.py)
        self.guard = None
        self.sent_frames = 0
        self.errors_in = 0
        self.failed = 0  # messages whose handling raised: answered with an error, counted
        self.port = None  # None: the UART; else the port that spoke last (ble.BlePort)
        self.max_payload = framing.MAX_PAYLOAD  # a sealing port lowers it (auth.SEAL_OVERHEAD)
        self.window = _WINDOW  # a port with a longer round trip raises it (ble.py)
        # frames are built in buffers allocated once, here (framing.FrameWriter)
        self.writer = framing.FrameWriter()
        # the line (line_ack, line_loss): frame budget and ACK timer
        self.budget = framing.MAX_PAYLOAD  # record bytes per frame (capped by max_payload)
        self.rto = _ACK_TIMEOUT_MS  # the ACK timer, from measured round trips
        self.srtt = 0  # smoothed round trip (ms)
        self.rtts = 0  # round trips measured
        self.rttvar = 0
        self.probe_seq = 0  # the last seq of the frame being timed (0: none)
        self.probe_at = 0  # ticks when it was sent
        self.sent_hi = 0  # 1 + the highest seq ever sent (resends are not timed)
        self.loss_at = None  # ticks of the last go-back-N
        self.losses = 0
        self.timeouts = 0  # ACK timer expiries in a row

    # -- clock --------------------------------------------------------------------------
    def stamp(self):
        """(t, flags) for a new record: epoch seconds once TIME came, else uptime seconds."""
        if self.time_base is None:
            return self.hw.uptime_s(), _F_CLOCK_UNSYNCED
        ms, at = self.time_base
        return (ms + self.hw.ticks_diff(self.hw.ticks_ms(), at)) // 1000, 0

    # -- output -------------------------------------------------------------------------
    def send(self, payload):
        port = self.port
        if port is None:
            self.writer.encode(payload, self.hw.uart_write)
        else:
            port.send(payload)
        self.sent_frames += 1

    def send_body(self, at, n):
        """Send the payload the caller built in self.writer.body[at:at + n]."""
        port = self.port
        if port is None:
            self.writer.send(at, n, self.hw.uart_write)
        else:
            port.send(bytes(self.writer.body_mv[at:at + n]))  # sealed: a copy anyway
        self.sent_frames += 1

    def use_port(self, port):
        """Answer on `port` from now on (None: the UART)."""
        if port is not self.port:
            self.port = port
            self.max_payload = framing.MAX_PAYLOAD if port is None else port.max_payload
            self.window = _WINDOW if port is None else port.window
            self.rtts = 0  # another link: measure its round trips afresh
            self.rto = _ACK_TIMEOUT_MS

    def hello(self):
        j = self.journal
        self.send(proto.hello(self.config.get("node_id"), self.config.get("role"), self.fw,
                              self.config.get("board"), j.boot_count, self.hw.reset_cause(),
                              j.next_seq, j.first_unacked, self.hw.free_heap(),
                              self.safe_mode, j.unsure))
        self.hello_at = self.hw.ticks_ms()
        self.send_seq = j.first_unacked  # the gateway's ACK will tell where it stands
        self.log("hello sent next_seq %d first_unacked %d%s" % (
            j.next_seq, j.first_unacked, " unsure from %d" % j.unsure if j.unsure else ""))

    # -- input --------------------------------------------------------------------------
    def on_payload(self, payload):
        self.heard_at = self.hw.ticks_ms()
        try:
            mtype, msg = proto.parse(payload)
        except proto.ProtoError as e:
            self.errors_in += 1
            self.log("bad message: %s" % e.text)
            self.send(proto.error(e.code, e.text, e.ref))
            return
        except MemoryError as e:  # no fault of the bytes: answered and counted, as below
            self.failure(e)
            self.send(proto.error(proto.E_MALFORMED, "could not handle it (MemoryError)"))
            return
        try:  # one message's failure is answered and counted; it never resets the node
            if mtype == proto.T_ACK:
                self.up = True
                self.on_ack(msg[1], msg.get(2))
            elif mtype == proto.T_TIME:
                self.up = True
                self.time_base = (msg[1], self.hw.ticks_ms())
                self.log("time %d" % (msg[1] // 1000))
            elif mtype == proto.T_COMMAND:
                self.on_command(msg[1], msg[2], msg.get(3) or {})
            elif mtype == proto.T_ERROR:
                self.on_error(msg[1], msg.get(2, ""))
            elif mtype > proto.T_SEALED:  # OTA_OFFER, OTA_CHUNK (proto.parse lets no other by)
                self.ota().on_message(mtype, msg)
        except Exception as e:  # noqa: BLE001 - the guard itself
            self.failure(e)
            self.send(proto.error(proto.E_MALFORMED, "could not handle it (%s)"
                                  % type(e).__name__, mtype))

    def failure(self, e):
        """A message (or the bytes around it) whose handling raised: counted and logged by
        its type only (never the input), and the node goes on."""
        self.failed += 1
        if isinstance(e, MemoryError):
            if self._ota is not None:  # shed the update's code and state (~6 KB): the next
                o, self._ota = self._ota, None  # OTA message loads it again and resumes at
                o.unload()  # the last verified piece (ota/stage.json)
            import gc
            gc.collect()
        self.log("message failed: %s" % type(e).__name__)

    def on_ack(self, upto, resume=None):
        j = self.journal
        if resume is not None:
            before = j.next_seq
            j.resume(resume)  # first: held records move above what the gateway holds
            if j.next_seq != before:
                self.log("resume at %d" % resume)
        elif j.unsure:
            # no resume while unsure: the gateway holds nothing from j.unsure on (it would say
            # so in every ACK), or predates key 12; never an ack of records numbered since
            upto = min(upto, j.unsure - 1)
            j.confirm()
        n = j.ack(upto)
        self.line_ack(upto, n)
        if n:
            self.progress_at = self.hw.ticks_ms()
            self.log("ack %d" % upto)
        if self.send_seq < self.journal.first_unacked:
            self.send_seq = self.journal.first_unacked

    def on_error(self, code, text):
        self.log("error %d from gateway: %s" % (code, text))
        if code == _E_NO_SESSION:
            # one ERROR comes back per RECORDS in flight: one HELLO answers them all
            now = self.hw.ticks_ms()
            if self.no_session_at is None or self.hw.ticks_diff(now, self.no_session_at) > 1000:
                self.no_session_at = now
                self.up = False
                self.hello()
        elif code == _E_BUSY:
            self.busy_until = self.hw.ticks_ms()
            self.send_seq = self.journal.first_unacked  # resend all after the backoff

    def on_command(self, req, name, args):
        for r, payload in self.cache:
            if r == req:
                self.send(payload)  # a retry: answer again, do not run it twice
                return
        try:
            ok, res = True, self.run(name, args)
        except ConfigError as e:
            ok, res = False, str(e)
        except CommandError as e:
            ok, res = False, str(e)
        except Exception as e:  # noqa: BLE001 - a command's bug answers ERROR, no reset
            from .commands import COMMANDS  # ping and reboot never raise: it is loaded
            self.failed += 1
            ok, res = False, "%s failed (%s)" % (name if name in COMMANDS else "command",
                                                 type(e).__name__)
        try:
            payload = proto.reply(req, ok, res if ok else None, None if ok else res)
        except Exception as e:  # noqa: BLE001 - a result CBOR cannot carry (nan is fine)
            self.failed += 1
            payload = proto.reply(req, False, None, "reply not encodable (%s)"
                                  % type(e).__name__)
        payload = proto.reply_fits(req, payload, self.max_payload)
        if len(payload) <= _CACHE_REPLY:
            self.cache.append((req, payload))
            if len(self.cache) > _CACHE:
                self.cache.pop(0)
        self.log("command %d %s ok=%s" % (req, clip(name), ok))
        self.send(payload)

    def run(self, name, args):
        if name == "ping":
            return "pong"
        if name == "reboot":
            self.reboot_pending = True
            if self.guard is not None:
                self.guard.clear()
            return True
        from .commands import run  # the other commands: not held until the first one
        return run(self, name, args)

    def ota(self):
        """The over-the-air update handler (ota.py), imported on first use."""
        if self._ota is None:
            import gc
            gc.collect()  # ~12 KB of code and state: in one piece if it can
            from .ota import Ota
            self._ota = Ota(self)
        return self._ota

    # -- time passing -------------------------------------------------------------------
    def tick(self):
        now = self.hw.ticks_ms()
        diff = self.hw.ticks_diff
        if self.up and diff(now, self.heard_at) > _SILENCE_MS:
            self.up = False
            self.log("gateway silent")
        if not self.up:
            if self.hello_at is None or diff(now, self.hello_at) > _HELLO_RETRY_MS:
                self.hello()
            return
        if self.busy_until is not None:
            if diff(now, self.busy_until) < _BUSY_MS:
                return
            self.busy_until = None
            self.progress_at = now
        self.pump(now)

    def pump(self, now):
        j = self.journal
        first = j.first_unacked
        if self.send_seq < first:
            self.send_seq = first
        if self.send_seq > first and self.hw.ticks_diff(now, self.progress_at) > self.rto:
            self.line_loss(now, True)
            self.log("no ack: resend from %d (timer %d ms, frames of %d B)" % (
                first, self.rto, self.budget))
        limit = min(j.next_seq, first + self.window)
        port = self.port
        budget = min(self.budget, self.max_payload - proto.RECORDS_OVERHEAD)
        body = self.writer.body_mv
        while self.send_seq < limit:
            if port is not None and not port.room():
                break  # the port's buffer is full: the rest goes at a later tick
            if self.send_seq == first:
                self.progress_at = now  # the ack timer runs from the oldest send
            # records are read straight into the frame buffer after room for the head
            at = end = proto.RECORDS_OVERHEAD
            seq = self.send_seq
            while seq < limit:
                r = j.read(seq)
                if r is None:  # does not match its journal head: never sent (journal.py)
                    break
                if end > at and end - at + len(r) > budget:
                    break
                body[end:end + len(r)] = r
                end += len(r)
                seq += 1
            if end == at:  # the first record did not read back whole
                if seq == first:
                    j.drop_unreadable(seq)  # lost on flash: the next `from` says so
                break
            start = proto.records_head(self.writer.body, at, first, seq - self.send_seq)
            j.mark_sent(seq - 1)
            if not self.probe_seq and seq > self.sent_hi:  # Karn: time first sends only
                self.probe_seq = seq - 1
                self.probe_at = now
            self.sent_hi = max(self.sent_hi, seq)
            self.send_body(start, end - start)
            self.send_seq = seq

    # -- the line's quality: frame budget and ACK timer (new records in a noisy line) -----
    def line_loss(self, now, timeout):
        """A frame was lost: go back to the oldest unacked record with smaller frames."""
        self.losses += 1
        self.budget = max(_BUDGET_MIN, self.budget // 2)
        if timeout:
            self.timeouts += 1
            # not only noise (at BER 1e-3 a round trip fails ~40 %: 6 in a row is rare): the
            # gateway may be slow, back off
            if self.timeouts >= 6:
                self.rto = min(_ACK_TIMEOUT_MS, self.rto * 2)
        self.send_seq = self.journal.first_unacked  # go-back-N
        self.progress_at = now
        self.loss_at = now
        self.probe_seq = 0

    def line_ack(self, upto, n):
        """An ACK: progress times the round trip and grows the frame budget. An ACK that
        moves nothing while records are in flight says the gateway got a frame beyond a lost
        one (it ACKs every RECORDS; a serial line does not reorder): resend now, not after
        the timer. Not for an ACK that crossed our first send (sooner than half a round
        trip), and at most once per timer period (ACKs of frames already in flight repeat)."""
        now = self.hw.ticks_ms()
        diff = self.hw.ticks_diff
        if not self.rtts and self.hello_at is not None:
            self.line_rtt(diff(now, self.hello_at))  # the first round trip: HELLO to an ACK
        if n:
            self.timeouts = 0
            b = self.budget
            if b < framing.MAX_PAYLOAD:
                self.budget = min(framing.MAX_PAYLOAD, b + max(_BUDGET_STEP, b // 4))
                if self.budget == framing.MAX_PAYLOAD:
                    self.log("line clean: frames of %d B again" % self.budget)
            if self.probe_seq and upto >= self.probe_seq:
                self.probe_seq = 0
                self.line_rtt(diff(now, self.probe_at))
        elif self.rtts and self.busy_until is None \
                and self.send_seq > self.journal.first_unacked \
                and diff(now, self.progress_at) >= self.srtt // 2 \
                and (self.loss_at is None or diff(now, self.loss_at) > self.rto):
            self.line_loss(now, False)
            self.log("ack %d again: resend from %d (frames of %d B)" % (
                upto, self.journal.first_unacked, self.budget))

    def line_rtt(self, rtt):
        """A round trip measured (ms): the ACK timer follows it (RFC 6298's estimator)."""
        rtt = min(rtt, _ACK_TIMEOUT_MS)  # a busy pause is no round trip
        if self.rtts:
            err = rtt - self.srtt
            self.srtt += err // 8
            self.rttvar += (abs(err) - self.rttvar) // 4
        else:
            self.srtt = rtt
            self.rttvar = rtt // 2
        self.rtts += 1
        self.rto = max(_RTO_MIN_MS, min(_ACK_TIMEOUT_MS, self.srtt + 4 * self.rttvar))

CommandError = proto.CommandError  # roles raise it without importing the session
