"""The service host: owns the services, multiplexes them onto the ring, runs sync.

Theory of operation
-------------------
``ServiceHost`` sits between three things:

* the ring (``ais.totem.transport.Transport``, or ``ais.testing``'s
  ``FakeBus`` / ``LoopbackRing`` in tests): the host hands it opaque payloads with
  ``ring.mcast(payload)`` and receives ``on_deliver(Deliver)`` and
  ``on_confchg(ConfChange)`` in agreed order;
* the services (``ais.services.base.Service``), which see only the host;
* the client connections (``ais.ipc``), which call ``lib_connect``,
  ``lib_request`` and ``lib_exit``.

Every ring payload starts with ``RING_HEADER`` naming the service and its
message id, the reply tag (who asked, so that node answers) and, for sync
messages, the sync round.  Messages of an unknown service are dropped and
logged, so nodes with different service sets can still share a ring.

Sync rounds (see ``ais.services.base``): after each regular configuration
every member first multicasts a state announcement (``HOST_MSG_SYNC_STATE``):
its ``StateId`` -- the ring of the last sync round it completed and the first
regular configuration it installed after that round -- or nothing if it never
completed one (a fresh node, e.g. one restarted empty).  Once every member's
announcement has been delivered (the same point in agreed order on every
member), the host groups the members by announced state (``SyncInfo.groups``,
``SyncInfo.fresh``) and only then runs every service's ``sync_start``, then
``sync_process`` until it returns True, then multicasts a barrier.  When
barriers from every member have been delivered, ``sync_done`` runs on every
service, the ordinary messages delivered during the round are handed over in
their order, and the library requests held meanwhile run.  Membership is
never taken as evidence of state: a node that was a member of the previous
configuration but restarted since announces nothing and is never counted as
holding the old state.

Why the id is sound: state changes only at ``sync_done`` and by ordinary
messages applied outside rounds.  Members completing the same round install
the same state (the same delivered sync messages); afterwards they apply the
messages of that ring they deliver, which are the same for members that
leave it through the same transitional configuration, i.e. that install the
same next ring.  Messages delivered during a round that does not complete are
never applied (they are re-sent, see ``_end_held``), so the id holds until
the next completed round (services that apply theirs instead,
``apply_held_on_abort``, rebuild their state every round without the id).
To keep "completed" the same on all members of a transitional configuration,
a round whose ring's transitional configuration has been delivered can no
longer complete: announcements, sync messages and barriers delivered after
it (possibly past a gap) are ignored and the next configuration starts a new
round.  (Members that leave a ring through *different* transitional
configurations can disagree: one delivered the last barrier, the other
not -- see ``_end_held``.)  A round abandoned midway changes nothing
and so can never install less than some member holds.

Chosen policy for client requests during a round: handlers declared
``hold_during_sync=True`` *wait* (the client sees a slower reply, never a
TryAgain it would have to loop on); all others run at once on local state.
Before the first configuration the host counts as syncing too.

Safe delivery.  A reply may be declared safe (``reply(..., safe=True)``,
``when_safe``): it is sent only once every member of the ring holds the
message being handled -- when a ``Stable`` of the ring (``on_stable``, from
the token's all-received-up-to) covers the seq of the ``Deliver`` that
carried it, or when the ring's transitional configuration is delivered
(recovery then gave every member of it every message delivered in the old
ring).  In a ring of one, or for messages delivered after their ring's
transitional configuration, it is sent at once.  Replies waiting are released
in delivery order.  A message held during a sync round is applied by each
member only when it completes the round (a member that has not would drop it
if the round were abandoned and its sender gone), so its replies wait for the
round's last barrier to be stable.

The service kit (``ais.services.base``) is implemented here: one queue per
service for ``mcast_retried`` (and for the host's own re-sends of held
messages, ``_end_held``), with one retry timer per service while the ring
refuses; ``_pending`` (request -> its id) and ``_deadlines`` (deferred
requests' TIMEOUT timers) decide whether ``reply`` still has someone to
answer -- the first answer claims the request, a safe one at once, so a
timeout cannot overtake it; ``members`` changes when a sync round completes,
and the ``after_sync`` functions (``LowestMemberTimers``) run right after
every service's ``sync_done``.

Nothing here blocks or yields: the host is driven by calls from the ring
shell and the IPC greenlets, and its outputs (ring mcasts, client frames)
are queued by their receivers.  In particular a ring never calls
``on_deliver``, ``on_confchg`` or ``on_stable`` from inside ``ring.mcast``
(``ais.totem.transport`` queues the core's answer and carries it out from
a loop callback; the test rings do the same from their loops), so a service
handler is never re-entered by the ring and the host needs no guard for it.
Ring events wait in ``_inbox`` only when an event-loop turn has used its
budget (``GeventScheduler.turn_over``).  ``GeventScheduler`` is the only piece that
touches gevent, and it is imported lazily.
"""
from __future__ import annotations

import collections
import itertools
import logging
import struct
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol
from collections.abc import Callable, Iterable

from ais.log import NodeAdapter, RateLimiter
from ais.services.base import (
    DEFERRED, NO_TAG, NOTICE, Deferred, ExecMessage, LibConn, ReplyTag, Request, Service,
    StateGroup, StateId, SyncInfo, TimerHandle, applied_elsewhere,
)
from ais.services.base import (  # the process-start host API (AMF instantiation)
    ProcessHandle,
)
from ais.totem.events import ConfChange, Deliver, RingId, SendQueueFull, Stable, fmt_node
from saf.errors import SA_OK, IpcProtocolError, Library, SaError, Timeout, TryAgain

if TYPE_CHECKING:
    from ais.config import AmfModel

logger = logging.getLogger(__name__)

# Ring payload header, in front of every message the host multicasts (28 bytes):
#  0         2        4       5      8          12         16         20               28
#  | service | msg_id | flags | pad  | tag.node | tag.conn | tag.seq  | sync ring seq  | payload
#  service u16  Service.service_id (HOST_SERVICE_ID for the host's own messages)
#  flags   u8   FLAG_SYNC: sent with mcast_sync during the round named by "sync ring seq"
#               FLAG_RESENT: re-sent after an abandoned round; ORIGIN precedes the payload
#  tag     3 x u32  ReplyTag of the client request that caused it (all 0: none)
#  sync ring seq u64  RingId.seq of the round (sync messages and barriers), else 0
RING_HEADER = struct.Struct("!HHB3xIIIQ")

