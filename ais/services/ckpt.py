"""CKPT, the checkpoint service (executive side), SAF AIS A.01.01.

Theory of operation
-------------------
Every node holds a full replica of every checkpoint.  State (``ckpts`` by
cluster-wide id, ``names`` for the linked ones) changes only in exec
handlers, in agreed order, so the same deliveries give the same replicas.

Requests.  Library handlers check what is local to the asking node (the
checkpoint handle, its open flags: ACCESS, BAD_HANDLE) and multicast a ring
message carrying the request's reply tag.  The exec handler validates
against the replicated state, the same way on every node, applies the
change (or not) and answers on the asking node.  So a call returns only
after its message has been delivered and applied locally.  Reads, status
and iterator snapshots also go through the ring, as barriers that only the
asking node acts on: a read asked anywhere after a write returned is ordered
after that write, so it sees it.

When a call returns (safe delivery, ``HostAPI.when_safe``).  Agreed delivery
on the asking node does not mean the others have the message: a node
delivers its own frames as it sends them, and if it dies at once they may be
lost with it.  So every successful call whose promise is about the other
replicas is answered only once every member of the ring holds its message
(or, when the ring breaks first, every member of its transitional
configuration: in a split, the replicas on the asking node's side only, and
the write goes if all of those die before the heal):

* writes, overwrites, section create/delete and expiration changes to a
  WR_ALL_REPLICAS checkpoint (the call returns when all replicas are
  written), and to an active-replica checkpoint (WR_ACTIVE_REPLICA and
  _WEAK) when the asking node does not hold the active replica; from the
  active replica's node they return at agreed delivery, which is when the
  active replica is written -- the SAF semantics of those modes, and faster;
* an OPEN that created the checkpoint (and its async callback), UNLINK,
  retention duration set, active replica set;
* SYNCHRONIZE (and its callback): all replicas hold every earlier write.

Answered at agreed delivery: errors (nothing changed), an OPEN of an existing
checkpoint and CLOSE (reference counts are per node and re-announced in every
sync round), reads, status and iterator snapshots (local reads).

Identity.  A checkpoint's id is (ring seq, node, number): the ring in which
its creating OPEN was delivered, the node that multicast it (whose client
asked), and that node's number for the OPEN (``OPEN_MSG``).  Every node that
delivers the OPEN gives the checkpoint the same id, whatever else it
delivered: the sides of a partition each deliver their own part of the old
ring's last messages, so counting creations per ring would give one id to
different checkpoints.  A node installs one ring per ring seq (its highest
is kept on disk), so ids do not repeat across restarts either.
Unlink drops the name at once (a later OPEN with attributes creates a new
checkpoint); the data goes when the last opener closes.

Reference counts.  ``refs[node]`` counts the opens from each node.  OPEN
adds one, CLOSE removes one; a client connection that closes makes its node
multicast a CLOSE for each of its handles (also for an OPEN delivered after
its client left or timed out).  Each node's own count is authoritative: in
every sync round each member announces ``refs[self]`` for every checkpoint,
and the counts are rebuilt from those announcements, so a departed node's
references vanish everywhere at the same point.

Retention and section expiry.  Deadlines are ``LowestMemberTimers`` (every
node keeps them; base.py), but deletion is decided in agreed order: when one
passes, the lowest member multicasts RETENTION_EXPIRE (with the checkpoint's
``retention_epoch``) or SECTION_EXPIRE (with the section's expiration
time), and after a sync round the new lowest sends those already past; the
handler deletes only if nothing changed meanwhile (an OPEN or a sync round
bumps the epoch, a new expiration time changes the value).  Absolute expiration
times (SaTimeT, wall clock) travel with the client's "remaining" time, so the
executive needs no wall clock.

Sync (base.py's sync step).  In every round each member announces its
references (SYNC_REFS).  When members hold different states
(``info.transfer``: more than one state group, or a group and fresh nodes),
the sender of each state group streams its group's tombstones (ids it
deleted, SYNC_TOMBSTONES) and every checkpoint in bounded chunks (SYNC_CKPT
with the version, SYNC_SECTION; at most ``SYNC_BUDGET`` bytes per
``sync_process`` call); receivers stage them.  Fresh members (restarted
empty) stream nothing and are never taken for holders of any state.  At
``sync_done``, if any group streamed, every member replaces its state with
the merge of the staged sides (the merge rule below), which is a function
of delivered messages only, so all members agree; a member keeps its own
replica of a checkpoint (and its timers) only when its whole version equals
the merged one.  A round abandoned midway installs nothing.

Versions.  Each checkpoint carries ``updates`` (replicated changes since
creation: write, overwrite, section create/delete/expiry, expiration change,
retention duration set, active replica set), the ring of its last update,
and ``digest``, a hash chained over its creation and every update message
applied, in order (16 bytes of SHA-256 over the previous digest, the
message id, its sender and its payload, data included: ``_chain``).  Equal
versions mean equal histories, hence equal bytes.  The last ``HISTORY_MAX``
earlier versions, and as many at the ends of earlier rings, travel along so a
merge can tell how much a losing replica had that the winner lacks.

Merge rule.  The A.01.01 checkpoint specification describes replicas and
how writes reach them, but says nothing about reconciling replicas after a
network partition heals, so this policy is ours:

1. A checkpoint (by id) present on one side only is kept -- unless another
   side deleted it (unlinked and closed, or retention expired: each side
   remembers the ids it deleted, its "tombstones"); then it is kept unlinked,
   alive only while it has openers.
2. Present on several sides: the replica with the greatest version
   (updates, last ring, digest) is kept, compared in that order (ring by
   sequence number, then representative; digest as bytes); equal versions are
   equal replicas.  So the longer history wins, then the one updated in the
   later ring, then -- two different histories of equal length in the same
   ring, e.g. each side delivered a different last write of the old ring --
   the greater digest: one winner chosen the same way on every node, by no
   node's id or arrival order.  The losing replica's updates that the winner
   lacks are lost: each node logs a warning naming the checkpoint, both
   replicas' update counts and how many updates are lost (nothing is logged
   when the winner's history contains the loser's).  The checkpoint is
   unlinked if any side unlinked it.
3. Several linked checkpoints with one name (created on both sides during
   the split): the one with the greatest (updates, last ring, digest, id)
   keeps the name; the others are unlinked, alive for their openers only.
4. Reference counts are not merged: each member announces its own.

Implements the SAF AIS Checkpoint Service A.01.01 API (see ``saf.ckpt``).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Callable, Iterator

from ais.log import RateLimiter
from ais.services.base import (
    DEFERRED, Deferred, ExecMessage, HostAPI, LibConn, LowestMemberTimers, Request, Service,
    SyncInfo, applied_elsewhere, exec_handler, forward, lib_handler, register_service,
)
from ais.totem.events import fmt_node
from saf import _ckpt_wire as cw
from saf._codec import Layout, array, blob, flag, i64, raw, rest, u8, u16, u32, u64
from saf.errors import (
    SA_OK, Access, BadFlags, BadHandle, BadOperation, Exist, InvalidParam, IpcProtocolError,
    NameTooLong, NoResources, NoSpace, NotExist, SaError,
)
from saf.types import SA_MAX_NAME_LENGTH, SA_TIME_END

CkptId = cw.CkptId

# --- ring message ids ---------------------------------------------------------------

MSG_OPEN = 1
MSG_CLOSE = 2
MSG_UNLINK = 3
MSG_RETENTION_SET = 4
MSG_ACTIVE_SET = 5
MSG_STATUS = 6  # barrier
MSG_SECTION_CREATE = 7
MSG_SECTION_DELETE = 8
MSG_SECTION_EXPIRATION_SET = 9
MSG_WRITE = 10
MSG_OVERWRITE = 11
MSG_READ = 12  # barrier
MSG_ITER_INIT = 13  # barrier
MSG_SYNCHRONIZE = 14  # barrier
MSG_RETENTION_EXPIRE = 15
MSG_SECTION_EXPIRE = 16
MSG_CLOSE_MANY = 17
MSG_SYNC_REFS = 20
MSG_SYNC_CKPT = 21
MSG_SYNC_SECTION = 22
MSG_SYNC_TOMBSTONES = 23

#: ids of deleted checkpoints remembered for partition merges (oldest forgotten first)
TOMBSTONES_MAX = 4096
#: section bytes per SYNC_SECTION message
SYNC_CHUNK = 60 * 1024
#: bytes one sync_process call may queue before yielding to the ring
SYNC_BUDGET = 1024 * 1024
#: descriptors per ITER_NEXT reply
ITER_BATCH = 1024
#: earlier versions kept per checkpoint, to tell at a merge how many updates the losing
#: replica had that the kept one lacks: this many before the latest updates, and as many
#: more at the ends of earlier rings (a side idle since a split matches one of those)
HISTORY_MAX = 8
DIGEST_SIZE = 16


def _chain(digest: bytes, msg_id: int, sender: int, payload: bytes) -> bytes:
    """The history digest after applying ring message ``msg_id`` from ``sender``.

    The sender is part of it because handlers use it (ACTIVE_SET: the active node).
    SHA-256, cut to ``DIGEST_SIZE``: every member hashes every write, and with
    the processors' SHA instructions it runs at twice BLAKE2b's speed.
    """
    h = hashlib.sha256(digest)
    h.update(msg_id.to_bytes(2, "big") + sender.to_bytes(4, "big"))
    h.update(payload)
    return h.digest()[:DIGEST_SIZE]


def _genesis(ckpt_id: CkptId, name: bytes, attrs: cw.CreationAttributes) -> bytes:
    """A new checkpoint's digest: its creation (an id created twice differs here)."""
    return _chain(bytes(DIGEST_SIZE), MSG_OPEN, 0, cw.CKPT_ID.pack(*ckpt_id)
                  + cw.encode_attrs(attrs) + name)

