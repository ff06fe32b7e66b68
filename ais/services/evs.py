"""EVS, group messaging for applications (executive side; spec/evs.md).

Theory of operation
-------------------
A *member* is one library handle that joined a group: (node, conn, pid),
node being the Totem id of its executive and conn its connection id there.
The replicated state, identical on every node at every point of the agreed
order, is the table group -> members.  Every change to it travels on the ring,
so it takes effect at the same point of the order everywhere:

* JOIN / LEAVE (a client's request, answered when its ring message is
  delivered here) and EXIT (a handle finalized or its connection dropped,
  sent by the service itself with ``host.mcast_retried``).  A ring
  message only ever changes members of its *sender* node, so no node can add
  or remove another node's processes.
* Configuration changes: after each regular configuration the sync round
  rebuilds the table from per-node data, as CLM does with its node records.
  Every member announces its own node's members (``MSG_SYNC_MEMBERS``, in
  bounded chunks); at ``sync_done`` the table becomes the union of the
  announcements of the new configuration's members.  The processes of a node
  that left are thus gone, and a joining (or merging) node learns everyone,
  at the same point of the order on every member of the new ring.  Before
  that, at the transitional configuration, the processes of the nodes that
  did not come along already leave (``on_confchg``), so a split that heals
  before any round completes is still a departure and a return.  Messages a
  round held when a new configuration abandons it are delivered then, where
  Totem delivered them (``apply_held_on_abort``), never re-sent.

Views.  Whenever a group's member list changes, every local member of the
group (after the change) gets a CONFCHG callback: the group, its members, and
who left and joined; a joining handle thus gets one that lists itself as
joined, and a leaving one gets none.  Members are listed sorted, so the
callback is byte-identical on every node that makes it.  A view is shown only
where every node showing it agrees on the table: at a change delivered
outside a sync round, at a transitional configuration, at a completed round.
From a regular configuration until its round completes the table may hold
only this node's side of a merge, so the changes applied meanwhile (an
abandoned round's held messages) are quiet: the processes keep the view they
were shown, a multicast reaches only those in it, and the completed round
shows the net change (a member that left and joined again meanwhile is shown
leaving first) and answers the quiet JOINs of this node's handles (a handle
multicasts only once it is shown).

Whose multicasts are delivered here: the peers' (the members of the last
completed round, less those a transitional configuration left behind) and,
in a transitional configuration, those of a process it took out of the view
of each of the message's groups, while none of those views gained a member.
So nothing arrives from the far side of a merge whose round has not
completed (no view there showed this node's processes, nor any here
theirs), nor, past a gap Totem skips in a transitional configuration, from
a departed process whose JOIN was in the gap, nor in a view with a member
that never saw the sender (the message reaches every member of a view or
none).

MCAST (``mcast_joined``: tagged with the handle's groups at send time;
``mcast_groups``: with an explicit list) is delivered, when the ring delivers
it, to every local handle that shares at least one group with it, once, the
sender included if it is a member.  A handle that joins therefore sees
exactly the messages ordered after the view that shows it joining.

Guarantees (spec 2): UNORDERED, FIFO and AGREED are all delivered in agreed
order (a stronger guarantee than asked is a valid one).  SAFE is delivered
only once every member of the ring holds the message (``host.when_safe``);
callbacks behind a SAFE one wait with it, so a handle still sees the agreed
order.  Priorities are accepted and not used: one queue per node.

Flow control.  Sending: a multicast is answered as soon as the ring took
it.  Each node may have only its share of ``RING_WINDOW`` messages (and
``RING_WINDOW_BYTES``) in flight -- handed to the ring and not yet delivered
back here; beyond that (or when the ring's own send queue is full) the client
gets SA_ERR_TRY_AGAIN and retries.  So a fast sender is held to the ring's
pace, nothing queues without bound, and what the ring can deliver in one burst
(say, all that queued while a failed node was being detected) stays far below
a client's callback bound.  Receiving: each callback goes to the handle's
outbox in ``ais.ipc``; a client that stops dispatching is disconnected once
``IpcLimits.max_queued_callbacks`` frames or ``max_queued_bytes`` bytes wait
for it (the ring is never held back for one reader), and its groups see it
leave like any finalize.

Pipelining: ``saf.evs`` sends multicasts without waiting for their answers
(MCAST_QUEUE, at most ``_evs_wire.PIPELINE`` unanswered per handle).  Those
are never refused for lack of room: when the window is full, or when the
sending handle is behind on reading its own callbacks
(``IpcConnection.congested``, a quarter of its outbox bounds), they are held
per handle, in its order, and sent round-robin between handles as room
appears; each is answered once it is on the ring.  A handle that finalizes
drops what it still has held.
"""
from __future__ import annotations