FLAG_SYNC = 0x01
FLAG_RESENT = 0x02
HOST_SERVICE_ID = 0xFFFF
HOST_MSG_SYNC_BARRIER = 1
HOST_MSG_SYNC_STATE = 2

# SYNC_STATE payload (24 bytes): the sender's StateId; all zero: a fresh node.
#  0                 8               12                20             24
#  | synced ring seq | synced rep    | next ring seq   | next rep     |
SYNC_STATE = struct.Struct("!QIQI")
_NO_RING = RingId(0, 0)

# ORIGIN (22 bytes), in front of a re-sent message's payload: where it was first
# delivered -- a delivery is named by its ring, the seq of the frame that ended it
# and its index among the messages that frame ended (``MessageKey``).
#  0          8          12         20      22
#  | ring seq | ring rep | seq      | index |
ORIGIN = struct.Struct("!QIQH")

# The applied-messages record (``Applied``) follows SYNC_STATE: a u16 count of
# rings, then per ring APPLIED_RING and ``extra`` times APPLIED_EXTRA.
#  0          8          12         20      22
#  | ring seq | ring rep | upto     | extra |      then extra x | seq u64 | index u16 |
APPLIED_COUNT = struct.Struct("!H")
APPLIED_RING = struct.Struct("!QIQH")
APPLIED_EXTRA = struct.Struct("!QH")
#: rings an applied-messages record keeps (the newest), and names per ring beyond ``upto``
APPLIED_RINGS_MAX = 16
APPLIED_EXTRA_MAX = 1024

#: (ring, frame seq, index among the messages that frame ended): one delivery
MessageKey = tuple[RingId, int, int]


@dataclass(frozen=True, slots=True)
class Applied:
    """Which messages of one ring a replicated state holds: each that ended in a
    frame up to ``upto`` and those named in ``extra`` ((seq, index) pairs)."""

    upto: int = 0
    extra: frozenset[tuple[int, int]] = frozenset()

    def covers(self, seq: int, index: int) -> bool:
        return 0 < seq <= self.upto or (seq, index) in self.extra

    def union(self, other: Applied) -> Applied:
        upto = max(self.upto, other.upto)
        extra = frozenset(e for e in self.extra | other.extra if not 0 < e[0] <= upto)
        if len(extra) > APPLIED_EXTRA_MAX:
            extra = frozenset(sorted(extra)[-APPLIED_EXTRA_MAX:])
        return Applied(upto, extra)


def merge_applied(records: Iterable[dict[RingId, Applied]]) -> dict[RingId, Applied]:
    """The union of applied-messages records, keeping the ``APPLIED_RINGS_MAX`` newest rings."""
    out: dict[RingId, Applied] = {}
    for rec in records:
        for ring, a in rec.items():
            have = out.get(ring)
            out[ring] = a if have is None else have.union(a)
    if len(out) > APPLIED_RINGS_MAX:
        out = {r: out[r] for r in sorted(out)[-APPLIED_RINGS_MAX:]}
    return out


class RingMessageError(ValueError):
    """A ring payload the host cannot parse (dropped and logged, never raised out)."""


@dataclass(frozen=True, slots=True)
class RingMessage:
    service: int
    msg_id: int
    flags: int
    tag: ReplyTag
    sync_seq: int
    payload: bytes


def encode_ring_message(m: RingMessage) -> bytes:
    return RING_HEADER.pack(m.service, m.msg_id, m.flags, m.tag.node, m.tag.conn_id,
                            m.tag.seq, m.sync_seq) + m.payload


def decode_ring_message_untrusted(data: bytes) -> RingMessage:
    if len(data) < RING_HEADER.size:
        raise RingMessageError(f"ring message of {len(data)} bytes is shorter than its header")
    service, msg_id, flags, node, conn, seq, sync_seq = RING_HEADER.unpack_from(data)
    return RingMessage(service, msg_id, flags, ReplyTag(node, conn, seq), sync_seq,
                       bytes(data[RING_HEADER.size:]))


class RingPort(Protocol):
    """What the host needs of the ring: ``Transport`` has this shape.

    A ring may also offer ``requeue_front(payloads)`` (``Srp.requeue_front``):
    the host then re-sends an abandoned sync round's held messages ahead of
    what it queued since; without it they go at the back.
    """

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        """Queue ``payload`` for agreed delivery; may raise ``SendQueueFull``.

        ``awaited``: a client of this node waits for the message (it carries
        the tag of a request asked here); the ring may keep the token a moment
        for that client's next request (``writer_hold``).
        """


class Scheduler(Protocol):
    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle: ...

    def now(self) -> float: ...


@dataclass
class _SyncRound:
    ring_id: RingId
    members: tuple[int, ...]
    joined: tuple[int, ...]
    left: tuple[int, ...]
    to_process: list[Service]
    #: announced StateId (None: fresh) per member, as delivered
    states: dict[int, StateId | None] = field(default_factory=dict)
    #: announced applied-messages records, per member
    applied: dict[int, dict[RingId, Applied]] = field(default_factory=dict)
    state_sent: bool = False
    #: set once every announcement is delivered and services' sync_start ran
    info: SyncInfo | None = None
    barriers: set[int] = field(default_factory=set)
    barrier_sent: bool = False
    pump_armed: bool = False
    #: the ring's transitional configuration was delivered: it can no longer complete
    closed: bool = False


def encode_state(state: StateId | None, applied: dict[RingId, Applied] | None = None) -> bytes:
    if state is None:
        head = SYNC_STATE.pack(0, 0, 0, 0)
    else:
        head = SYNC_STATE.pack(state.synced.seq, state.synced.rep, state.next.seq,
                               state.next.rep)
    applied = applied or {}
    parts = [head, APPLIED_COUNT.pack(len(applied))]
    for ring in sorted(applied):
        a = applied[ring]
        parts.append(APPLIED_RING.pack(ring.seq, ring.rep, a.upto, len(a.extra)))
        parts += [APPLIED_EXTRA.pack(seq, index) for seq, index in sorted(a.extra)]
    return b"".join(parts)


