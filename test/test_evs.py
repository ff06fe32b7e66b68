"""EVS: the service on fake multi-node rings (no sockets), and saf.evs over sockets."""
from __future__ import annotations

import select
import threading
import time

import pytest

from ais.executive import ServiceHost
from ais.services.clm import ClmService
from ais.services import evs as evs_svc
from ais.services.base import NO_TAG, ExecMessage, SyncInfo
from ais.services.evs import EvsService
from ais.testing import ManualScheduler
from ais.totem.events import ConfChange, RingId, node_of
from helpers_exec import BOOT, ExecThread, FakeConn, ServiceCluster
from saf import _evs_wire as ew
from saf import evs
from saf.errors import (
    SA_OK, BadHandle, InvalidParam, IpcProtocolError, NotExist, TooManyGroups, TryAgain,
)

A, B, C = "127.0.0.1", "127.0.0.2", "127.0.0.3"
G1, G2, G3 = ew.group_key(b"key1"), ew.group_key(b"key2"), ew.group_key(b"key3")


def evs_host(addr: str, sched) -> ServiceHost:
    return ServiceHost(node_of(addr), [ClmService("mvlcge", boot_timestamp=BOOT), EvsService()],
                       sched)


class EvsCluster(ServiceCluster):
    """Hosts running CLM and EVS on a FakeBus."""

    def add(self, addr: str) -> ServiceHost:
        host = evs_host(addr, self.sched)
        self.hosts[addr] = host
        self.bus.port(host)
        return host

    def connect(self, addr: str, pid: int = 0) -> FakeConn:
        host = self.hosts[addr]
        conn = FakeConn(host.new_conn_id(), ew.EVS_SERVICE_ID, pid=pid or 1000 + len(host._conns))
        host.lib_connect(conn)
        return conn

    def join(self, addr: str, conn: FakeConn, *groups: bytes) -> int:
        r = self.request(addr, conn, ew.EVS_REQ_JOIN, ew.encode_group_list(list(groups)))
        assert r is not None
        return r.error

    def leave(self, addr: str, conn: FakeConn, *groups: bytes) -> int:
        r = self.request(addr, conn, ew.EVS_REQ_LEAVE, ew.encode_group_list(list(groups)))
        assert r is not None
        return r.error

    def send(self, addr: str, conn: FakeConn, data: bytes, groups: tuple[bytes, ...] = (),
             guarantee: int = evs.EVS_TYPE_AGREED, run: bool = True) -> int:
        self._seq += 1
        req = ew.McastRequest(guarantee, evs.EVS_PRIO_LOW, groups, data)
        mid = ew.EVS_REQ_MCAST_GROUPS if groups else ew.EVS_REQ_MCAST_JOINED
        self.hosts[addr].lib_request(conn, mid, self._seq, ew.encode_mcast(req, not groups))
        if run:
            self.run()
        return [f for f in conn.responses if f.seq == self._seq][0].error

    def evs(self, addr: str) -> EvsService:
        svc = self.hosts[addr].service_by_name("evs")
        assert isinstance(svc, EvsService)
        return svc


def events(conn: FakeConn) -> list[tuple]:
    """The connection's callbacks, decoded.

    Each is ("msg", data) or ("conf", group, members, left, joined).
    """
    out: list[tuple] = []
    for f in conn.callbacks:
        if f.msg_id == ew.EVS_CB_DELIVER:
            out.append(("msg", ew.decode_deliver_untrusted(f.body).data))
        else:
            c = ew.decode_confchg_untrusted(f.body)
            out.append(("conf", c.group.rstrip(b"\0"), c.members, c.left, c.joined))
    return out


def msgs(conn: FakeConn) -> list[bytes]:
    return [e[1] for e in events(conn) if e[0] == "msg"]


def confs(conn: FakeConn) -> list[tuple]:
    return [e for e in events(conn) if e[0] == "conf"]


def me(cl: EvsCluster, addr: str, conn: FakeConn) -> ew.Member:
    return ew.Member(node_of(addr), conn.conn_id, conn.pid)


def _joined(cl: EvsCluster, *addrs: str) -> list[FakeConn]:
    """A connection on each of ``addrs``, each joined to key1, its callbacks cleared."""
    conns = [cl.connect(addr) for addr in addrs]
    for addr, conn in zip(addrs, conns):
        cl.join(addr, conn, G1)
    for conn in conns:
        conn.callbacks.clear()
    return conns


# --- the service on fake rings ------------------------------------------------------------

@pytest.mark.timeout(20)
def test_join_confchg_and_delivery_to_members_only_sender_included():
    cl = EvsCluster([A, B, C])
    cl.form([A, B, C])
    a, b, c = cl.connect(A), cl.connect(B), cl.connect(C)
    assert cl.join(A, a, G1) == SA_OK
    [(_, g, members, left, joined)] = confs(a)
    assert g == b"key1" and members == (me(cl, A, a),) and left == () and joined == members
    assert cl.join(B, b, G1, G2) == SA_OK
    # a is told b joined key1; b gets one confchg per group, listing itself
    assert confs(a)[-1][2:] == ((me(cl, A, a), me(cl, B, b)), (), (me(cl, B, b),))
    assert [e[1] for e in confs(b)] == [b"key1", b"key2"]
    assert cl.send(A, a, b"one") == SA_OK            # to key1 (a's groups)
    assert cl.send(C, c, b"two", (G2,)) == SA_OK     # c is in no group: not delivered to c
    assert cl.send(B, b, b"three") == SA_OK          # key1 and key2: b gets it once
    assert msgs(a) == [b"one", b"three"]
    assert msgs(b) == [b"one", b"two", b"three"]
    assert msgs(c) == []
    tables = [cl.evs(x).groups for x in (A, B, C)]
    assert tables[0] == tables[1] == tables[2]


