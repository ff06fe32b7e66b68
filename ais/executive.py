"""The service host: owns the services, multiplexes them onto the ring, runs sync.

Theory of operation
-------------------
``ServiceHost`` sits between three things:

* the ring (``ais.totem.transport.Transport``, or ``LoopbackRing`` /
  ``FakeBus`` in tests): the host hands it opaque payloads with
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
never applied (they are re-sent, see ``_resend_held``), so the id holds until
the next completed round.  To keep "completed" the same on all members of a
transitional configuration, a round whose ring's transitional configuration
has been delivered can no longer complete: announcements, sync messages and
barriers delivered after it (possibly past a gap) are ignored and the next
configuration starts a new round.  A round abandoned midway changes nothing
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

Nothing here blocks or yields: the host is driven by calls from the ring
shell and the IPC greenlets, and its outputs (ring mcasts, client frames)
are queued by their receivers.  ``GeventScheduler`` is the only piece that
touches gevent, and it is imported lazily.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from ais.log import NodeAdapter, RateLimiter
from ais.services.base import (
    DEFERRED, NO_TAG, ExecMessage, LibConn, ReplyTag, Request, Service, StateGroup, StateId,
    SyncInfo, TimerHandle,
)
from ais.totem.events import ConfChange, Deliver, RingId, SendQueueFull, Stable, fmt_node
from saf.errors import SA_OK, IpcProtocolError, Library, SaError, TryAgain

logger = logging.getLogger(__name__)

# Ring payload header, in front of every message the host multicasts (28 bytes):
#  0         2        4       5      8          12         16         20               28
#  | service | msg_id | flags | pad  | tag.node | tag.conn | tag.seq  | sync ring seq  | payload
#  service u16  Service.service_id (HOST_SERVICE_ID for the host's own messages)
#  flags   u8   FLAG_SYNC: sent with mcast_sync during the round named by "sync ring seq"
#  tag     3 x u32  ReplyTag of the client request that caused it (all 0: none)
#  sync ring seq u64  RingId.seq of the round (sync messages and barriers), else 0
RING_HEADER = struct.Struct("!HHB3xIIIQ")

FLAG_SYNC = 0x01
HOST_SERVICE_ID = 0xFFFF
HOST_MSG_SYNC_BARRIER = 1
HOST_MSG_SYNC_STATE = 2

# SYNC_STATE payload (24 bytes): the sender's StateId; all zero: a fresh node.
#  0                 8               12                20             24
#  | synced ring seq | synced rep    | next ring seq   | next rep     |
SYNC_STATE = struct.Struct("!QIQI")
_NO_RING = RingId(0, 0)


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
    """What the host needs of the ring: ``Transport`` has this shape."""

    def mcast(self, payload: bytes) -> None:
        """Queue ``payload`` for agreed delivery; may raise ``SendQueueFull``."""


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
    state_sent: bool = False
    #: set once every announcement is delivered and services' sync_start ran
    info: SyncInfo | None = None
    barriers: set[int] = field(default_factory=set)
    barrier_sent: bool = False
    pump_armed: bool = False
    #: the ring's transitional configuration was delivered: it can no longer complete
    closed: bool = False


def encode_state(state: StateId | None) -> bytes:
    if state is None:
        return SYNC_STATE.pack(0, 0, 0, 0)
    return SYNC_STATE.pack(state.synced.seq, state.synced.rep, state.next.seq, state.next.rep)


def decode_state_untrusted(data: bytes) -> StateId | None:
    if len(data) != SYNC_STATE.size:
        raise RingMessageError(f"sync state announcement of {len(data)} bytes")
    s_seq, s_rep, n_seq, n_rep = SYNC_STATE.unpack(data)
    if not s_seq:
        return None
    return StateId(RingId(s_seq, s_rep), RingId(n_seq, n_rep))


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
    """

    #: how long to wait before retrying a sync send the ring refused (s)
    SYNC_RETRY_DELAY = 0.01

    def __init__(self, node_id: int, services: Iterable[Service], scheduler: Scheduler) -> None:
        self.node_id = node_id
        self.scheduler = scheduler
        self.log = NodeAdapter(logger, node_id)
        self.services: dict[int, Service] = {}
        for svc in services:
            if svc.service_id in self.services:
                raise ValueError(f"two services with id {svc.service_id}")
            self.services[svc.service_id] = svc
        self.ring: RingPort | None = None
        self.ring_id: RingId | None = None
        self.members: tuple[int, ...] = ()
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
        self._held_deliveries: list[tuple[Service, ExecMessage]] = []
        self._resend: collections.deque[RingMessage] = collections.deque()
        self._resend_armed = False
        self._held_requests: list[tuple[LibConn, int, int, bytes]] = []
        self._conns: dict[int, LibConn] = {}
        self._pending: dict[tuple[int, int], int] = {}  # (conn_id, seq) -> request msg_id
        self._conn_ids = itertools.count(1)
        # Ring events that arrive while a service handler runs (a transport may
        # deliver from inside mcast) wait here, so handlers are never re-entered.
        self._inbox: collections.deque[Deliver | ConfChange | Stable] = collections.deque()
        self._busy = False
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
        return self.scheduler.call_later(delay, lambda: self._guarded(fn))

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` as a service entry point: ring events wait until it returns."""
        was = self._busy
        self._busy = True
        try:
            return fn(*args)
        finally:
            self._busy = was
            if not was:
                self._drain()

    def _drain(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
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
        finally:
            self._busy = False

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
            TryAgain: no ring yet, or its send queue is full.
        """
        self._send(RingMessage(service.service_id, msg_id, 0, tag, 0, payload))

    def mcast_sync(self, service: Service, msg_id: int, payload: bytes) -> None:
        """Multicast a sync message of the current round (only inside ``sync_process``)."""
        if self._sync is None:
            raise RuntimeError("mcast_sync outside a sync round")
        self._send(RingMessage(service.service_id, msg_id, FLAG_SYNC, NO_TAG,
                               self._sync.ring_id.seq, payload))

    def reply(self, tag: ReplyTag, body: bytes = b"", *, safe: bool = False) -> None:
        """Answer the request ``tag`` with SA_OK, if it was asked here and is still waiting.

        Args:
            safe: answer only once every member holds the message being
                handled (``when_safe``); otherwise at once (agreed delivery).
        """
        if tag.node != self.node_id or not tag.is_client:
            return
        if safe:
            self.when_safe(lambda: self._answer(tag, SA_OK, body))
        else:
            self._answer(tag, SA_OK, body)

    def reply_error(self, tag: ReplyTag, error: SaError | int, *, safe: bool = False) -> None:
        """Answer the request ``tag`` with an error (an SaError or its code)."""
        code = error.code if isinstance(error, SaError) else int(error)
        if tag.node != self.node_id or not tag.is_client:
            return
        if safe:
            self.when_safe(lambda: self._answer(tag, code, b""))
        else:
            self._answer(tag, code, b"")

    def when_safe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every member of the ring holds the message being handled.

        That is when a ``Stable`` of its ring covers its seq, or when the
        ring's transitional configuration is delivered (recovery gave every
        member of it every message delivered in the old ring).  At once in a
        ring of one, outside a delivery, or for a message delivered after its
        ring's transitional configuration (``Deliver.seq`` 0).
        """
        cause = self._cause
        if (cause is None or cause[1] <= self._stable_seq or cause[0] != self._live_ring
                or len(self.members) <= 1):
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

    def _answer(self, tag: ReplyTag, code: int, body: bytes) -> None:
        if tag.node != self.node_id or not tag.is_client:
            return
        msg_id = self._pending.pop((tag.conn_id, tag.seq), None)
        conn = self._conns.get(tag.conn_id)
        if msg_id is None or conn is None:
            # Client gone, or a second answer to one request: nobody waits for it.
            return
        conn.send_response(msg_id, tag.seq, code, body)

    def _send(self, msg: RingMessage) -> None:
        if self.ring is None:
            raise TryAgain("no ring yet")
        try:
            self.ring.mcast(encode_ring_message(msg))
        except SendQueueFull:
            raise TryAgain("ring send queue full") from None

    # --- client side (called by ais.ipc) --------------------------------------

    def new_conn_id(self) -> int:
        return next(self._conn_ids)

    def lib_connect(self, conn: LibConn) -> None:
        self._conns[conn.conn_id] = conn
        self._guarded(self.services[conn.service_id].on_lib_connect, conn)

    def lib_exit(self, conn: LibConn) -> None:
        """The connection closed (or finalized).  Idempotent."""
        if self._conns.pop(conn.conn_id, None) is None:
            return
        for key in [k for k in self._pending if k[0] == conn.conn_id]:
            del self._pending[key]
        self._held_requests = [r for r in self._held_requests if r[0] is not conn]
        self._guarded(self.services[conn.service_id].on_lib_exit, conn)

    def lib_request(self, conn: LibConn, msg_id: int, seq: int, body: bytes) -> None:
        """Run one client request; its response is queued on ``conn`` now or later.

        Raises:
            IpcProtocolError: the body does not decode (the caller drops the client).
        """
        self._guarded(self._lib_request, conn, msg_id, seq, body)

    def _lib_request(self, conn: LibConn, msg_id: int, seq: int, body: bytes) -> None:
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
            self._pending.pop((conn.conn_id, seq), None)
            conn.send_response(msg_id, seq, err.code)
            return
        except IpcProtocolError:
            self._pending.pop((conn.conn_id, seq), None)
            raise
        if result is DEFERRED:
            return
        if not isinstance(result, (bytes, bytearray)):
            raise TypeError(f"{svc.name} handler {spec.fn.__name__} returned {result!r}")
        if self._pending.pop((conn.conn_id, seq), None) is not None:
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
                    self._announced(d.sender, m.sync_seq, decode_state_untrusted(m.payload))
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
        msg = ExecMessage(d.sender, m.msg_id, m.payload, m.tag, d.ring_id,
                          sync=bool(m.flags & FLAG_SYNC), seq=d.seq)
        if msg.sync:
            rnd = self._sync
            if rnd is None or m.sync_seq != rnd.ring_id.seq or rnd.info is None or rnd.closed:
                return  # a message of an abandoned (or ending) round
            self._apply(svc, msg)
        elif self.syncing:
            self._held_deliveries.append((svc, msg))
        else:
            self._apply(svc, msg)

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
            self._release_unsafe()
            if self._sync is not None:
                self._sync.closed = True
        else:
            self.ring_id = conf.ring_id
            self.members = tuple(sorted(conf.members))
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
            self._resend_held()
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

    def _resend_held(self) -> None:
        """An abandoned round's held messages were never applied anywhere.

        Every member of the abandoned configuration holds the same ones
        (virtual synchrony), but a node joining now never saw them and will
        receive state without them.  So nobody applies them late: each node
        sends its own again, to be delivered in the new configuration, and
        drops the others' (their senders do the same on their side).
        """
        held, self._held_deliveries = self._held_deliveries, []
        for svc, msg in held:
            if msg.sender != self.node_id:
                continue
            self._resend.append(RingMessage(svc.service_id, msg.msg_id, 0, msg.tag, 0,
                                            msg.payload))
        self._flush_resend()

    def _flush_resend(self) -> None:
        while self._resend:
            try:
                self._send(self._resend[0])
            except TryAgain:
                if not self._resend_armed:
                    self._resend_armed = True
                    self.call_later(self.SYNC_RETRY_DELAY, self._retry_resend)
                return
            self._resend.popleft()

    def _retry_resend(self) -> None:
        self._resend_armed = False
        self._flush_resend()

    def _pump_sync(self, rnd: _SyncRound) -> None:
        rnd.pump_armed = False
        if self._sync is not rnd:
            return  # abandoned
        if not rnd.state_sent:
            try:
                self._send(RingMessage(HOST_SERVICE_ID, HOST_MSG_SYNC_STATE, 0, NO_TAG,
                                       rnd.ring_id.seq, encode_state(self.state_id)))
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

    def _announced(self, sender: int, seq: int, state: StateId | None) -> None:
        rnd = self._sync
        if rnd is None or seq != rnd.ring_id.seq or rnd.closed or rnd.info is not None \
                or sender not in rnd.members:
            return
        rnd.states.setdefault(sender, state)
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
        self.log.debug("sync round %s complete", rnd.ring_id)
        for svc in self.services.values():
            svc.sync_done()
        held, self._held_deliveries = self._held_deliveries, []
        for i, (svc, msg) in enumerate(held):
            if self.syncing:
                # A handler started nothing new, but stay safe: re-hold the rest in order.
                self._held_deliveries = held[i:] + self._held_deliveries
                break
            # Held by every member once stable, but applied by a member only
            # when it completes the round: safe when the last barrier is.
            self._apply(svc, msg, done_seq)
        requests, self._held_requests = self._held_requests, []
        for conn, msg_id, seq, body in requests:
            if conn.closed:
                continue
            try:
                self._lib_request(conn, msg_id, seq, body)
            except IpcProtocolError as exc:
                self.log.error("closing connection %d: %s", conn.conn_id, exc)
                conn.close(str(exc))


def create_host(node_id: int, scheduler: Scheduler,
                options: dict[str, dict[str, Any]] | None = None) -> ServiceHost:
    """A host running every built-in service (``ais.services.BUILTIN_MODULES``).

    Wiring for the executive::

        host = create_host(node_of(addr), GeventScheduler(on_error=fatal),
                           {"clm": {"cluster_name": "mvlcge"}})
        transport = Transport(..., on_deliver=host.on_deliver, on_confchg=host.on_confchg)
        host.attach_ring(transport)        # once the transport is started
        IpcServer(host, socket_path, group="ais").start()

    Args:
        options: per service name, keyword options for its constructor.
    """
    from ais.services import load_builtin_services
    from ais.services.base import create_service, registered_services

    options = options or {}
    names = load_builtin_services()
    services = [create_service(cls.name, **options.get(cls.name, {}))
                for cls in registered_services().values() if cls.__module__.rsplit(".", 1)[-1]
                in names]
    return ServiceHost(node_id, services, scheduler)


# --- schedulers ----------------------------------------------------------------------


class _ManualTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """A virtual clock for tests: timers run only in ``run``/``advance``."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _ManualTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, fn: Callable[[], None]) -> _ManualTimer:
        handle = _ManualTimer()
        heapq.heappush(self._heap, (self._now + max(0.0, delay), next(self._seq), handle, fn))
        return handle

    def run(self, max_steps: int = 100_000) -> int:
        """Run every timer due now (including ones they arm for now); return the count."""
        return self.advance(0.0, max_steps)

    def advance(self, dt: float, max_steps: int = 100_000) -> int:
        """Move the clock forward by ``dt``, running timers in time order.

        Raises:
            RuntimeError: more than ``max_steps`` timers ran (a livelock in a test).
        """
        end = self._now + dt
        steps = 0
        while self._heap and self._heap[0][0] <= end:
            at, _, handle, fn = heapq.heappop(self._heap)
            self._now = max(self._now, at)
            if handle.cancelled:
                continue
            steps += 1
            if steps > max_steps:
                raise RuntimeError(f"more than {max_steps} timer runs")
            fn()
        self._now = end
        return steps


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


# --- in-process rings for tests and single-node runs ----------------------------------


class FakeBus:
    """Several hosts sharing one ordered bus, with scripted configuration changes.

    Every event (a message, a reconfiguration) is queued and carried out in
    order on the next scheduler tick (``flush``), so delivery never re-enters
    a handler that is still running -- as with the real transport.  A message
    goes to every node in its sender's component at delivery time; a
    reconfiguration gives each affected node a transitional then a regular
    ConfChange, extended-virtual-synchrony style.  Nodes in no component are
    down: they neither send nor receive.

    Messages carry a seq per ring.  Every member holds a message as soon as
    it is delivered, so each delivery is followed by a ``Stable`` for it --
    unless ``hold_stable`` is set: then ``Stable`` waits for ``stabilize()``
    (a ring whose members have not all acknowledged yet).
    """

    def __init__(self, scheduler: Scheduler, max_events_per_flush: int = 100_000) -> None:
        self.scheduler = scheduler
        self.hosts: dict[int, ServiceHost] = {}
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._component: dict[int, frozenset[int]] = {}  # node -> its current component
        self._ring: dict[int, RingId] = {}
        self._ring_seq = 0
        self._flush_armed = False
        self._max = max_events_per_flush
        self.delivered = 0
        #: while True, events queue up (a test's way to stop time on the ring)
        self.paused = False
        #: while True, deliveries are not followed by ``Stable`` until ``stabilize``
        self.hold_stable = False
        self._last_seq: dict[RingId, int] = {}

    def port(self, host: ServiceHost) -> "FakePort":
        """Attach ``host`` to the bus (down until a reconfiguration includes it)."""
        self.hosts[host.node_id] = host
        port = FakePort(self, host.node_id)
        host.attach_ring(port)
        return port

    def remove(self, node_id: int) -> None:
        """Forget a crashed node's host (reconfigure without it first)."""
        self.hosts.pop(node_id, None)
        self._component.pop(node_id, None)
        self._ring.pop(node_id, None)

    def reconfigure(self, *components: Iterable[int],
                    tails: dict[int, list[tuple[int, bytes]]] | None = None) -> None:
        """Queue a membership change: the given node sets become the rings.

        Args:
            tails: per node, (sender, payload) messages of its old ring that it
                delivers after its transitional configuration, as Totem may
                deliver frames past a hole in recovery (each node its own list).
        """
        self._queue.append(("conf", ([frozenset(c) for c in components], dict(tails or {}))))
        self._arm()

    def take_queued(self) -> list[tuple[int, bytes]]:
        """Remove and return the messages queued and not yet delivered (sender, payload)."""
        msgs = [arg for kind, arg in self._queue if kind == "msg"]
        self._queue = collections.deque((k, a) for k, a in self._queue if k != "msg")
        return msgs

    def stabilize(self) -> None:
        """Tell every host that each of its rings' deliveries so far is held by all."""
        for node, host in sorted(self.hosts.items()):
            ring = self._ring.get(node)
            if ring is not None and self._last_seq.get(ring):
                host.on_stable(Stable(ring, self._last_seq[ring]))

    def _mcast(self, sender: int, payload: bytes) -> None:
        if sender not in self._component:
            raise SendQueueFull  # not in a ring: the host turns this into TryAgain
        self._queue.append(("msg", (sender, payload)))
        self._arm()

    def _arm(self) -> None:
        if not self._flush_armed:
            self._flush_armed = True
            self.scheduler.call_later(0.0, self.flush)

    def pause(self) -> None:
        """Stop carrying out events (they queue) until ``resume`` or ``step``."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._arm()

    def flush(self) -> None:
        """Carry out every queued event (and those they cause), bounded."""
        self._flush_armed = False
        steps = 0
        while not self.paused and self._queue:
            steps += 1
            if steps > self._max:
                raise RuntimeError("FakeBus: too many events in one flush (livelock?)")
            self.step()

    def step(self) -> bool:
        """Carry out the next queued event only; False when none is queued."""
        if not self._queue:
            return False
        kind, arg = self._queue.popleft()
        if kind == "msg":
            sender, payload = arg
            comp = self._component.get(sender)
            if comp is not None:
                ring = self._ring[sender]
                seq = self._last_seq[ring] = self._last_seq.get(ring, 0) + 1
                for node in sorted(comp):
                    host = self.hosts.get(node)
                    if host is not None:
                        self.delivered += 1
                        host.on_deliver(Deliver(sender, payload, ring, seq))
                if not self.hold_stable:
                    for node in sorted(comp):
                        host = self.hosts.get(node)
                        if host is not None:
                            host.on_stable(Stable(ring, seq))
        elif kind == "inject":
            for host in list(self.hosts.values()):
                if isinstance(arg, ConfChange):
                    host.on_confchg(arg)
                else:
                    host.on_deliver(arg)
        else:
            self._apply_conf(arg)
        return True

    def _apply_conf(self, arg: tuple[list[frozenset[int]],
                                      dict[int, list[tuple[int, bytes]]]]) -> None:
        components, tails = arg
        new_of: dict[int, frozenset[int]] = {}
        for comp in components:
            for node in comp:
                new_of[node] = comp
        new_rings: dict[frozenset[int], RingId] = {}
        for comp in components:
            if any(self._component.get(n) != comp for n in comp):
                self._ring_seq += 4
                new_rings[comp] = RingId(self._ring_seq, min(comp))
        for node in sorted(set(self._component) - set(new_of)):
            # Down: it simply stops hearing anything.
            del self._component[node]
            self._ring.pop(node, None)
        for comp, ring_id in new_rings.items():
            for node in sorted(comp):
                host = self.hosts.get(node)
                old = self._component.get(node)
                old_ring = self._ring.get(node)
                self._component[node] = comp
                self._ring[node] = ring_id
                if host is None:
                    continue
                if old is not None and old_ring is not None:
                    host.on_confchg(ConfChange(True, old_ring, tuple(sorted(old & comp))))
                    for sender, payload in tails.get(node, ()):
                        host.on_deliver(Deliver(sender, payload, old_ring))
                prev = old or frozenset()
                host.on_confchg(ConfChange(False, ring_id, tuple(sorted(comp)),
                                           left=tuple(sorted(prev - comp)),
                                           joined=tuple(sorted(comp - prev))))


class FakePort:
    """One host's view of a ``FakeBus``: ``mcast(payload)``."""

    def __init__(self, bus: FakeBus, node_id: int) -> None:
        self.bus = bus
        self.node_id = node_id

    def mcast(self, payload: bytes) -> None:
        self.bus._mcast(self.node_id, payload)


class LoopbackRing:
    """A ring of one: mcasts come back in order on the next scheduler tick.

    ``start()`` delivers the first regular configuration (this node alone);
    ``inject_confchg`` lets a test deliver any ConfChange at the current point
    in the order.
    """

    def __init__(self, host: ServiceHost, scheduler: Scheduler) -> None:
        self.host = host
        self.bus = FakeBus(scheduler)
        self.bus.port(host)

    def start(self) -> None:
        self.bus.reconfigure([self.host.node_id])

    def mcast(self, payload: bytes) -> None:
        self.bus._mcast(self.host.node_id, payload)

    def inject_confchg(self, conf: ConfChange) -> None:
        """Deliver ``conf`` as is, after everything queued before it.

        A regular configuration naming other members starts a sync round that
        waits for their barriers; inject those with ``inject_deliver``.
        """
        self.bus._queue.append(("inject", conf))
        self.bus._arm()

    def inject_deliver(self, d: Deliver) -> None:
        """Deliver a message as if ``d.sender`` had sent it."""
        self.bus._queue.append(("inject", d))
        self.bus._arm()


__all__ = [
    "create_host", "FakeBus", "FakePort", "GeventScheduler", "HOST_SERVICE_ID", "LoopbackRing",
    "ManualScheduler", "RING_HEADER", "RingMessage", "RingMessageError", "RingPort",
    "Scheduler", "ServiceHost", "decode_ring_message_untrusted", "encode_ring_message",
]