def decode_state_untrusted(data: bytes) -> tuple[StateId | None, dict[RingId, Applied]]:
    """A sync state announcement: the sender's StateId and applied-messages record."""
    end = SYNC_STATE.size + APPLIED_COUNT.size
    if len(data) < end:
        raise RingMessageError(f"sync state announcement of {len(data)} bytes")
    s_seq, s_rep, n_seq, n_rep = SYNC_STATE.unpack_from(data)
    (rings,) = APPLIED_COUNT.unpack_from(data, SYNC_STATE.size)
    if rings > APPLIED_RINGS_MAX:
        raise RingMessageError(f"applied-messages record of {rings} rings")
    applied: dict[RingId, Applied] = {}
    for _ in range(rings):
        if len(data) < end + APPLIED_RING.size:
            raise RingMessageError("applied-messages record cut short")
        r_seq, r_rep, upto, n = APPLIED_RING.unpack_from(data, end)
        end += APPLIED_RING.size
        if n > APPLIED_EXTRA_MAX or len(data) < end + n * APPLIED_EXTRA.size:
            raise RingMessageError("applied-messages record cut short")
        extra = frozenset(APPLIED_EXTRA.unpack_from(data, end + i * APPLIED_EXTRA.size)
                          for i in range(n))
        end += n * APPLIED_EXTRA.size
        applied[RingId(r_seq, r_rep)] = Applied(upto, extra)
    if end != len(data):
        raise RingMessageError(f"{len(data) - end} bytes after a sync state announcement")
    state = StateId(RingId(s_seq, s_rep), RingId(n_seq, n_rep)) if s_seq else None
    return state, applied


def state_groups(states: dict[int, StateId | None]) -> tuple[tuple[StateGroup, ...],
                                                               tuple[int, ...]]:
    """Members grouped by announced state (ordered by sender), and the fresh ones."""
    by_state: dict[StateId, list[int]] = {}
    fresh: list[int] = []
    for node in sorted(states):
        st = states[node]
        if st is None:
            fresh.append(node)
        else:
            by_state.setdefault(st, []).append(node)
    groups = sorted((StateGroup(st, tuple(nodes)) for st, nodes in by_state.items()),
                    key=lambda g: g.sender)
    return tuple(groups), tuple(fresh)