@pytest.mark.timeout(20)
def test_join_sees_only_what_is_ordered_after_it():
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a, b = cl.connect(A), cl.connect(B)
    cl.join(A, a, G1)
    cl.send(A, a, b"before")
    # b's join and a's next message race on the ring: b gets exactly those after its JOIN
    cl.bus.pause()
    cl.send(A, a, b"m1", run=False)
    cl.hosts[B].lib_request(b, ew.EVS_REQ_JOIN, 1, ew.encode_group_list([G1]))
    cl.send(A, a, b"m2", run=False)
    cl.bus.resume()
    cl.run()
    assert [f.error for f in b.responses] == [SA_OK]
    assert msgs(b) == [b"m2"]
    assert msgs(a) == [b"before", b"m1", b"m2"]
    # a saw b join between m1 and m2
    kinds = [e[0] if e[0] == "msg" else "conf" for e in events(a)]
    assert kinds == ["conf", "msg", "msg", "conf", "msg"]


@pytest.mark.timeout(20)
def test_leave_exit_and_errors():
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a, a2, b = cl.connect(A), cl.connect(A), cl.connect(B)
    for conn, addr in ((a, A), (a2, A), (b, B)):
        cl.join(addr, conn, G1)
    assert cl.leave(A, a, G2) == NotExist.code
    assert cl.leave(A, a, G1, G2) == NotExist.code     # all or nothing
    assert len(cl.evs(B).groups[G1]) == 3
    b.callbacks.clear()
    assert cl.leave(A, a, G1) == SA_OK
    [(_, _, members, left, joined)] = confs(b)
    assert left == (me(cl, A, a),) and joined == () and me(cl, A, a) not in members
    assert confs(a)[-1][3] == ()  # the leaver gets no confchg for its own leave
    b.callbacks.clear()
    # finalize / a dropped connection: its groups see it leave on every node
    a2.close()
    cl.hosts[A].lib_exit(a2)
    cl.run()
    [(_, _, members, left, _)] = confs(b)
    assert left == (me(cl, A, a2),) and members == (me(cl, B, b),)
    assert cl.evs(A).groups == cl.evs(B).groups == {G1: {(node_of(B), b.conn_id): b.pid}}
    # too many groups, or none: the executive refuses (the library says TOO_MANY_GROUPS)
    keys = [ew.group_key(f"g{i}") for i in range(51)]
    assert cl.join(A, a, *keys) == InvalidParam.code
    assert cl.join(A, a) == InvalidParam.code


@pytest.mark.timeout(20)
def test_exit_while_join_in_flight_leaves_no_ghost():
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a, b = cl.connect(A), cl.connect(B)
    cl.join(B, b, G1)
    cl.bus.pause()
    cl.hosts[A].lib_request(a, ew.EVS_REQ_JOIN, 1, ew.encode_group_list([G1]))
    a.close()
    cl.hosts[A].lib_exit(a)
    cl.bus.resume()
    cl.run()
    assert cl.evs(A).groups == cl.evs(B).groups == {G1: {(node_of(B), b.conn_id): b.pid}}
    assert [c[3:] for c in confs(b)[1:]] == [((), (me(cl, A, a),)), ((me(cl, A, a),), ())]


@pytest.mark.timeout(20)
def test_node_loss_every_process_leaves_at_the_same_point_on_survivors():
    cl = EvsCluster([A, B, C])
    cl.form([A, B, C])
    a, b = cl.connect(A), cl.connect(B)
    c1, c2 = cl.connect(C), cl.connect(C)
    for conn, addr in ((a, A), (b, B), (c1, C), (c2, C)):
        cl.join(addr, conn, G1, G2)
    a.callbacks.clear()
    b.callbacks.clear()
    cl.send(C, c1, b"from c")
    cl.send(A, a, b"before")
    cl.bus.pause()
    cl.send(B, b, b"in flight", run=False)
    cl.bus.reconfigure([node_of(A), node_of(B)])
    cl.bus.resume()
    cl.run()
    cl.send(A, a, b"after")
    ea, eb = events(a), events(b)
    assert ea == eb
    assert [e[1] for e in ea] == [
        b"from c", b"before", b"in flight", b"key1", b"key2", b"after"]
    conf1 = ea[3]
    assert set(conf1[3]) == {me(cl, C, c1), me(cl, C, c2)}
    assert conf1[2] == (me(cl, A, a), me(cl, B, b))