#: checkpoint ids per CLOSE_MANY message, so closing any number of handles costs
#: a few ring messages of bounded handling time each
CLOSE_BATCH = 256


@dataclass(frozen=True)
class CkptLimits:
    """What clients may make CKPT hold (``openais.conf`` ``limits``).

    ``max_checkpoints`` and ``max_sections`` are checked in exec handlers, in
    agreed order, so every node of a cluster must have the same values.
    """

    #: checkpoints that exist in the cluster (open, or kept for their retention)
    max_checkpoints: int = 16384
    #: open checkpoint handles per client connection (checked on its node)
    max_checkpoint_opens: int = 4096
    #: sections of all checkpoints together
    max_sections: int = 262144


@dataclass
class Section:
    data: bytearray
    expiration: int  #: absolute SaTimeT; SA_TIME_END: never
    last_update: int
    #: while staged in a sync round: ns left until expiry, from the sender's timer
    remaining: int = SA_TIME_END


@dataclass
class Checkpoint:
    id: CkptId
    name: bytes
    attrs: cw.CreationAttributes
    linked: bool = True
    sections: dict[bytes, Section] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)
    used: int = 0  #: bytes of section data
    #: replicated changes applied since creation (see the module docstring)
    updates: int = 0
    last_ring: tuple[int, int] = (0, 0)
    #: chained hash of the creation and every update applied, in order
    digest: bytes = bytes(DIGEST_SIZE)
    #: earlier (updates, digest, ended a ring) versions, oldest first; not part of the
    #: replica's identity, only for the merge's loss report
    history: list[tuple[int, bytes, bool]] = field(default_factory=list)
    active_node: int = 0  #: node holding the active replica (0: none)
    retention_epoch: int = 0
    #: local clock when the last opener closed (retention counts from there)
    zero_since: float | None = None

    @property
    def total_refs(self) -> int:
        return sum(self.refs.values())

    def version(self) -> tuple[int, tuple[int, int], bytes]:
        """Equal versions mean equal histories, hence equal replicas; the greatest wins."""
        return (self.updates, self.last_ring, self.digest)

    def common_updates(self, other: Checkpoint) -> int | None:
        """Updates the two histories share, when the kept history window shows it."""
        mine = {n: d for n, d, _ in self.history}
        mine[self.updates] = self.digest
        theirs = {n: d for n, d, _ in other.history}
        theirs[other.updates] = other.digest
        shared = [n for n, d in theirs.items() if mine.get(n) == d]
        return max(shared) if shared else None


@dataclass
class _Handle:
    ckpt_id: CkptId
    flags: int
    closing: bool = False


@dataclass
class _ConnState:
    handles: dict[int, _Handle] = field(default_factory=dict)
    next_handle: int = 1
    iterators: dict[int, list[cw.SectionDescriptor]] = field(default_factory=dict)
    next_iter: int = 1
    #: OPENs multicast and not yet delivered (they count against max_checkpoint_opens)
    opening: int = 0


# --- ring-only layouts ----------------------------------------------------------------------
# (the others are a client body after the checkpoint id: saf._ckpt_wire's layouts;
# decoders raise IpcProtocolError, and the host drops a message whose handler raises)

_ID = cw.CKPT_ID_LAYOUT

# OPEN: | number u32 | the client's OPEN body |: the asking node numbers its OPENs;
# one that creates its checkpoint names it (ring seq, asking node, number)
OPEN_MSG = Layout(None, "OPEN", ("number", u32), ("body", rest()))
# CLOSE: | CKPT_ID | handle u32 (the asker's handle; 0 when the node closes on its own) |
CLOSE_MSG = Layout(None, "CLOSE", ("ckpt_id", _ID), ("handle", u32))
# CLOSE_MANY: | count u32 | count x CKPT_ID |: the sender's node drops one
# reference to each (a closing client's handles, ``CLOSE_BATCH`` per message)
CLOSE_MANY_MSG = Layout(None, "CLOSE_MANY", ("ids", array(_ID, u32, max=CLOSE_BATCH)))
# RETENTION_EXPIRE: | CKPT_ID | retention epoch u64 |
EXPIRE_MSG = Layout(None, "RETENTION_EXPIRE", ("ckpt_id", _ID), ("epoch", u64))
# SECTION_EXPIRE: | CKPT_ID | expiration i64 | section id ... |
SECTION_EXPIRE_MSG = Layout(None, "SECTION_EXPIRE", ("ckpt_id", _ID), ("expiration", i64),
                            ("section_id", rest()))
# SYNC_REFS: | count u32 | count x (CKPT_ID, references u32) |
SYNC_REFS_MSG = Layout(None, "SYNC_REFS", ("refs", array(
    Layout(None, "reference", ("ckpt_id", _ID), ("refs", u32)), u32)))
# SYNC_TOMBSTONES: | count u32 | count x CKPT_ID |
SYNC_TOMBSTONES_MSG = Layout(None, "SYNC_TOMBSTONES", ("ids", array(_ID, u32)))
# SYNC_CKPT: | CKPT_ID (16) |, then (52 bytes), cw.ATTRS (36), name, history:
#  0        1             9               17              21            25
#  | linked | updates u64 | last ring seq | last ring rep | active node | epoch u64 |
#  33             49               50
#  | digest (16)  | hist_count u8  | name_len u16 |
#  history: hist_count x HIST_ITEM (25 bytes): | updates u64 | digest (16) | ring end u8 |,
#  the earlier versions (``Checkpoint.history``), oldest first
HIST_ITEM = Layout(None, "history item", ("updates", u64), ("digest", raw(DIGEST_SIZE)),
                   ("ring_end", flag))
SYNC_CKPT_MSG = Layout(
    Checkpoint, "SYNC_CKPT", ("id", _ID), ("linked", flag), ("updates", u64),
    ("last_ring", Layout(None, "ring", ("seq", u64), ("rep", u32))), ("active_node", u32),
    ("retention_epoch", u64), ("digest", raw(DIGEST_SIZE)), ("hist_count", u8),
    ("name_len", u16), ("attrs", cw.ATTRS), ("name", blob("name_len")),
    ("history", array(HIST_ITEM, "hist_count", container=list)))