class ServiceHost:
    """Hosts services on one node.  See the module docstring.

    Args:
        node_id: this node's Totem id (big-endian IPv4 int).
        services: the service instances, each with a unique ``service_id``.
        scheduler: local timers and clock (``GeventScheduler``, ``ManualScheduler``).
        model: the AMF model from groups.conf (default: an empty one).
    """

    #: how long to wait before retrying a sync send the ring refused (s)
    SYNC_RETRY_DELAY = 0.01
    #: how long to wait before retrying an ``mcast_retried`` send the ring refused (s)
    RETRY_DELAY = 0.01

    def __init__(self, node_id: int, services: Iterable[Service], scheduler: Scheduler,
                 model: AmfModel | None = None) -> None:
        self.node_id = node_id
        self.scheduler = scheduler
        if model is None:
            from ais.config import AmfModel  # the parser module, only when no model is given
            model = AmfModel(())
        self.model: AmfModel = model
        #: the client socket's path, handed to the processes ``spawn`` starts
        self.client_socket: str | None = None
        #: starts processes: (argv, env, on_exit) -> ProcessHandle; None: the
        #: scheduler's ``spawn`` if it has one
        self.spawner: Callable[..., ProcessHandle] | None = None
        self.log = NodeAdapter(logger, node_id)
        self.services: dict[int, Service] = {}
        for svc in services:
            if svc.service_id in self.services:
                raise ValueError(f"two services with id {svc.service_id}")
            self.services[svc.service_id] = svc
        self.ring: RingPort | None = None
        self.ring_id: RingId | None = None
        #: members of the current regular configuration (sync round or not)
        self.ring_members: tuple[int, ...] = ()
        #: members of the last completed sync round (``members``)
        self._members: tuple[int, ...] = ()
        self._after_sync: list[Callable[[], None]] = []
        #: this node's StateId parts: ring of the last completed round (None: fresh)
        #: and the first regular configuration installed after it
        self._synced_ring: RingId | None = None
        self._next_ring: RingId | None = None
        self._sync: _SyncRound | None = None
        # safe delivery: replies waiting until every member holds their cause
        self._live_ring: RingId | None = None  # the ring whose messages may be unsafe
        self._stable_seq = 0  # highest Stable.seq of _live_ring
        self._unsafe: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._cause: tuple[RingId, int] | None = None  # the delivery being handled
        self._configured = False
        #: ordinary messages a sync round holds: service, message, where it was first
        #: delivered, and whether it is a re-send (then from another ring)
        self._held_deliveries: list[tuple[Service, ExecMessage, MessageKey, bool]] = []
        #: which messages this node's replicated state holds, by ring (see ``_end_held``)
        self._applied: dict[RingId, Applied] = {}
        #: the last delivery's frame seq and its index among the messages that frame ended
        self._dseq = -1
        self._dindex = 0
        #: after the transitional configuration of a ring whose round this node
        #: completed: that ring, its last frame delivered before, the deliveries since
        self._tail: tuple[RingId, int, set[tuple[int, int]]] | None = None
        #: replays (``ExecMessage.applied_by``), and those not run because the handler
        #: does not take them (``ExecHandlerSpec.replay`` False), per service name
        self.replays: collections.Counter[str] = collections.Counter()
        self.replays_dropped: collections.Counter[str] = collections.Counter()
        # messages sent without a client waiting, per service id, retried in order
        self._outbox: dict[int, collections.deque[RingMessage]] = {}
        self._outbox_armed: set[int] = set()
        self._held_requests: list[tuple[LibConn, int, int, bytes]] = []
        self._conns: dict[int, LibConn] = {}
        self._pending: dict[tuple[int, int], int] = {}  # (conn_id, seq) -> request msg_id
        #: deferred requests' Timeout timers, by (conn_id, seq)
        self._deadlines: dict[tuple[int, int], TimerHandle] = {}
        self._conn_ids = itertools.count(1)
        # Ring events left for the next event-loop turn (``_drain``), in order.
        self._inbox: collections.deque[Deliver | ConfChange | Stable] = collections.deque()
        self._drain_armed = False
        #: exec messages dropped because their handler raised, per service name
        self.bad_messages: collections.Counter[str] = collections.Counter()
        self._bad_log = RateLimiter(burst=5, interval=10.0, clock=scheduler.now)
        for svc in self.services.values():
            svc.exec_init(self)

    # --- wiring -------------------------------------------------------------

    def attach_ring(self, ring: RingPort) -> None:
        """Use ``ring`` for mcast; the ring must call ``on_deliver`` / ``on_confchg``."""
        self.ring = ring

    def service_by_id(self, service_id: int) -> Service | None:
        return self.services.get(service_id)

    def service_by_name(self, name: str) -> Service | None:
        return next((s for s in self.services.values() if s.name == name), None)

    # --- HostAPI for services ------------------------------------------------

    @property
    def syncing(self) -> bool:
        """True until the first sync round completes and during every later round."""
        return self._sync is not None or not self._configured

    def now(self) -> float:
        return self.scheduler.now()

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        return self.scheduler.call_later(delay, fn)

    def spawn(self, argv: list[str], env: dict[str, str],
              on_exit: Callable[[int], None]) -> ProcessHandle | None:
        """``HostAPI.spawn``: through ``spawner`` (default: the scheduler's ``spawn``)."""
        spawner = self.spawner if self.spawner is not None else getattr(
            self.scheduler, "spawn", None)
        if spawner is None:
            return None
        full = dict(env)
        if self.client_socket:
            full["AIS_SOCKET"] = self.client_socket
        try:
            handle: ProcessHandle = spawner(argv, full, on_exit)
        except OSError as exc:
            self.log.error("cannot start %s: %s", argv[0], exc)
            return None
        return handle

    def _drain(self) -> None:
        while self._inbox:
            if self._turn_over():
                # This event-loop turn has run long enough: the rest waits
                # (in order) for the next turn, so the ring's token and the
                # other clients get the loop in between.
                self._arm_drain()
                return
            ev = self._inbox.popleft()
            if isinstance(ev, ConfChange):
                self._confchg(ev)
            elif isinstance(ev, Stable):
                self._stable(ev)
            else:
                self._deliver(ev)

    def _turn_over(self) -> bool:
        turn_over = getattr(self.scheduler, "turn_over", None)
        return turn_over is not None and turn_over()

    def _arm_drain(self) -> None:
        if not self._drain_armed:
            self._drain_armed = True
            self.scheduler.call_later(0.0, self._resume_drain)

    def _resume_drain(self) -> None:
        self._drain_armed = False
        self._drain()

    def logger(self, subsystem: str) -> logging.LoggerAdapter:
        return NodeAdapter(logging.getLogger(f"ais.{subsystem.lower()}"), self.node_id)

    def mcast(self, service: Service, msg_id: int, payload: bytes,
              tag: ReplyTag = NO_TAG) -> None:
        """Multicast a service message in agreed order.

        Raises:
            TryAgain: no ring yet, or its send queue is full, or messages this
                service sent with ``mcast_retried`` still wait for room (they
                go first: a service's messages leave in the order it sent them).
        """
        if self._outbox.get(service.service_id):
            raise TryAgain("earlier messages of this service wait for the ring")
        self._send(RingMessage(service.service_id, msg_id, 0, tag, 0, payload))

    def mcast_sync(self, service: Service, msg_id: int, payload: bytes) -> None:
        """Multicast a sync message of the current round (only inside ``sync_process``)."""
        if self._sync is None:
            raise RuntimeError("mcast_sync outside a sync round")
        self._send(RingMessage(service.service_id, msg_id, FLAG_SYNC, NO_TAG,
                               self._sync.ring_id.seq, payload))

    def reply(self, tag: ReplyTag, body: bytes = b"", *, safe: bool = False) -> bool:
        """Answer the request ``tag`` with SA_OK, if it was asked here and is still waiting.

        Args:
            safe: answer only once every member holds the message being
                handled (``when_safe``); otherwise at once (agreed delivery).
                The request counts as answered now (its timeout no longer
                runs); the frame goes out when safe, if the client is still there.

        Returns:
            True when a client of this node was waiting for this answer; False
            for another node's tag, a client gone, or a request already
            answered (or timed out).
        """
        return self._claim_and_answer(tag, SA_OK, body, safe)

    def reply_error(self, tag: ReplyTag, error: SaError | int, *, safe: bool = False) -> bool:
        """Answer the request ``tag`` with an error (an SaError or its code); as ``reply``."""
        code = error.code if isinstance(error, SaError) else int(error)
        return self._claim_and_answer(tag, code, b"", safe)

    def _claim_and_answer(self, tag: ReplyTag, code: int, body: bytes, safe: bool) -> bool:
        if tag.node != self.node_id or not tag.is_client:
            return False
        msg_id = self._pending.get((tag.conn_id, tag.seq))
        self._forget(tag)
        conn = self._conns.get(tag.conn_id)
        if msg_id is None or conn is None:
            # Client gone, timed out, or a second answer to one request.
            return False
        if safe:
            self.when_safe(lambda: self._send_answer(conn, msg_id, tag.seq, code, body))
        else:
            conn.send_response(msg_id, tag.seq, code, body)
        return True

    def _forget(self, tag: ReplyTag) -> None:
        """Nobody will answer ``tag`` (its client is being dropped)."""
        key = (tag.conn_id, tag.seq)
        self._pending.pop(key, None)
        timer = self._deadlines.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _send_answer(self, conn: LibConn, msg_id: int, seq: int, code: int,
                     body: bytes) -> None:
        if self._conns.get(conn.conn_id) is conn:  # still connected
            conn.send_response(msg_id, seq, code, body)

    def defer(self, tag: ReplyTag, timeout: float | None, *,
              on_timeout: Callable[[], object] | None = None) -> Deferred:
        """The answer to ``tag`` comes later; after ``timeout`` s without one, Timeout.

        A library handler returns this instead of ``DEFERRED`` when its
        request has a time limit.  ``reply`` returns False after the timeout,
        so the exec handler can undo what nobody waits for.

        Args:
            on_timeout: run after the host answered Timeout (to forget the request).
        """
        key = (tag.conn_id, tag.seq)
        if timeout is not None and tag.node == self.node_id and key in self._pending:
            old = self._deadlines.pop(key, None)
            if old is not None:
                old.cancel()
            self._deadlines[key] = self.call_later(max(0.0, timeout),
                                                   lambda: self._timed_out(tag, on_timeout))
        return DEFERRED

    def _timed_out(self, tag: ReplyTag, on_timeout: Callable[[], object] | None) -> None:
        self._deadlines.pop((tag.conn_id, tag.seq), None)
        if self._claim_and_answer(tag, Timeout.code, b"", False) and on_timeout is not None:
            on_timeout()

    def conn_of(self, tag: ReplyTag) -> LibConn | None:
        """The connection of this node's client behind ``tag``, while it is open."""
        if tag.node != self.node_id or not tag.is_client:
            return None
        return self._conns.get(tag.conn_id)

    def conns(self, service: Service) -> list[LibConn]:
        """This node's open client connections to ``service``, oldest first."""
        return [c for c in self._conns.values() if c.service_id == service.service_id]

    def mcast_retried(self, service: Service, msg_id: int, payload: bytes) -> None:
        """Multicast a message no client waits for: queued, sent in order, retried.

        Never raises ``TryAgain``: while the ring refuses, the service's queue
        waits and is retried every ``RETRY_DELAY`` s.
        """
        self._queue_out(RingMessage(service.service_id, msg_id, 0, NO_TAG, 0, payload))

    @property
    def members(self) -> tuple[int, ...]:
        """The members of the last completed sync round, ascending (() before the first)."""
        return self._members

    @property
    def is_lowest(self) -> bool:
        """Whether this node is the lowest of ``members``: it decides timed events."""
        return bool(self._members) and self._members[0] == self.node_id

    def after_sync(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after every completed sync round, after every service's ``sync_done``."""
        self._after_sync.append(fn)

    def when_safe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every member of the ring holds the message being handled.

        That is when a ``Stable`` of its ring covers its seq, or when the
        ring's transitional configuration is delivered (recovery gave every
        member of it every message delivered in the old ring).  At once in a
        ring of one, outside a delivery, or for a message delivered after its
        ring's transitional configuration (the ring is no longer the live one).
        """
        cause = self._cause
        if (cause is None or cause[1] <= self._stable_seq or cause[0] != self._live_ring
                or len(self.ring_members) <= 1):
            fn()
            return
        self._unsafe.append((cause[1], fn))

    def _stable(self, s: Stable) -> None:
        if s.ring_id != self._live_ring or s.seq <= self._stable_seq:
            return
        self._stable_seq = s.seq
        unsafe = self._unsafe
        while unsafe and unsafe[0][0] <= s.seq:
            unsafe.popleft()[1]()

    def _release_unsafe(self) -> None:
        unsafe, self._unsafe = self._unsafe, collections.deque()
        for _, fn in unsafe:
            fn()

    def _send(self, msg: RingMessage) -> None:
        if self.ring is None:
            raise TryAgain("no ring yet")
        try:
            self.ring.mcast(encode_ring_message(msg),
                            msg.tag.is_client and msg.tag.node == self.node_id)
        except SendQueueFull:
            raise TryAgain("ring send queue full") from None

    # --- client side (called by ais.ipc) --------------------------------------

    def new_conn_id(self) -> int:
        return next(self._conn_ids)

    def lib_connect(self, conn: LibConn) -> None:
        self._conns[conn.conn_id] = conn
        self.services[conn.service_id].on_lib_connect(conn)

    def lib_exit(self, conn: LibConn) -> None:
        """The connection closed (or finalized).  Idempotent."""
        if self._conns.pop(conn.conn_id, None) is None:
            return
        for conn_id, seq in [k for k in self._pending if k[0] == conn.conn_id]:
            self._forget(ReplyTag(self.node_id, conn_id, seq))
        self._held_requests = [r for r in self._held_requests if r[0] is not conn]
        self.services[conn.service_id].on_lib_exit(conn)

    def lib_request(self, conn: LibConn, msg_id: int, seq: int, body: bytes) -> None:
        """Run one client request; its response is queued on ``conn`` now or later.

        Raises:
            IpcProtocolError: the body does not decode (the caller drops the client).
        """
        svc = self.services[conn.service_id]
        spec = svc.lib_handlers.get(msg_id)
        if spec is None:
            self._bad_log.log(self.log, logging.ERROR, "%s: unknown request id %d from "
                              "connection %d", svc.name, msg_id, conn.conn_id)
            conn.send_response(msg_id, seq, Library.code)
            return
        if spec.hold_during_sync and self.syncing:
            self._held_requests.append((conn, msg_id, seq, body))
            return
        tag = ReplyTag(self.node_id, conn.conn_id, seq)
        self._pending[(conn.conn_id, seq)] = msg_id
        try:
            result = spec.fn(svc, conn, Request(msg_id, body, tag))
        except SaError as err:
            self._forget(tag)
            conn.send_response(msg_id, seq, err.code)
            return
        except IpcProtocolError:
            self._forget(tag)
            raise
        if result is DEFERRED:
            return
        if not isinstance(result, (bytes, bytearray)):
            raise TypeError(f"{svc.name} handler {spec.fn.__name__} returned {result!r}")
        if (conn.conn_id, seq) in self._pending:
            self._forget(tag)
            conn.send_response(msg_id, seq, SA_OK, bytes(result))

    # --- ring side (called by the transport) ------------------------------------

    def on_deliver(self, d: Deliver) -> None:
        """One ring message in agreed order."""
        self._inbox.append(d)
        self._drain()

    def on_confchg(self, conf: ConfChange) -> None:
        """A configuration change in agreed order: tell services, start a sync round."""
        self._inbox.append(conf)
        self._drain()

    def on_stable(self, s: Stable) -> None:
        """Every member of ``s.ring_id`` holds every frame up to ``s.seq``."""
        self._inbox.append(s)
        self._drain()

    def _deliver(self, d: Deliver) -> None:
        if d.seq == self._dseq:
            self._dindex += 1
        else:
            self._dseq, self._dindex = d.seq, 0
        if self._live_ring is None and self._tail is not None and d.ring_id == self._tail[0]:
            self._tail[2].add((d.seq, self._dindex))
        try:
            m = decode_ring_message_untrusted(d.payload)
        except RingMessageError as exc:
            self._bad_log.log(self.log, logging.ERROR, "dropping ring message from %s: %s",
                              fmt_node(d.sender), exc)
            return
        if m.service == HOST_SERVICE_ID:
            if m.msg_id == HOST_MSG_SYNC_BARRIER:
                self._barrier(d.sender, m.sync_seq, d.seq)
            elif m.msg_id == HOST_MSG_SYNC_STATE:
                try:
                    self._announced(d.sender, m.sync_seq, *decode_state_untrusted(m.payload))
                except RingMessageError as exc:
                    self.log.error("dropping sync state from %s: %s", fmt_node(d.sender), exc)
            else:
                self._bad_log.log(self.log, logging.WARNING, "unknown host message %d from %s",
                                  m.msg_id, fmt_node(d.sender))
            return
        svc = self.services.get(m.service)
        if svc is None or m.msg_id not in svc.exec_handlers:
            self._bad_log.log(self.log, logging.WARNING,
                              "dropping message %d for unknown service %d from %s",
                              m.msg_id, m.service, fmt_node(d.sender))
            return
        if m.flags & FLAG_RESENT:
            self._deliver_resent(d, m, svc)
            return
        msg = ExecMessage(d.sender, m.msg_id, m.payload, m.tag, d.ring_id,
                          sync=bool(m.flags & FLAG_SYNC), seq=d.seq)
        if msg.sync:
            rnd = self._sync
            if rnd is None or m.sync_seq != rnd.ring_id.seq or rnd.info is None or rnd.closed:
                return  # a message of an abandoned (or ending) round
            self._apply(svc, msg)
        elif self.syncing:
            self._held_deliveries.append((svc, msg, (d.ring_id, d.seq, self._dindex), False))
        else:
            self._apply(svc, msg)

    def _deliver_resent(self, d: Deliver, m: RingMessage, svc: Service) -> None:
        """A message re-sent after an abandoned round: its name precedes the payload."""
        if len(m.payload) < ORIGIN.size or m.flags & FLAG_SYNC:
            self._bad_log.log(self.log, logging.ERROR, "dropping re-sent message from %s: "
                              "no origin, or flagged sync too", fmt_node(d.sender))
            return
        r_seq, r_rep, o_seq, o_index = ORIGIN.unpack_from(m.payload)
        key = (RingId(r_seq, r_rep), o_seq, o_index)
        msg = ExecMessage(d.sender, m.msg_id, m.payload[ORIGIN.size:], m.tag, d.ring_id,
                          seq=d.seq)
        if self.syncing:
            self._held_deliveries.append((svc, msg, key, True))
        else:
            self._apply_resent(svc, msg, key)

    def _apply_resent(self, svc: Service, msg: ExecMessage, key: MessageKey,
                      applied_at: int = 0,
                      announced: dict[int, dict[RingId, Applied]] | None = None) -> None:
        """A re-sent message: applied as any other, or a replay if a state holds it.

        Args:
            announced: the records of the round just completed, per member; None
                outside a round (every member then holds the same state).
        """
        ring, seq, index = key
        if announced is None:
            mine = self._applied.get(ring)
            held = mine is not None and mine.covers(seq, index)
            applied_by = frozenset(self._members) if held else frozenset()
        else:
            applied_by = frozenset(n for n, rec in announced.items()
                                   if ring in rec and rec[ring].covers(seq, index))
        if not applied_by:
            self._applied = merge_applied([self._applied,
                                           {ring: Applied(0, frozenset({(seq, index)}))}])
            self._apply(svc, msg, applied_at)
            return
        self.replays[svc.name] += 1
        if svc.exec_handlers[msg.msg_id].replay:
            self._apply(svc, replace(msg, applied_by=applied_by), applied_at)
        else:
            self.replays_dropped[svc.name] += 1
            self.log.log(NOTICE, "%s: message %d from %s, first delivered in ring %s, was "
                         "applied there by %s: not applied again", svc.name, msg.msg_id,
                         fmt_node(msg.sender), ring,
                         ", ".join(fmt_node(n) for n in sorted(applied_by)))
            self.reply_error(msg.tag, applied_elsewhere())

    def _apply(self, svc: Service, msg: ExecMessage, applied_at: int = 0) -> None:
        """Run the handler of ``msg``, the cause of the safe replies it makes.

        Args:
            applied_at: for a message held during a sync round, the seq of the
                barrier that ended the round: every member applies it there, so
                its replies are safe once that barrier is.
        """
        was = self._cause
        self._cause = (msg.ring_id, max(msg.seq, applied_at)) if msg.seq else None
        try:
            self._run_exec(svc, msg)
        finally:
            self._cause = was

    def _run_exec(self, svc: Service, msg: ExecMessage) -> None:
        """Run one exec handler; whatever it raises is the payload's fault, not ours.

        Every node runs the same handler on the same bytes, so a payload that
        raises does so everywhere at the same point: dropping it keeps the
        replicas equal, and no peer can end the executive with a bad message.
        """
        try:
            svc.exec_handlers[msg.msg_id].fn(svc, msg)
        except Exception as exc:  # noqa: BLE001 -- IpcProtocolError, struct.error, anything
            self.bad_messages[svc.name] += 1
            self._bad_log.log(self.log, logging.ERROR,
                              "%s: dropped bad message %d from %s (%d dropped so far): %s: %s",
                              svc.name, msg.msg_id, fmt_node(msg.sender),
                              self.bad_messages[svc.name], type(exc).__name__, exc)

    def _confchg(self, conf: ConfChange) -> None:
        if conf.transitional:
            # Recovery gave every member of the transitional configuration every
            # message delivered in the old ring: whatever waited for that is safe.
            self._live_ring = None
            if self._sync is None and self._synced_ring == conf.ring_id:
                # This node's state holds every message of the ring delivered so far
                # (its round completed), and will hold those delivered after this.
                self._tail = (conf.ring_id, max(self._dseq, 0), set())
            self._release_unsafe()
            if self._sync is not None:
                self._sync.closed = True
        else:
            if self._tail is not None:
                ring, upto, tail = self._tail
                self._applied = merge_applied([self._applied, {ring: Applied(upto, frozenset(
                    tail))}])
                self._tail = None
            self._dseq = -1
            self.ring_id = conf.ring_id
            self.ring_members = tuple(sorted(conf.members))
            self._release_unsafe()  # no transitional (the first ring): nothing was unsafe
            self._live_ring = conf.ring_id
            self._stable_seq = 0
            if self._synced_ring is not None and self._next_ring is None:
                self._next_ring = conf.ring_id
        for svc in self.services.values():
            svc.on_confchg(conf)
        if conf.transitional:
            return
        if self._sync is not None:
            for svc in self.services.values():
                svc.sync_abort()
            self._sync = None
            self._end_held()
        self._sync = _SyncRound(conf.ring_id, tuple(sorted(conf.members)),
                                tuple(sorted(conf.joined)), tuple(sorted(conf.left)),
                                list(self.services.values()))
        self._pump_sync(self._sync)

    @property
    def state_id(self) -> StateId | None:
        """What this node announces in a sync round (None: it holds no state yet)."""
        if self._synced_ring is None:
            return None
        return StateId(self._synced_ring, self._next_ring or _NO_RING)

    # --- sync rounds ---------------------------------------------------------------

    def _end_held(self) -> None:
        """An abandoned round's held messages: re-sent, or applied here (EVS).

        A replicated service's held messages were applied nowhere in the
        abandoned configuration -- unless some member completed the round
        there, see below.  Every member of the transitional configuration
        holds the same ones (virtual synchrony), but a node joining now never
        saw them and will receive state without them.  So nobody applies them
        late: each node sends its own again, to be delivered in the new
        configuration, and drops the others' (their senders do the same on
        their side).  They go in front of what this node queued since
        (``requeue_front``), which the ring has not framed in the new
        configuration yet (``install_pause``): otherwise a sender's later
        messages would be delivered first.

        Members of one ring may leave it through different transitional
        configurations, one after delivering the last barrier (it completed
        the round and applied the held messages), the other without it; the
        second's re-sends can then meet the first's state again after a
        merge.  So a re-send carries its name (``ORIGIN``: where it was
        first delivered), every member announces which messages its state
        holds (``Applied``, per ring whose round it completed), and a re-send
        some member's announced state holds is a replay, handed to services
        with those members (``_apply_resent``).  A service whose state every
        round rebuilds from per-node data (``Service.apply_held_on_abort``,
        EVS) has no need of re-sends: its held messages are applied here, in
        their order, as Totem delivered them, so each is applied once
        wherever it was delivered.
        """
        held, self._held_deliveries = self._held_deliveries, []
        mine = [RingMessage(svc.service_id, msg.msg_id, FLAG_RESENT, msg.tag, 0,
                            ORIGIN.pack(key[0].seq, key[0].rep, key[1], key[2]) + msg.payload)
                for svc, msg, key, _ in held
                if msg.sender == self.node_id and not svc.apply_held_on_abort]
        requeue = getattr(self.ring, "requeue_front", None)
        if requeue is not None and mine:
            # Ahead of what this node queued since, which the ring has not framed
            # yet in the new configuration: each sender's order holds.
            requeue([encode_ring_message(m) for m in mine])
        else:
            for m in mine:
                self._queue_out(m)
        for svc, msg, _, _ in held:
            if svc.apply_held_on_abort:
                self._apply(svc, msg)

    def _queue_out(self, msg: RingMessage) -> None:
        queue = self._outbox.setdefault(msg.service, collections.deque())
        queue.append(msg)
        if msg.service not in self._outbox_armed:  # else the armed retry sends it, in order
            self._flush_out(msg.service)

    def _flush_out(self, service_id: int) -> None:
        queue = self._outbox[service_id]
        while queue:
            try:
                self._send(queue[0])
            except TryAgain:
                if service_id not in self._outbox_armed:
                    # One retry timer per service, however many messages wait.
                    self._outbox_armed.add(service_id)
                    self.call_later(self.RETRY_DELAY, lambda: self._retry_out(service_id))
                return
            queue.popleft()

    def _retry_out(self, service_id: int) -> None:
        self._outbox_armed.discard(service_id)
        self._flush_out(service_id)

    def _pump_sync(self, rnd: _SyncRound) -> None:
        rnd.pump_armed = False
        if self._sync is not rnd:
            return  # abandoned
        if not rnd.state_sent:
            try:
                self._send(RingMessage(HOST_SERVICE_ID, HOST_MSG_SYNC_STATE, 0, NO_TAG,
                                       rnd.ring_id.seq,
                                       encode_state(self.state_id, self._applied)))
            except TryAgain:
                self._arm_pump(rnd, self.SYNC_RETRY_DELAY)
                return
            rnd.state_sent = True
        if rnd.info is None:
            return  # services start once every member said what it holds
        while rnd.to_process:
            svc = rnd.to_process[0]
            try:
                done = svc.sync_process()
            except TryAgain:
                self._arm_pump(rnd, self.SYNC_RETRY_DELAY)
                return
            if not done:
                # Yield between chunks so the ring can drain.
                self._arm_pump(rnd, 0.0)
                return
            rnd.to_process.pop(0)
        if not rnd.barrier_sent:
            try:
                self._send(RingMessage(HOST_SERVICE_ID, HOST_MSG_SYNC_BARRIER, 0, NO_TAG,
                                       rnd.ring_id.seq, b""))
            except TryAgain:
                self._arm_pump(rnd, self.SYNC_RETRY_DELAY)
                return
            rnd.barrier_sent = True

    def _arm_pump(self, rnd: _SyncRound, delay: float) -> None:
        if not rnd.pump_armed:
            rnd.pump_armed = True
            self.call_later(delay, lambda: self._pump_sync(rnd))

    def _announced(self, sender: int, seq: int, state: StateId | None,
                   applied: dict[RingId, Applied] | None = None) -> None:
        rnd = self._sync
        if rnd is None or seq != rnd.ring_id.seq or rnd.closed or rnd.info is not None \
                or sender not in rnd.members:
            return
        rnd.states.setdefault(sender, state)
        rnd.applied.setdefault(sender, applied or {})
        if len(rnd.states) < len(rnd.members):
            return
        # The same delivered announcements on every member: the same groups everywhere.
        groups, fresh = state_groups(rnd.states)
        rnd.info = SyncInfo(rnd.ring_id, rnd.members, rnd.joined, rnd.left, groups, fresh)
        if rnd.info.transfer:
            self.log.debug("sync round %s: state groups %s, fresh %s", rnd.ring_id,
                           [[fmt_node(n) for n in g.members] for g in groups],
                           [fmt_node(n) for n in fresh])
        for svc in self.services.values():
            svc.sync_start(rnd.info)
        self._pump_sync(rnd)

    def _barrier(self, sender: int, seq: int, deliver_seq: int = 0) -> None:
        rnd = self._sync
        if rnd is None or seq != rnd.ring_id.seq or rnd.info is None or rnd.closed:
            return
        rnd.barriers.add(sender)
        if rnd.barriers.issuperset(rnd.members):
            self._finish_sync(rnd, deliver_seq)

    def _finish_sync(self, rnd: _SyncRound, done_seq: int = 0) -> None:
        self._sync = None
        self._configured = True
        self._synced_ring, self._next_ring = rnd.ring_id, None
        self._members = rnd.members
        # The state each member now holds was merged from those announced (a
        # record may now claim a change a merge dropped from some objects; see
        # ExecMessage.applied_by for how a service tells).
        self._applied = merge_applied([self._applied, *rnd.applied.values()])
        self.log.debug("sync round %s complete", rnd.ring_id)
        for svc in self.services.values():
            svc.sync_done()
        for fn in list(self._after_sync):
            fn()
        held, self._held_deliveries = self._held_deliveries, []
        for i, (svc, msg, key, resent) in enumerate(held):
            if self.syncing:
                # A handler started nothing new, but stay safe: re-hold the rest in order.
                self._held_deliveries = held[i:] + self._held_deliveries
                break
            # Held by every member once stable, but applied by a member only
            # when it completes the round: safe when the last barrier is.
            if resent:
                self._apply_resent(svc, msg, key, done_seq, rnd.applied)
            else:
                self._apply(svc, msg, done_seq)
        requests, self._held_requests = self._held_requests, []
        for conn, msg_id, seq, body in requests:
            if conn.closed:
                continue
            try:
                self.lib_request(conn, msg_id, seq, body)
            except IpcProtocolError as exc:
                self.log.error("closing connection %d: %s", conn.conn_id, exc)
                conn.close(str(exc))


def create_host(node_id: int, scheduler: Scheduler,
                options: dict[str, dict[str, Any]] | None = None,
                model: AmfModel | None = None) -> ServiceHost:
    """A host running every built-in service (``ais.services.BUILTIN_MODULES``).

    Wiring for the executive::

        host = create_host(node_of(addr), GeventScheduler(on_error=fatal),
                           {"clm": {"cluster_name": "mvlcge"}})
        transport = Transport(..., on_deliver=host.on_deliver, on_confchg=host.on_confchg)
        host.attach_ring(transport)        # once the transport is started
        IpcServer(host, socket_path, group="ais").start()

    Args:
        options: per service name, keyword options for its constructor.
        model: the AMF model loaded from groups.conf (``host.model``).
    """
    from ais.services import load_builtin_services
    from ais.services.base import create_service, registered_services

    options = options or {}
    names = load_builtin_services()
    services = [create_service(cls.name, **options.get(cls.name, {}))
                for cls in registered_services().values() if cls.__module__.rsplit(".", 1)[-1]
                in names]
    return ServiceHost(node_id, services, scheduler, model)


# --- schedulers ----------------------------------------------------------------------


class GeventScheduler:
    """Timers as gevent greenlets; the clock is the hub's monotonic clock.

    Args:
        on_error: called with the exception when a timer function raises; by
            default it is logged and re-raised in the greenlet (gevent would only
            print it, so wire this to the executive's supervisor).
    """

    #: seconds of ring deliveries handled per event-loop turn; the rest waits a turn
    TURN_BUDGET = 0.025

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        import time

        import gevent  # only the real executive and the IPC tests need gevent

        self._gevent = gevent
        self._on_error = on_error
        self._perf = time.perf_counter
        self._turn_start: float | None = None

    def turn_over(self) -> bool:
        """Whether the host has worked ``TURN_BUDGET`` in this event-loop turn.

        The first call of a turn starts the count; a loop callback clears it when
        the running greenlet yields to the hub.
        """
        now = self._perf()
        if self._turn_start is None:
            self._turn_start = now
            self._gevent.get_hub().loop.run_callback(self._new_turn)
            return False
        return now - self._turn_start > self.TURN_BUDGET

    def _new_turn(self) -> None:
        self._turn_start = None

    def now(self) -> float:
        return self._gevent.get_hub().loop.now()

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # a bug in a service: hand to the supervisor
                logger.exception("timer function failed")
                if self._on_error is None:
                    raise
                self._on_error(exc)

        # A bare loop timer (about 130 bytes, 1 us to arm) rather than a sleeping
        # greenlet (about 1 KB, 13 us): services arm one per checkpoint and per
        # section.  The function still runs in a greenlet of its own when due.
        timer = self._gevent.get_hub().loop.timer(max(0.0, delay))
        handle = _LoopTimer(timer)
        timer.start(handle.fire, self._gevent, run)
        return handle

    def spawn(self, argv: list[str], env: dict[str, str],
              on_exit: Callable[[int], None]) -> _Child:
        """Start ``argv`` (environment: ours plus ``env``); ``on_exit(rc)`` runs in a
        greenlet when it ends.  The child gets SIGKILL if this process dies (Linux
        parent-death signal), so an executive killed with -9 leaves no orphans."""
        import os
        import subprocess

        import gevent.subprocess

        full = dict(os.environ)
        full.update(env)
        proc = gevent.subprocess.Popen(argv, env=full, stdin=subprocess.DEVNULL,
                                       preexec_fn=_die_with_parent, close_fds=True)
        child = _Child(proc)

        def watch() -> None:
            rc = proc.wait()
            try:
                on_exit(rc)
            except Exception as exc:  # a bug in a service: hand to the supervisor
                logger.exception("exit handler failed")
                if self._on_error is not None:
                    self._on_error(exc)

        self._gevent.spawn(watch)
        return child


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the executive dies (prctl PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: orphans possible


class _Child:
    """ProcessHandle of a process started by GeventScheduler.spawn."""

    __slots__ = ("_proc", "pid")

    def __init__(self, proc: Any) -> None:
        self._proc = proc
        self.pid: int = proc.pid

    def kill(self, sig: int) -> None:
        if self._proc.returncode is None:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass


class _LoopTimer:
    __slots__ = ("_timer", "_g")

    def __init__(self, timer: Any) -> None:
        self._timer: Any = timer
        self._g: Any = None

    def fire(self, gevent: Any, run: Callable[[], None]) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
            self._g = gevent.spawn(run)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        elif self._g is not None:
            self._g.kill(block=False)


__all__ = [
    "create_host", "GeventScheduler", "HOST_SERVICE_ID", "RING_HEADER", "RingMessage",
    "RingMessageError", "RingPort", "Scheduler", "ServiceHost", "decode_ring_message_untrusted",
    "encode_ring_message",
]
