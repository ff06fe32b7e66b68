"""The service plug-in interface: what every executive service implements.

Theory of operation
-------------------
A service (CLM, CKPT, AMF, EVS) is a replicated state machine hosted by
``ais.executive.ServiceHost``.  It has two kinds of input:

* **Library requests** from the clients of *this* node, one handler per
  request id (``@lib_handler(REQ_X)``).  A library handler must not change
  replicated state.  It either answers at once from local state (returns the
  response body, or raises an ``saf.errors.SaError``), or multicasts a ring
  message carrying the request's ``ReplyTag`` and returns ``DEFERRED``.
* **Ring messages** in agreed order, on every node, one handler per message
  id (``@exec_handler(MSG_X)``).  All replicated state changes happen here.
  When the handler has finished, it calls ``self.host.reply(msg.tag, ...)``;
  the host sends that response only on the node whose client asked
  (``tag.node == host.node_id``) and only if that client is still connected,
  so every node may call it unconditionally.

Plus hooks: ``exec_init`` (once, before anything else), ``on_lib_connect`` /
``on_lib_exit`` (a client connection opens / closes; a close is the same as
finalize), ``on_confchg`` (every transitional and regular configuration, in
agreed order) and the sync step below.

The service kit
---------------
What every service needs besides its own logic is on ``self.host``
(``HostAPI``) and in this module; a service is written with it, never with
its own queues, timers or connection registries:

* ``host.mcast(self, MSG_X, payload, tag=req.tag)`` -- a message a client
  waits for; raises ``TryAgain`` when the ring is full (the client sees it),
  and while the service's ``mcast_retried`` messages wait, which go first.
* ``host.mcast_retried(self, MSG_X, payload)`` -- a message the service sends
  on its own (a client left, a deadline passed): queued per service, sent in
  order, retried while the ring is full; never raises.  Whatever the
  service sends, either way, leaves in the order it was sent.
* ``host.reply(msg.tag, body)`` / ``host.reply_error(msg.tag, NotExist())``
  -- every node calls it; the answer goes only to the asking node's client,
  if it still waits.  It returns True exactly then: a service uses False to
  undo what nobody waits for.  ``safe=True`` (and ``host.when_safe(fn)`` for
  callbacks) waits until every member holds the message (safe delivery):
  use it for every answer whose promise is about the other replicas.  A
  plain reply goes out at agreed delivery, when a node that crashes at once
  may take the message along.
* ``return host.defer(req.tag, timeout)`` -- from a library handler: the
  answer comes later, and if none came within ``timeout`` seconds the host
  answers TIMEOUT itself (then ``reply`` returns False).
* ``forward(REQ_X, MSG_X)`` -- a class attribute declaring a library handler
  that only multicasts the request (``body=`` checks it and builds the
  payload; ``timeout=`` defers with a time limit).
* ``host.conn_of(tag)`` / ``host.conns(self)`` -- the local client behind a
  tag (None: another node's, or gone), this node's clients of the service.
* ``LowestMemberTimers(self, MSG_EXPIRE)`` -- "the lowest member decides
  timed events": every node ``set``s the same deadlines in exec handlers;
  when one passes, only the lowest member of ``host.members`` (the last
  completed sync round) sends ``MSG_EXPIRE``, and after every sync round the
  new lowest sends those already past.  The handler decides in agreed order,
  idempotently, and ``cancel``s the key.
* ``host.call_later``, ``host.now`` (local timers and clock), ``host.node_id``,
  ``host.syncing``, ``host.is_lowest``, ``host.logger("SVC")``, ``host.model``
  (the AMF model from groups.conf).

Callbacks to a client: ``conn.send_callback(CB_X, body)``.  Sends never block
the caller (the connection queues them), so a handler never yields.

A worked example, a lease service (its sync step, below, left out; the
suite runs this very code, ``test/test_kit.py``)::

    @register_service
    class LeaseService(Service):
        # TAKE gives a name to the asking client for some seconds
        name, service_id = "lease", 42

        def exec_init(self, host: HostAPI) -> None:
            super().exec_init(host)
            self.owner: dict[bytes, ReplyTag] = {}  # replicated: exec handlers only
            self.expiry = LowestMemberTimers(self, MSG_EXPIRE)

        lib_give_back = forward(REQ_GIVE_BACK, MSG_DROP)  # exec_drop answers it

        @lib_handler(REQ_TAKE, hold_during_sync=True)
        def lib_take(self, conn: LibConn, req: Request) -> Deferred:
            decode_take_untrusted(req.body)  # IpcProtocolError: the client is dropped
            self.host.mcast(self, MSG_TAKE, req.body, tag=req.tag)
            return self.host.defer(req.tag, 2.0)  # TIMEOUT after 2 s without an answer

        @exec_handler(MSG_TAKE)
        def exec_take(self, msg: ExecMessage) -> None:
            name, seconds = decode_take_untrusted(msg.payload)
            if name in self.owner:
                self.host.reply_error(msg.tag, Exist())
                return
            self.owner[name] = msg.tag
            self.expiry.set(name, self.host.now() + seconds, name)
            if not self.host.reply(msg.tag, safe=True) and msg.tag.node == self.host.node_id:
                # our client timed out or left: give the lease back, in agreed order
                self.host.mcast_retried(self, MSG_DROP, name)

        @exec_handler(MSG_EXPIRE)
        def exec_expire(self, msg: ExecMessage) -> None:
            tag = self._drop(msg.payload)  # idempotent: sent twice is harmless
            conn = self.host.conn_of(tag) if tag is not None else None
            if conn is not None:
                conn.send_callback(CB_LOST, msg.payload)

        @exec_handler(MSG_DROP)
        def exec_drop(self, msg: ExecMessage) -> None:
            if self._drop(msg.payload) is None:
                self.host.reply_error(msg.tag, NotExist())
            else:
                self.host.reply(msg.tag)

        def _drop(self, name: bytes) -> ReplyTag | None:
            self.expiry.cancel(name)
            return self.owner.pop(name, None)

        def on_lib_exit(self, conn: LibConn) -> None:
            for name, tag in self.owner.items():
                if tag.node == self.host.node_id and tag.conn_id == conn.conn_id:
                    self.host.mcast_retried(self, MSG_DROP, name)

Sync (bringing joining nodes up to date)
----------------------------------------
After every *regular* configuration change the host runs a sync round, the
same on every member, in agreed order:

0. Every member announces which state it holds (its ``StateId``: the ring of
   the last round it completed and the ring installed after it; nothing for
   a node that never completed a round).  Once all announcements are
   delivered, the host groups the members: ``info.groups`` (members with
   equal ids hold equal state; ``group.sender`` is the lowest) and
   ``info.fresh`` (members holding nothing).  ``info.transfer`` is True when
   members hold different states; ``info.senders`` then names one member per
   group.  The grouping comes from the round's own messages, never from who
   was a member of an earlier configuration, so a node restarted empty is
   never taken for a holder of its old state.
1. ``sync_start(info)`` on every service (``info.members``, ``info.joined``,
   ``info.left``, ``info.ring_id``, ``info.groups``, ``info.fresh``).
2. The host calls ``sync_process()`` repeatedly until it returns True.  In
   each call the service sends a *bounded* part of its state with
   ``host.mcast_sync(self, MSG_Y, payload)``; a ``TryAgain`` raised by the
   ring ends that call and the host calls again later, so a service must
   advance its cursor only after a send succeeded.  This is how a service
   with big state (checkpoints) streams it in chunks.  Typically each of
   ``info.senders`` streams its group's state and every member merges the
   streams (a replicated state), or every node sends its own part (per-node
   data, as CLM's node records); the service decides from ``info``.
3. Sync messages are delivered to the same ``@exec_handler`` table, with
   ``msg.sync`` True, on every member.  Those of an older, abandoned round
   are dropped by the host.
4. When every member has finished sending (the host multicasts a barrier per
   node after its services' sync_process returned True), ``sync_done()`` runs
   on every service at the same point in the agreed order.  A service must
   change its replicated state only here (and in ordinary exec handlers), so
   that an abandoned round changes nothing.

While a round runs, ordinary (non-sync) ring messages delivered to a service
are held by the host and handed to it, in order, right after ``sync_done``;
library requests whose handler was declared ``hold_during_sync=True`` wait
in the host and run after ``sync_done`` (the client just sees a slower
reply).  Handlers that only read local state (``hold_during_sync=False``,
the default) run at once.  A new configuration during a round abandons it
and starts another; ``sync_start`` is then called again without a
``sync_done`` in between, so services must treat it as a restart.  The
ordinary messages the abandoned round held are re-sent by their senders
(or, for a service with ``apply_held_on_abort``, applied then and there).
A member of that ring may have completed the round and applied them where
their sender could not; a re-send that meets such a member's state again is
a *replay* (``ExecMessage.applied_by``), see ``exec_handler``.

Services reach the world only through ``self.host`` (``HostAPI``, the kit
above).  They import neither gevent, socket nor time, so the same code runs
under the simulator (``ais.servicesim``) and with the test doubles of
``ais.testing`` (a manual clock, an in-process ring).
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar
from collections.abc import Callable

from ais.totem.events import ConfChange, RingId
from saf.errors import SA_OK, SaError, Timeout

logger = logging.getLogger(__name__)

#: the executive's "notice" level (between INFO and WARNING), used for
#: configuration-change reports; ais.log gives it its name
NOTICE = 25


class Deferred(enum.Enum):
    """Returned by a library handler that will answer later via ``host.reply``."""

    DEFERRED = "deferred"


#: a library handler's "the answer comes later" value
DEFERRED = Deferred.DEFERRED


@dataclass(frozen=True, slots=True)
class ReplyTag:
    """Who to answer: carried in a ring message so the asking node can reply.

    ``conn_id`` 0 means "no client" (a message the service sent on its own).
    """

    node: int  #: Totem node id of the node whose client asked
    conn_id: int  #: that node's connection id (unique per executive run)
    seq: int  #: the request's sequence number on that connection

    @property
    def is_client(self) -> bool:
        return self.conn_id != 0


#: tag for ring messages not caused by a client request
NO_TAG = ReplyTag(0, 0, 0)


@dataclass(frozen=True, slots=True)
class Request:
    """One library request, as a library handler receives it."""

    msg_id: int
    body: bytes
    tag: ReplyTag


@dataclass(frozen=True, slots=True)
class ExecMessage:
    """One ring message for this service, delivered in agreed order."""

    sender: int  #: Totem node id that multicast it
    msg_id: int
    payload: bytes
    tag: ReplyTag
    ring_id: RingId
    sync: bool = False  #: sent with ``mcast_sync`` during a sync round
    #: ``Deliver.seq`` of the frame that carried it (0: not known; see ``HostAPI.when_safe``)
    seq: int = 0
    #: for a replay (see ``exec_handler``): the members of this round whose state
    #: already held the message's change when they announced it
    applied_by: frozenset[int] = frozenset()

    @property
    def replay(self) -> bool:
        """A re-send of a message some member's state already holds: a member of the
        ring that first delivered it completed that ring's sync round (applying it)
        where its sender could not, and met the sender again later."""
        return bool(self.applied_by)


def applied_elsewhere() -> Timeout:
    """The answer to a replay whose change the state holds: SA_ERR_TIMEOUT, "it may or
    may not have been done" (the outcome reached only the members that applied it)."""
    return Timeout("applied in another partition before this node could see the outcome")


