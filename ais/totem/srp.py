"""The Totem single-ring ordering and membership protocol, as a state machine.

Theory of operation
===================

``Srp`` is sans-IO (spec/totem.md, DESIGN.md "The Totem core is a state
machine"): ``start``, ``receive``, ``timer`` and ``mcast`` take the current
time and return actions (``events.py``) for the caller to perform.  It reads
no clock, opens no socket and keeps no thread.

States (``RingState``)::

    GATHER --consensus, rep sends commit token--> COMMIT
    COMMIT --commit token's 2nd rotation--> RECOVERY
    RECOVERY --a clean token rotation--> OPERATIONAL
    any --token loss / foreign ring / join--> GATHER

Ordering (OPERATIONAL).  The token carries ``seq`` (highest seq assigned),
``aru`` (all received up to, lowered by whoever lacks messages and raised only
by its owner), ``fcc``/``backlog`` (flow control) and ``rtr`` (seqs someone
is missing).  The holder retransmits what it can from ``rtr``, sends new
frames (at most ``max_messages`` per visit, ``window_size`` per rotation,
both scaled up alike where ``window_size`` frames hold less than
``window_bytes``: per-frame costs, not bytes, set a rotation's pace, so small
frames would otherwise leave the ring idle between visits),
adds its own holes to ``rtr``, updates ``aru``, frees frames that the token's
aru covered on two consecutive visits, and passes the token on.  Frames are
delivered in seq order as soon as they are contiguous (agreed order).

Idle ring.  When a whole rotation sent nothing, the representative marks the
token IDLE; if it comes back still IDLE it rests there for ``token_hold`` ms.
A node with a new message multicasts WAKE and the representative releases the
token at once, so the first message after a quiet spell is not held up.  The
token starts resting only ``token_linger`` ms after the last traffic: a
synchronous writer's next message finds it moving, with no WAKE and no extra
hops, while an idle ring still stops rotating a few ms after its last message.

Writer hold.  A node at whose visit a message of its own that a local client
waits for (``mcast(awaited=True)``) becomes stable keeps the token for up to
``writer_hold`` ms, if nothing else is queued anywhere (the token's backlog)
and everyone has everything: the client, answered at that stability, sends
its next request within a fraction of a ms, and it leaves on this visit
rather than a whole rotation later.  The hold ends when as many awaited
messages came as were answered (clients answered together send together),
on any other message or a WAKE, or when the time is up; the held visit is
then carried out, as for the representative's rest, as the same visit (it
is not a consecutive one for stability).  No hold while awaited messages of
ours are still short of stability.

Stable ACKs.  In a ring of three or more, a frame that ends a message a
local client waits for carries ``MCAST_ACK`` (only while none of the node's
earlier awaited messages are still short of stability).  Every member that
holds everything up to such a frame unicasts an ACK with its aru to the
frame's sender, once, after the rest of the read it came in.  Arus never
fall within a ring, so once every other member's ACK covers a seq (and we
hold it too) it is reported ``Stable`` a round trip after it left instead of
when the token comes back; the token still carries the same news (lost ACKs
only lose the head start) and alone frees frames.  ``_ack_answered`` carries
the messages answered this way into the next visit's writer hold.

Reads.  ``receive_many`` takes what one wake-up read: a run of common frames
is stored with the checks made once for the run (``_frame_run``, also the
single-datagram fast path), anything else takes the full path in order, and
the frames are delivered after all of it, so a token read behind them is
passed on before their messages are joined.

Membership.  GATHER exchanges JOIN messages (process set, fail set); when all
of (proc - fail) sent sets equal to ours, the lowest of them creates a commit
token for a new ring id (highest ring seq seen + 4).  Its first rotation
collects each member's old ring id, aru and highest seq; its second moves
every member to RECOVERY.  Processors that do not agree within ``consensus``
are put in the fail set.

Recovery (extended virtual synchrony).  Members that came from the same old
ring re-send, encapsulated in the new ring, the old frames above the lowest
aru among them (the holder of the highest aru covers the range up to it), so
that afterwards each holds the union of what any of them held.  No new
application frame is sent during recovery.  The representative marks the
token COMPLETE after a rotation in which nobody sent anything, nobody still
had frames to re-send and everyone had everything; each member then delivers
the old ring's remaining frames in order up to the first hole, the
transitional configuration, the frames after the hole, and the new regular
configuration.  The old ring's store is frozen from the start of recovery so
that every member's union is the same.

A ring of one passes no token: its frames are delivered at once.

Token retransmission.  A holder that passed the token on resends it when
nothing from the ring shows that it arrived: after the retransmit timeout
(RTO) = smoothed rotation time + 4 times its mean deviation, measured on
rotations that did not wait for a resend (a sample over twice the recent
minimum is left out, and so is one in which we resent: Karn), bounded by
``token_retransmit_min`` and ``token_retransmit`` (never more than token/20,
so that some twenty resends fit in a token timeout), doubling after each
resend.  An idle token may rest at the representative on its way back, so
other holders first wait that rest on top; when the representative, whose
rotations never include a rest, resends an idle token, every holder it
already passed relays its own copy at once, and a WAKE shortens the wait.
A token released by a WAKE is not marked idle.

Fail to receive.  A member whose aru holds the token's aru down without
moving for ``fail_recv_const`` visits while the token's seq is higher does
not get what others hold (e.g. its frames over some size are dropped): it
logs a warning, gathers alone and ignores the others for
``fail_recv_backoff`` ms (doubled on repeats); they form a ring without it
after their consensus timeout, and merge detection brings it back later.

Leave.  ``leave`` (the executive got SIGTERM) multicasts LEAVE naming the
ring this node installed and then ignores all input and timers.  A member of
that ring that hears it (and it must be its member, in that very ring: a
LEAVE names only its own sender, so nobody can make another node leave, and
one of an older ring is stale) puts the sender in its fail set and gathers
at once; the survivors agree after one exchange of joins instead of waiting
for the token timeout and the consensus timeout.  A lost LEAVE costs only
that: the token timeout removes the node as if it had crashed.

Stalls.  A node whose timers are overdue by more than the token
timeout was not running (SIGSTOP, a VM pause): what it has queued is
stale.  It drops input for ``join`` ms and gathers afresh from itself, so
joins that name it failed never make it fail the others in turn.
"""
from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Sequence

from . import wire
from .events import (Action, CancelTimer, ConfChange, Deliver, RingId, Send, SendQueueFull,
                     Stable, StartTimer, TimerKind, TotemConfig, fmt_node)
from .guard import Guard
from .queues import Frame, Reassembler, RxStore, SendQueue
from .wire import (MCAST_ACK, MCAST_FIXED, MCAST_RECOVERED, RECOVERED_HEADER, TOKEN_COMPLETE,
                   TOKEN_IDLE, Ack, BadPacket, Commit, CommitEntry, Join, Mcast, Probe, Token)

logger = logging.getLogger("ais.totem.srp")

_unpack_mcast = MCAST_FIXED.unpack_from  #: a frame's fixed part, for the hot path
_MCAST_SIZE = MCAST_FIXED.size
_new_frame = tuple.__new__  #: Frame(...) without the keyword-capable constructor
_pack_mcast_head = MCAST_FIXED.pack  #: a frame's fixed part, for the sender's hot path

