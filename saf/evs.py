"""EVS group messaging client library (spec/evs.md), in the shape of ``saf.clm``.

Mapping from the C API:

====================================  ====================================================
C                                     Python
====================================  ====================================================
evs_initialize(&h, &cb)               ``h = saf.evs.initialize(callbacks=cb)``
evs_fd_get(h, &fd)                    ``fd = h.fd_get()`` (= ``h.selection_object()``)
evs_dispatch(h, type)                 ``h.dispatch(EVS_DISPATCH_ALL)`` (zero-based values)
evs_join(h, groups, n)                ``h.join([b"key1", "key2"])``
evs_leave(h, groups, n)               ``h.leave([b"key1"])``
evs_mcast_joined(h, g, p, iov, n)     ``h.mcast_joined(EVS_TYPE_AGREED, EVS_PRIO_LOW, data)``
evs_mcast_groups(h, g, p, grp, n,     ``h.mcast_groups(EVS_TYPE_AGREED, EVS_PRIO_LOW,
  iov, n)                             [b"key2"], data)``
evs_finalize(h)                       ``h.finalize()`` (or leave a ``with h:`` block)
evs_callbacks_t                       ``saf.evs.Callbacks(deliver_callback=...,
                                      confchg_callback=...)``
evs_error_t != EVS_OK                 raised as ``saf.errors.<Name>`` (``.code`` = the value)
====================================  ====================================================

Callbacks:

* ``deliver_callback(source_addr, msg)``: ``source_addr`` is the sending node's
  IPv4 address as text, ``msg`` the bytes sent (the iovec joined).
* ``confchg_callback(group, member_list, left_list, joined_list)``: one call per
  group whose membership changed, with ``group`` the name (trailing zero bytes
  removed) and lists of ``EvsMember`` (address, pid, handle).  A handle that
  joins gets one listing itself as joined; when a node leaves the cluster,
  every process of it leaves its groups.  (The 2004 callback listed nodes
  and no group; membership here is the cluster's, announced on the ring.)

Semantics: every member of a group, on every node, delivers the group's
messages and its configuration changes in one agreed order; a sender that
joined a group of its message gets it too; a handle that joins sees what is
ordered after its join.  Groups are 32-byte keys (shorter names zero-padded).
Guarantees: UNORDERED, FIFO and AGREED give agreed order; SAFE delivers once
every node holds the message.  Priorities are accepted and ignored.

Flow control and pipelining: a multicast returns once the executive has it,
without waiting for the answer; up to 32 may be unanswered.  The executive
puts them on the ring in order as the ring makes room (each node may have a
bounded number in flight), so when the ring is full the pipeline fills and
``mcast_*`` raise ``TryAgain`` (retry, as testevs does).  ``flush()`` waits
until every multicast sent is on the ring; ``finalize`` drops those still
waiting for room.  ``initialize(..., pipeline=False)`` gives one round trip
per call instead (each call's own result).  A handle that stops dispatching
is disconnected by the executive once its queued callbacks pass the bound
(``limits { max_queued_callbacks, max_queued_bytes }``); its calls then raise
``Library``.  Before that, at half the bound, the executive refuses its
requests: a refused pipelined multicast is reported by the next call
(``TryAgain`` naming "an earlier multicast"), and that message was not sent.
"""
from __future__ import annotations

import collections
import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterable, Sequence

from saf import _evs_wire as ew
from saf import _wire as w
from saf._conn import DISPATCH_WAIT_ONE, REQUEST_GUARD, Connection
from saf.errors import (
    SA_OK, BadHandle, InvalidParam, IpcProtocolError, Library, SaError, Timeout, TooManyGroups,
    TryAgain,
)
from saf.types import SA_DISPATCH_ALL, SA_DISPATCH_BLOCKING

EVS_OK = 1

EVS_DISPATCH_ONE = 0
EVS_DISPATCH_ALL = 1
EVS_DISPATCH_BLOCKING = 2