@dataclass(frozen=True, slots=True, order=True)
class StateId:
    """Which replicated state a node holds, as it announces it in a sync round.

    ``synced`` is the ring of the last sync round this node completed and
    ``next`` the first regular configuration it installed after that round
    (the one that ended ``synced``'s message flow; ``RingId(0, 0)`` while
    none).  Two nodes with equal ids hold equal state: both had the state
    that round installed, then applied the messages of ``synced`` that they
    delivered before leaving it for ``next`` -- the same ones, since they went
    through the same transitional configuration (extended virtual synchrony).
    Messages delivered in a round that does not complete are never applied
    there (see ``ais.executive``), so the id stays valid until the next
    completed round.  A node that never completed a round holds nothing and
    announces no id (it is "fresh").
    """

    synced: RingId
    next: RingId


@dataclass(frozen=True, slots=True)
class StateGroup:
    """Members of a sync round that announced the same ``StateId``."""

    state: StateId
    members: tuple[int, ...]  #: ascending

    @property
    def sender(self) -> int:
        """The member that streams this group's state when a transfer is needed."""
        return self.members[0]


@dataclass(frozen=True, slots=True)
class SyncInfo:
    """What a sync round is about: the same value on every member of the round.

    ``groups`` and ``fresh`` come from the members' own announcements in this
    round (never from who was a member of what), so a restarted node that
    kept its address is fresh, not a holder of its old state.
    """

    ring_id: RingId
    members: tuple[int, ...]  #: the new configuration, ascending node ids
    joined: tuple[int, ...]
    left: tuple[int, ...]
    #: members holding state, by the state they hold; ordered by sender
    groups: tuple[StateGroup, ...] = ()
    #: members that never completed a sync round: they hold no state
    fresh: tuple[int, ...] = ()

    @property
    def transfer(self) -> bool:
        """Whether members hold different states (someone must stream)."""
        return len(self.groups) > 1 or bool(self.groups and self.fresh)

    @property
    def senders(self) -> tuple[int, ...]:
        """One member per state group when a transfer is needed, else none."""
        return tuple(g.sender for g in self.groups) if self.transfer else ()

    def group_of(self, node: int) -> StateGroup | None:
        return next((g for g in self.groups if node in g.members), None)