@pytest.mark.timeout(20)
def test_merge_teaches_each_side_the_other_sides_members():
    cl = EvsCluster([A, B, C])
    cl.form([A, B], [C])
    a, b, c = cl.connect(A), cl.connect(B), cl.connect(C)
    cl.join(A, a, G1)
    cl.join(B, b, G2)
    cl.join(C, c, G1, G2)
    for conn in (a, b, c):
        conn.callbacks.clear()
    cl.form([A, B, C])
    assert cl.evs(A).groups == cl.evs(B).groups == cl.evs(C).groups
    assert confs(a) == [("conf", b"key1", tuple(sorted([me(cl, A, a), me(cl, C, c)])), (),
                         (me(cl, C, c),))]
    assert sorted(e[1] for e in confs(c)) == [b"key1", b"key2"]
    assert confs(c)[0][4] == (me(cl, A, a),)
    # and it goes away again with a partition
    cl.form([A, B], [C])
    assert confs(a)[-1][3] == (me(cl, C, c),)
    assert confs(c)[-1][3] in ((me(cl, A, a),), (me(cl, B, b),))


@pytest.mark.timeout(20)
def test_hidden_partition_is_seen_as_a_departure_and_a_return():
    """A and B split and heal before either side's sync round can complete: each side's
    processes still see the other side's leave at the transitional configuration and
    come back when the healed ring's round completes, and a message delivered in
    between is delivered between those two views on each side (virtual synchrony)."""
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a, b = _joined(cl, A, B)
    cl.bus.pause()
    cl.send(B, b, b"in flight", run=False)
    cl.bus.reconfigure([node_of(A)], [node_of(B)])
    cl.bus.reconfigure([node_of(A), node_of(B)])  # before the split's rounds can end
    cl.bus.resume()
    cl.run()
    cl.send(A, a, b"after")
    both = (me(cl, A, a), me(cl, B, b))
    assert events(a) == [("msg", b"in flight"),
                         ("conf", b"key1", (me(cl, A, a),), (me(cl, B, b),), ()),
                         ("conf", b"key1", both, (), (me(cl, B, b),)), ("msg", b"after")]
    assert events(b) == [("msg", b"in flight"),
                         ("conf", b"key1", (me(cl, B, b),), (me(cl, A, a),), ()),
                         ("conf", b"key1", both, (), (me(cl, A, a),)), ("msg", b"after")]


def _abandon_a_round(cl: EvsCluster, first: list[str], then: list[str], *queued) -> None:
    """Form ring ``first``, then ring ``then`` before ``first``'s sync round can
    complete: the callables in ``queued`` (client requests) send in ``first``,
    during its round, so their messages are held; ``then`` abandons that round
    and they are applied there."""
    cl.bus.pause()
    cl.bus.reconfigure([node_of(x) for x in first])
    for fn in queued:
        fn()
    cl.bus.reconfigure([node_of(x) for x in then])
    cl.bus.resume()
    cl.run()


@pytest.mark.timeout(20)
def test_merge_whose_round_is_abandoned_shows_no_half_merged_view():
    """A and B come from different partitions; the ring that merges them re-forms before
    its sync round completes, so the messages it held are applied on tables that hold
    only each node's own side: a JOIN from A and a multicast from B.  Nobody is shown
    a view made of that (before, A's process saw {a, a2} and B's {a2, b}, each then
    getting to the merged view through different messages); the new process and the
    merge appear when the next round completes, the same view on both nodes, and the
    new process gets only what is ordered after that view.  B's multicast reaches
    only B's side: no view of A's process showed B's before it."""
    cl = EvsCluster([A, B, C])
    cl.form([A], [B])
    a, b = _joined(cl, A, B)
    a2 = cl.connect(A)

    def join_a2() -> None:
        cl.hosts[A].lib_request(a2, ew.EVS_REQ_JOIN, 99, ew.encode_group_list([G1]))

    _abandon_a_round(cl, [A, B], [A, B, C], join_a2,
                     lambda: cl.send(B, b, b"from b", run=False))
    assert [f.error for f in a2.responses if f.seq == 99] == [SA_OK]
    cl.send(A, a, b"after")
    merged = tuple(sorted((me(cl, A, a), me(cl, A, a2), me(cl, B, b))))
    assert events(a) == [("conf", b"key1", merged, (), (me(cl, A, a2), me(cl, B, b))),
                         ("msg", b"after")]
    assert events(a2) == [("conf", b"key1", merged, (), (me(cl, A, a2), me(cl, B, b))),
                          ("msg", b"after")]
    assert events(b) == [("msg", b"from b"),
                         ("conf", b"key1", merged, (), (me(cl, A, a), me(cl, A, a2))),
                         ("msg", b"after")]
    assert cl.evs(A).groups == cl.evs(B).groups