import collections
from typing import Any
from collections.abc import Iterable

from ais.log import RateLimiter
from ais.services.base import (
    DEFERRED, Deferred, ExecMessage, HostAPI, LibConn, Request, Service, SyncInfo,
    exec_handler, lib_handler, register_service,
)
from ais.totem.events import ConfChange, fmt_node
from saf import _evs_wire as ew
from saf._codec import Layout, array, pad, rest, u8, u16, u32, u64
from saf.errors import InvalidParam, IpcProtocolError, NotExist, TryAgain

# Ring messages of this service (decoders raise IpcProtocolError; the host drops
# a message whose handler raises).
MSG_JOIN = 1
MSG_LEAVE = 2
MSG_MCAST = 3
MSG_EXIT = 4
MSG_SYNC_MEMBERS = 5  # sync round only

# JOIN / LEAVE: | conn u32 | pid u32 | group list (saf._evs_wire GROUP_LIST) |
RING_WHO = Layout(None, "JOIN/LEAVE", ("conn", u32), ("pid", u32), *ew.GROUP_LIST.entries)

# MCAST: | conn u32 | pid u32 | guarantee u8 | pad u8 | count u16 | seq u64 |
#        | count x group[32] | data |      seq: the sending node's MCAST counter
RING_MCAST = Layout(None, "MCAST", ("conn", u32), ("pid", u32), ("guarantee", u8), pad(1),
                    ("count", u16), ("seq", u64),
                    ("groups", array(ew.GROUP, "count", max=ew.MAX_GROUPS)), ("data", rest()))

# EXIT: | conn u32 |  (every group of that handle)
RING_EXIT = Layout(None, "EXIT", ("conn", u32))

# SYNC_MEMBERS: | count u16 | pad u16 | count x SYNC_ENTRY |
#  SYNC_ENTRY (40 bytes): | group[32] | conn u32 | pid u32 |
SYNC_ENTRY = Layout(None, "member entry", ("group", ew.GROUP), ("conn", u32), ("pid", u32))
SYNC_MEMBERS = Layout(None, "SYNC_MEMBERS", ("count", u16), pad(2),
                      ("entries", array(SYNC_ENTRY, "count")))
#: entries per SYNC_MEMBERS message (about 44 KiB)
SYNC_CHUNK = 1024

EVS_TYPE_UNORDERED = 0
EVS_TYPE_FIFO = 1
EVS_TYPE_AGREED = 2
EVS_TYPE_SAFE = 3
EVS_PRIO_LOWEST = 3

#: MCASTs the whole ring may have in flight (sent, not yet delivered back to their
#: sender); each node gets its share.  This bounds the burst a client may receive
#: at once (say, when a ring re-forms after a failure) well below
#: ``IpcLimits.max_queued_callbacks``, so only a client that stops reading is dropped.
#: Measured on loopback (bench/evs_bench.py): a deep ring queue is slower, not
#: faster -- 64 gave about twice the rate of 1024 on two nodes.
RING_WINDOW = 64
#: the same, in bytes of data (below ``IpcLimits.max_queued_bytes``)
RING_WINDOW_BYTES = 2 * 1024 * 1024
#: every node may have at least this much in flight
MIN_WINDOW, MIN_WINDOW_BYTES = 16, 256 * 1024
#: seconds between tries to send held multicasts while the ring refuses them
PUMP_DELAY = 0.002

Key = tuple[int, int]  # (node, conn)


def _dedupe(groups: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(groups))


def _congested(conn: LibConn) -> bool:
    """The handle is behind on reading its callbacks (``ais.ipc``; test fakes: never)."""
    congested = getattr(conn, "congested", None)
    return bool(congested is not None and congested())