# SYNC_SECTION: | CKPT_ID |, then (42 bytes), section id, chunk:
#  | id_len u16 | expiration i64 | remaining i64 (ns; SA_TIME_END: none) | last_update i64
#  | total u64 | offset u64 | section id ... | chunk ... |
SYNC_SECTION_MSG = Layout(None, "SYNC_SECTION", ("ckpt_id", _ID), ("id_len", u16),
                          ("expiration", i64), ("remaining", i64), ("last_update", i64),
                          ("total", u64), ("offset", u64), ("section_id", blob("id_len")),
                          ("chunk", rest()))


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise InvalidParam(what)


def _by_handle(need: int = 0, check: Callable[[bytes], None] | None = None
               ) -> Callable[[CkptService, LibConn, Request], bytes]:
    """A ``forward`` body for a handle request: ``check`` the rest of the request, then
    multicast it with the handle replaced by the checkpoint id (BAD_HANDLE, ACCESS)."""
    def body(svc: CkptService, conn: LibConn, req: Request) -> bytes:
        handle, rest = cw.split_handle_untrusted(req.body)
        if check is not None:
            check(rest)
        h = svc._handle(conn, handle)
        if need and not h.flags & need:
            raise Access("checkpoint not opened for " +
                         ("writing" if need == cw.SA_CKPT_CHECKPOINT_WRITE else "reading"))
        return cw.CKPT_ID.pack(*h.ckpt_id) + rest
    return body


def _check_sync_flag(is_async: bool) -> Callable[[bytes], None]:
    def check(rest: bytes) -> None:
        if cw.decode_synchronize_untrusted(rest)[1] != is_async:
            raise IpcProtocolError("SYNCHRONIZE: async flag does not match the request id")
    return check


def _unlink_body(svc: CkptService, conn: LibConn, req: Request) -> bytes:
    name = cw.decode_name_untrusted(req.body)
    svc._check_name(name)
    return name


_WRITE, _READ = cw.SA_CKPT_CHECKPOINT_WRITE, cw.SA_CKPT_CHECKPOINT_READ