@pytest.mark.timeout(20)
def test_leave_and_join_again_during_an_abandoned_round_is_shown_as_both():
    """a leaves key1 and joins it again while a round is pending, b multicasting in
    between: at the next completed round b is shown a leave, then a's return (a missed
    b's message, so the two views around it must differ), and a gets the return."""
    cl = EvsCluster([A, B, C])
    cl.form([A, B])
    a, b = _joined(cl, A, B)
    host = cl.hosts[A]
    body = ew.encode_group_list([G1])
    _abandon_a_round(cl, [A, B, C], [A, B],
                     lambda: host.lib_request(a, ew.EVS_REQ_LEAVE, 97, body),
                     lambda: cl.send(B, b, b"while out", run=False),
                     lambda: host.lib_request(a, ew.EVS_REQ_JOIN, 98, body))
    assert [f.error for f in a.responses if f.seq in (97, 98)] == [SA_OK, SA_OK]
    both = (me(cl, A, a), me(cl, B, b))
    assert events(b) == [("msg", b"while out"),
                         ("conf", b"key1", (me(cl, B, b),), (me(cl, A, a),), ()),
                         ("conf", b"key1", both, (), (me(cl, A, a),))]
    assert events(a) == [("conf", b"key1", both, (), (me(cl, A, a),))]


@pytest.mark.timeout(20)
def test_transitional_tail_delivers_a_departed_process_to_views_that_showed_it():
    """Past a gap in a transitional configuration, A and B deliver: c's message (c was
    taken out of the view), A's new process a3 joining, a multicast of C's new process
    c2 (whose JOIN was in the gap) and c's last message.  a gets c's first message;
    c2's goes to nobody, no view here having shown c2; c's last goes to nobody either,
    since the view it would reach now holds a3, which never saw c (a message reaches
    all of a view or none of it)."""
    cl = EvsCluster([A, B, C])
    cl.form([A, B, C])
    a, c = _joined(cl, A, C)
    c2, a3 = cl.connect(C), cl.connect(A)
    cl.bus.pause()
    cl.send(C, c, b"first", run=False)
    cl.hosts[C].lib_request(c2, ew.EVS_REQ_JOIN, 90, ew.encode_group_list([G1]))
    cl.hosts[A].lib_request(a3, ew.EVS_REQ_JOIN, 91, ew.encode_group_list([G1]))
    cl.send(C, c2, b"ghost", (G1,), run=False)
    cl.send(C, c, b"last", run=False)
    first, _join_c2, join_a3, ghost, last = cl.bus.take_queued()
    tail = [first, join_a3, ghost, last]  # what A and B deliver after the transitional one
    cl.bus.reconfigure([node_of(A), node_of(B)], [node_of(C)],
                       tails={node_of(A): tail, node_of(B): tail})
    cl.bus.resume()
    cl.run()
    ma, ma3, mc = me(cl, A, a), me(cl, A, a3), me(cl, C, c)
    assert events(a) == [("conf", b"key1", (ma,), (mc,), ()), ("msg", b"first"),
                         ("conf", b"key1", (ma, ma3), (), (ma3,))]
    assert events(a3) == [("conf", b"key1", (ma, ma3), (), (ma3,))]


@pytest.mark.timeout(20)
def test_same_conn_with_another_pid_is_another_member():
    """A node that restarted before the others saw it go numbers its connections from
    1 again: in the next sync round its new process announces a (node, conn) the table
    still holds for the old one.  The pid tells them apart: the old one leaves, the new
    one joins."""
    host = evs_host(A, ManualScheduler())
    svc = host.service_by_name("evs")
    assert isinstance(svc, EvsService)
    a = FakeConn(host.new_conn_id(), ew.EVS_SERVICE_ID, pid=1000)
    host.lib_connect(a)
    old, new = ew.Member(node_of(B), 7, 2000), ew.Member(node_of(B), 7, 3000)
    svc._add((node_of(A), a.conn_id), 1000, G1)
    svc._add((old.node, old.conn), old.pid, G1)
    svc._shown = None  # as if a completed round had shown that table
    ring = RingId(8, node_of(A))
    svc.on_confchg(ConfChange(False, ring, (node_of(A), node_of(B))))
    svc.sync_start(SyncInfo(ring, (node_of(A), node_of(B)), (), (), (), ()))
    for node, conn, pid in ((node_of(A), a.conn_id, 1000), (new.node, new.conn, new.pid)):
        svc.exec_sync_members(ExecMessage(node, evs_svc.MSG_SYNC_MEMBERS,
                                          evs_svc.SYNC_MEMBERS.pack([(G1, conn, pid)]),
                                          NO_TAG, ring, sync=True))
    svc.sync_done()
    mine = ew.Member(node_of(A), a.conn_id, 1000)
    assert confs(a) == [("conf", b"key1", tuple(sorted((mine, new))), (old,), (new,))]


@pytest.mark.timeout(20)
def test_sync_announces_in_bounded_chunks():
    cl = EvsCluster([A, B])
    cl.form([A])
    a = cl.connect(A)
    keys = [ew.group_key(f"g{i}") for i in range(1000)]
    for i in range(0, 1000, 50):
        assert cl.join(A, a, *keys[i:i + 50]) == SA_OK
    # Many members, so the round needs several SYNC_MEMBERS messages.
    others = [cl.connect(A) for _ in range(2)]
    for o in others:
        for i in range(0, 1000, 50):
            cl.join(A, o, *keys[i:i + 50])
    cl.form([A, B])
    assert cl.evs(B).groups == cl.evs(A).groups
    assert len(cl.evs(B).groups) == 1000


