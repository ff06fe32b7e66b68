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

Sending a ring message::

    self.host.mcast(self, MSG_X, payload, tag=req.tag)   # raises TryAgain when the ring is full

Replying later, from the exec handler, on every node::

    self.host.reply(msg.tag, body)              # SA_OK with a body
    self.host.reply_error(msg.tag, NotExist())  # an error response
    self.host.reply(msg.tag, body, safe=True)   # once every member holds the message

A plain reply goes out at agreed delivery: this node has applied the
message, but a node that crashes right after delivering its own message may
take it along (nobody else has it yet).  ``safe=True`` (and
``host.when_safe(fn)`` for callbacks) waits until every member of the ring
holds the message (safe delivery); use it for every answer whose promise is
about the other replicas.

Callbacks to a client: ``conn.send_callback(CB_X, body)``.  Sends never block
the caller (the connection queues them), so a handler never yields.

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
``sync_done`` in between, so services must treat it as a restart.

Services reach the world only through ``self.host`` (``HostAPI``):
``mcast``, ``mcast_sync``, ``reply``, ``reply_error``, ``when_safe``, ``call_later``,
``now``, ``node_id``, ``syncing``, ``logger``.  They import neither gevent, socket nor
time, so the same code runs under the simulator.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, TypeVar

from ais.totem.events import ConfChange, RingId
from saf.errors import SA_OK, SaError

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


class HostAPI(Protocol):
    """What the host offers a service (``ais.executive.ServiceHost``)."""

    node_id: int

    @property
    def syncing(self) -> bool: ...

    def mcast(self, service: "Service", msg_id: int, payload: bytes,
              tag: ReplyTag = NO_TAG) -> None: ...

    def mcast_sync(self, service: "Service", msg_id: int, payload: bytes) -> None: ...

    def reply(self, tag: ReplyTag, body: bytes = b"", *, safe: bool = False) -> None: ...

    def reply_error(self, tag: ReplyTag, error: SaError | int, *,
                    safe: bool = False) -> None: ...

    def when_safe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every member holds the message being handled (at once if so)."""
        ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle: ...

    def now(self) -> float: ...

    def logger(self, subsystem: str) -> logging.LoggerAdapter:
        """A logger for ``subsystem`` ("CLM") whose lines name this node."""
        ...


@dataclass(frozen=True, slots=True)
class LibHandlerSpec:
    fn: Callable[..., bytes | Deferred]
    hold_during_sync: bool


@dataclass(frozen=True, slots=True)
class ExecHandlerSpec:
    fn: Callable[..., None]


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


def exec_handler(msg_id: int) -> Callable[[F], F]:
    """Declare a method ``(self, msg: ExecMessage) -> None`` as ring message handler."""
    def mark(fn: F) -> F:
        fn.__ais_exec_id__ = msg_id  # type: ignore[attr-defined]
        return fn
    return mark


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
                ex[mid] = ExecHandlerSpec(attr)
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
    "LibHandlerSpec", "NO_TAG", "ReplyTag", "Request", "Service", "StateGroup", "StateId",
    "SyncInfo", "TimerHandle",
    "create_service", "exec_handler", "lib_handler", "register_service",
    "registered_services",
]