EVS_PRIO_RECOVERY = 0
EVS_PRIO_HIGH = 1
EVS_PRIO_MED = 2
EVS_PRIO_LOW = 3

EVS_TYPE_UNORDERED = 0
EVS_TYPE_FIFO = 1
EVS_TYPE_AGREED = 2
EVS_TYPE_SAFE = 3

MAX_MESSAGE = ew.MAX_MESSAGE
MAX_GROUPS_PER_CALL = ew.MAX_GROUPS_PER_CALL

Group = bytes | str


@dataclass(frozen=True, slots=True, order=True)
class EvsMember:
    """One library handle in a group."""

    address: str  #: its node's IPv4 address
    pid: int
    handle: int  #: the handle's connection id on its node (tells two handles of a pid apart)


DeliverCallback = Callable[[str, bytes], None]
ConfchgCallback = Callable[[bytes, list[EvsMember], list[EvsMember], list[EvsMember]], None]


@dataclass(frozen=True)
class Callbacks:
    """evs_callbacks_t; None means "no such callback" (the message is dropped)."""

    deliver_callback: DeliverCallback | None = None
    confchg_callback: ConfchgCallback | None = None


def _address(node: int) -> str:
    return str(ipaddress.IPv4Address(node))


def _member(m: ew.Member) -> EvsMember:
    return EvsMember(_address(m.node), m.pid, m.conn)


def _keys(groups: Iterable[Group], what: str) -> list[bytes]:
    if isinstance(groups, (bytes, str)):
        raise InvalidParam(f"{what}: pass a list of groups, not one name")
    try:
        return [ew.group_key(g) for g in groups]
    except (ValueError, TypeError) as exc:
        raise InvalidParam(f"{what}: {exc}") from None


def _data(iovec: bytes | bytearray | memoryview | Sequence[bytes]) -> bytes:
    if isinstance(iovec, (bytes, bytearray, memoryview)):
        data = bytes(iovec)
    else:
        data = b"".join(bytes(part) for part in iovec)
    if len(data) > MAX_MESSAGE:
        raise InvalidParam(f"message of {len(data)} bytes (limit {MAX_MESSAGE})")
    return data


def _check(guarantee: int, priority: int) -> None:
    if guarantee not in (EVS_TYPE_UNORDERED, EVS_TYPE_FIFO, EVS_TYPE_AGREED, EVS_TYPE_SAFE):
        raise InvalidParam(f"guarantee {guarantee!r}")
    if priority not in (EVS_PRIO_RECOVERY, EVS_PRIO_HIGH, EVS_PRIO_MED, EVS_PRIO_LOW):
        raise InvalidParam(f"priority {priority!r}")