@pytest.mark.timeout(20)
def test_safe_delivery_waits_and_keeps_agreed_order():
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a, b = cl.connect(A), cl.connect(B)
    cl.join(A, a, G1)
    cl.join(B, b, G1)
    cl.bus.hold_stable = True
    cl.send(A, a, b"safe", guarantee=evs.EVS_TYPE_SAFE)
    cl.send(A, a, b"agreed")
    assert msgs(b) == [] and msgs(a) == []
    cl.bus.stabilize()
    assert msgs(a) == msgs(b) == [b"safe", b"agreed"]


@pytest.mark.timeout(20)
def test_bad_requests_and_ring_messages():
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a = cl.connect(A)
    host = cl.hosts[A]
    for mid, body in ((ew.EVS_REQ_JOIN, b"\x00"), (ew.EVS_REQ_JOIN, b"\x00\x02\x00\x00" + G1),
                      (ew.EVS_REQ_MCAST_GROUPS, b"\x02\x03\x00\x05"),
                      (ew.EVS_REQ_MCAST_JOINED, b"")):
        with pytest.raises(IpcProtocolError):
            host.lib_request(a, mid, 7, body)
    assert cl.send(A, a, b"x", guarantee=9) == InvalidParam.code
    assert cl.send(A, a, b"x", (G1,), guarantee=evs.EVS_TYPE_FIFO) == SA_OK
    assert cl.send(A, a, b"x" * (ew.MAX_MESSAGE + 1), (G1,)) == InvalidParam.code
    # garbage from a peer on the ring is dropped, the executive goes on
    from ais.services import evs as sev
    svc = cl.evs(B)
    for mid in (sev.MSG_JOIN, sev.MSG_LEAVE, sev.MSG_MCAST, sev.MSG_EXIT, sev.MSG_SYNC_MEMBERS):
        cl.hosts[A].mcast(svc, mid, b"\x00\x01\xff")
    cl.run()
    assert cl.hosts[B].bad_messages["evs"] == 5
    assert cl.join(A, a, G1) == SA_OK


@pytest.mark.timeout(20)
def test_mcast_without_a_ring_is_try_again():
    cl = EvsCluster([A])
    a = cl.connect(A)
    assert cl.send(A, a, b"x", (G1,)) == TryAgain.code


# --- saf.evs over sockets ----------------------------------------------------------------

class EvsExec(ExecThread):
    def make_host(self, addr, sched):
        return evs_host(addr, sched)