@register_service
class CkptService(Service):
    """Checkpoints, replicated on every node.  See the module docstring."""

    name = "ckpt"
    service_id = cw.CKPT_SERVICE_ID

    def __init__(self, limits: CkptLimits | None = None) -> None:
        self.limits = limits or CkptLimits()
        #: sections of ``_counted_ckpts`` (a cache; recounted when the dict is replaced)
        self._nsections = 0
        self._counted_ckpts: dict[CkptId, Checkpoint] | None = None
        self.ckpts: dict[CkptId, Checkpoint] = {}
        self.names: dict[bytes, CkptId] = {}
        #: the number of this node's last OPEN (see OPEN_MSG)
        self._open_number = 0
        # sync round
        self._round: SyncInfo | None = None
        self._sync_gen: Iterator[tuple[int, bytes]] | None = None
        self._sync_next: tuple[int, bytes] | None = None
        self._incoming: dict[int, dict[CkptId, Checkpoint]] = {}
        #: ids of checkpoints deleted here, replicated like the rest (insertion ordered)
        self.tombstones: dict[CkptId, None] = {}
        self._incoming_tombs: dict[int, set[CkptId]] = {}
        self._remaining: dict[tuple[int, CkptId, bytes], int] = {}
        self._announced: dict[int, dict[CkptId, int]] = {}
        #: per checkpoint, the member whose replica the last sync round's merge
        #: installed (empty after a round with nothing to merge; see ``_holds``)
        self._source: dict[CkptId, int] = {}

    # --- hooks -------------------------------------------------------------------------

    def exec_init(self, host: HostAPI) -> None:
        super().exec_init(host)
        self.log = host.logger("CKPT")
        #: retention (key: checkpoint id) and section expiry (key: (id, section id))
        self._retention = LowestMemberTimers(self, MSG_RETENTION_EXPIRE)
        self._expiry = LowestMemberTimers(self, MSG_SECTION_EXPIRE)
        # Clients provoke these at will: a few lines, then a count per window.
        self._limit_log = RateLimiter(burst=5, interval=10.0, clock=host.now)

    def on_lib_connect(self, conn: LibConn) -> None:
        conn.private["ckpt"] = _ConnState()

    def on_lib_exit(self, conn: LibConn) -> None:
        # An OPEN still on its way finds the client gone when delivered and closes again.
        cs: _ConnState | None = conn.private.get("ckpt")
        if cs is None:
            return
        # Our node's references must go in agreed order, like a client close: in
        # CLOSE_BATCH-sized messages, so any number of handles is a few ring messages.
        ids = [h.ckpt_id for h in cs.handles.values() if not h.closing]
        cs.handles.clear()
        cs.iterators.clear()
        for start in range(0, len(ids), CLOSE_BATCH):
            part = ids[start:start + CLOSE_BATCH]
            self.host.mcast_retried(self, MSG_CLOSE_MANY, CLOSE_MANY_MSG.pack(part))

    # --- helpers -------------------------------------------------------------------------

    def _conn_state(self, conn: LibConn) -> _ConnState:
        cs = conn.private.get("ckpt")
        if cs is None:
            cs = conn.private["ckpt"] = _ConnState()
        return cs

    def _handle(self, conn: LibConn, handle: int) -> _Handle:
        h = self._conn_state(conn).handles.get(handle)
        if h is None or h.closing:
            raise BadHandle(f"no open checkpoint handle {handle}")
        return h

    def _ckpt_of(self, msg: ExecMessage,
                 changes: bool = True) -> tuple[Checkpoint | None, bytes]:
        """The checkpoint a message is about (None: gone; the asker gets BAD_HANDLE).

        Args:
            changes: the message changes the checkpoint: None too if it is a replay
                this replica already holds (the asker gets TIMEOUT, ``_holds``).
        """
        ckpt_id, rest = cw.split_ckpt_id_untrusted(msg.payload)
        ck = self.ckpts.get(ckpt_id)
        if ck is None:
            self.host.reply_error(msg.tag, BadHandle("checkpoint no longer exists"))
        elif changes and self._holds(ck, msg):
            return None, rest
        return ck, rest

    def _holds(self, ck: Checkpoint, msg: ExecMessage) -> bool:
        """Whether this replica of ``ck`` already holds the change of ``msg``, a replay
        (``ExecMessage.applied_by``); if so the asker is told TIMEOUT ("maybe done").

        The replica the last sync round installed came from the member named in
        ``_source`` (its merge's choice, the same on every member), or, after a
        round with one state group, from all of them alike.
        """
        if not msg.replay:
            return False
        source = self._source.get(ck.id)
        if source is not None and source not in msg.applied_by:
            return False  # the merge kept a replica that never had it: apply it now
        self.host.reply_error(msg.tag, applied_elsewhere())
        return True

    def _updated(self, ck: Checkpoint, msg: ExecMessage) -> None:
        ring = (msg.ring_id.seq, msg.ring_id.rep)
        hist = ck.history
        hist.append((ck.updates, ck.digest, ring != ck.last_ring))
        for boundary in (False, True):
            kept = [i for i, h in enumerate(hist) if h[2] == boundary]
            if len(kept) > HISTORY_MAX:
                del hist[kept[0]]
        ck.updates += 1
        ck.last_ring = ring
        ck.digest = _chain(ck.digest, msg.msg_id, msg.sender, msg.payload)

    @staticmethod
    def _safe(ck: Checkpoint, msg: ExecMessage) -> bool:
        """Whether a data change's reply must wait until every member holds it.

        WR_ALL_REPLICAS: the call returns once every replica is written.  The
        active-replica modes return once the active replica is written: at
        agreed delivery when the writer's node holds it, else when all hold it.
        """
        return (ck.attrs.creation_flags == cw.SA_CKPT_WR_ALL_REPLICAS
                or ck.active_node != msg.sender)

    def _origin(self, msg: ExecMessage) -> bool:
        return msg.tag.node == self.host.node_id and msg.tag.is_client

    @staticmethod
    def _check_active(ck: Checkpoint) -> None:
        if ck.attrs.creation_flags != cw.SA_CKPT_WR_ALL_REPLICAS and not ck.active_node:
            raise NotExist("no active replica is set for this checkpoint")

    # --- checkpoint life cycle ------------------------------------------------------------

    def _delete(self, ck: Checkpoint) -> None:
        if self.ckpts.pop(ck.id, None) is not None:
            self._count_sections(-len(ck.sections))
        self.tombstones[ck.id] = None
        while len(self.tombstones) > TOMBSTONES_MAX:
            del self.tombstones[next(iter(self.tombstones))]
        if self.names.get(ck.name) == ck.id:
            del self.names[ck.name]
        self._drop_timers(ck)
        self.log.debug("checkpoint %r deleted", ck.name)

    def _after_unref(self, ck: Checkpoint) -> None:
        if ck.total_refs:
            return
        if not ck.linked:
            self._delete(ck)
        else:
            self._start_retention(ck)

    def _stop_retention(self, ck: Checkpoint) -> None:
        self._retention.cancel(ck.id)

    def _start_retention(self, ck: Checkpoint, since: float | None = None) -> None:
        """Nobody has ``ck`` open since ``since`` (default: now): it goes after its retention."""
        self._stop_retention(ck)
        ck.zero_since = self.host.now() if since is None else since
        if ck.attrs.retention_duration < SA_TIME_END:
            self._arm_retention(ck, ck.zero_since + ck.attrs.retention_duration / 1e9)

    def _arm_retention(self, ck: Checkpoint, deadline: float) -> None:
        # The expiry names the epoch: an OPEN or a sync round in between voids it.
        self._retention.set(ck.id, deadline,
                            EXPIRE_MSG.pack(ck.id, ck.retention_epoch))

    def _arm_section(self, ck: Checkpoint, sid: bytes, sec: Section,
                     remaining_ns: int | None) -> None:
        if sec.expiration >= SA_TIME_END or remaining_ns is None or remaining_ns >= SA_TIME_END:
            self._expiry.cancel((ck.id, sid))
            return
        self._expiry.set((ck.id, sid), self.host.now() + max(0, remaining_ns) / 1e9,
                         SECTION_EXPIRE_MSG.pack(ck.id, sec.expiration, sid))

    def _drop_timers(self, ck: Checkpoint) -> None:
        self._stop_retention(ck)
        for sid in ck.sections:
            self._expiry.cancel((ck.id, sid))

    # --- OPEN / CLOSE / UNLINK ------------------------------------------------------------

    @staticmethod
    def _check_name(name: bytes) -> None:
        if not name:
            raise InvalidParam("empty checkpoint name")
        if len(name) > SA_MAX_NAME_LENGTH:
            raise NameTooLong(f"checkpoint name of {len(name)} bytes")

    @staticmethod
    def check_attributes(a: cw.CreationAttributes) -> None:
        """Raise InvalidParam unless ``a`` are acceptable creation attributes."""
        if a.creation_flags not in cw.CREATION_FLAGS:
            raise InvalidParam(f"creationFlags {a.creation_flags:#x}")
        if a.max_sections < 1:
            raise InvalidParam("maxSections must be at least 1")
        if not 0 <= a.max_section_size <= cw.MAX_IO_BYTES:
            raise InvalidParam(f"maxSectionSize must be at most {cw.MAX_IO_BYTES}")
        if not 0 <= a.max_section_id_size <= cw.MAX_SECTION_ID:
            raise InvalidParam(f"maxSectionIdSize must be at most {cw.MAX_SECTION_ID}")
        if a.checkpoint_size > a.max_sections * a.max_section_size:
            raise InvalidParam("checkpointSize exceeds maxSections * maxSectionSize")
        if a.retention_duration < 0:
            raise InvalidParam("negative retentionDuration")

    @lib_handler(cw.REQ_OPEN, hold_during_sync=True)
    def lib_open(self, conn: LibConn, req: Request) -> bytes | Deferred:
        return self._lib_open(conn, req, is_async=False)

    @lib_handler(cw.REQ_OPEN_ASYNC, hold_during_sync=True)
    def lib_open_async(self, conn: LibConn, req: Request) -> bytes | Deferred:
        return self._lib_open(conn, req, is_async=True)

    def _lib_open(self, conn: LibConn, req: Request, is_async: bool) -> bytes | Deferred:
        op = cw.decode_open_untrusted(req.body)
        if op.is_async != is_async:
            raise IpcProtocolError("OPEN: async flag does not match the request id")
        self._check_name(op.name)
        if op.flags & ~cw.OPEN_FLAGS_MASK:
            raise BadFlags(f"open flags {op.flags:#x}")
        if op.flags & cw.SA_CKPT_CHECKPOINT_CREATE and op.attributes is None:
            raise InvalidParam("SA_CKPT_CHECKPOINT_CREATE needs creation attributes")
        if op.attributes is not None:
            try:
                self.check_attributes(op.attributes)
            except InvalidParam as err:
                self._limit_log.log(self.log, logging.WARNING,
                                    "connection %d (pid %d): open of %r refused: %s",
                                    conn.conn_id, conn.pid, op.name, err)
                raise
        cs = self._conn_state(conn)
        if len(cs.handles) + cs.opening >= self.limits.max_checkpoint_opens:
            self._limit_log.log(self.log, logging.WARNING,
                                "connection %d (pid %d): open of %r refused: limit "
                                "max_checkpoint_opens (%d handles per connection) reached",
                                conn.conn_id, conn.pid, op.name,
                                self.limits.max_checkpoint_opens)
            raise NoResources("too many open checkpoints on this connection")
        self._open_number = self._open_number % 0xFFFFFFFF + 1
        self.host.mcast(self, MSG_OPEN, OPEN_MSG.pack(self._open_number, req.body), tag=req.tag)
        cs.opening += 1
        if is_async:
            return b""  # the handle comes in the open callback
        # On a timeout the host answers TIMEOUT; the OPEN's delivery then closes again.
        return self.host.defer(req.tag, op.timeout / 1e9 if 0 < op.timeout < SA_TIME_END
                               else None)

    @exec_handler(MSG_OPEN, replay=True)
    def exec_open(self, msg: ExecMessage) -> None:
        number, body = OPEN_MSG.decode(msg.payload)
        op = cw.decode_open_untrusted(body)
        ckpt_id = self.names.get(op.name)
        ck = self.ckpts.get(ckpt_id) if ckpt_id is not None else None
        err: SaError | None = None
        created = False
        if ck is None:
            if op.attributes is None:
                err = NotExist("no checkpoint of that name")
            elif len(self.ckpts) >= self.limits.max_checkpoints:
                err = NoResources("too many checkpoints in the cluster")
                self._limit_log.log(self.log, logging.WARNING,
                                    "checkpoint %r not created: limit max_checkpoints (%d "
                                    "in the cluster) reached", op.name,
                                    self.limits.max_checkpoints)
            elif op.attributes.max_sections == 1 and \
                    self._sections_total() >= self.limits.max_sections:
                err = self._sections_full(op.name)
            else:
                created = True
                new_id = (msg.ring_id.seq, msg.sender, number)
                ck = Checkpoint(new_id, op.name, op.attributes,
                                digest=_genesis(new_id, op.name, op.attributes))
                if op.attributes.max_sections == 1:
                    ck.sections[cw.SA_CKPT_DEFAULT_SECTION_ID] = Section(
                        bytearray(), SA_TIME_END, 0)
                    self._count_sections(1)
                self.ckpts[ck.id] = ck
                self.names[op.name] = ck.id
                self.log.debug("checkpoint %r created", op.name)
        elif op.attributes is not None and op.attributes != ck.attrs:
            err = Exist("checkpoint exists with other creation attributes")
        if err is None:
            assert ck is not None
            ck.refs[msg.sender] = ck.refs.get(msg.sender, 0) + 1
            ck.retention_epoch += 1  # an expiry already on its way must not apply
            self._stop_retention(ck)
        if not self._origin(msg):
            return
        conn = self.host.conn_of(msg.tag)
        # (a client gone has no handles: a scratch state stands in for its own)
        cs = self._conn_state(conn) if conn is not None else _ConnState()
        cs.opening = max(0, cs.opening - 1)
        if err is not None:
            if op.is_async and conn is not None:
                conn.send_callback(cw.CB_OPEN, cw.encode_open_callback(op.invocation, 0),
                                   err.code)
            else:
                self.host.reply_error(msg.tag, err)
            return
        assert ck is not None
        handle = cs.next_handle
        cs.handles[handle] = _Handle(ck.id, op.flags)  # before the answer: it may go out now
        if conn is None or not (op.is_async or self.host.reply(
                msg.tag, cw.HANDLE.pack(handle), safe=created)):
            # The client left or timed out: nobody will close what this opened.
            del cs.handles[handle]
            self.host.mcast_retried(self, MSG_CLOSE, CLOSE_MSG.pack(ck.id, 0))
            return
        cs.next_handle += 1
        if op.is_async:
            cb = cw.encode_open_callback(op.invocation, handle)
            if created:  # a creation returns once every member has the checkpoint
                self.host.when_safe(lambda: conn.send_callback(cw.CB_OPEN, cb))
            else:
                conn.send_callback(cw.CB_OPEN, cb)

    @lib_handler(cw.REQ_CLOSE, hold_during_sync=True)
    def lib_close(self, conn: LibConn, req: Request) -> Deferred:
        handle = cw.decode_handle_untrusted(req.body)
        h = self._handle(conn, handle)
        self.host.mcast(self, MSG_CLOSE, CLOSE_MSG.pack(h.ckpt_id, handle),
                        tag=req.tag)
        h.closing = True
        return DEFERRED

    @exec_handler(MSG_CLOSE, replay=True)
    def exec_close(self, msg: ExecMessage) -> None:
        ckpt_id, handle = CLOSE_MSG.decode(msg.payload)
        ck = self.ckpts.get(ckpt_id)
        if ck is not None and ck.refs.get(msg.sender, 0) > 0:
            ck.refs[msg.sender] -= 1
            if not ck.refs[msg.sender]:
                del ck.refs[msg.sender]
            self._after_unref(ck)
        if self._origin(msg):
            conn = self.host.conn_of(msg.tag)
            if conn is not None:
                self._conn_state(conn).handles.pop(handle, None)
            self.host.reply(msg.tag)

    @exec_handler(MSG_CLOSE_MANY, replay=True)
    def exec_close_many(self, msg: ExecMessage) -> None:
        """The sender's node drops one reference to each listed checkpoint."""
        (ids,) = CLOSE_MANY_MSG.decode(msg.payload)
        for ckpt_id in ids:
            ck = self.ckpts.get(ckpt_id)
            if ck is not None and ck.refs.get(msg.sender, 0) > 0:
                ck.refs[msg.sender] -= 1
                if not ck.refs[msg.sender]:
                    del ck.refs[msg.sender]
                self._after_unref(ck)

    lib_unlink = forward(cw.REQ_UNLINK, MSG_UNLINK, body=_unlink_body)

    @exec_handler(MSG_UNLINK, replay=True)
    def exec_unlink(self, msg: ExecMessage) -> None:
        ckpt_id = self.names.pop(msg.payload, None)
        ck = self.ckpts.get(ckpt_id) if ckpt_id is not None else None
        if ck is None:
            # A replay finds the name gone where the unlink was applied (a merge
            # keeps a deletion); linked still where the kept replica never had it.
            self.host.reply_error(msg.tag, applied_elsewhere()
                                  if msg.replay else NotExist("no checkpoint of that name"))
            return
        ck.linked = False
        if not ck.total_refs:
            self._delete(ck)
        self.host.reply(msg.tag, safe=True)

    # --- attributes ------------------------------------------------------------------------

    lib_retention_set = forward(cw.REQ_RETENTION_SET, MSG_RETENTION_SET, body=_by_handle(
        check=lambda rest: _require(cw.decode_retention_untrusted(rest) >= 0,
                                    "negative retention duration")))

    @exec_handler(MSG_RETENTION_SET, replay=True)
    def exec_retention_set(self, msg: ExecMessage) -> None:
        ck, rest = self._ckpt_of(msg)
        if ck is None:
            return
        if not ck.linked:
            self.host.reply_error(msg.tag, BadOperation("checkpoint is unlinked"))
            return
        ck.attrs = replace(ck.attrs, retention_duration=cw.decode_retention_untrusted(rest))
        self._updated(ck, msg)
        if not ck.total_refs:
            # Measured from the last close, not from this call.
            self._start_retention(ck, since=ck.zero_since)
        self.host.reply(msg.tag, safe=True)

    lib_active_set = forward(cw.REQ_ACTIVE_SET, MSG_ACTIVE_SET, body=_by_handle(_WRITE))

    @exec_handler(MSG_ACTIVE_SET, replay=True)
    def exec_active_set(self, msg: ExecMessage) -> None:
        ck, _ = self._ckpt_of(msg)
        if ck is None:
            return
        if ck.attrs.creation_flags == cw.SA_CKPT_WR_ALL_REPLICAS:
            self.host.reply_error(msg.tag, BadOperation("checkpoint has no active replica"))
            return
        ck.active_node = msg.sender
        self._updated(ck, msg)
        self.host.reply(msg.tag, safe=True)

    lib_status_get = forward(cw.REQ_STATUS_GET, MSG_STATUS, body=_by_handle())

    @exec_handler(MSG_STATUS, replay=True)
    def exec_status(self, msg: ExecMessage) -> None:
        if not self._origin(msg):
            return
        ck, _ = self._ckpt_of(msg, changes=False)
        if ck is not None:
            self.host.reply(msg.tag, cw.encode_status(
                cw.CheckpointStatus(ck.attrs, len(ck.sections), ck.used)))

    # --- sections ----------------------------------------------------------------------------

    lib_section_create = forward(cw.REQ_SECTION_CREATE, MSG_SECTION_CREATE, body=_by_handle(
        _WRITE, lambda rest: _require(cw.decode_section_create_untrusted(rest).expiration >= 0,
                                      "negative expiration time")))

    @exec_handler(MSG_SECTION_CREATE, replay=True)
    def exec_section_create(self, msg: ExecMessage) -> None:
        ck, rest = self._ckpt_of(msg)
        if ck is None:
            return
        sc = cw.decode_section_create_untrusted(rest)
        try:
            self._check_active(ck)
            if sc.section_id == cw.SA_CKPT_DEFAULT_SECTION_ID:
                raise InvalidParam("the default section cannot be created")
            if len(sc.section_id) > ck.attrs.max_section_id_size:
                raise InvalidParam("section id longer than maxSectionIdSize")
            if len(sc.data) > ck.attrs.max_section_size:
                raise InvalidParam("initial data larger than maxSectionSize")
            if sc.section_id in ck.sections:
                raise Exist("section exists")
            if len(ck.sections) >= ck.attrs.max_sections:
                raise NoSpace("maxSections reached")
            if ck.used + len(sc.data) > ck.attrs.checkpoint_size:
                raise NoSpace("checkpointSize would be exceeded")
            if self._sections_total() >= self.limits.max_sections:
                raise self._sections_full(ck.name)
        except SaError as err:
            self.host.reply_error(msg.tag, err)
            return
        sec = Section(bytearray(sc.data), sc.expiration, sc.now)
        ck.sections[sc.section_id] = sec
        self._count_sections(1)
        ck.used += len(sc.data)
        self._arm_section(ck, sc.section_id, sec, sc.remaining)
        self._updated(ck, msg)
        self.host.reply(msg.tag, safe=self._safe(ck, msg))

    lib_section_delete = forward(cw.REQ_SECTION_DELETE, MSG_SECTION_DELETE,
                                 body=_by_handle(_WRITE))

    @exec_handler(MSG_SECTION_DELETE, replay=True)
    def exec_section_delete(self, msg: ExecMessage) -> None:
        ck, sid = self._ckpt_of(msg)
        if ck is None:
            return
        try:
            self._check_active(ck)
            if sid == cw.SA_CKPT_DEFAULT_SECTION_ID:
                raise InvalidParam("the default section cannot be deleted")
            if sid not in ck.sections:
                raise NotExist("no such section")
        except SaError as err:
            self.host.reply_error(msg.tag, err)
            return
        self._remove_section(ck, sid)
        self._updated(ck, msg)
        self.host.reply(msg.tag, safe=self._safe(ck, msg))

    def _sections_total(self) -> int:
        """Sections of all live checkpoints; counted again only when ``ckpts``
        was replaced (a merge) or a checkpoint deleted, else kept up to date."""
        if self._counted_ckpts is not self.ckpts:
            self._nsections = sum(len(ck.sections) for ck in self.ckpts.values())
            self._counted_ckpts = self.ckpts
        return self._nsections

    def _count_sections(self, delta: int) -> None:
        if self._counted_ckpts is self.ckpts:
            self._nsections += delta

    def _sections_full(self, name: bytes) -> NoResources:
        self._limit_log.log(self.log, logging.WARNING,
                            "section of %r not created: limit max_sections (%d in the "
                            "cluster) reached", name, self.limits.max_sections)
        return NoResources("too many sections in the cluster")

    def _remove_section(self, ck: Checkpoint, sid: bytes) -> None:
        sec = ck.sections.pop(sid)
        self._count_sections(-1)
        ck.used -= len(sec.data)
        self._expiry.cancel((ck.id, sid))

    lib_section_expiration_set = forward(
        cw.REQ_SECTION_EXPIRATION_SET, MSG_SECTION_EXPIRATION_SET, body=_by_handle(
            _WRITE, lambda rest: _require(cw.decode_section_expiration_untrusted(rest)[1] >= 0,
                                          "negative expiration time")))

    @exec_handler(MSG_SECTION_EXPIRATION_SET, replay=True)
    def exec_section_expiration_set(self, msg: ExecMessage) -> None:
        ck, rest = self._ckpt_of(msg)
        if ck is None:
            return
        sid, exp, remaining = cw.decode_section_expiration_untrusted(rest)
        try:
            self._check_active(ck)
            if sid == cw.SA_CKPT_DEFAULT_SECTION_ID:
                raise InvalidParam("the default section never expires")
            sec = ck.sections.get(sid)
            if sec is None:
                raise NotExist("no such section")
        except SaError as err:
            self.host.reply_error(msg.tag, err)
            return
        sec.expiration = exp
        self._arm_section(ck, sid, sec, remaining)
        self._updated(ck, msg)
        self.host.reply(msg.tag, safe=self._safe(ck, msg))

    @exec_handler(MSG_SECTION_EXPIRE, replay=True)
    def exec_section_expire(self, msg: ExecMessage) -> None:
        ckpt_id, exp, sid = SECTION_EXPIRE_MSG.decode(msg.payload)
        ck = self.ckpts.get(ckpt_id)
        sec = ck.sections.get(sid) if ck else None
        if ck is None or sec is None or sec.expiration != exp:
            return  # deleted, or given a new expiration time meanwhile
        self._remove_section(ck, sid)
        self._updated(ck, msg)
        self.log.debug("section %r of %r expired", sid, ck.name)

    @exec_handler(MSG_RETENTION_EXPIRE, replay=True)
    def exec_retention_expire(self, msg: ExecMessage) -> None:
        ckpt_id, epoch = EXPIRE_MSG.decode(msg.payload)
        ck = self.ckpts.get(ckpt_id)
        if ck is None or ck.total_refs or ck.retention_epoch != epoch:
            return  # reopened (or deleted) before the expiry was delivered
        self.log.debug("checkpoint %r retention expired", ck.name)
        self._delete(ck)

    # --- iteration -------------------------------------------------------------------------------

    lib_iter_init = forward(cw.REQ_ITER_INIT, MSG_ITER_INIT, body=_by_handle(
        check=lambda rest: _require(cw.decode_iter_init_untrusted(rest)[0] in cw.SECTION_FILTERS,
                                    "sections chosen")))

    @exec_handler(MSG_ITER_INIT, replay=True)
    def exec_iter_init(self, msg: ExecMessage) -> None:
        if not self._origin(msg):
            return
        ck, rest = self._ckpt_of(msg, changes=False)
        conn = self.host.conn_of(msg.tag)
        if ck is None or conn is None:
            return
        filt, when = cw.decode_iter_init_untrusted(rest)

        def chosen(sec: Section) -> bool:
            if filt == cw.SA_CKPT_SECTIONS_FOREVER:
                return sec.expiration >= SA_TIME_END
            if filt == cw.SA_CKPT_SECTIONS_LEQ_EXPIRATION_TIME:
                return sec.expiration <= when
            if filt == cw.SA_CKPT_SECTIONS_GEQ_EXPIRATION_TIME:
                return sec.expiration >= when
            # replicas are written in agreed order: never corrupted
            return filt != cw.SA_CKPT_SECTIONS_CORRUPTED

        snap = [cw.SectionDescriptor(sid, s.expiration, len(s.data), cw.SA_CKPT_SECTION_VALID,
                                     s.last_update)
                for sid, s in ck.sections.items() if chosen(s)]
        cs = self._conn_state(conn)
        iter_id = cs.next_iter
        cs.next_iter += 1
        cs.iterators[iter_id] = snap
        self.host.reply(msg.tag, cw.encode_iter_id(iter_id))

    @lib_handler(cw.REQ_ITER_NEXT)
    def lib_iter_next(self, conn: LibConn, req: Request) -> bytes:
        iter_id = cw.decode_iter_id_untrusted(req.body)
        snap = self._conn_state(conn).iterators.get(iter_id)
        if snap is None:
            raise BadHandle(f"no section iterator {iter_id}")
        batch, snap[:] = snap[:ITER_BATCH], snap[ITER_BATCH:]
        return cw.encode_iter_next_reply(not snap, batch)

    @lib_handler(cw.REQ_ITER_FINALIZE)
    def lib_iter_finalize(self, conn: LibConn, req: Request) -> bytes:
        iter_id = cw.decode_iter_id_untrusted(req.body)
        if self._conn_state(conn).iterators.pop(iter_id, None) is None:
            raise BadHandle(f"no section iterator {iter_id}")
        return b""

    # --- data -------------------------------------------------------------------------------------

    lib_write = forward(cw.REQ_WRITE, MSG_WRITE, body=_by_handle(
        _WRITE, lambda rest: _require(bool(cw.decode_write_untrusted(rest).vectors),
                                      "no IO vectors")))

    @exec_handler(MSG_WRITE, replay=True)
    def exec_write(self, msg: ExecMessage) -> None:
        ck, rest = self._ckpt_of(msg)
        if ck is None:
            return
        wr = cw.decode_write_untrusted(rest)
        # Validate every vector before applying any, so a failing call changes
        # nothing (on every replica alike) and names the failing element.
        sizes: dict[bytes, int] = {}
        used = ck.used
        for i, (sid, off, data) in enumerate(wr.vectors):
            try:
                self._check_active(ck)
                sec = ck.sections.get(sid)
                if sec is None:
                    raise NotExist("no such section")
                end = off + len(data)
                if end > ck.attrs.max_section_size:
                    raise InvalidParam("write beyond maxSectionSize")
                cur = sizes.get(sid, len(sec.data))
                new = max(cur, end)
                used += new - cur
                sizes[sid] = new
                if used > ck.attrs.checkpoint_size:
                    raise NoSpace("checkpointSize would be exceeded")
            except SaError as err:
                self.host.reply(msg.tag, cw.encode_io_status(err.code, i))
                return
        for sid, off, data in wr.vectors:
            sec = ck.sections[sid]
            if off > len(sec.data):
                sec.data.extend(bytes(off - len(sec.data)))
            sec.data[off:off + len(data)] = data
            sec.last_update = wr.now
        ck.used = used
        self._updated(ck, msg)
        self.host.reply(msg.tag, cw.encode_io_status(SA_OK, 0), safe=self._safe(ck, msg))

    lib_overwrite = forward(cw.REQ_OVERWRITE, MSG_OVERWRITE, body=_by_handle(_WRITE))

    @exec_handler(MSG_OVERWRITE, replay=True)
    def exec_overwrite(self, msg: ExecMessage) -> None:
        ck, rest = self._ckpt_of(msg)
        if ck is None:
            return
        now, sid, data = cw.decode_overwrite_untrusted(rest)
        try:
            self._check_active(ck)
            sec = ck.sections.get(sid)
            if sec is None:
                raise NotExist("no such section")
            if len(data) > ck.attrs.max_section_size:
                raise InvalidParam("data larger than maxSectionSize")
            if ck.used - len(sec.data) + len(data) > ck.attrs.checkpoint_size:
                raise NoSpace("checkpointSize would be exceeded")
        except SaError as err:
            self.host.reply_error(msg.tag, err)
            return
        ck.used += len(data) - len(sec.data)
        sec.data = bytearray(data)
        sec.last_update = now
        self._updated(ck, msg)
        self.host.reply(msg.tag, safe=self._safe(ck, msg))

    lib_read = forward(cw.REQ_READ, MSG_READ, body=_by_handle(
        _READ, lambda rest: _require(bool(cw.decode_read_untrusted(rest)), "no IO vectors")))

    @exec_handler(MSG_READ, replay=True)
    def exec_read(self, msg: ExecMessage) -> None:
        if not self._origin(msg):
            return
        ck, rest = self._ckpt_of(msg, changes=False)
        if ck is None:
            return
        out: list[bytes] = []
        total = 0
        for i, (sid, off, size) in enumerate(cw.decode_read_untrusted(rest)):
            try:
                sec = ck.sections.get(sid)
                if sec is None:
                    raise NotExist("no such section")
                if off > ck.attrs.max_section_size:
                    raise InvalidParam("offset beyond maxSectionSize")
                end = len(sec.data) if size == cw.READ_ALL else off + size
                piece = bytes(sec.data[off:end])
                total += len(piece)
                if total > cw.MAX_IO_BYTES:
                    raise NoSpace("more data than one read call can carry")
            except SaError as err:
                self.host.reply(msg.tag, cw.encode_read_reply(err.code, i, []))
                return
            out.append(piece)
        self.host.reply(msg.tag, cw.encode_read_reply(SA_OK, 0, out))

    lib_synchronize = forward(cw.REQ_SYNCHRONIZE, MSG_SYNCHRONIZE,
                              body=_by_handle(_WRITE, _check_sync_flag(False)))

    @lib_handler(cw.REQ_SYNCHRONIZE_ASYNC, hold_during_sync=True)
    def lib_synchronize_async(self, conn: LibConn, req: Request) -> bytes:
        body = _by_handle(_WRITE, _check_sync_flag(True))(self, conn, req)
        self.host.mcast(self, MSG_SYNCHRONIZE, body, tag=req.tag)
        return b""  # the outcome comes in the synchronize callback

    @exec_handler(MSG_SYNCHRONIZE, replay=True)
    def exec_synchronize(self, msg: ExecMessage) -> None:
        # Every replica applied every earlier write when this barrier is delivered:
        # that is all synchronisation means when writes go through the ring.
        if not self._origin(msg):
            return
        ckpt_id, rest = cw.split_ckpt_id_untrusted(msg.payload)
        invocation, is_async, _ = cw.decode_synchronize_untrusted(rest)
        ck = self.ckpts.get(ckpt_id)
        err: SaError | None = None
        if ck is None:
            err = BadHandle("checkpoint no longer exists")
        elif ck.attrs.creation_flags == cw.SA_CKPT_WR_ALL_REPLICAS:
            err = BadOperation("SA_CKPT_WR_ALL_REPLICAS checkpoints are always synchronous")
        # Returns once every member holds every write ordered before it.
        if is_async:
            conn = self.host.conn_of(msg.tag)
            if conn is not None:
                cb, code = cw.encode_sync_callback(invocation), SA_OK if err is None else err.code
                self.host.when_safe(lambda: conn.send_callback(cw.CB_SYNCHRONIZE, cb, code))
        elif err is None:
            self.host.reply(msg.tag, safe=True)
        else:
            self.host.reply_error(msg.tag, err)

    # --- sync ------------------------------------------------------------------------------------

    def sync_start(self, info: SyncInfo) -> None:
        self._round = info
        self._incoming = {}
        self._incoming_tombs = {}
        self._remaining = {}
        self._announced = {}
        self._sync_gen = self._sync_messages(self.host.node_id in info.senders)
        self._sync_next = None

    def _sync_messages(self, send_state: bool) -> Iterator[tuple[int, bytes]]:
        me = self.host.node_id
        mine = [(ck.id, ck.refs[me]) for ck in self.ckpts.values() if ck.refs.get(me)]
        for start in range(0, max(1, len(mine)), 4096):
            part = mine[start:start + 4096]
            yield MSG_SYNC_REFS, SYNC_REFS_MSG.pack(part)
        if not send_state:
            return
        tombs = list(self.tombstones)
        for start in range(0, max(1, len(tombs)), 4096):
            ids = tombs[start:start + 4096]
            yield MSG_SYNC_TOMBSTONES, SYNC_TOMBSTONES_MSG.pack(ids)
        now = self.host.now()
        for ck in list(self.ckpts.values()):
            yield MSG_SYNC_CKPT, SYNC_CKPT_MSG.encode(ck)
            for sid, sec in list(ck.sections.items()):
                deadline = self._expiry.deadline((ck.id, sid))
                remaining = SA_TIME_END if deadline is None else \
                    max(0, int((deadline - now) * 1e9))
                data = bytes(sec.data)
                off = 0
                while True:
                    chunk = data[off:off + SYNC_CHUNK]
                    yield MSG_SYNC_SECTION, SYNC_SECTION_MSG.pack(
                        ck.id, sec.expiration, remaining, sec.last_update, len(data), off,
                        sid, chunk)
                    off += len(chunk)
                    if off >= len(data):
                        break

    def sync_process(self) -> bool:
        if self._sync_gen is None:
            return True
        budget = SYNC_BUDGET
        while budget > 0:
            if self._sync_next is None:
                self._sync_next = next(self._sync_gen, None)
                if self._sync_next is None:
                    self._sync_gen = None
                    return True
            msg_id, payload = self._sync_next
            self.host.mcast_sync(self, msg_id, payload)  # TryAgain: the host calls again
            self._sync_next = None
            budget -= len(payload)
        return False

    def sync_abort(self) -> None:
        self._sync_gen = None
        self._sync_next = None

    @exec_handler(MSG_SYNC_REFS)
    def exec_sync_refs(self, msg: ExecMessage) -> None:
        (refs,) = SYNC_REFS_MSG.decode(msg.payload)
        self._announced.setdefault(msg.sender, {}).update(refs)

    @exec_handler(MSG_SYNC_TOMBSTONES)
    def exec_sync_tombstones(self, msg: ExecMessage) -> None:
        # Always the first state message of a streaming side: it registers the side
        # even when the side has no checkpoints at all.
        (ids,) = SYNC_TOMBSTONES_MSG.decode(msg.payload)
        self._incoming.setdefault(msg.sender, {})
        self._incoming_tombs.setdefault(msg.sender, set()).update(ids)

    @exec_handler(MSG_SYNC_CKPT)
    def exec_sync_ckpt(self, msg: ExecMessage) -> None:
        ck: Checkpoint = SYNC_CKPT_MSG.decode(msg.payload)
        self._incoming.setdefault(msg.sender, {})[ck.id] = ck

    @exec_handler(MSG_SYNC_SECTION)
    def exec_sync_section(self, msg: ExecMessage) -> None:
        ckpt_id, exp, remaining, last, _total, off, sid, chunk = \
            SYNC_SECTION_MSG.decode(msg.payload)
        ck = self._incoming.get(msg.sender, {}).get(ckpt_id)
        if ck is None:
            self._limit_log.log(self.log, logging.ERROR,
                                "sync section for unknown checkpoint from %s", fmt_node(msg.sender))
            return
        sec = ck.sections.get(sid)
        if off == 0:
            sec = ck.sections[sid] = Section(bytearray(), exp, last)
            self._remaining[(msg.sender, ckpt_id, sid)] = remaining
        if sec is None or off != len(sec.data):
            self._limit_log.log(self.log, logging.ERROR,
                                "sync section chunk out of order from %s", fmt_node(msg.sender))
            return
        sec.data += chunk
        ck.used += len(chunk)

    def sync_done(self) -> None:
        info = self._round
        self._round = None
        self._sync_gen = None
        if info is None:
            return
        replaced: set[CkptId] = set()
        self._source = {}
        if self._incoming:
            replaced = self._install(self._merge(self._incoming))
            tombs: set[CkptId] = set()  # from delivered messages only, like the rest
            for side in self._incoming_tombs.values():
                tombs |= side
            # Deterministic order everywhere, so the cap forgets the same ids.
            self.tombstones = dict.fromkeys(sorted(tombs)[-TOMBSTONES_MAX:])
        members = set(info.members)
        for ck in list(self.ckpts.values()):
            was_zero = ck.total_refs == 0
            ck.refs = {node: got[ck.id] for node, got in sorted(self._announced.items())
                       if node in members and got.get(ck.id)}
            if ck.active_node and ck.active_node not in members:
                ck.active_node = 0
            if ck.total_refs:
                self._stop_retention(ck)
                continue
            # Uniform on every member: expiries sent before this round no longer apply.
            ck.retention_epoch += 1
            deadline = self._retention.deadline(ck.id)
            if not ck.linked:
                self._delete(ck)
            elif ck.id in replaced or not was_zero or deadline is None:
                self._start_retention(ck)
            else:
                self._arm_retention(ck, deadline)  # the same deadline, the new epoch
        self._incoming = {}
        self._incoming_tombs = {}
        self._announced = {}
        self._remaining = {}
        # Deadlines already past are then sent by the (new) lowest member: the timers do it.

    def _merge(self, sides: dict[int, dict[CkptId, Checkpoint]]) -> dict[CkptId, Checkpoint]:
        """The merge rule of the module docstring; a function of the staged sides only
        (it also records which side each checkpoint came from, ``_source``)."""
        by_id: dict[CkptId, Checkpoint] = {}
        sender_of: dict[CkptId, int] = {}
        unlinked: set[CkptId] = set()
        replicas: dict[CkptId, list[tuple[int, Checkpoint]]] = {}
        for sender in sorted(sides):
            for ckpt_id, ck in sides[sender].items():
                if not ck.linked:
                    unlinked.add(ckpt_id)
                replicas.setdefault(ckpt_id, []).append((sender, ck))
        for ckpt_id, reps in replicas.items():
            # Greatest version; equal versions are equal replicas (the first, from
            # the lowest sender, supplies the unversioned fields).
            sender, win = max(reps, key=lambda r: r[1].version())
            by_id[ckpt_id] = win
            sender_of[ckpt_id] = sender
            for lost_sender, ck in reps:
                if ck.version() != win.version():
                    self._log_loss(win, sender, ck, lost_sender)
        for tombs in self._incoming_tombs.values():
            # Deleted on one side (unlinked and closed, or retention expired):
            # the deletion wins; still-open replicas live on unlinked.
            unlinked |= tombs & by_id.keys()
        for ckpt_id in unlinked:
            by_id[ckpt_id].linked = False
        holder: dict[bytes, Checkpoint] = {}
        for ck in sorted(by_id.values(), key=lambda c: c.id):
            if not ck.linked:
                continue
            other = holder.get(ck.name)
            if other is None:
                holder[ck.name] = ck
            elif ck.version() + (ck.id,) > other.version() + (other.id,):
                other.linked = False
                holder[ck.name] = ck
            else:
                ck.linked = False
        for ckpt_id, ck in by_id.items():
            sender = sender_of[ckpt_id]
            for sid, sec in ck.sections.items():
                sec.remaining = self._remaining.get((sender, ckpt_id, sid), SA_TIME_END)
        self._source = sender_of
        return by_id

    def _log_loss(self, win: Checkpoint, win_sender: int, lost: Checkpoint,
                  lost_sender: int) -> None:
        common = win.common_updates(lost)
        if common == lost.updates:
            return  # the kept replica's history extends the other: nothing is lost
        what = (f"the last {lost.updates - common} of its updates are lost" if common is not None
                else "updates it had that the kept one lacks are lost (how many is beyond "
                     "the remembered history)")
        self.log.warning(
            "checkpoint %r: replicas diverged during a partition; keeping the one sent by "
            "%s (%d updates, last in ring %d), discarding the one sent by %s (%d updates, "
            "last in ring %d): %s", win.name.decode(errors="replace"),
            fmt_node(win_sender), win.updates, win.last_ring[0], fmt_node(lost_sender),
            lost.updates, lost.last_ring[0], what)

    def _install(self, merged: dict[CkptId, Checkpoint]) -> set[CkptId]:
        """Replace the live state with ``merged``; keep local timers of unchanged replicas."""
        old = self.ckpts
        for ckpt_id, cur in old.items():
            new = merged.get(ckpt_id)
            if new is not None and cur.version() == new.version() \
                    and cur.sections.keys() == new.sections.keys():
                # Same history (the digest says so): keep our replica and its timers.
                cur.linked = new.linked
                cur.active_node = new.active_node
                cur.retention_epoch = new.retention_epoch
                cur.attrs = new.attrs
                merged[ckpt_id] = cur
            else:
                self._drop_timers(cur)  # before the new replica's timers, under the same keys
        replaced = {ckpt_id for ckpt_id, new in merged.items() if old.get(ckpt_id) is not new}
        for ckpt_id in replaced:
            new = merged[ckpt_id]
            for sid, sec in new.sections.items():
                self._arm_section(new, sid, sec, sec.remaining)
        self.ckpts = merged
        self.names = {ck.name: ck.id for ck in merged.values() if ck.linked}
        return replaced

    # --- introspection ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For logs, tests and the status command."""
        return {"checkpoints": len(self.ckpts), "linked": len(self.names),
                "sections": sum(len(ck.sections) for ck in self.ckpts.values()),
                "bytes": sum(ck.used for ck in self.ckpts.values())}

    def digest(self) -> list[tuple[Any, ...]]:
        """The replicated state, comparable across nodes (tests)."""
        return sorted(
            (ck.id, ck.name, ck.linked, ck.attrs, ck.updates, ck.active_node,
             tuple(sorted(ck.refs.items())),
             tuple(sorted((sid, bytes(s.data), s.expiration, s.last_update)
                          for sid, s in ck.sections.items())))
            for ck in self.ckpts.values())


__all__ = ["Checkpoint", "CkptService", "Section"]