#: retransmit-list entries a token may carry (bounded so the token fits a frame)
RTR_LIMIT = 100

#: recent rotation samples kept; their minimum tells a clean rotation from one
#: that waited for a retransmission
ROTATION_WINDOW = 16


class RingState(enum.Enum):
    OPERATIONAL = "operational"
    GATHER = "gather"
    COMMIT = "commit"
    RECOVERY = "recovery"


OPERATIONAL = RingState.OPERATIONAL
GATHER = RingState.GATHER
COMMIT = RingState.COMMIT
RECOVERY = RingState.RECOVERY


class Srp:
    """One processor's Totem protocol engine.  See the module docstring."""

    def __init__(self, node_id: int, config: TotemConfig | None = None, *, ring_seq: int = 0,
                 log: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self.node_id = node_id
        self.cfg = cfg = config or TotemConfig()
        self.log = log or logger
        self.stats: dict[str, int] = {}
        #: flow control in frames: per rotation (whole ring) and per visit (see the docstring);
        #: set before the guard, whose bounds follow them
        self.window = max(cfg.window_size, cfg.window_bytes // cfg.frame_size)
        self.visit_quota = max(cfg.max_messages,
                               cfg.max_messages * self.window // cfg.window_size)
        #: checks every decoded packet against what the protocol allows (guard.py)
        self.guard = Guard(self)
        self.state = GATHER
        #: highest ring sequence seen anywhere; persisted by the shell
        self.max_ring_seq = ring_seq
        #: the installed ring (seq 0: none yet) and its members
        self.ring_id = RingId(0, node_id)
        self.members: tuple[int, ...] = (node_id,)
        self._regular: tuple[int, ...] = ()
        self.rx = RxStore(self.ring_id)
        self.queue = SendQueue(cfg.frame_size - RECOVERED_HEADER.size)
        self._reasm = Reassembler(cfg.max_message_size)
        # membership
        self._proc: set[int] = {node_id}
        self._fail: set[int] = set()
        self._joins: dict[int, tuple[frozenset[int], frozenset[int]]] = {}
        self._new_ring: RingId | None = None
        self._new_members: tuple[int, ...] = ()
        self._new_rx: RxStore | None = None
        self._trans: tuple[int, ...] = ()
        self._recovery: deque[bytes] = deque()
        self._originated = False
        # token handling
        self._last_token_seq = -1
        self._last_sent: tuple[bytes, int] | None = None
        self._held: Token | None = None
        self._my_last_sent = 0
        self._my_last_backlog = 0
        self._last_token_aru = 0
        self._stable_seq = 0  # highest seq reported in a Stable action for this ring
        #: (seq of the frame that ended them, count) of the awaited messages we
        #: sent in this ring and not yet saw stable (writer_hold)
        self._awaited_sent: deque[tuple[int, int]] = deque()
        #: awaited messages still expected before a writer hold ends (0: no such hold)
        self._hold_for = 0
        #: stable_acks: per member, the highest aru it acknowledged in this ring ...
        self._acked: dict[int, int] = {}
        #: ... per sender, its highest frame asking for an ACK that we still owe ...
        self._ack_owed: dict[int, int] = {}
        #: ... and our awaited messages that ACKs made stable since our last visit
        self._ack_answered = 0
        self._rep_last_seq = -1
        #: when the representative last saw a rotation carry traffic (token_linger)
        self._busy_at = float("-inf")
        self._forwarded_idle = False
        self._wake_pending = False
        self._forwarded_at: float | None = None
        self._sent_seq = 0  # token.seq when we last passed the token on
        # retransmission timing from measured rotations (see _sample_rotation)
        self._rot_window: deque[float] = deque(maxlen=ROTATION_WINDOW)
        self._srtt: float | None = None  # smoothed rotation time (s)
        self._rttvar = 0.0  # its smoothed mean deviation (s)
        self._rt_next = 0.0  # wait (ms) before the next token resend, doubled per resend
        self._resent = False  # we resent the token since we last passed it on (Karn)
        self._timers: dict[TimerKind, float] = {}
        self._drain_until = 0.0  # after a stall: input before this time is stale
        self._commit_at = 0.0  # when we entered commit
        # fail to receive (see _check_receiving)
        self._frr_aru = -1  # our aru at the previous token visit
        self._frr_count = 0  # consecutive visits it stayed there while others had more
        self._frr_strikes = 0  # times we left a ring for it, lately
        self._apart: frozenset[int] = frozenset()  # ... and whom we keep away from
        self._apart_until = 0.0
        self._out: list[Action] = []
        #: where a token visit's new frames go, one ``Send`` each, as they are
        #: framed (default: the returned actions, like every other Send).  A
        #: shell may set it to seal and send them at once, so the first frames
        #: are on their way while the visit frames the rest; it must only send.
        self.frame_sink: Callable[[Send], None] | None = None
        #: the last ``receive_many`` brought only an idle ring's traffic (its
        #: token marked idle, merge probes) and left nothing queued or sent (a
        #: shell's busy polling need not follow such a read)
        self.quiet_read = False
        self._busy_input = False  # this read brought something other than an idle token
        self._gone = False  # we left (``leave``): ignore everything from now on
        self._left: set[int] = set()  # members that left the installed ring (LEAVE)
        self.stats |= {
            "bad_packets": 0, "tokens": 0, "dup_tokens": 0, "frames_sent": 0,
            "frames_received": 0, "retransmits": 0, "token_retransmits": 0,
            "rings_formed": 0, "gathers": 0, "stalls": 0, "stale_dropped": 0,
            "failed_to_receive": 0, "leaves": 0, "writer_holds": 0, "requeued_late": 0,
            "acks_sent": 0, "ack_stables": 0,
        }
        self._handlers: dict[type, Callable] = {
            Mcast: self._on_mcast, Token: self._on_token, Join: self._on_join,
            Commit: self._on_commit, Probe: self._on_probe, Ack: self._on_ack,
        }

    # ------------------------------------------------------------ entry points

    def start(self, now: float) -> list[Action]:
        """Begin: gather; a node that hears nobody forms a ring of one."""
        self._out = []
        self._enter_gather("start", now)
        return self._out

    def receive(self, data: bytes, now: float) -> list[Action]:
        """One datagram from the network (already authenticated and decrypted)."""
        return self.receive_many((data,), now)

    def receive_many(self, datas: Sequence[bytes], now: float) -> list[Action]:
        """Datagrams read together, in arrival order: what ``receive`` on each in
        turn would do, except that the frames they bring are delivered after
        all of them (the transport performs a read's actions together anyway):
        a token read behind a run of frames is handled, and passed on, before
        that run's messages are joined.  (Its visit then frees only what was
        delivered before; the next visit frees the rest.)
        """
        self._out = []
        i, n = 0, len(datas)
        stored_any = False
        self._busy_input = False
        frames_sent = self.stats["frames_sent"]
        while i < n:
            j, stored = self._frame_run(datas, i, now)
            stored_any |= stored
            if j == i:
                self._receive_full(datas[i], now)
                j += 1
            i = j
        if stored_any and self.state is OPERATIONAL:
            self._deliver_ready()
        if self._ack_owed:
            # after the whole read: a token read with the frames leaves first
            self._send_acks()
        self.quiet_read = not (stored_any or self._busy_input or self.queue.msgs
                               or self.stats["frames_sent"] != frames_sent)
        return self._out

    @property
    def awaiting(self) -> bool:
        """Messages of ours wait for the token or for stability (polling worth it)."""
        return bool(self._awaited_sent or self.queue.msgs)

    def _receive_full(self, data: bytes, now: float) -> None:
        try:
            pkt = wire.decode_untrusted(data)
        except BadPacket as e:
            self.stats["bad_packets"] += 1
            self.guard.refuse(str(e), None, now)
            return
        if not (isinstance(pkt, Probe) or isinstance(pkt, Token) and pkt.flags & TOKEN_IDLE):
            self._busy_input = True  # (an idle token and merge probes are an idle ring's)
        if pkt.sender != self.node_id and not self._gone and not self._stalled(now):
            why = self.guard.check(pkt)
            if why is not None:
                self.guard.refuse(why, pkt.sender, now)
                return
            self._handlers[type(pkt)](pkt, now)

    def timer(self, kind: TimerKind, now: float) -> list[Action]:
        """A timer fired.  Timers cancelled or re-armed since are ignored."""
        self._out = []
        at = self._timers.get(kind)
        if at is None or now < at - 1e-9 or self._gone or self._stalled(now):
            return self._out
        del self._timers[kind]
        getattr(self, "_timer_" + kind.value)(now)
        return self._out

    def mcast(self, payload: bytes, now: float, awaited: bool = False) -> list[Action]:
        """Queue an application message for agreed delivery to the ring.

        ``awaited``: a client of this node waits for what the message brings
        (its delivery or its stability); see ``writer_hold``.

        Raises:
            SendQueueFull: too much is queued; try again when the ring drains.
            ValueError: the message is larger than ``max_message_size``.
        """
        self._out = []
        cfg = self.cfg
        if len(payload) > cfg.max_message_size:
            raise ValueError(f"message of {len(payload)} bytes exceeds "
                             f"max_message_size {cfg.max_message_size}")
        q = self.queue
        if len(q) >= cfg.send_queue_limit or (
                q.bytes and q.bytes + len(payload) > cfg.send_queue_bytes):
            raise SendQueueFull()
        was_empty = not q.msgs
        q.push(bytes(payload), awaited)
        self._queued(was_empty, awaited, now)
        return self._out

    def requeue_front(self, payloads: Sequence[bytes], now: float) -> list[Action]:
        """Queue messages this node multicast before again, ahead of everything
        queued since, in their order (queue limits do not apply: they were taken
        once).  The host re-sends this way what an abandoned sync round held; the
        messages queued meanwhile must stay behind them, or its sender's order
        breaks.  Meant right after a ring is installed: its first token visit
        here frames no application message (``_token_visit``), so nothing queued
        has left in the new ring yet.  Should part of the queue's head have left
        anyway, the messages go at the back (counted in ``requeued_late``).
        """
        self._out = []
        q = self.queue
        if not payloads:
            return self._out
        was_empty = not q.msgs
        if q.partly_framed:
            self.stats["requeued_late"] += 1
            for p in payloads:
                q.push(bytes(p))
        else:
            q.push_front([bytes(p) for p in payloads])
        self._queued(was_empty, False, now)
        return self._out

    def _queued(self, was_empty: bool, awaited: bool, now: float) -> None:
        """Messages were queued: a ring of one delivers them, a held token moves on,
        and a ring whose token rests elsewhere is asked for it."""
        if self.state is not OPERATIONAL:
            return
        if len(self.members) == 1:
            if TimerKind.WAKE not in self._timers:  # (armed: a ring just installed)
                self._solo_flush()
        elif self._held is not None:
            self._hold_for -= awaited
            if self._hold_for <= 0 or not awaited:
                self._release_held(now)
        elif was_empty and self._forwarded_idle:
            if self.ring_id.rep == self.node_id:
                # The idle token rests only here, so it is on its way back
                # and its visit takes this message: a WAKE would only cost
                # both ends a packet.  Should it be lost, the timer asks.
                self._arm(TimerKind.WAKE, self._wake_delay(), now)
            else:
                self._send_wake(now)

    def leave(self, now: float) -> list[Action]:
        """This node stops: tell the ring, so that the others re-form at once.

        Afterwards every input and timer is ignored (the shell stops anyway).
        """
        self._out = []
        if not self._gone:
            self._gone = True
            if len(self._regular) > 1:
                self.log.info("leaving ring %s", self.ring_id)
                self._out.append(Send(wire.encode_probe(wire.LEAVE, self.node_id,
                                                        self.ring_id)))
            self._disarm(*list(self._timers))
        return self._out

    @property
    def rotation_time(self) -> float | None:
        """Smoothed token rotation time (s) of the current ring; None before a sample."""
        return self._srtt

    def queued(self) -> int:
        """Application messages queued and not yet (completely) sent."""
        return len(self.queue)

    # ---------------------------------------------------------------- helpers

    def _arm(self, kind: TimerKind, delay_ms: float, now: float) -> None:
        at = now + delay_ms / 1000.0
        self._timers[kind] = at
        self._out.append(StartTimer(kind, at))

    def _disarm(self, *kinds: TimerKind) -> None:
        for kind in kinds:
            if self._timers.pop(kind, None) is not None:
                self._out.append(CancelTimer(kind))

    def _successor(self, members: tuple[int, ...]) -> int:
        i = members.index(self.node_id)
        return members[(i + 1) % len(members)]

    def _set_state(self, state: RingState, reason: str) -> None:
        if state is not self.state:
            self.log.debug("%s -> %s (%s)", self.state.value, state.value, reason)
            self.state = state

    # ----------------------------------------------------------- packet input

    def _frame_run(self, datas: Sequence[bytes], i: int, now: float) -> tuple[int, bool]:
        """Store the run of common frames starting at ``datas[i]`` -- a member's,
        of the installed ring, new or a plain duplicate -- without building
        packet objects.  Returns the index of the first datagram not taken and
        whether a frame was stored (delivery is the caller's).

        Every condition under which the guard or ``_on_mcast`` would do anything
        but store the frame ends the run; the full path parses that datagram
        again and decides, so this changes the cost of a frame, never the
        outcome.  Nothing a run stores changes the conditions checked once for
        it (state, ring, members, ``_sent_seq``, a stall).
        """
        if self.state is not OPERATIONAL or self._gone:
            return i, False
        rid = self.ring_id
        ring_seq_0, ring_rep_0 = rid.seq, rid.rep
        me = self.node_id
        members = self.members
        sent_seq = self._sent_seq
        ahead = sent_seq + self.guard.frame_ahead
        rx = self.rx
        frames = rx.frames
        n = len(datas)
        start = i
        top = 0  # the highest seq stored
        while i < n:
            data = datas[i]
            if len(data) < _MCAST_SIZE or data[1] != wire.MCAST:
                break
            version, _, sender, ring_seq, ring_rep, seq, flags = _unpack_mcast(data)
            if (version != wire.VERSION or ring_seq != ring_seq_0 or ring_rep != ring_rep_0
                    or flags & ~MCAST_ACK or sender == me or sender not in members or seq == 0
                    or seq > ahead):
                break
            payload = data[_MCAST_SIZE:]
            held = frames.get(seq)
            if held is not None and (held.sender != sender or held.payload != payload):
                break  # a conflict: the guard counts and refuses it
            if i == start and self._stalled(now):
                return i + 1, False
            i += 1
            if flags:
                self._owe_ack(sender, seq)
            if held is not None or seq <= rx.aru:
                continue  # a duplicate
            frames[seq] = _new_frame(Frame, (sender, flags, payload))
            if seq > rx.high:
                rx.high = seq
            if seq > top:
                top = seq
            if seq == rx.aru + 1:
                while seq + 1 in frames:
                    seq += 1
                rx.aru = seq
        self.stats["frames_received"] += i - start
        if top > sent_seq and TimerKind.TOKEN_RETRANSMIT in self._timers:
            # the next holder has sent: it has the token
            self._disarm(TimerKind.TOKEN_RETRANSMIT)
        return i, top > 0

    def _on_mcast(self, m: Mcast, now: float) -> None:
        state = self.state
        rid = m.ring_id
        if rid == self.ring_id and state is not RECOVERY:
            # The installed ring; while gathering we still collect its frames.
            self.stats["frames_received"] += 1
            if m.flags & MCAST_ACK and state is OPERATIONAL:
                self._owe_ack(m.sender, m.seq)
            if self.rx.add(m.seq, Frame(m.sender, m.flags, m.payload)) and state is OPERATIONAL:
                if TimerKind.TOKEN_RETRANSMIT in self._timers and m.seq > self._sent_seq:
                    self._disarm(TimerKind.TOKEN_RETRANSMIT)
                self._deliver_ready()
            return
        if state is RECOVERY and rid == self._new_ring:
            self.stats["frames_received"] += 1
            rx = self._new_rx
            assert rx is not None
            if rx.add(m.seq, Frame(m.sender, m.flags, m.payload)):
                if m.flags & MCAST_RECOVERED:
                    self._absorb_recovered(m.payload)
                if TimerKind.TOKEN_RETRANSMIT in self._timers and m.seq > self._sent_seq:
                    self._disarm(TimerKind.TOKEN_RETRANSMIT)
            return
        if (state is OPERATIONAL and m.sender not in self.members and rid.seq
                and not self._is_apart(m.sender, now) and self.guard.may_gather(now)):
            self._enter_gather(f"message of foreign ring {rid} from {fmt_node(m.sender)}", now)

    def _owe_ack(self, sender: int, seq: int) -> None:
        if seq > self._ack_owed.get(sender, 0):
            self._ack_owed[sender] = seq

    def _send_acks(self) -> None:
        """ACK each sender whose flagged frames we now hold, with everything we hold.

        A duplicate of a flagged frame asks again (the first ACK may be lost).
        """
        owed = self._ack_owed
        if self.state is not OPERATIONAL:
            owed.clear()
            return
        aru = self.rx.aru
        for sender, seq in list(owed.items()):
            if seq <= aru:
                del owed[sender]
                self._out.append(Send(wire.encode_ack(self.node_id, self.ring_id, aru), sender))
                self.stats["acks_sent"] += 1

    def _on_ack(self, a: Ack, now: float) -> None:
        """Every member acknowledging up to some seq makes it stable before the
        token comes back: each ACK reports the sender's aru, which never falls
        within a ring, so the least of them is held by every member."""
        if self.state is not OPERATIONAL or a.ring_id != self.ring_id:
            return
        acked = self._acked
        if a.aru <= acked.get(a.sender, 0):
            return
        acked[a.sender] = a.aru
        low = self.rx.aru
        me = self.node_id
        for m in self.members:
            if m != me:
                low = min(low, acked.get(m, 0))
        if low > self._stable_seq:
            self._ack_answered += self._report_stable(low)
            self.stats["ack_stables"] += 1

    def _report_stable(self, low: int) -> int:
        """Every member holds every frame up to ``low`` (above what was reported):
        say so; returns how many of our awaited messages that answers."""
        answered = 0
        done = self._awaited_sent
        while done and done[0][0] <= low:
            answered += done.popleft()[1]
        self._stable_seq = low
        self._out.append(Stable(self.rx.ring_id, low))
        return answered

    def _on_probe(self, p: Probe, now: float) -> None:
        if p.kind == wire.LEAVE:
            self._on_leave(p, now)
            return
        if self.state is not OPERATIONAL:
            return
        if p.kind == wire.WAKE:
            if p.ring_id == self.ring_id:
                if self._held is not None:
                    self._release_held(now)
                else:
                    self._wake_pending = True
                    if (self._forwarded_idle and TimerKind.TOKEN_RETRANSMIT in self._timers
                            and self.ring_id.rep != self.node_id):
                        # Someone waits for the idle token we passed on: if it
                        # was lost here, resend after a rotation's wait, not
                        # after the representative's rest as well.
                        self._forwarded_idle = False
                        self._arm_retransmit(now)
        elif (p.ring_id != self.ring_id and p.sender not in self.members
                and not self._is_apart(p.sender, now) and self.guard.may_gather(now)):
            self._enter_gather(f"merge detect from ring {p.ring_id}", now)

    def _on_leave(self, p: Probe, now: float) -> None:
        """A member of our installed ring leaves it: fail it and gather at once."""
        gone = p.sender
        if p.ring_id != self.ring_id or gone not in self.members or not self.ring_id.seq:
            return  # not about our ring (stale, or a node we never had a ring with)
        if gone in self._left:
            return  # a copy: the ring id matches until the new ring forms
        self._left.add(gone)
        self.stats["leaves"] += 1
        self.log.info("%s left ring %s (leave message)", fmt_node(gone), self.ring_id)
        state = self.state
        if state is GATHER:
            if gone not in self._proc or gone in self._fail:
                return  # someone's join told us already
        elif state is not OPERATIONAL and gone not in self._new_members:
            return
        if state is GATHER:
            self._fail.add(gone)
            self._joins.pop(gone, None)
            self._restart_gather(now)
            self._check_consensus(now)
        else:
            self._enter_gather(f"leave from {fmt_node(gone)}", now, gone=gone)

    def _on_join(self, j: Join, now: float) -> None:
        if j.ring_seq > self.max_ring_seq:
            self.max_ring_seq = j.ring_seq
        state = self.state
        if state is OPERATIONAL:
            if j.sender in self.members and j.ring_seq < self.ring_id.seq:
                return  # left over from the gather that formed this ring
            if self.node_id in j.fail or self._is_apart(j.sender, now):
                # It gave up on us in its own gather and will form a ring
                # without us; merge detection brings us together afterwards
                # with fresh fail sets.  Answering now would only make us
                # give up on it too, round after round.
                return
            self._enter_gather(f"join from {fmt_node(j.sender)}", now, j)
        elif state is GATHER:
            self._merge_join(j, now)
        else:
            assert self._new_ring is not None
            if j.sender in self._new_members and j.ring_seq >= self._new_ring.seq:
                self._enter_gather(f"join from {fmt_node(j.sender)} during {state.value}", now, j)
            elif (state is COMMIT and j.sender in self._new_members
                    and now - self._commit_at > self.cfg.consensus / 2000.0):
                # Still gathering long after our commit token left: the token
                # is stuck (a member stopped) and the gatherers will fail us
                # at their consensus timeout, long before our token timeout.
                self._enter_gather(f"join from {fmt_node(j.sender)}, which has no commit "
                                   "token", now, j)

    def _on_commit(self, c: Commit, now: float) -> None:
        members = c.members
        me = self.node_id
        if me not in members:
            return
        if c.ring_id.seq > self.max_ring_seq:
            self.max_ring_seq = c.ring_id.seq
        state = self.state
        mine = c.entries[members.index(me)]
        if state is GATHER:
            if (not mine.filled and c.ring_id.seq > self.ring_id.seq
                    and members == tuple(sorted(self._proc - self._fail))):
                self._enter_commit(c, now)
        elif state is COMMIT:
            if c.ring_id == self._new_ring and all(e.filled for e in c.entries):
                self._enter_recovery(c, now)
        elif (state is RECOVERY and c.ring_id == self._new_ring and c.ring_id.rep == me
              and not self._originated):
            self._originate_token(now)

    def _on_token(self, t: Token, now: float) -> None:
        state = self.state
        if state is OPERATIONAL:
            if t.ring_id != self.ring_id:
                return
        elif state is RECOVERY:
            if t.ring_id != self._new_ring:
                return
        else:
            return
        if t.token_seq <= self._last_token_seq:
            self.stats["dup_tokens"] += 1
            self._relay_resend(t)
            return
        self._last_token_seq = t.token_seq
        self.stats["tokens"] += 1
        self._token_visit(t, now)

    # ---------------------------------------------------------------- timers

    def _timer_token_loss(self, now: float) -> None:
        if self.state is not GATHER:
            self._enter_gather("token loss", now)

    def _timer_token_retransmit(self, now: float) -> None:
        if self.state is GATHER or self._last_sent is None:
            return
        data, dest = self._last_sent
        self.stats["token_retransmits"] += 1
        self._resent = True
        self._out.append(Send(data, dest))
        # Back off: the resend may be lost too, or the successor merely slow.
        # Doubling bounds the duplicates; the ceiling leaves some twenty tries
        # within the token timeout, so that loss alone (even 30%) does not
        # re-form the ring.
        delay = self._rt_next
        self._rt_next = min(2.0 * delay, self._rt_ceiling())
        self._arm(TimerKind.TOKEN_RETRANSMIT, delay, now)

    def _relay_resend(self, t: Token) -> None:
        """Our predecessor resent the idle token we already passed on.

        It has not come back to it, so it has not come back to us either: the
        loss may be further on.  Resending ours at once carries the repair
        along the ring, so the representative's short wait (its rotations
        never include a rest) covers a loss anywhere, instead of every node
        waiting for the rest at the representative on top of a rotation.
        """
        if (self._forwarded_idle and self._last_sent is not None
                and t.token_seq == self._last_token_seq - 1
                and TimerKind.TOKEN_RETRANSMIT in self._timers):
            self.stats["token_retransmits"] += 1
            self._resent = True
            data, dest = self._last_sent
            self._out.append(Send(data, dest))

    def _timer_token_hold(self, now: float) -> None:
        t = self._held
        if t is not None and self.state is OPERATIONAL:
            self._held = None
            self._token_visit(t, now, may_hold=False)

    def _timer_join(self, now: float) -> None:
        if self.state is GATHER:
            self._send_join()
            self._arm(TimerKind.JOIN, self.cfg.join, now)
            self._check_consensus(now)

    def _timer_consensus(self, now: float) -> None:
        if self.state is not GATHER:
            return
        key = (frozenset(self._proc), frozenset(self._fail))
        silent = {n for n in self._proc - self._fail
                  if n != self.node_id and self._joins.get(n) != key}
        if silent:
            self.log.debug("no consensus from %s", " ".join(fmt_node(n) for n in sorted(silent)))
            self._fail |= silent
            for n in silent:
                self._joins.pop(n, None)
        else:
            # Everyone agreed but no commit token came: the representative
            # may have died.  Ask for fresh joins; the silent fail next time.
            self._joins.clear()
        self._restart_gather(now)
        self._check_consensus(now)

    def _timer_merge_detect(self, now: float) -> None:
        if self.state is OPERATIONAL and self.ring_id.rep == self.node_id:
            if now >= self._apart_until:  # (apart: the others must not gather for us)
                self._out.append(Send(wire.encode_probe(wire.MERGE_DETECT, self.node_id,
                                                        self.ring_id)))
            self._arm(TimerKind.MERGE_DETECT, self.cfg.merge_detect, now)

    def _timer_wake(self, now: float) -> None:
        if self.state is not OPERATIONAL:
            return
        if len(self.members) == 1:
            self._solo_flush()  # a ring of one just installed (``_finish_recovery``)
        elif self.queue.msgs:
            self._send_wake(now)

    def _stalled(self, now: float) -> bool:
        """Whether this input is stale because the process did not run for a while.

        A node stopped (SIGSTOP, a VM pause) for longer than the token timeout
        finds on resuming a burst of queued packets and overdue timers: tokens
        and joins of rings the others have long left, joins whose fail sets
        name it.  Acting on them makes it fail the others in turn and hand
        its fail set to nodes that never stopped, splitting them.  So a timer
        overdue by more than the token timeout means we were stopped:
        we leave our ring, gather afresh, and drop whatever arrives for the
        next ``join`` ms (the backlog); the others hear our join and we all
        form one ring.
        """
        if now < self._drain_until:
            self.stats["stale_dropped"] += 1
            return True
        timers = self._timers
        if not timers:
            return False
        late = now - min(timers.values())
        if late <= self.cfg.token / 1000.0:
            return False
        self.stats["stalls"] += 1
        self.stats["stale_dropped"] += 1
        self.log.info("did not run for %.1f s: leaving ring %s and ignoring what arrived "
                      "meanwhile", late, self.ring_id)
        self._drain_until = now + self.cfg.join / 1000.0
        self._enter_gather("resumed after a stall", now, fresh=True)
        return True

    def _send_wake(self, now: float) -> None:
        self._out.append(Send(wire.encode_probe(wire.WAKE, self.node_id, self.ring_id)))
        self._arm(TimerKind.WAKE, self._wake_delay(), now)

    def _wake_delay(self) -> float:
        """A lost WAKE is sent again after about two rotations, at most wake_interval (ms)."""
        cfg = self.cfg
        return min(cfg.wake_interval, max(cfg.token_retransmit_min, 2.0 * self._rto()))

    # ------------------------------------------------------------- membership

    def _enter_gather(self, reason: str, now: float, join: Join | None = None,
                      fresh: bool = False, gone: int | None = None) -> None:
        prev = self.state
        if fresh:
            # what we knew of the others is stale: start from ourselves
            self._proc, self._fail = {self.node_id}, set()
        elif prev is OPERATIONAL:
            self._proc = set(self.members)
            self._fail = set()
        self._proc.add(self.node_id)
        if gone is not None and gone in self._proc:
            self._fail.add(gone)  # it left: nobody waits for its join
        self.stats["gathers"] += 1
        if prev is not GATHER:
            self.log.debug("gather: %s", reason)
        self._set_state(GATHER, reason)
        self._held = None
        self._last_sent = None
        self._disarm(TimerKind.TOKEN_HOLD, TimerKind.TOKEN_RETRANSMIT, TimerKind.TOKEN_LOSS,
                     TimerKind.WAKE, TimerKind.MERGE_DETECT)
        self._new_ring = None
        self._new_members = ()
        self._new_rx = None
        self._recovery.clear()
        self._originated = False
        self._joins.clear()
        self.queue.restart_partial()
        if join is not None:
            self._merge_join(join, now, restart=False)
        self._restart_gather(now)
        if join is not None:
            self._check_consensus(now)

    def _restart_gather(self, now: float) -> None:
        self._send_join()
        self._arm(TimerKind.JOIN, self.cfg.join, now)
        self._arm(TimerKind.CONSENSUS, self.cfg.consensus, now)

    def _send_join(self) -> None:
        j = Join(self.node_id, self.max_ring_seq, frozenset(self._proc), frozenset(self._fail))
        self._out.append(Send(wire.encode_join(j)))

    def _merge_join(self, j: Join, now: float, restart: bool = True) -> None:
        if j.sender in self._fail or self._is_apart(j.sender, now):
            return
        self._joins[j.sender] = (j.proc, j.fail)
        proc = self._proc | j.proc
        # If it gave up on us, give up on it, so both sides can agree apart.
        fail = self._fail | {j.sender} if self.node_id in j.fail else self._fail | j.fail
        fail.discard(self.node_id)
        if proc != self._proc or fail != self._fail:
            self._proc, self._fail = proc, fail
            for n in fail:
                self._joins.pop(n, None)
            if restart:
                self._restart_gather(now)
        if restart:
            self._check_consensus(now)

    def _check_consensus(self, now: float) -> None:
        if self.state is not GATHER:
            return
        key = (frozenset(self._proc), frozenset(self._fail))
        active = self._proc - self._fail
        me = self.node_id
        for n in active:
            if n != me and self._joins.get(n) != key:
                return
        if min(active) == me:
            ring = RingId(self.max_ring_seq + 4, me)
            self.max_ring_seq = ring.seq
            entries = [CommitEntry(n) for n in sorted(active)]
            self._enter_commit(Commit(me, ring, entries), now)

    def _enter_commit(self, c: Commit, now: float) -> None:
        self._set_state(COMMIT, f"commit token for ring {c.ring_id}")
        self._new_ring = c.ring_id
        self._new_members = c.members
        self._commit_at = now
        if c.ring_id.seq > self.max_ring_seq:
            self.max_ring_seq = c.ring_id.seq
        e = c.entries[c.members.index(self.node_id)]
        e.filled = True
        e.old_ring = self.ring_id
        e.aru = self.rx.aru
        e.high = self.rx.high
        self._disarm(TimerKind.JOIN, TimerKind.CONSENSUS)
        self._arm(TimerKind.TOKEN_LOSS, self.cfg.token, now)
        if len(c.entries) == 1:
            self._enter_recovery(c, now)
        else:
            self._pass_commit(c, now)

    def _pass_commit(self, c: Commit, now: float) -> None:
        c.sender = self.node_id
        data = wire.encode_commit(c)
        dest = self._successor(c.members)
        self._last_sent = (data, dest)
        self._out.append(Send(data, dest))
        self._arm_retransmit(now)

    def _enter_recovery(self, c: Commit, now: float) -> None:
        self._set_state(RECOVERY, f"ring {c.ring_id}")
        old = self.ring_id
        trans = [e for e in c.entries if e.old_ring == old]
        self._trans = tuple(e.node for e in trans)
        self._recovery.clear()
        if old.seq and len(trans) > 1:
            low = min(e.aru for e in trans)
            top = max(e.aru for e in trans)
            holder = min(e.node for e in trans if e.aru == top)
            start = low + 1 if holder == self.node_id else top + 1
            frames = self.rx.frames
            for s in sorted(s for s in frames if s >= start):
                f = frames[s]
                self._recovery.append(wire.encode_recovered(old, s, f.sender, f.payload))
        self._new_rx = RxStore(c.ring_id)
        self._frr_aru, self._frr_count = -1, 0
        self._last_token_seq = -1
        self._my_last_sent = 0
        self._my_last_backlog = 0
        self._last_token_aru = 0
        self._stable_seq = 0
        self._awaited_sent.clear()
        self._acked.clear()
        self._ack_owed.clear()
        self._ack_answered = 0
        self._rep_last_seq = -1
        self._sent_seq = 0
        self._originated = False
        self._arm(TimerKind.TOKEN_LOSS, self.cfg.token, now)
        if len(c.entries) == 1:
            self._disarm(TimerKind.TOKEN_LOSS, TimerKind.TOKEN_RETRANSMIT)
            self._finish_recovery(now)
            return
        self._pass_commit(c, now)

    def _absorb_recovered(self, payload: bytes) -> None:
        try:
            r = wire.decode_recovered_untrusted(payload)
        except BadPacket:
            self.stats["bad_packets"] += 1
            return
        if r.ring_id == self.ring_id and r.seq > self.rx.freed:
            self.rx.add(r.seq, Frame(r.sender, 0, r.payload))

    def _originate_token(self, now: float) -> None:
        assert self._new_ring is not None
        self._originated = True
        self._disarm(TimerKind.TOKEN_RETRANSMIT)
        t = Token(self.node_id, self._new_ring, 0, 0, 0, 0, 0, 0, 1, 0, [])
        self._last_token_seq = 0
        self._token_visit(t, now)

    def _finish_recovery(self, now: float) -> None:
        """Deliver the old ring's rest, the transitional and the regular configuration."""
        old = self.rx
        out = self._out
        if self.ring_id.seq:
            self._deliver_ready()
            out.append(ConfChange(True, self.ring_id, self._trans))
            reasm = self._reasm
            for s in sorted(s for s in old.frames if s > old.delivered):
                f = old.frames[s]
                for payload in reasm.unpack(f.sender, f.payload):
                    out.append(Deliver(f.sender, payload, old.ring_id, s))
        self._reasm.reset()
        assert self._new_ring is not None
        members = self._new_members
        prev = set(self._regular)
        left = tuple(sorted(prev - set(members)))
        joined = tuple(sorted(set(members) - prev))
        out.append(ConfChange(False, self._new_ring, members, left, joined))
        self._regular = members
        self._left.clear()
        self.ring_id = self._new_ring
        self.members = members
        self.rx = self._new_rx or RxStore(self._new_ring)
        self._new_rx = None
        self._new_ring = None
        self._new_members = ()
        self._recovery.clear()
        self._proc = set(members)
        self._fail = set()
        self._joins.clear()
        self._held = None
        self._forwarded_idle = False
        self._wake_pending = False
        self._frr_aru, self._frr_count = -1, 0
        self.stats["rings_formed"] += 1
        self._set_state(OPERATIONAL, f"ring {self.ring_id}")
        self.log.info("ring %s formed: %s", self.ring_id, " ".join(fmt_node(n) for n in members))
        if self.ring_id.rep == self.node_id:
            self._arm(TimerKind.MERGE_DETECT, self.cfg.merge_detect, now)
        self._deliver_ready()
        if len(members) == 1:
            if self.cfg.install_pause:
                # Not at once: the host re-queues in front what an abandoned sync
                # round held (``requeue_front``) when it handles this configuration.
                self._arm(TimerKind.WAKE, 0.0, now)
            else:
                self._solo_flush()

    # --------------------------------------------------------------- ordering

    def _deliver_ready(self) -> None:
        rx = self.rx
        if rx.delivered >= rx.aru:
            return
        frames = rx.frames
        out = self._out
        unpack = self._reasm.unpack
        ring_id = rx.ring_id
        s = rx.delivered
        aru = rx.aru
        while s < aru:
            s += 1
            f = frames.get(s)
            if f is None or f.flags & MCAST_RECOVERED:
                continue
            for payload in unpack(f.sender, f.payload):
                out.append(Deliver(f.sender, payload, ring_id, s))
        rx.delivered = s

    def _solo_flush(self) -> None:
        rx = self.rx
        me = self.node_id
        while True:
            payload = self.queue.take_frame()
            if payload is None:
                break
            seq = rx.high + 1
            rx.add(seq, Frame(me, 0, payload))
        self._deliver_ready()
        rx.free(rx.delivered)
        if rx.delivered > self._stable_seq:  # a ring of one: held by every member at once
            self._report_stable(rx.delivered)

    def _release_held(self, now: float) -> None:
        """Somebody has something to send: the resting token moves on at once."""
        t = self._held
        assert t is not None
        self._held = None
        self._disarm(TimerKind.TOKEN_HOLD)
        self._token_visit(t, now, may_hold=False, woken=True)

    def _hold(self, t: Token, ms: float, expected: int, prev_aru: int, now: float) -> None:
        """Keep the token instead of passing it on; its visit is carried out again
        when the hold ends.  That second visit is the same visit, not a consecutive
        one: step 5 must see the aru of the visit before this one again."""
        self._held, self._hold_for = t, expected
        self._last_token_aru = prev_aru
        self._arm(TimerKind.TOKEN_HOLD, ms, now)

    def _allowed(self, t: Token, backlog: int) -> int:
        window = self.window
        room = window - max(0, t.fcc - self._my_last_sent)
        allowed = min(self.visit_quota, room)
        total = max(0, t.backlog - self._my_last_backlog) + backlog
        if total > window and backlog:
            allowed = min(allowed, max(1, window * backlog // total))
        if t.seq - t.aru > 4 * window:
            allowed = 0  # receivers are far behind: let retransmissions catch up
        return max(0, allowed)

    def _token_visit(self, t: Token, now: float, may_hold: bool = True,
                     woken: bool = False) -> None:
        cfg = self.cfg
        me = self.node_id
        out = self._out
        self._disarm(TimerKind.TOKEN_RETRANSMIT, TimerKind.WAKE)
        self._arm(TimerKind.TOKEN_LOSS, cfg.token, now)
        if (self._forwarded_at is not None and not self._resent
                and (not self._forwarded_idle or t.ring_id.rep == me)):
            # An idle token may have rested at the representative on its way
            # back; the representative's own rotations never include a rest.
            self._sample_rotation(now - self._forwarded_at)
        self._forwarded_at = None
        recovering = self.state is RECOVERY
        # Frames go to the sink only on an installed ring: the configuration
        # change that installs one is performed (the ring seq saved) first.
        sink = None if recovering else self.frame_sink
        installed = False  # this visit installs the new ring here
        if recovering:
            assert self._new_ring is not None
            if t.flags & TOKEN_COMPLETE:
                self._finish_recovery(now)
                recovering = False
                installed = True
            elif self._new_ring.rep == me:
                rx = self._new_rx
                assert rx is not None
                if (t.retrans_flg == 0 and t.seq == self._rep_last_seq and t.aru == t.seq
                        and rx.aru == t.seq and not self._recovery):
                    t.flags |= TOKEN_COMPLETE
                    self._finish_recovery(now)
                    recovering = False
                    installed = True
                else:
                    t.retrans_flg = 0
        rx = self._new_rx if recovering else self.rx
        assert rx is not None
        ring_id = rx.ring_id
        if self._check_receiving(rx, t, now):
            return
        # 1. retransmit what others miss
        retransmitted = 0
        if t.rtr:
            keep = []
            frames = rx.frames
            for s in t.rtr:
                f = frames.get(s)
                if f is None:
                    keep.append(s)
                else:
                    out.append(Send(wire.encode_mcast(f.sender, ring_id, s, f.flags, f.payload)))
                    retransmitted += 1
            t.rtr = keep
            self.stats["retransmits"] += retransmitted
        # 2. new frames, within flow control
        backlog = len(self._recovery) if recovering else self.queue.frames_pending()
        # The visit that installs a ring frames none of our queued messages: the
        # host first handles the new configuration, which may put messages an
        # abandoned sync round held in front of them (``requeue_front``).
        allowed = 0 if installed and cfg.install_pause \
            else self._allowed(t, backlog) - retransmitted
        sent = 0
        if allowed > 0:
            if recovering:
                flags = MCAST_RECOVERED
                while sent < allowed and self._recovery:
                    payload = self._recovery.popleft()
                    t.seq += 1
                    rx.add(t.seq, Frame(me, flags, payload))
                    out.append(Send(wire.encode_mcast(me, ring_id, t.seq, flags, payload)))
                    sent += 1
            else:
                queue = self.queue
                take = queue.take_frame
                emit = out.append if sink is None else sink
                # stable_acks: a frame that ends awaited messages asks for ACKs.  Not
                # in a ring of two (the token itself goes straight back to us), nor
                # while awaited messages of ours are still short of stability: busy
                # clients keep the ring full anyway, and the ACKs would only add
                # packets (8 clients on 3 nodes: 10-20% fewer writes with them)
                ask = cfg.stable_acks and len(self.members) > 2 and not self._awaited_sent
                framed = queue.awaited_framed
                add = rx.add
                head = _pack_mcast_head
                ring_seq, ring_rep = ring_id.seq, ring_id.rep
                seq = t.seq
                while sent < allowed:
                    frame = take()
                    if frame is None:
                        break
                    seq += 1
                    flags = 0
                    if ask and queue.awaited_framed != framed:
                        framed = queue.awaited_framed
                        flags = MCAST_ACK
                    add(seq, _new_frame(Frame, (me, flags, frame)))
                    # (wire.encode_mcast's bytes, packed flat)
                    emit(Send(head(wire.VERSION, wire.MCAST, me, ring_seq, ring_rep, seq, flags)
                              + frame))
                    sent += 1
                t.seq = seq
                framed = queue.awaited_framed
                if framed:
                    queue.awaited_framed = 0
                    self._awaited_sent.append((t.seq, framed))
        self.stats["frames_sent"] += sent
        t.fcc = max(0, t.fcc - self._my_last_sent) + sent
        self._my_last_sent = sent
        backlog = len(self._recovery) if recovering else self.queue.frames_pending()
        t.backlog = max(0, t.backlog - self._my_last_backlog) + backlog
        self._my_last_backlog = backlog
        # 3. ask for what we miss
        added = False
        if rx.aru < t.seq and len(t.rtr) < RTR_LIMIT:
            have = set(t.rtr)
            for s in rx.missing(t.seq, RTR_LIMIT - len(t.rtr)):
                if s not in have:
                    t.rtr.append(s)
                    added = True
        if sent or added:
            t.flags &= ~TOKEN_IDLE
        # 4. all-received-up-to
        if rx.aru < t.aru or t.aru_addr == me or t.aru_addr == 0:
            t.aru = rx.aru
            t.aru_addr = 0 if t.aru == t.seq else me
        if recovering and (self._recovery or rx.aru < t.seq):
            t.retrans_flg = 1
        # 5. free what the token's aru covered on two consecutive visits
        low = min(t.aru, self._last_token_aru, rx.aru)
        prev_aru, self._last_token_aru = self._last_token_aru, t.aru
        answered = 0  # awaited messages of ours that just became stable
        if not recovering:
            if low > self._stable_seq:  # every member holds every frame up to low
                answered = self._report_stable(low)
            low = min(low, rx.delivered)
            answered += self._ack_answered  # (answered since our last visit)
            self._ack_answered = 0
        rx.free(low)
        # 6. an idle ring's token rests at the representative
        if not recovering and ring_id.rep == me:
            # prev_aru: the token rests only once every member has seen everything
            # received on two visits, i.e. holds it and has reported it Stable
            quiet = (sent == 0 and not t.rtr and t.aru == t.seq and t.seq == self._rep_last_seq
                     and prev_aru == t.seq and not self.queue.msgs)
            if not quiet:
                self._busy_at = now
            elif now - self._busy_at < cfg.token_linger / 1000.0:
                # Lingering: the next message of a synchronous writer follows
                # the last one's delivery closely; a moving token takes it at once.
                quiet = False
            if quiet and may_hold and t.flags & TOKEN_IDLE and not self._wake_pending:
                self._hold(t, cfg.token_hold, 0, prev_aru, now)
                return
            if quiet and not (woken or self._wake_pending):
                # (A woken token is not marked idle: someone waits for it, and
                # its holders time it as a busy one.)
                t.flags |= TOKEN_IDLE
            else:
                t.flags &= ~TOKEN_IDLE
        # 7. a writer answered at stability sends its next message at once.  Not
        # while awaited messages of ours are still on their way to stability: the
        # token must go round for them anyway, and their clients' next writes
        # would wait behind the hold (several busy clients overlap their own
        # turnaround with the rotation instead).  The representative of a ring
        # of two holds too: without it its writer's next message waits for the
        # token's two-hop idle round (netns_bench, MTU 1500, alternated: a third
        # more 1 KiB writes/s, 75 KB writes no slower)
        if (answered and may_hold and cfg.writer_hold and not sent and not t.rtr
                and not self._awaited_sent
                and t.aru == t.seq and not t.backlog and not self.queue.msgs):
            # until as many awaited messages came as were answered: clients
            # answered together send their next writes together
            self._hold(t, cfg.writer_hold, answered, prev_aru, now)
            self.stats["writer_holds"] += 1
            return
        if ring_id.rep == me:
            self._rep_last_seq = t.seq
        self._forward(t, now, sink)
        if sent and not recovering:
            # Our own new frames are delivered here once the token is on its
            # way (step 5 freed only what was delivered before).
            self._deliver_ready()

    def _check_receiving(self, rx: RxStore, t: Token, now: float) -> bool:
        """Totem's fail-to-receive rule; True if we just left the ring because of it.

        Our aru holds the ring back (the token's aru is ours) and has not
        moved for ``fail_recv_const`` visits while the token's seq shows that
        others hold frames we lack: retransmissions do not reach us (a one-way
        fault, frames over some size dropped).  Such a member stalls every
        sender (flow control waits for it) and recovery never completes with
        it, yet the token keeps coming, so no timeout fires.  We leave: gather
        alone, ignore the others for ``fail_recv_backoff`` ms (doubled on each
        repeat), then merge detection brings us back; the others form a ring
        without us after their consensus timeout.
        """
        me = self.node_id
        if rx.aru < t.seq and rx.aru == self._frr_aru and t.aru_addr == me:
            self._frr_count += 1
        else:
            self._frr_count = 0
        self._frr_aru = rx.aru
        if self._frr_count < self.cfg.fail_recv_const:
            return False
        cfg = self.cfg
        if now - self._apart_until > 8 * cfg.fail_recv_backoff / 1000.0:
            self._frr_strikes = 0  # the last episode is long past
        self._frr_strikes += 1
        apart = cfg.fail_recv_backoff * 2 ** min(self._frr_strikes - 1, 3)
        members = self.members if self.state is OPERATIONAL else self._new_members
        self.log.warning("failed to receive: our aru in ring %s stayed at %d for %d token "
                         "rotations while the ring holds up to %d; leaving it for %.1f s",
                         rx.ring_id, rx.aru, self._frr_count, t.seq, apart / 1000.0)
        self.stats["failed_to_receive"] += 1
        self._apart = frozenset(members) - {me}
        self._apart_until = now + apart / 1000.0
        self._frr_count = 0
        self._frr_aru = -1
        self._enter_gather("failed to receive", now, fresh=True)
        return True

    def _is_apart(self, node: int, now: float) -> bool:
        """Whether we keep away from ``node`` after failing to receive in its ring."""
        return node in self._apart and now < self._apart_until

    def _forward(self, t: Token, now: float,
                 sink: Callable[[Send], None] | None = None) -> None:
        me = self.node_id
        t.sender = me
        t.token_seq += 1
        self._last_token_seq = t.token_seq
        self._sent_seq = t.seq
        data = wire.encode_token(t)
        members = self.members if self.state is OPERATIONAL else self._new_members
        dest = self._successor(members)
        self._last_sent = (data, dest)
        (self._out.append if sink is None else sink)(Send(data, dest))
        idle = bool(t.flags & TOKEN_IDLE)
        self._forwarded_idle = idle
        self._wake_pending = False
        self._forwarded_at = now
        self._resent = False
        # An idle token may rest at the representative before it comes back.
        self._arm_retransmit(now, self.cfg.token_hold if idle and t.ring_id.rep != me else 0.0)

    # ------------------------------------------------- retransmission timing

    def _sample_rotation(self, rot: float) -> None:
        """Fold one measured token rotation (s) into the smoothed estimate.

        A rotation in which someone waited for a token retransmission is the
        clean rotation plus that wait; fed to the average, it would raise the
        timeout and with it the next waits (at 30% loss most rotations hold
        one).  A sample over twice the recent minimum is therefore left out;
        a real change of the rotation time moves the minimum within
        ``ROTATION_WINDOW`` rotations.
        """
        win = self._rot_window
        win.append(rot)
        low = min(win)
        if rot > 2.0 * low:
            return
        if self._srtt is None or self._srtt > 2.0 * low:
            # no estimate yet, or one taken from rotations that waited
            self._srtt, self._rttvar = rot, rot / 2.0
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rot)
            self._srtt = 0.875 * self._srtt + 0.125 * rot

    def _rto(self) -> float:
        """Token retransmit timeout (ms): smoothed rotation plus four deviations, bounded."""
        if self._srtt is None:
            return self._rt_ceiling()
        rto = 1000.0 * (self._srtt + 4.0 * self._rttvar)
        return min(self._rt_ceiling(), max(self.cfg.token_retransmit_min, rto))

    def _rt_ceiling(self) -> float:
        """Longest wait (ms) between two resends of one token: some twenty fit in a timeout."""
        cfg = self.cfg
        return max(cfg.token_retransmit_min, min(cfg.token_retransmit, cfg.token / 20.0))

    def _arm_retransmit(self, now: float, extra: float = 0.0) -> None:
        """First resend after the RTO plus ``extra`` ms; later ones after the RTO
        (never above the ceiling), doubling."""
        self._rt_next = rto = self._rto()
        self._arm(TimerKind.TOKEN_RETRANSMIT, rto + extra, now)


__all__ = ["Srp", "RingState", "SendQueueFull"]
