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
every service's ``sync_start`` runs, then ``sync_process`` until it returns
True, then the host multicasts a barrier.  When barriers from every member
of the configuration have been delivered, ``sync_done`` runs on every
service, the ordinary messages delivered during the round are handed over
in their order, and the library requests held meanwhile run.  Chosen
policy for client requests during a round: handlers declared
``hold_during_sync=True`` *wait* (the client sees a slower reply, never a
TryAgain it would have to loop on); all others run at once on local state.
Before the first configuration the host counts as syncing too.

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
    DEFERRED, NO_TAG, ExecMessage, LibConn, ReplyTag, Request, Service, SyncInfo,
    TimerHandle,
)
from ais.totem.events import ConfChange, Deliver, RingId, SendQueueFull, fmt_node
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
    to_process: list[Service]
    barriers: set[int] = field(default_factory=set)
    barrier_sent: bool = False
    pump_armed: bool = False


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
        self._previous_members: tuple[int, ...] = ()
        self._sync: _SyncRound | None = None
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
        self._inbox: collections.deque[Deliver | ConfChange] = collections.deque()
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

    def reply(self, tag: ReplyTag, body: bytes = b"") -> None:
        """Answer the request ``tag`` with SA_OK, if it was asked here and is still waiting."""
        self._answer(tag, SA_OK, body)

    def reply_error(self, tag: ReplyTag, error: SaError | int) -> None:
        """Answer the request ``tag`` with an error (an SaError or its code)."""
        code = error.code if isinstance(error, SaError) else int(error)
        self._answer(tag, code, b"")

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

    def _deliver(self, d: Deliver) -> None:
        try:
            m = decode_ring_message_untrusted(d.payload)
        except RingMessageError as exc:
            self._bad_log.log(self.log, logging.ERROR, "dropping ring message from %s: %s",
                              fmt_node(d.sender), exc)
            return
        if m.service == HOST_SERVICE_ID:
            if m.msg_id == HOST_MSG_SYNC_BARRIER:
                self._barrier(d.sender, m.sync_seq)
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
                          sync=bool(m.flags & FLAG_SYNC))
        if msg.sync:
            if self._sync is None or m.sync_seq != self._sync.ring_id.seq:
                return  # a message of an abandoned round
            self._run_exec(svc, msg)
        elif self.syncing:
            self._held_deliveries.append((svc, msg))
        else:
            self._run_exec(svc, msg)

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
        if not conf.transitional:
            self.ring_id = conf.ring_id
            self.members = tuple(sorted(conf.members))
        for svc in self.services.values():
            svc.on_confchg(conf)
        if conf.transitional:
            return
        if self._sync is not None:
            for svc in self.services.values():
                svc.sync_abort()
            self._resend_held()
        self._sync = _SyncRound(conf.ring_id, tuple(sorted(conf.members)),
                                list(self.services.values()))
        info = SyncInfo(conf.ring_id, tuple(sorted(conf.members)), tuple(sorted(conf.joined)),
                        tuple(sorted(conf.left)), self._previous_members)
        for svc in self.services.values():
            svc.sync_start(info)
        self._pump_sync(self._sync)

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

    def _barrier(self, sender: int, seq: int) -> None:
        rnd = self._sync
        if rnd is None or seq != rnd.ring_id.seq:
            return
        rnd.barriers.add(sender)
        if rnd.barriers.issuperset(rnd.members):
            self._finish_sync(rnd)

    def _finish_sync(self, rnd: _SyncRound) -> None:
        self._sync = None
        self._configured = True
        self._previous_members = rnd.members
        self.log.debug("sync round %s complete", rnd.ring_id)
        for svc in self.services.values():
            svc.sync_done()
        held, self._held_deliveries = self._held_deliveries, []
        for i, (svc, msg) in enumerate(held):
            if self.syncing:
                # A handler started nothing new, but stay safe: re-hold the rest in order.
                self._held_deliveries = held[i:] + self._held_deliveries
                break
            self._run_exec(svc, msg)
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

    def reconfigure(self, *components: Iterable[int]) -> None:
        """Queue a membership change: the given node sets become the rings."""
        self._queue.append(("conf", [frozenset(c) for c in components]))
        self._arm()

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
                for node in sorted(comp):
                    host = self.hosts.get(node)
                    if host is not None:
                        self.delivered += 1
                        host.on_deliver(Deliver(sender, payload, ring))
        elif kind == "inject":
            for host in list(self.hosts.values()):
                if isinstance(arg, ConfChange):
                    host.on_confchg(arg)
                else:
                    host.on_deliver(arg)
        else:
            self._apply_conf(arg)
        return True

    def _apply_conf(self, components: list[frozenset[int]]) -> None:
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