class EvsHandle(Connection):
    """An initialized EVS handle (evs_handle_t)."""

    service_id = ew.EVS_SERVICE_ID

    #: seconds a multicast waits for room in a full pipeline before TryAgain
    PIPELINE_WAIT = 0.002

    def __init__(self, callbacks: Callbacks | None, pipeline: bool = True) -> None:
        super().__init__()
        self.callbacks = callbacks or Callbacks()
        self.pipeline = pipeline
        # Reentrant: request() drains the pipeline under it, then the base takes it again.
        self._req_lock = threading.RLock()  # type: ignore[assignment]
        self._unanswered: collections.deque[int] = collections.deque()
        self._late_error: SaError | None = None

    # --- the multicast pipeline -------------------------------------------------------
    #
    # A multicast is sent without waiting for its answer; at most
    # ``_evs_wire.PIPELINE`` are unanswered at once.  The executive never refuses
    # one for lack of room (MCAST_QUEUE): when the ring is full it holds it and
    # answers once it is on the ring, so a full pipeline means a full ring, and the
    # caller gets TryAgain after ``PIPELINE_WAIT``.  Every other request first
    # collects the answers still due, so responses stay matched to their requests.

    def _reap(self, until: int, deadline: float | None) -> None:
        """Read answers until at most ``until`` are unanswered, waiting until
        ``deadline`` (monotonic s; None: only what is readable now).

        Raises:
            Timeout: the deadline passed.  Library, BadHandle.
        """
        while len(self._unanswered) > until:
            if deadline is None and not self._req.ready():
                return
            try:
                frame = self._req.recv_frame(deadline if deadline is not None
                                             else time.monotonic() + REQUEST_GUARD)
            except IpcProtocolError as exc:
                raise Library(f"garbled reply: {exc}") from None
            except Library:
                if self.finalized:
                    raise BadHandle("handle finalized during the call") from None
                raise
            if frame.seq not in self._unanswered:
                continue
            self._unanswered.remove(frame.seq)
            if frame.error != SA_OK and self._late_error is None:
                try:
                    self._late_error = SaError.from_code(
                        frame.error, "an earlier multicast was refused and not sent")
                except ValueError:
                    self._late_error = Library(f"unknown error code {frame.error}")

    def _raise_late(self) -> None:
        err, self._late_error = self._late_error, None
        if err is not None:
            raise err

    def _mcast(self, msg_id: int, req: ew.McastRequest, joined: bool) -> None:
        if not self.pipeline:
            self.request(msg_id, ew.encode_mcast(req, joined))
            return
        body = ew.encode_mcast(ew.McastRequest(req.guarantee, req.priority, req.groups,
                                               req.data, ew.MCAST_QUEUE), joined)
        self._check_open()
        with self._req_lock:
            self._check_open()
            self._reap(ew.PIPELINE, None)
            if len(self._unanswered) >= ew.PIPELINE:
                try:
                    self._reap(ew.PIPELINE - 1, time.monotonic() + self.PIPELINE_WAIT)
                except Timeout:
                    raise TryAgain("the ring is full: every pipelined multicast waits") \
                        from None
            self._raise_late()
            self._seq = (self._seq % 0xFFFFFFFF) + 1
            self._req.send(w.Frame(self.service_id, msg_id, 0, self._seq, body))
            self._unanswered.append(self._seq)

    def flush(self, timeout: float = REQUEST_GUARD) -> None:
        """Wait until every multicast sent so far is on the ring.

        Raises:
            the error of an earlier multicast, if one failed; Timeout.
        """
        self._check_open()
        with self._req_lock:
            self._reap(0, time.monotonic() + timeout)
            self._raise_late()

    def request(self, msg_id: int, body: bytes = b"", *,
                timeout: float | None = REQUEST_GUARD,
                decode: Callable[[bytes], Any] | None = None) -> Any:
        self._check_open()
        with self._req_lock:
            if self._unanswered:
                self._reap(0, time.monotonic() + REQUEST_GUARD)
            self._raise_late()
            return super().request(msg_id, body, timeout=timeout, decode=decode)

    def fd_get(self) -> int:
        """evs_fd_get: the descriptor to select()/poll() on."""
        return self.selection_object()

    def join(self, groups: Iterable[Group]) -> None:
        """Add ``groups`` to this handle's joined set (a union over calls).

        Returns once the join is in the agreed order: later deliveries of those
        groups reach this handle, and its confchg callback is queued.

        Raises:
            TooManyGroups: more than 50 groups.  InvalidParam: none, or a name
            over 32 bytes.  TryAgain: the ring is full.  BadHandle, Library.
        """
        keys = self._group_call(groups, "join")
        self.request(ew.EVS_REQ_JOIN, ew.encode_group_list(keys))

    def leave(self, groups: Iterable[Group]) -> None:
        """Remove ``groups`` from the joined set; all of them or none.

        Raises:
            NotExist: one of them is not joined (nothing is left).
            TooManyGroups, InvalidParam, TryAgain, BadHandle, Library.
        """
        keys = self._group_call(groups, "leave")
        self.request(ew.EVS_REQ_LEAVE, ew.encode_group_list(keys))

    def _group_call(self, groups: Iterable[Group], what: str) -> list[bytes]:
        keys = _keys(groups, what)
        if len(keys) > MAX_GROUPS_PER_CALL:
            raise TooManyGroups(f"{len(keys)} groups in one {what}")
        if not keys:
            raise InvalidParam(f"{what}: no group")
        return keys

    def mcast_joined(self, guarantee: int, priority: int,
                     iovec: bytes | bytearray | memoryview | Sequence[bytes]) -> None:
        """Multicast to the groups this handle has joined now.

        Raises:
            TryAgain: the ring's send queue is full; retry.
            InvalidParam: guarantee, priority, or a message over ``MAX_MESSAGE``.
        """
        _check(guarantee, priority)
        self._mcast(ew.EVS_REQ_MCAST_JOINED,
                    ew.McastRequest(guarantee, priority, (), _data(iovec)), joined=True)

    def mcast_groups(self, guarantee: int, priority: int, groups: Iterable[Group],
                     iovec: bytes | bytearray | memoryview | Sequence[bytes]) -> None:
        """Multicast to ``groups`` (joined or not).  Raises as ``mcast_joined``."""
        _check(guarantee, priority)
        keys = _keys(groups, "mcast_groups")
        if not keys or len(keys) > ew.MAX_GROUPS:
            raise InvalidParam(f"mcast_groups: {len(keys)} groups")
        self._mcast(ew.EVS_REQ_MCAST_GROUPS,
                    ew.McastRequest(guarantee, priority, tuple(keys), _data(iovec)), joined=False)

    def dispatch(self, flags: int = EVS_DISPATCH_ALL) -> None:  # type: ignore[override]
        """evs_dispatch: run callbacks in this thread.

        Args:
            flags: EVS_DISPATCH_ONE (wait until one has run), EVS_DISPATCH_ALL
                (those waiting, without waiting), EVS_DISPATCH_BLOCKING (until
                finalize, e.g. from another thread).  Zero-based, as in the spec.
        """
        if flags == EVS_DISPATCH_ALL:
            super().dispatch(SA_DISPATCH_ALL)
        elif flags == EVS_DISPATCH_BLOCKING:
            super().dispatch(SA_DISPATCH_BLOCKING)
        elif flags == EVS_DISPATCH_ONE:
            self._dispatch(DISPATCH_WAIT_ONE)
        else:
            raise InvalidParam(f"dispatch flags {flags!r}")

    def _run_callback(self, frame: w.Frame) -> None:
        if frame.msg_id == ew.EVS_CB_DELIVER:
            d = ew.decode_deliver_untrusted(frame.body)
            fn = self.callbacks.deliver_callback
            if fn is not None:
                fn(_address(d.sender.node), d.data)
        elif frame.msg_id == ew.EVS_CB_CONFCHG:
            c = ew.decode_confchg_untrusted(frame.body)
            fn2 = self.callbacks.confchg_callback
            if fn2 is not None:
                fn2(c.group.rstrip(b"\0"), [_member(m) for m in c.members],
                    [_member(m) for m in c.left], [_member(m) for m in c.joined])
        else:
            raise Library(f"unknown EVS callback id {frame.msg_id}")

    def __enter__(self) -> EvsHandle:
        return self


def initialize(callbacks: Callbacks | None = None, pipeline: bool = True) -> EvsHandle:
    """evs_initialize: connect to the local executive's EVS service.

    Args:
        pipeline: multicasts do not wait for their answers (see the module docstring).

    Raises:
        TryAgain: no executive.  Security: not allowed.  Library.
    """
    return EvsHandle(callbacks, pipeline)


__all__ = [
    "Callbacks", "EVS_DISPATCH_ALL", "EVS_DISPATCH_BLOCKING", "EVS_DISPATCH_ONE", "EVS_OK",
    "EVS_PRIO_HIGH", "EVS_PRIO_LOW", "EVS_PRIO_MED", "EVS_PRIO_RECOVERY", "EVS_TYPE_AGREED",
    "EVS_TYPE_FIFO", "EVS_TYPE_SAFE", "EVS_TYPE_UNORDERED", "EvsHandle", "EvsMember",
    "MAX_MESSAGE", "initialize",
]
