"""CLM, the cluster membership service (executive side).

Theory of operation
-------------------
Implements spec/clm.md sections 3 and 4 with the recommended fixes of its
"(inferred)" items.

State, identical on every member after each sync round:

* ``view_members``: the agreed member list of the last completed round
  (Totem ids), and ``view_number`` = that ring's sequence number, which all
  members of a ring agree on and which only grows;
* ``records``: the node record (spec 1.3) each member announced.

Inputs: regular configuration changes (logged at NOTICE), the sync round
(every member multicasts its own record, ``MSG_NODE_RECORD``), and library
requests (all answered from local state; none changes replicated state).

CLM transfers no state and so ignores the round's state groups
(``SyncInfo.groups``): every record is owned by its node and re-sent by it in
every round, and the view is the configuration itself.  A node restarted
empty (a fresh member) is thus told everything by the others' records, and
its own new record (say, a new boot time) replaces what the others had.

At ``sync_done`` the new view is the configuration's member list.  A member
whose record did not arrive still appears, with a record built from its
address (boot time 0), so a lost record cannot hide a member.  Trackers are
then told the difference from the previous view in one callback:
SA_TRACK_CHANGES lists every member (NO_CHANGE / JOINED) plus the departed
(LEFT, member = False); SA_TRACK_CHANGES_ONLY lists only JOINED and LEFT.

Node ids: the SAF nodeId is the address read little-endian (see
``saf.types``); the ring's ids are converted at the edge.

Library requests (``saf._wire`` CLM section):

* TRACK_START: flags checked (BAD_FLAGS); CURRENT sends one callback with
  every member as NO_CHANGE; CHANGES / CHANGES_ONLY register the tracker
  (a second TRACK_START updates it).  The buffer size check (NO_SPACE) is
  the library's, which owns the buffer.
* TRACK_STOP: NOT_EXIST when not tracking.
* NODE_GET: the local node at once; during a sync round with a positive
  timeout, other nodes wait for the round's end or the timeout (TIMEOUT,
  answered by the host: ``host.defer``);
  otherwise answered from the current view; unknown -> NOT_EXIST (the later
  SAF specs' code for this case).
* NODE_GET_ASYNC: replies OK, then a callback with the record or the error.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, replace
from typing import Any

from ais.log import RateLimiter
from ais.services.base import (
    NOTICE, Deferred, ExecMessage, HostAPI, LibConn, ReplyTag, Request, Service, SyncInfo,
    exec_handler, lib_handler, register_service,
)
from ais.totem.events import ConfChange, fmt_node
from saf import _clm_wire as w
from saf.errors import SA_OK, BadFlags, IpcProtocolError, NotExist
from saf.types import (
    SA_CLM_LOCAL_NODE_ID, SA_TRACK_CHANGES, SA_TRACK_CHANGES_ONLY, SA_TRACK_CURRENT,
    ClusterChange, ClusterNode, ClusterNotification, node_id_from_totem,
)

#: ring message: a member's own node record, sent in every sync round
MSG_NODE_RECORD = 1

DEFAULT_CLUSTER_NAME = "mvlcge"

_VALID_TRACK_BITS = SA_TRACK_CURRENT | SA_TRACK_CHANGES | SA_TRACK_CHANGES_ONLY


def read_boot_timestamp() -> int:
    """Host boot time in ns, whole seconds (spec 1.3), from /proc/stat; 0 if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return int(line.split()[1]) * 1_000_000_000
    except OSError:
        pass
    return 0


def record_for(totem_id: int, cluster_name: bytes, boot_timestamp: int) -> ClusterNode:
    """The node record of a ring member, as spec 1.3 fills it."""
    addr = ipaddress.IPv4Address(totem_id)
    return ClusterNode(node_id=node_id_from_totem(totem_id), node_address=addr.packed,
                       node_name=str(addr).encode(), cluster_name=cluster_name,
                       member=True, boot_timestamp=boot_timestamp)


@dataclass
class _Tracker:
    conn: LibConn
    flags: int