@register_service
class EvsService(Service):
    """Group messaging.  Options: none."""

    name = "evs"
    service_id = ew.EVS_SERVICE_ID
    # Every round rebuilds the table from per-node lists, and an MCAST only
    # reaches local handles: messages an abandoned round held are delivered
    # where Totem delivered them, never re-sent (a re-send could reach a node
    # that already delivered the message).
    apply_held_on_abort = True

    def __init__(self) -> None:
        #: group -> {(node, conn): pid}, the replicated table
        self.groups: dict[bytes, dict[Key, int]] = {}
        #: (node, conn) -> its groups (the same table, by member)
        self.by_member: dict[Key, set[bytes]] = {}
        #: this node's open EVS connections
        self.local: dict[int, LibConn] = {}
        #: group -> this node's conns in it
        self.local_index: dict[bytes, set[int]] = {}
        #: group -> the members its local processes were last shown, while a
        #: sync round is pending (None once a round completes: the table is
        #: what they were shown) -- see ``on_confchg``
        self._shown: dict[bytes, dict[Key, int]] | None = {}
        #: members that left a group (LEAVE, EXIT) quietly while still shown
        self._dropped: dict[bytes, set[Key]] = {}
        #: the nodes whose processes the views here may show: the last completed
        #: round's members, less those a transitional configuration left behind
        self._peers: frozenset[int] = frozenset()
        #: after a transitional configuration, per group: the processes it took
        #: out of the view (their last messages may still be delivered in it),
        #: until the view gains a member
        self._gone: dict[bytes, set[Key]] = {}
        #: this node's JOINs applied quietly: answered once a view shows them
        self._join_replies: list[Any] = []
        self._round: SyncInfo | None = None
        self._announced: dict[int, list[tuple[bytes, int, int]]] = {}
        self._to_announce: list[tuple[bytes, int, int]] | None = None
        # Callbacks wait here behind a SAFE message that is not safe yet.
        self._held: collections.deque[list[Any]] = collections.deque()
        self.delivered = 0
        # This node's MCASTs in flight: (seq, bytes), oldest first; cleared
        # cumulatively when one comes back, so a message lost with a ring
        # cannot hold the window shut.
        self._mcast_seq = 0
        self._inflight: collections.deque[tuple[int, int]] = collections.deque()
        self._inflight_bytes = 0
        #: multicasts of pipelining clients held until the window opens, per handle
        #: in its order: (conn, reply tag, guarantee, groups, data); ``_rr`` is
        #: the round-robin order of the handles with some held
        self._queues: dict[int, collections.deque[
            tuple[LibConn, Any, int, tuple[bytes, ...], bytes]]] = {}
        self._rr: collections.deque[int] = collections.deque()
        self._pump_armed = False

    # --- hooks -------------------------------------------------------------------

    def exec_init(self, host: HostAPI) -> None:
        super().exec_init(host)
        self.log = host.logger("EVS")
        self._bad_log = RateLimiter(burst=5, interval=10.0, clock=host.now)

    def on_lib_connect(self, conn: LibConn) -> None:
        self.local[conn.conn_id] = conn

    def on_lib_exit(self, conn: LibConn) -> None:
        self.local.pop(conn.conn_id, None)
        # Held multicasts of a handle that finalized are dropped with it.
        self._queues.pop(conn.conn_id, None)
        # A JOIN still on its way counts: the EXIT follows it on the ring.
        if conn.private.get("evs_joined") or self.by_member.get((self.host.node_id, conn.conn_id)):
            self.host.mcast_retried(self, MSG_EXIT, RING_EXIT.pack(conn.conn_id))

    # --- the table ------------------------------------------------------------------

    def _add(self, key: Key, pid: int, group: bytes) -> bool:
        members = self.groups.setdefault(group, {})
        if key in members:
            return False
        members[key] = pid
        self.by_member.setdefault(key, set()).add(group)
        if key[0] == self.host.node_id:
            self.local_index.setdefault(group, set()).add(key[1])
        return True

    def _remove(self, key: Key, group: bytes) -> int | None:
        members = self.groups.get(group)
        if members is None or key not in members:
            return None
        pid = members.pop(key)
        if not members:
            del self.groups[group]
        mine = self.by_member.get(key)
        if mine is not None:
            mine.discard(group)
            if not mine:
                del self.by_member[key]
        if key[0] == self.host.node_id:
            idx = self.local_index.get(group)
            if idx is not None:
                idx.discard(key[1])
                if not idx:
                    del self.local_index[group]
        return pid

    def _view(self, group: bytes) -> dict[Key, int]:
        """The members of ``group`` its local processes were last shown."""
        shown = self._shown
        return self.groups.get(group, {}) if shown is None else shown.get(group, {})

    def _confchg(self, group: bytes, left: list[ew.Member], joined: list[ew.Member],
                 view: dict[Key, int] | None = None) -> None:
        """Show ``view`` (default: the group's view) to its local members still in
        the group; the member list is sorted, so byte-identical on every node."""
        if view is None:
            view = self._view(group)
        table = self.groups.get(group, {})
        me = self.host.node_id
        conns = sorted(c for (n, c), pid in view.items() if n == me and table.get((n, c)) == pid)
        if not conns:
            return
        members = tuple(sorted(ew.Member(n, c, pid) for (n, c), pid in view.items()))
        body = ew.encode_confchg(ew.ConfchgCallback(
            group, members, tuple(sorted(left)), tuple(sorted(joined))))
        self._emit(conns, ew.EVS_CB_CONFCHG, body)

    def _emit(self, conns: Iterable[int], cb_id: int, body: bytes) -> None:
        if self._held:
            self._held.append([True, list(conns), cb_id, body])
            return
        local = self.local
        for cid in tuple(conns):
            conn = local.get(cid)
            if conn is not None:
                conn.send_callback(cb_id, body)

    def _release_held(self, entry: list[Any]) -> None:
        entry[0] = True
        while self._held and self._held[0][0]:
            _, conns, cb_id, body = self._held.popleft()
            for cid in conns:
                conn = self.local.get(cid)
                if conn is not None:
                    conn.send_callback(cb_id, body)

    # --- ring messages ------------------------------------------------------------------

    @exec_handler(MSG_JOIN)
    def exec_join(self, msg: ExecMessage) -> None:
        conn, pid, groups = RING_WHO.decode(msg.payload)
        key = (msg.sender, conn)
        quiet = self._shown is not None
        for group in _dedupe(groups):
            if self._add(key, pid, group) and not quiet:
                # (a departed process's last messages would reach the newcomer)
                self._gone.pop(group, None)
                self._confchg(group, [], [ew.Member(msg.sender, conn, pid)])
        if not quiet:
            self.host.reply(msg.tag)
        elif msg.sender == self.host.node_id:
            # Answered when a view shows the join: until then the handle could
            # multicast without getting its own messages.
            self._join_replies.append(msg.tag)

    @exec_handler(MSG_LEAVE)
    def exec_leave(self, msg: ExecMessage) -> None:
        conn, _pid, named = RING_WHO.decode(msg.payload)
        key = (msg.sender, conn)
        groups = _dedupe(named)
        mine = self.by_member.get(key, set())
        if not all(g in mine for g in groups):
            # A concurrent leave got there first: nothing changes (all or nothing).
            self.host.reply_error(msg.tag, NotExist("group not joined"))
            return
        self._drop(key, groups)
        self.host.reply(msg.tag)

    def _drop(self, key: Key, groups: Iterable[bytes]) -> None:
        """Take ``key`` out of ``groups``; while a round is pending, quietly (shown
        when it completes)."""
        shown = self._shown
        for group in groups:
            pid = self._remove(key, group)
            if pid is None:
                continue
            if shown is None:
                self._confchg(group, [ew.Member(key[0], key[1], pid)], [])
            elif shown.get(group, {}).get(key) == pid:
                self._dropped.setdefault(group, set()).add(key)

    @exec_handler(MSG_EXIT)
    def exec_exit(self, msg: ExecMessage) -> None:
        (conn,) = RING_EXIT.decode(msg.payload)
        key = (msg.sender, conn)
        self._drop(key, sorted(self.by_member.get(key, ())))

    @exec_handler(MSG_MCAST)
    def exec_mcast(self, msg: ExecMessage) -> None:
        conn, pid, guarantee, seq, groups, data = RING_MCAST.decode(msg.payload)
        if msg.sender == self.host.node_id:
            inflight = self._inflight
            while inflight and inflight[0][0] <= seq:
                self._inflight_bytes -= inflight.popleft()[1]
            if self._queues:
                self._pump_waiting()
        index = self.local_index
        shown = self._shown
        if msg.sender not in self._peers:
            gone = self._gone
            if not all((msg.sender, conn) in gone.get(g, ()) for g in groups):
                # Only a process a transitional configuration just took out of
                # every one of these views, none of which gained a member since:
                # not one from the far side of a merge no round has completed,
                # nor, past a gap Totem skipped, one whose JOIN was in the gap.
                groups = ()
        if len(groups) == 1 and shown is None:
            targets: Iterable[int] = index.get(groups[0], ())
        else:
            found: set[int] = set()
            me = self.host.node_id
            for g in groups:
                s = index.get(g)
                if s and shown is not None:
                    # A round is pending: only processes shown the group get it.
                    view = shown.get(g, {})
                    s = {c for c in s if (me, c) in view}
                if s:
                    found |= s
            targets = sorted(found)
        self.delivered += 1
        if not targets:
            return
        body = ew.MEMBER.pack(msg.sender, conn, pid) + data
        if guarantee == EVS_TYPE_SAFE:
            entry: list[Any] = [False, list(targets), ew.EVS_CB_DELIVER, body]
            self._held.append(entry)
            self.host.when_safe(lambda: self._release_held(entry))
            return
        self._emit(targets, ew.EVS_CB_DELIVER, body)

    def on_confchg(self, conf: ConfChange) -> None:
        # A regular configuration starts a sync round: views wait for it (see
        # "Views" above; ``_shown`` holds them meanwhile).
        if not conf.transitional:
            self._gone = {}
            if self._shown is None:
                self._shown = {g: dict(m) for g, m in self.groups.items()}
            return
        # A transitional configuration: the processes of the nodes that did not
        # come along leave every group now, at the same point of the order on
        # every member of it, before the messages delivered in it.  So two
        # processes that go from one view to the next delivered the same
        # messages in between (virtual synchrony), however the ring split and
        # healed meanwhile: those that stayed together see the same departures,
        # and the next completed sync round brings the others back as joins.
        stay = set(conf.members)
        self._peers &= stay
        shown = self._shown
        self._gone = {}
        for group, view in (self.groups if shown is None else shown).items():
            out = {k for k in view if k[0] not in stay}
            if out:
                self._gone[group] = out
        changes: dict[bytes, list[ew.Member]] = {}
        for key in sorted(k for k in self.by_member if k[0] not in stay):
            for group in sorted(self.by_member.get(key, ())):
                pid = self._remove(key, group)
                if pid is not None and shown is None:
                    changes.setdefault(group, []).append(ew.Member(key[0], key[1], pid))
        if shown is not None:
            for group, view in shown.items():
                for key in sorted(k for k in view if k[0] not in stay):
                    changes.setdefault(group, []).append(
                        ew.Member(key[0], key[1], view.pop(key)))
                    self._dropped.get(group, set()).discard(key)
        for group in sorted(changes):
            self._confchg(group, changes[group], [])

    # --- sync: per-node member lists ------------------------------------------------------

    def sync_start(self, info: SyncInfo) -> None:
        self._round = info
        self._announced = {}
        me = self.host.node_id
        self._to_announce = sorted((g, c, pid) for g, members in self.groups.items()
                                   for (n, c), pid in members.items() if n == me)

    def sync_process(self) -> bool:
        todo = self._to_announce
        if todo is None:
            return True
        if not todo:
            self._to_announce = None
            return True
        # One chunk per call: the ring drains in between.
        chunk = todo[:SYNC_CHUNK]
        # (TryAgain: the host calls again, with the same chunk)
        self.host.mcast_sync(self, MSG_SYNC_MEMBERS, SYNC_MEMBERS.pack(chunk))
        del todo[:len(chunk)]
        if todo:
            return False
        self._to_announce = None
        return True

    @exec_handler(MSG_SYNC_MEMBERS)
    def exec_sync_members(self, msg: ExecMessage) -> None:
        if not msg.sync:
            raise IpcProtocolError("member list outside a sync round")
        (entries,) = SYNC_MEMBERS.decode(msg.payload)
        self._announced.setdefault(msg.sender, []).extend(entries)

    def sync_abort(self) -> None:
        self._to_announce = None

    def sync_done(self) -> None:
        info = self._round
        self._round = None
        if info is None:
            return
        new: dict[bytes, dict[Key, int]] = {}
        for node in info.members:
            for group, conn, pid in self._announced.get(node, ()):
                new.setdefault(group, {})[(node, conn)] = pid
        self._announced = {}
        # The net change from what the local processes were shown.
        old = self.groups if self._shown is None else self._shown
        dropped, self._dropped, self._shown = self._dropped, {}, None
        self._peers = frozenset(info.members)
        changes: list[tuple[bytes, list[ew.Member], list[ew.Member], dict[Key, int]]] = []
        for group in sorted(set(old) | set(new)):
            before, after = old.get(group, {}), new.get(group, {})
            # A member that left and joined again while the round was pending
            # is shown leaving first: it missed the messages in between.
            again = [k for k in dropped.get(group, ()) if k in before and after.get(k) == before[k]]
            if again:
                mid = {k: p for k, p in before.items() if k not in again}
                changes.append((group, [ew.Member(n, c, before[(n, c)]) for n, c in again],
                                [], mid))
                before = mid
            # A node that restarted before the others saw it go numbers its
            # connections from 1 again: the same (node, conn) with another pid is
            # another process, the old one gone.
            left = [ew.Member(n, c, pid) for (n, c), pid in before.items()
                    if after.get((n, c)) != pid]
            joined = [ew.Member(n, c, pid) for (n, c), pid in after.items()
                      if before.get((n, c)) != pid]
            if left or joined:
                changes.append((group, left, joined, after))
        self.groups = new
        # Whatever a ring change lost cannot hold the window shut; what it did
        # not lose comes back later and finds nothing to clear.
        self._inflight.clear()
        self._inflight_bytes = 0
        self.by_member = {}
        self.local_index = {}
        me = self.host.node_id
        for group, members in new.items():
            for key in members:
                self.by_member.setdefault(key, set()).add(group)
                if key[0] == me:
                    self.local_index.setdefault(group, set()).add(key[1])
        self._pump_waiting()
        for group, left, joined, view in changes:
            if left:
                self.log.debug("group %r: %d left (%s)", group.rstrip(b"\0"), len(left),
                               ", ".join(sorted({fmt_node(m.node) for m in left})))
            self._confchg(group, left, joined, view)
        replies, self._join_replies = self._join_replies, []
        for tag in replies:
            self.host.reply(tag)

    # --- library requests -------------------------------------------------------------------

    def _who(self, conn: LibConn, groups: tuple[bytes, ...]) -> bytes:
        return RING_WHO.pack(conn.conn_id, conn.pid & 0xFFFFFFFF, groups)

    @lib_handler(ew.EVS_REQ_JOIN, hold_during_sync=True)
    def lib_join(self, conn: LibConn, req: Request) -> Deferred:
        groups, _ = ew.decode_group_list_untrusted(req.body)
        if not groups or len(groups) > ew.MAX_GROUPS_PER_CALL:
            raise InvalidParam(f"{len(groups)} groups in one join")
        mine = self.by_member.get((self.host.node_id, conn.conn_id), set())
        if len(mine | set(groups)) > ew.MAX_GROUPS:
            raise InvalidParam(f"more than {ew.MAX_GROUPS} groups joined")
        self.host.mcast(self, MSG_JOIN, self._who(conn, groups),
                        tag=req.tag)
        conn.private["evs_joined"] = True
        return DEFERRED

    @lib_handler(ew.EVS_REQ_LEAVE, hold_during_sync=True)
    def lib_leave(self, conn: LibConn, req: Request) -> Deferred:
        groups, _ = ew.decode_group_list_untrusted(req.body)
        if not groups or len(groups) > ew.MAX_GROUPS_PER_CALL:
            raise InvalidParam(f"{len(groups)} groups in one leave")
        mine = self.by_member.get((self.host.node_id, conn.conn_id), set())
        missing = [g for g in groups if g not in mine]
        if missing:
            raise NotExist(f"group {missing[0].rstrip(bytes(1))!r} not joined")
        self.host.mcast(self, MSG_LEAVE, self._who(conn, groups),
                        tag=req.tag)
        return DEFERRED

    def _window_open(self) -> bool:
        n = len(self.host.members) or 1
        return len(self._inflight) < max(MIN_WINDOW, RING_WINDOW // n) and \
            self._inflight_bytes < max(MIN_WINDOW_BYTES, RING_WINDOW_BYTES // n)

    def _send_mcast(self, conn: LibConn, guarantee: int, groups: tuple[bytes, ...],
                    data: bytes) -> None:
        """Hand one MCAST to the ring.  Raises TryAgain when the ring refuses."""
        seq = self._mcast_seq + 1
        self.host.mcast(self, MSG_MCAST, RING_MCAST.pack(
            conn.conn_id, conn.pid & 0xFFFFFFFF, guarantee, seq, groups, data))
        self._mcast_seq = seq
        self._inflight.append((seq, len(data)))
        self._inflight_bytes += len(data)

    def _mcast(self, conn: LibConn, req: ew.McastRequest, groups: tuple[bytes, ...],
               tag: Any) -> bytes | Deferred:
        if not 0 <= req.guarantee <= EVS_TYPE_SAFE or not 0 <= req.priority <= EVS_PRIO_LOWEST:
            raise InvalidParam(f"guarantee {req.guarantee} / priority {req.priority}")
        if len(req.data) > ew.MAX_MESSAGE:
            raise InvalidParam(f"message of {len(req.data)} bytes (limit {ew.MAX_MESSAGE})")
        if not groups:
            return b""  # tagged with no group: nobody would deliver it
        guarantee = EVS_TYPE_SAFE if req.guarantee == EVS_TYPE_SAFE else EVS_TYPE_AGREED
        if not self._queues and not _congested(conn) and self._window_open():
            try:
                self._send_mcast(conn, guarantee, groups, req.data)
                return b""
            except TryAgain:
                if not req.flags & ew.MCAST_QUEUE:
                    raise
        elif not req.flags & ew.MCAST_QUEUE:
            raise TryAgain("EVS window full: the ring has not delivered this node's messages yet")
        # A pipelining library already returned to its caller: hold the message,
        # in its handle's order, until the window opens (and the handle reads
        # its callbacks again, if it is behind).
        queue = self._queues.get(conn.conn_id)
        if queue is None:
            queue = self._queues[conn.conn_id] = collections.deque()
            self._rr.append(conn.conn_id)
        if len(queue) >= ew.PIPELINE:
            raise TryAgain(f"more than {ew.PIPELINE} multicasts unanswered")
        queue.append((conn, tag, guarantee, groups, req.data))
        self._arm_pump()
        return DEFERRED

    def _arm_pump(self) -> None:
        if not self._pump_armed:
            self._pump_armed = True
            self.host.call_later(PUMP_DELAY, self._pump_timer)

    def _pump_timer(self) -> None:
        self._pump_armed = False
        self._pump_waiting()

    def _pump_waiting(self) -> None:
        """Send held multicasts while the window is open, one handle after another
        (each in its own order); answer each once it is on the ring."""
        queues, rr = self._queues, self._rr
        idle = 0  # handles skipped in a row because they are behind on their callbacks
        while rr and idle < len(rr) and self._window_open():
            cid = rr.popleft()
            queue = queues.get(cid)
            if not queue or queue[0][0].closed:
                queues.pop(cid, None)
                continue
            conn, tag, guarantee, groups, data = queue[0]
            if _congested(conn):
                rr.append(cid)
                idle += 1
                continue
            try:
                self._send_mcast(conn, guarantee, groups, data)
            except TryAgain:
                rr.appendleft(cid)
                break
            idle = 0
            queue.popleft()
            self.host.reply(tag)
            if queue:
                rr.append(cid)
            else:
                del queues[cid]
        if queues:
            self._arm_pump()  # the window or a handle's backlog may free up without a delivery

    @lib_handler(ew.EVS_REQ_MCAST_JOINED)
    def lib_mcast_joined(self, conn: LibConn, req: Request) -> bytes | Deferred:
        m = ew.decode_mcast_untrusted(req.body, joined=True)
        mine = self.by_member.get((self.host.node_id, conn.conn_id))
        return self._mcast(conn, m, tuple(sorted(mine)) if mine else (), req.tag)

    @lib_handler(ew.EVS_REQ_MCAST_GROUPS)
    def lib_mcast_groups(self, conn: LibConn, req: Request) -> bytes | Deferred:
        m = ew.decode_mcast_untrusted(req.body, joined=False)
        if not m.groups:
            raise InvalidParam("no group named")
        return self._mcast(conn, m, tuple(_dedupe(m.groups)), req.tag)

    def status(self) -> dict[str, Any]:
        """For logs and the status command."""
        return {"groups": len(self.groups), "members": sum(map(len, self.groups.values())),
                "local": len(self.local), "delivered": self.delivered}


__all__ = ["EVS_TYPE_AGREED", "EVS_TYPE_FIFO", "EVS_TYPE_SAFE", "EVS_TYPE_UNORDERED",
           "EvsService", "MSG_EXIT", "MSG_JOIN", "MSG_LEAVE", "MSG_MCAST", "MSG_SYNC_MEMBERS"]