class Rec:
    def __init__(self) -> None:
        self.msgs: list[tuple[str, bytes]] = []
        self.confs: list[tuple] = []
        self.callbacks = evs.Callbacks(deliver_callback=lambda s, m: self.msgs.append((s, m)),
                                       confchg_callback=lambda *a: self.confs.append(a))

    def wait(self, h: evs.EvsHandle, n_msgs: int = 0, n_confs: int = 0,
             timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while len(self.msgs) < n_msgs or len(self.confs) < n_confs:
            left = end - time.monotonic()
            assert left > 0, f"got {len(self.msgs)} msgs, {len(self.confs)} confchgs"
            r, _, _ = select.select([h.fd_get()], [], [], left)
            if r:
                h.dispatch(evs.EVS_DISPATCH_ALL)


@pytest.mark.timeout(30)
def test_library_two_nodes(sock_dir, monkeypatch):
    with EvsExec(sock_dir, [A, B]) as ex:
        ra, rb = Rec(), Rec()
        monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
        ha = evs.initialize(ra.callbacks)
        monkeypatch.setenv("AIS_SOCKET", ex.socket_of(B))
        with evs.initialize(rb.callbacks) as hb:
            ha.join([b"key1", "key2", b"key3"])
            ha.leave([b"key1"])
            with pytest.raises(NotExist):
                ha.leave([b"key1"])
            with pytest.raises(TooManyGroups):
                ha.join([f"g{i}" for i in range(51)])
            with pytest.raises(InvalidParam):
                ha.join(["x" * 33])
            with pytest.raises(InvalidParam):
                ha.mcast_joined(7, evs.EVS_PRIO_LOW, b"x")
            hb.join(["key2"])
            ha.mcast_joined(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, [b"hello ", b"world"])
            ha.flush()  # pipelined: on the ring before b sends
            hb.mcast_groups(evs.EVS_TYPE_SAFE, evs.EVS_PRIO_HIGH, ["key3"], b"to key3")
            rb.wait(hb, n_msgs=1, n_confs=1)
            ra.wait(ha, n_msgs=2, n_confs=4)
            assert rb.msgs == [(A, b"hello world")]
            assert ra.msgs == [(A, b"hello world"), (B, b"to key3")]
            # joins list the joiner; a leaver gets no confchg of its own leave
            assert [c[0] for c in ra.confs] == [b"key1", b"key2", b"key3", b"key2"]
            g, members, left, joined = ra.confs[-1]
            assert left == [] and [m.address for m in joined] == [B]
            assert [m.address for m in members] == [A, B]
            assert members[0].pid == members[1].pid  # both handles are this process
            ha.finalize()
            rb.wait(hb, n_confs=2)
            g, members, left, joined = rb.confs[-1]
            assert g == b"key2" and [m.address for m in left] == [A]
            assert [m.address for m in members] == [B] and joined == []
        with pytest.raises(BadHandle):
            hb.join(["key1"])


@pytest.mark.timeout(30)
def test_library_dispatch_modes_and_threads(sock_dir, monkeypatch):
    with EvsExec(sock_dir, [A]) as ex:
        monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
        rec = Rec()
        h = evs.initialize(rec.callbacks)
        h.join(["key1"])
        with pytest.raises(InvalidParam):
            h.dispatch(3)
        h.dispatch(evs.EVS_DISPATCH_ONE)  # the join's confchg is waiting: runs it
        assert len(rec.confs) == 1
        sender = threading.Thread(target=lambda: [h.mcast_joined(
            evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, b"m%d" % i) for i in range(20)])
        sender.start()
        h.dispatch(evs.EVS_DISPATCH_ONE)  # waits for the first
        assert len(rec.msgs) >= 1
        sender.join(10)
        done = threading.Event()

        def blocking() -> None:
            h.dispatch(evs.EVS_DISPATCH_BLOCKING)
            done.set()

        t = threading.Thread(target=blocking)
        t.start()
        end = time.monotonic() + 10
        while len(rec.msgs) < 20 and time.monotonic() < end:
            time.sleep(0.01)
        assert [m for _, m in rec.msgs] == [b"m%d" % i for i in range(20)]
        h.finalize()  # wakes the blocked dispatch, which returns normally
        t.join(10)
        assert done.is_set()


@pytest.mark.timeout(20)
def test_window_of_messages_in_flight_gives_try_again_and_reopens():
    from ais.services import evs as sev
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a, b = cl.connect(A), cl.connect(B)
    cl.join(B, b, G1)
    share = max(sev.MIN_WINDOW, sev.RING_WINDOW // 2)
    cl.bus.pause()
    codes = [cl.send(A, a, b"m%d" % i, (G1,), run=False) for i in range(share + 1)]
    assert codes == [SA_OK] * share + [TryAgain.code]
    # the ring loses the queued ones: the window stays shut until one comes
    # back or the next configuration change
    assert len(cl.bus.take_queued()) == share
    cl.bus.resume()
    cl.run()
    assert cl.send(A, a, b"x", (G1,), run=False) == TryAgain.code
    cl.form([A], [B])
    cl.form([A, B])
    assert cl.send(A, a, b"after", (G1,)) == SA_OK
    assert msgs(b) == [b"after"]
    # cumulative: one delivered message clears every older entry
    svc = cl.evs(A)
    svc._inflight.extendleft([(0, 10)])
    svc._inflight_bytes += 10
    assert cl.send(A, a, b"again", (G1,)) == SA_OK
    assert not svc._inflight and svc._inflight_bytes == 0
    # bytes count too
    big = b"x" * (sev.RING_WINDOW_BYTES // 2)
    cl.bus.pause()
    assert cl.send(A, a, big, (G1,), run=False) == SA_OK
    assert cl.send(A, a, b"y", (G1,), run=False) == TryAgain.code
    cl.bus.resume()
    cl.run()
    assert cl.send(A, a, b"z", (G1,)) == SA_OK


GEVENT_CLIENT = r"""
from gevent import monkey
monkey.patch_all()
import gevent
from saf import evs
from saf.errors import TryAgain
got = []
h = evs.initialize(evs.Callbacks(deliver_callback=lambda s, m: got.append(m)))
h.join(["key1"])
d = gevent.spawn(h.dispatch, evs.EVS_DISPATCH_BLOCKING)   # a dispatching greenlet
ticks = []
t = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(50)])
for i in range(50):
    while True:
        try:
            h.mcast_joined(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, b"g%d" % i)
            break
        except TryAgain:
            gevent.sleep(0.01)
with gevent.Timeout(10):
    while len(got) < 50:
        gevent.sleep(0.01)
h.finalize()
d.join(5)
t.join(5)
print(len(ticks), d.ready(), got == [b"g%d" % i for i in range(50)])
"""


@pytest.mark.timeout(60)
def test_library_under_gevent(sock_dir):
    import os
    import subprocess
    import sys
    with EvsExec(sock_dir, [A]) as ex:
        env = dict(os.environ, AIS_SOCKET=ex.socket_of(A))
        r = subprocess.run([sys.executable, "-c", GEVENT_CLIENT], env=env, capture_output=True,
                           text=True, timeout=50)
        assert r.returncode == 0, r.stderr
        # the other greenlet ran while dispatch blocked; every message came back in order
        assert r.stdout.split() == ["50", "True", "True"]


@pytest.mark.timeout(20)
def test_pipelined_multicasts_are_held_in_order_not_refused():
    from ais.services import evs as sev
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a, a2, b = cl.connect(A), cl.connect(A), cl.connect(B)
    cl.join(B, b, G1)
    share = max(sev.MIN_WINDOW, sev.RING_WINDOW // 2)
    host = cl.hosts[A]
    cl.bus.pause()
    seqs = []
    for i in range(share + ew.PIPELINE + 1):
        cl._seq += 1
        seqs.append(cl._seq)
        req = ew.McastRequest(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, (G1,), b"p%d" % i,
                              ew.MCAST_QUEUE)
        host.lib_request(a, ew.EVS_REQ_MCAST_GROUPS, cl._seq, ew.encode_mcast(req, False))
    # the window's worth answered at once, PIPELINE held, one more refused
    assert [f.error for f in a.responses] == [SA_OK] * share + [TryAgain.code]
    assert a.responses[-1].seq == seqs[-1]
    # a non-pipelining sender does not overtake the held ones
    assert cl.send(A, a2, b"sync", (G1,), run=False) == TryAgain.code
    cl.bus.resume()
    cl.run()
    assert sorted(f.seq for f in a.responses) == sorted(seqs)
    assert msgs(b) == [b"p%d" % i for i in range(share + ew.PIPELINE)]
    # a handle that goes away takes its held multicasts with it
    cl.bus.pause()
    for i in range(share + 3):
        cl._seq += 1
        req = ew.McastRequest(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, (G1,), b"q%d" % i,
                              ew.MCAST_QUEUE)
        host.lib_request(a2, ew.EVS_REQ_MCAST_GROUPS, cl._seq, ew.encode_mcast(req, False))
    a2.close()
    host.lib_exit(a2)
    cl.bus.resume()
    cl.run()
    assert not cl.evs(A)._queues
    assert msgs(b)[-share:] == [b"q%d" % i for i in range(share)]


@pytest.mark.timeout(30)
def test_library_pipeline_full_ring_is_try_again_then_drains(sock_dir, monkeypatch):
    with EvsExec(sock_dir, [A, B]) as ex:
        monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
        rec = Rec()
        with evs.initialize(rec.callbacks) as h:
            h.join(["key1"])
            ex.call(lambda: ex.bus.pause())
            sent = 0
            with pytest.raises(TryAgain):
                for i in range(10_000):
                    h.mcast_joined(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, b"m%d" % i)
                    sent += 1
            assert 0 < sent < 10_000  # bounded: the window plus the pipeline
            ex.call(lambda: ex.bus.resume())
            h.flush()
            rec.wait(h, n_msgs=sent)
            assert [m for _, m in rec.msgs] == [b"m%d" % i for i in range(sent)]
            h.mcast_joined(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, b"after")
            h.leave(["key1"])  # a request after pipelined ones gets its own answer
            with pytest.raises(NotExist):
                h.leave(["key1"])


@pytest.mark.timeout(60)
def test_testevs_and_evsbench_examples(sock_dir):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    with EvsExec(sock_dir, [A]) as ex:
        env = dict(os.environ, AIS_SOCKET=ex.socket_of(A))
        r = subprocess.run([sys.executable, str(root / "examples" / "testevs.py"), "20"], env=env,
                           capture_output=True, text=True, timeout=50)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == "Init result 1"
        assert "Join result 1" in lines and "Leave result 1" in lines
        got = [ln for ln in lines if ln.startswith("API ")]
        assert got == ([f"API 'evs_mcast_joined' msg 'evs_mcast_joined: This is message {i}'"
                        for i in range(20)] +
                       [f"API 'evs_mcast_groups' msg 'evs_mcast_groups: This is message {i}'"
                        for i in range(20)])
        assert lines.count("CONFIGURATION CHANGE") == 3  # joined key1, key2, key3
        i = lines.index("CONFIGURATION CHANGE")
        assert lines[i + 1].startswith("---") and lines[i + 3] == "New configuration"
        assert lines[i + 4].startswith("127.0.0.1 pid ") and "Members Left:" in lines[i + 5]
        r = subprocess.run([sys.executable, str(root / "examples" / "evsbench.py"), "--rounds", "2",
                            "--count", "300"], env=env, capture_output=True, text=True,
                           timeout=50)
        assert r.returncode == 0, r.stderr
        rounds = [ln for ln in r.stdout.splitlines() if "TP/s" in ln]
        pat = re.compile(r"^ *(\d+) Writes +(\d+) bytes per write +[\d.]+ Seconds runtime +"
                         r"[\d.]+ TP/s +[\d.]+ MB/s\.$")
        assert [pat.match(ln).groups() for ln in rounds] == [("300", "1300"), ("240", "1400")]


@pytest.mark.timeout(20)
def test_sender_behind_on_its_callbacks_is_held_not_refused_others_go_on():
    cl = EvsCluster([A, B])
    cl.form([A, B])
    slow, fast, b = cl.connect(A), cl.connect(A), cl.connect(B)
    cl.join(B, b, G1)
    behind = {"on": True}
    slow.congested = lambda: behind["on"]  # what ais.ipc reports for a client not reading
    host = cl.hosts[A]

    def pipelined(conn, data):
        cl._seq += 1
        req = ew.McastRequest(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, (G1,), data, ew.MCAST_QUEUE)
        host.lib_request(conn, ew.EVS_REQ_MCAST_GROUPS, cl._seq, ew.encode_mcast(req, False))

    for i in range(3):
        pipelined(slow, b"slow%d" % i)
    cl.run()
    assert slow.responses == [] and msgs(b) == []
    for i in range(3):
        pipelined(fast, b"fast%d" % i)
    cl.sched.advance(0.1)
    assert msgs(b) == [b"fast0", b"fast1", b"fast2"]  # not stuck behind the slow handle
    assert slow.responses == []
    behind["on"] = False
    cl.sched.advance(0.1)
    assert msgs(b)[3:] == [b"slow0", b"slow1", b"slow2"]
    assert [f.error for f in slow.responses] == [SA_OK] * 3


class LimitedEvsExec(EvsExec):
    """EvsExec whose IPC server has the given limits."""

    def __init__(self, sock_dir: str, limits) -> None:
        super().__init__(sock_dir, [A], group=None, mode=0o777)
        self.limits = limits

    def _add(self, addr, sched, server_cls) -> None:
        host = self.make_host(addr, sched)
        self.bus.port(host)
        srv = server_cls(host, self.socket_of(addr), group=None, mode=0o777, limits=self.limits)
        srv.start()
        self.hosts[addr] = host
        self.servers[addr] = srv


@pytest.mark.timeout(60)
def test_a_member_not_reading_is_refused_at_half_the_bytes_then_closed(sock_dir, monkeypatch,
                                                                      caplog):
    import socket

    from ais.ipc import IpcLimits
    from saf import _wire as w
    limit = 1 << 20
    with LimitedEvsExec(sock_dir, IpcLimits(max_queued_bytes=limit)) as ex:
        monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # never opens its callbacks
        raw.settimeout(10)
        raw.connect(ex.socket_of(A))
        buf = w.FrameBuffer()

        def call(msg_id: int, seq: int, body: bytes) -> int:
            try:
                raw.sendall(w.encode_frame(w.Frame(ew.EVS_SERVICE_ID, msg_id, 0, seq, body)))
                while not buf.has_frame():
                    data = raw.recv(65536)
                    if not data:
                        return -1  # closed
                    buf.feed(data)
            except OSError:
                return -1
            return buf.next_frame().error

        assert call(w.MSG_HELLO, 1, w.encode_hello(w.Hello(w.ROLE_REQUEST, 0))) == SA_OK
        assert call(ew.EVS_REQ_JOIN, 2, ew.encode_group_list([G1])) == SA_OK
        with evs.initialize() as h:
            data = b"x" * 16384
            for _ in range(20):  # 320 KiB: over a quarter, under half
                h.mcast_groups(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, ["key1"], data)
            h.flush()
            assert call(ew.EVS_REQ_LEAVE, 3, ew.encode_group_list([G2])) == NotExist.code
            for _ in range(20):  # 640 KiB: past half
                h.mcast_groups(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, ["key1"], data)
            h.flush()
            assert ex.wait_until(lambda: ex.hosts[A].service_by_name("evs").delivered >= 40)
            assert call(ew.EVS_REQ_LEAVE, 4, ew.encode_group_list([G2])) == TryAgain.code
            assert "limit max_queued_bytes (1048576 bytes) half reached" in caplog.text
            for _ in range(40):  # past the limit: the executive closes it
                h.mcast_groups(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, ["key1"], data)
            h.flush()
            end = time.monotonic() + 10
            while call(ew.EVS_REQ_LEAVE, 5, ew.encode_group_list([G2])) != -1:
                assert time.monotonic() < end
                time.sleep(0.05)
            assert "limit max_queued_bytes" in caplog.text and "closing connection" in caplog.text
            # the other handle is unaffected and sees the closed one leave
            h.join(["key1"])
            h.mcast_groups(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, ["key1"], b"still here")
            h.flush()
        raw.close()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.timeout(60)
def test_fuzzed_requests_and_ring_messages_never_escape(seed):
    """Random and mutated bodies for every EVS library handler and ring message:
    only SaError / IpcProtocolError come out of a request, bad ring messages are
    dropped alike on every node, and the tables stay equal."""
    import random

    from ais.services import evs as sev
    rng = random.Random(seed)
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a, b = cl.connect(A), cl.connect(B)
    cl.join(A, a, G1, G2)
    cl.join(B, b, G1)
    valid = [ew.encode_group_list([G1, G3]), ew.encode_mcast(
        ew.McastRequest(2, 3, (G1,), b"data", ew.MCAST_QUEUE), False),
        ew.encode_mcast(ew.McastRequest(3, 0, (), b"d", 0), True)]

    def body() -> bytes:
        if rng.random() < 0.5:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        raw = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw[:rng.randrange(len(raw) + 1)]) if rng.random() < 0.3 else bytes(raw)

    host = cl.hosts[A]
    for _ in range(300):
        conn = cl.connect(A) if rng.random() < 0.05 else a
        try:
            host.lib_request(conn, rng.choice(list(EvsService.lib_handlers) + [99]),
                             rng.randrange(1, 1 << 30), body())
        except IpcProtocolError:
            pass
        cl.run()
    for _ in range(200):
        host.mcast(cl.evs(A), rng.choice([sev.MSG_JOIN, sev.MSG_LEAVE, sev.MSG_MCAST,
                                          sev.MSG_EXIT, sev.MSG_SYNC_MEMBERS]), body())
    cl.run()
    assert cl.evs(A).groups == cl.evs(B).groups
    assert cl.hosts[A].bad_messages["evs"] == cl.hosts[B].bad_messages["evs"] > 0
    # still serving
    b.callbacks.clear()
    assert cl.send(A, a, b"ok", (G1,)) == SA_OK
    assert msgs(b)[-1:] == [b"ok"]