@register_service
class ClmService(Service):
    """Cluster membership.  Options: ``cluster_name``, ``boot_timestamp`` (ns)."""

    name = "clm"
    service_id = w.CLM_SERVICE_ID

    def __init__(self, cluster_name: str | bytes = DEFAULT_CLUSTER_NAME,
                 boot_timestamp: int | None = None) -> None:
        self.cluster_name = (cluster_name.encode() if isinstance(cluster_name, str)
                             else bytes(cluster_name))
        self._boot = boot_timestamp
        self.view_number = 0
        self.view_members: tuple[int, ...] = ()
        self.records: dict[int, ClusterNode] = {}
        self.trackers: dict[int, _Tracker] = {}
        #: NODE_GETs waiting for the end of a sync round: tag -> SAF node id
        self._pending_gets: dict[ReplyTag, int] = {}
        self._round: SyncInfo | None = None
        self._record_sent = False

    # --- hooks -------------------------------------------------------------------

    def exec_init(self, host: HostAPI) -> None:
        super().exec_init(host)
        self.log = host.logger("CLM")
        #: lines a peer can trigger (bad records) are rate-limited
        self._bad_log = RateLimiter(burst=5, interval=10.0, clock=host.now)
        boot = read_boot_timestamp() if self._boot is None else self._boot
        self.local = record_for(host.node_id, self.cluster_name, boot)
        self.records[host.node_id] = self.local
        # Until the first configuration, the cluster is this node.
        self.view_members = (host.node_id,)

    def on_lib_exit(self, conn: LibConn) -> None:
        self.trackers.pop(conn.conn_id, None)

    def on_confchg(self, conf: ConfChange) -> None:
        if conf.transitional:
            return
        self.log.log(NOTICE, "CLM CONFIGURATION CHANGE")
        self.log.log(NOTICE, "New Configuration:")
        for node in conf.members:
            self.log.log(NOTICE, "\t%s", fmt_node(node))
        self.log.log(NOTICE, "Members Left:")
        for node in conf.left:
            self.log.log(NOTICE, "\t%s", fmt_node(node))
        self.log.log(NOTICE, "Members Joined:")
        for node in conf.joined:
            self.log.log(NOTICE, "\t%s", fmt_node(node))

    def sync_start(self, info: SyncInfo) -> None:
        self._round = info
        self._record_sent = False

    def sync_process(self) -> bool:
        if not self._record_sent:
            # Every member re-announces itself, so joiners learn everyone.
            self.host.mcast_sync(self, MSG_NODE_RECORD, w.encode_cluster_node(self.local))
            self._record_sent = True
        return True

    @exec_handler(MSG_NODE_RECORD)
    def exec_node_record(self, msg: ExecMessage) -> None:
        try:
            rec = w.decode_cluster_node_untrusted(msg.payload)
        except IpcProtocolError as exc:
            self._bad_log.log(self.log, logging.ERROR, "bad node record from %s: %s",
                              fmt_node(msg.sender), exc)
            return
        expected = node_id_from_totem(msg.sender)
        if rec.node_id != expected:
            self._bad_log.log(self.log, logging.WARNING,
                              "node record from %s names node %x; using the sender",
                              fmt_node(msg.sender), rec.node_id)
            rec = replace(rec, node_id=expected)
        self.log.debug("got nodejoin message %s", rec.node_name.decode(errors="replace"))
        self.records[msg.sender] = replace(rec, member=True)

    def sync_done(self) -> None:
        info = self._round
        self._round = None
        if info is None:
            return
        old = self.view_members
        new = info.members
        for node in new:
            if node not in self.records:
                # Never let a lost record hide a member.
                self.records[node] = record_for(node, self.cluster_name, 0)
        left = [n for n in old if n not in new]
        joined = [n for n in new if n not in old]
        departed = {n: replace(self.records[n], member=False) for n in left if n in self.records}
        for node in [n for n in self.records if n not in new]:
            del self.records[node]
        self.view_members = new
        self.view_number = info.ring_id.seq
        if left or joined:
            self._notify(joined, departed)
        pending, self._pending_gets = self._pending_gets, {}
        for tag, node_id in pending.items():
            self._answer_get(tag, node_id)

    # --- notifications ------------------------------------------------------------

    def current_items(self, joined: list[int] | tuple[int, ...] = ()) -> list[ClusterNotification]:
        """Every member of the view, flagged JOINED if in ``joined``, else NO_CHANGE."""
        return [ClusterNotification(self.records[n], ClusterChange.SA_CLM_NODE_JOINED
                                    if n in joined else ClusterChange.SA_CLM_NODE_NO_CHANGE)
                for n in self._ordered_members()]

    def _ordered_members(self) -> list[int]:
        # Local node first (as the 2004 table), then ascending ids.
        me = self.host.node_id
        return ([me] if me in self.view_members else []) + \
            [n for n in self.view_members if n != me]

    def _notify(self, joined: list[int], departed: dict[int, ClusterNode]) -> None:
        left_items = [ClusterNotification(rec, ClusterChange.SA_CLM_NODE_LEFT)
                      for rec in departed.values()]
        full = w.encode_clm_track_callback(w.ClmTrackCallback(
            self.view_number, len(self.view_members),
            tuple(self.current_items(joined) + left_items)))
        only = w.encode_clm_track_callback(w.ClmTrackCallback(
            self.view_number, len(self.view_members),
            tuple([i for i in self.current_items(joined)
                   if i.cluster_change == ClusterChange.SA_CLM_NODE_JOINED] + left_items)))
        for tracker in list(self.trackers.values()):
            body = full if tracker.flags & SA_TRACK_CHANGES else only
            tracker.conn.send_callback(w.CLM_CB_TRACK, body)

    # --- library requests -------------------------------------------------------------

    @lib_handler(w.CLM_REQ_TRACK_START)
    def lib_track_start(self, conn: LibConn, req: Request) -> bytes:
        ts = w.decode_clm_track_start_untrusted(req.body)
        flags = ts.flags
        if flags & ~_VALID_TRACK_BITS or not flags & _VALID_TRACK_BITS or \
                (flags & SA_TRACK_CHANGES and flags & SA_TRACK_CHANGES_ONLY):
            raise BadFlags(f"track flags {flags:#x}")
        if flags & (SA_TRACK_CHANGES | SA_TRACK_CHANGES_ONLY):
            self.trackers[conn.conn_id] = _Tracker(conn, flags)
        if flags & SA_TRACK_CURRENT:
            conn.send_callback(w.CLM_CB_TRACK, w.encode_clm_track_callback(w.ClmTrackCallback(
                self.view_number, len(self.view_members), tuple(self.current_items()))))
        return b""

    @lib_handler(w.CLM_REQ_TRACK_STOP)
    def lib_track_stop(self, conn: LibConn, req: Request) -> bytes:
        if self.trackers.pop(conn.conn_id, None) is None:
            raise NotExist("not tracking")
        return b""

    @lib_handler(w.CLM_REQ_NODE_GET)
    def lib_node_get(self, conn: LibConn, req: Request) -> bytes | Deferred:
        get = w.decode_clm_node_get_untrusted(req.body)
        if get.node_id in (SA_CLM_LOCAL_NODE_ID, self.local.node_id):
            return w.encode_cluster_node(self.local)
        if self.host.syncing and get.timeout > 0:
            self._pending_gets[req.tag] = get.node_id
            return self.host.defer(req.tag, get.timeout / 1e9,
                                   on_timeout=lambda: self._pending_gets.pop(req.tag, None))
        return w.encode_cluster_node(self.lookup(get.node_id))

    def _answer_get(self, tag: ReplyTag, node_id: int) -> None:
        try:
            self.host.reply(tag, w.encode_cluster_node(self.lookup(node_id)))
        except NotExist as err:
            self.host.reply_error(tag, err)

    @lib_handler(w.CLM_REQ_NODE_GET_ASYNC)
    def lib_node_get_async(self, conn: LibConn, req: Request) -> bytes:
        get = w.decode_clm_node_get_async_untrusted(req.body)
        try:
            node: ClusterNode | None = self.lookup(get.node_id)
            error = SA_OK
        except NotExist as err:
            node, error = None, err.code
        callback = w.ClmNodeGetCallback(get.invocation, node)
        conn.send_callback(w.CLM_CB_NODE_GET, w.encode_clm_node_get_callback(callback), error)
        return b""

    def lookup(self, node_id: int) -> ClusterNode:
        """The current record of SAF ``node_id`` (0: this node).

        Raises:
            NotExist: not a member of the current view.
        """
        if node_id in (SA_CLM_LOCAL_NODE_ID, self.local.node_id):
            return self.local
        for totem_id in self.view_members:
            rec = self.records.get(totem_id)
            if rec is not None and rec.node_id == node_id:
                return rec
        raise NotExist(f"node {node_id:#x} is not a member")

    def status(self) -> dict[str, Any]:
        """For logs and the status command."""
        return {"view": self.view_number, "members": [fmt_node(n) for n in self.view_members],
                "trackers": len(self.trackers)}


__all__ = ["ClmService", "DEFAULT_CLUSTER_NAME", "MSG_NODE_RECORD", "record_for"]