class LibConn(Protocol):
    """A client connection as services see it (one per library handle)."""

    conn_id: int
    service_id: int
    #: per-connection state a service may keep (e.g. CLM's track flags)
    private: dict[str, Any]
    uid: int
    gid: int
    pid: int

    @property
    def closed(self) -> bool: ...

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        """Queue one callback message; never blocks; ignored once closed."""

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        """Queue the response to request ``seq`` (the host uses this, services use reply)."""

    def close(self, reason: str = "") -> None:
        """Drop the connection (the host then calls ``on_lib_exit``)."""


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class ProcessHandle(Protocol):
    """A process the host started for a service (``HostAPI.spawn``)."""

    pid: int

    def kill(self, sig: int) -> None:
        """Send it ``sig`` (nothing once it has exited)."""


class HostAPI(Protocol):
    """What the host offers a service (``ais.executive.ServiceHost``)."""

    node_id: int

    @property
    def syncing(self) -> bool: ...

    def mcast(self, service: Service, msg_id: int, payload: bytes,
              tag: ReplyTag = NO_TAG) -> None: ...

    def mcast_sync(self, service: Service, msg_id: int, payload: bytes) -> None: ...

    def reply(self, tag: ReplyTag, body: bytes = b"", *, safe: bool = False) -> bool:
        """Answer ``tag``; True when a client of this node was still waiting for it."""
        ...

    def reply_error(self, tag: ReplyTag, error: SaError | int, *,
                    safe: bool = False) -> bool: ...

    def when_safe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every member holds the message being handled (at once if so)."""
        ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle: ...

    def now(self) -> float: ...

    def spawn(self, argv: list[str], env: dict[str, str],
              on_exit: Callable[[int], None]) -> ProcessHandle | None:
        """Start a process (services do no I/O themselves): ``argv`` with the host's
        environment plus ``env`` and ``AIS_SOCKET``; ``on_exit(returncode)`` runs as a
        service entry point when it ends.  None: this host cannot start processes
        (tests, simulator) or the start failed (logged).  The host kills what it
        started when it exits."""
        ...

    def logger(self, subsystem: str) -> logging.LoggerAdapter:
        """A logger for ``subsystem`` ("CLM") whose lines name this node."""
        ...

    # --- the service kit ------------------------------------------------------------

    def mcast_retried(self, service: Service, msg_id: int, payload: bytes) -> None:
        """Multicast a message the service sends on its own (no client waits for it).

        Queued per service and sent in order; retried while the ring is full.
        Never raises ``TryAgain``.
        """
        ...

    def conn_of(self, tag: ReplyTag) -> LibConn | None:
        """The open connection of this node's client behind ``tag`` (None: not here, gone)."""
        ...

    def conns(self, service: Service) -> list[LibConn]:
        """This node's open client connections to ``service``."""
        ...

    def defer(self, tag: ReplyTag, timeout: float | None, *,
              on_timeout: Callable[[], object] | None = None) -> Deferred:
        """Answer ``tag`` later; if nobody did within ``timeout`` s, the host answers Timeout.

        ``on_timeout`` runs after such a Timeout answer (to forget the request).
        """
        ...

    @property
    def members(self) -> tuple[int, ...]:
        """The members of the last completed sync round (ascending)."""
        ...

    @property
    def is_lowest(self) -> bool:
        """Whether this node is the lowest of ``members`` (it decides timed events)."""
        ...

    def after_sync(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after every completed sync round, once every ``sync_done`` ran."""
        ...

    @property
    def model(self) -> Any:
        """The AMF model (``ais.config.AmfModel``; empty without groups.conf)."""
        ...


@dataclass(frozen=True, slots=True)
class LibHandlerSpec:
    fn: Callable[..., bytes | Deferred]
    hold_during_sync: bool


@dataclass(frozen=True, slots=True)
class ExecHandlerSpec:
    fn: Callable[..., None]
    replay: bool = False


F = TypeVar("F", bound=Callable[..., Any])


def lib_handler(msg_id: int, *, hold_during_sync: bool = False) -> Callable[[F], F]:
    """Declare a method ``(self, conn, req: Request) -> bytes | DEFERRED`` as request handler.

    Args:
        msg_id: the request id from the service's library protocol.
        hold_during_sync: the request needs the ring or fully synced state;
            the host keeps it until the sync round ends.
    """
    def mark(fn: F) -> F:
        fn.__ais_lib__ = LibHandlerSpec(fn, hold_during_sync)  # type: ignore[attr-defined]
        fn.__ais_lib_id__ = msg_id  # type: ignore[attr-defined]
        return fn
    return mark


def exec_handler(msg_id: int, *, replay: bool = False) -> Callable[[F], F]:
    """Declare a method ``(self, msg: ExecMessage) -> None`` as ring message handler.

    Args:
        replay: whether the handler also gets replays (``ExecMessage.replay``):
            a message re-sent after an abandoned sync round that some members'
            states already hold (``msg.applied_by``), because they completed
            that round and applied it, then met the sender again in a later
            configuration.  By default the host does not run the handler for
            a replay and answers the sender's client, if it still waits, with
            SA_ERR_TIMEOUT (the outcome is not known here; the SAF meaning of
            TIMEOUT is "it may or may not have been done").  Declare True for
            a handler that is right to run again (reads, per-node data every
            sync round rebuilds) or that decides from ``msg.applied_by``
            whether the state it changes came from a member that applied it
            (a merge may have kept another member's version).
    """
    def mark(fn: F) -> F:
        fn.__ais_exec_id__ = msg_id  # type: ignore[attr-defined]
        fn.__ais_exec_replay__ = replay  # type: ignore[attr-defined]
        return fn
    return mark


def forward(req_id: int, msg_id: int, *, hold_during_sync: bool = True,
            timeout: float | None = None,
            body: Callable[[Any, LibConn, Request], bytes] | None = None
            ) -> Callable[..., Deferred]:
    """A library handler that only multicasts the request: declare it as a class attribute.

    ``lib_unlink = forward(REQ_UNLINK, MSG_UNLINK)``: the handler multicasts
    ``MSG_UNLINK`` with the request's tag and the answer comes from the exec
    handler.

    Args:
        hold_during_sync: as for ``lib_handler`` (True: the request waits for
            the end of a sync round).
        timeout: seconds after which the host answers Timeout (``host.defer``).
        body: ``(service, conn, req) -> payload``; checks the request (raising
            ``SaError`` or ``IpcProtocolError``) and builds the payload.  By
            default the payload is ``req.body`` as is.
    """
    def handler(self: Service, conn: LibConn, req: Request) -> Deferred:
        payload = req.body if body is None else body(self, conn, req)
        self.host.mcast(self, msg_id, payload, tag=req.tag)
        return self.host.defer(req.tag, timeout) if timeout is not None else DEFERRED

    # a distinct name per declaration, so two forwards of one id are caught
    handler.__name__ = handler.__qualname__ = f"forward_{req_id}_to_{msg_id}"
    return lib_handler(req_id, hold_during_sync=hold_during_sync)(handler)


class LowestMemberTimers:
    """Deadlines every node keeps and only the lowest member acts on.

    Every node calls ``set`` / ``cancel`` at the same points (exec handlers,
    ``sync_done``), so every node knows every deadline.  When one passes,
    the lowest member of the last completed sync round multicasts
    ``msg_id`` with the deadline's payload (``host.mcast_retried``); after
    every completed sync round, the (possibly new) lowest member sends every
    deadline already past, so a decision is not lost with a node that left.
    The exec handler of ``msg_id`` makes the decision in agreed order; it
    must be idempotent (two nodes may both send around a configuration
    change) and ``cancel`` (or ``set`` again) the key.  No message is sent
    during a sync round: the round's end sends what passed meanwhile.

    Deadlines are ``host.now()`` values; keys are any hashable value.
    """

    def __init__(self, service: Service, msg_id: int) -> None:
        self.service = service
        self.msg_id = msg_id
        self.host = service.host
        #: key -> [deadline, payload, timer (None once it fired)]
        self._due: dict[Any, list[Any]] = {}
        self.host.after_sync(self._send_past)

    def set(self, key: Any, deadline: float, payload: bytes) -> None:
        """(Re)arm ``key``: at ``deadline`` the lowest member sends ``payload``.

        Setting the deadline ``key`` already has only replaces the payload (a
        deadline that passed is sent again after the next sync round, not now).
        """
        current = self._due.get(key)
        if current is not None and current[0] == deadline:
            current[1] = payload
            return
        self.cancel(key)
        delay = max(0.0, deadline - self.host.now())
        entry: list[Any] = [deadline, payload, None]
        self._due[key] = entry
        entry[2] = self.host.call_later(delay, lambda: self._fire(key, entry))

    def cancel(self, key: Any) -> None:
        """Forget ``key`` (nothing happens if it is not set)."""
        entry = self._due.pop(key, None)
        if entry is not None and entry[2] is not None:
            entry[2].cancel()

    def deadline(self, key: Any) -> float | None:
        """The deadline of ``key``, or None when it is not set."""
        entry = self._due.get(key)
        return None if entry is None else entry[0]

    def __contains__(self, key: Any) -> bool:
        return key in self._due

    def __len__(self) -> int:
        return len(self._due)

    def _fire(self, key: Any, entry: list[Any]) -> None:
        if self._due.get(key) is not entry:
            return  # cancelled or set again
        entry[2] = None
        if self.host.is_lowest and not self.host.syncing:
            self.host.mcast_retried(self.service, self.msg_id, entry[1])

    def _send_past(self) -> None:
        if not self.host.is_lowest:
            return
        now = self.host.now()
        for deadline, payload, _ in list(self._due.values()):
            if deadline <= now:
                self.host.mcast_retried(self.service, self.msg_id, payload)


class Service:
    """Base class of every executive service.  Subclasses set ``name`` and ``service_id``.

    The handler tables ``lib_handlers`` and ``exec_handlers`` are built from
    the decorated methods when the subclass is defined, so a duplicate id is
    an error at import time, not at run time.
    """

    #: short name used in the client handshake registry and logs ("clm")
    name: ClassVar[str] = ""
    #: the id clients name in their handshake and the ring header carries
    service_id: ClassVar[int] = -1
    #: request id -> handler spec
    lib_handlers: ClassVar[dict[int, LibHandlerSpec]] = {}
    #: ring message id -> handler spec
    exec_handlers: ClassVar[dict[int, ExecHandlerSpec]] = {}
    #: what becomes of this service's ordinary messages held by a sync round
    #: that a new configuration abandons.  False (replicated state): never
    #: applied; each sender sends its own again in the new configuration.
    #: True: applied where they were delivered, in their order, right then --
    #: Totem's own delivery, with no re-send.  Only for a service whose every
    #: sync round rebuilds its whole replicated state from per-node data (so it
    #: never relies on ``SyncInfo.groups``) and whose messages otherwise only
    #: reach local clients: EVS.  A re-send could otherwise reach a node that
    #: already applied the message, because the members of one ring may leave
    #: it through different transitional configurations, one having completed
    #: the round and the other not.
    apply_held_on_abort: ClassVar[bool] = False

    host: HostAPI

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        lib: dict[int, LibHandlerSpec] = {}
        ex: dict[int, ExecHandlerSpec] = {}
        for base in reversed(cls.__mro__[1:]):
            lib.update(getattr(base, "lib_handlers", {}))
            ex.update(getattr(base, "exec_handlers", {}))
        for attr in vars(cls).values():
            if hasattr(attr, "__ais_lib_id__"):
                mid = attr.__ais_lib_id__
                if mid in lib and lib[mid].fn.__name__ != attr.__name__:
                    raise TypeError(f"{cls.__name__}: two library handlers for id {mid}")
                lib[mid] = attr.__ais_lib__
            if hasattr(attr, "__ais_exec_id__"):
                mid = attr.__ais_exec_id__
                if mid in ex and ex[mid].fn.__name__ != attr.__name__:
                    raise TypeError(f"{cls.__name__}: two exec handlers for id {mid}")
                ex[mid] = ExecHandlerSpec(attr, attr.__ais_exec_replay__)
        cls.lib_handlers = lib
        cls.exec_handlers = ex

    # --- hooks; the defaults do nothing -------------------------------------

    def exec_init(self, host: HostAPI) -> None:
        """Called once by the host before any other hook.  Keep ``host``."""
        self.host = host

    def on_lib_connect(self, conn: LibConn) -> None:
        """A client connected to this service (handshake accepted)."""

    def on_lib_exit(self, conn: LibConn) -> None:
        """A client finalized or its connection closed: forget what it owned."""

    def on_confchg(self, conf: ConfChange) -> None:
        """A transitional or regular configuration, in agreed order."""

    def sync_start(self, info: SyncInfo) -> None:
        """A sync round begins (or restarts) for configuration ``info.ring_id``."""

    def sync_process(self) -> bool:
        """Send the next bounded part of this node's sync data; True when all is sent."""
        return True

    def sync_done(self) -> None:
        """Every member finished sending: the new configuration is in effect."""

    def sync_abort(self) -> None:
        """The round was abandoned by a new configuration (``sync_start`` follows)."""

    def status(self) -> dict[str, Any]:
        """This service's section of ``ais-status`` and the metrics (JSON values; {}: none)."""
        return {}


_REGISTRY: dict[str, type[Service]] = {}


def register_service(cls: type[Service]) -> type[Service]:
    """Class decorator: make ``cls`` available to ``create_service(cls.name)``."""
    if not cls.name or cls.service_id < 0:
        raise TypeError(f"{cls.__name__} needs name and service_id")
    for other in _REGISTRY.values():
        if other is not cls and (other.name == cls.name or other.service_id == cls.service_id):
            raise TypeError(f"{cls.__name__}: name/service_id clash with {other.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def create_service(name: str, **options: Any) -> Service:
    """Instantiate the registered service ``name`` with its keyword options.

    Raises:
        KeyError: no service of that name is registered.
    """
    return _REGISTRY[name](**options)


def registered_services() -> dict[str, type[Service]]:
    """Name -> class of every registered service (a copy)."""
    return dict(_REGISTRY)


__all__ = [
    "DEFERRED", "Deferred", "NOTICE", "ExecHandlerSpec", "ExecMessage", "HostAPI", "LibConn",
    "LibHandlerSpec", "LowestMemberTimers", "NO_TAG", "ReplyTag", "Request", "Service",
    "StateGroup", "StateId", "SyncInfo", "TimerHandle",
    "create_service", "exec_handler", "forward", "lib_handler", "register_service",
    "registered_services",
]
