"""CLM end to end: the service on fake multi-node rings, and the saf library over sockets."""
import os
import select
import threading
import time

import pytest

from ais.executive import ServiceHost
from ais.totem.events import node_of
from helpers_exec import BOOT, ExecThread, ServiceCluster
from saf import _clm_wire as w
from saf import clm
from saf.errors import (
    BadFlags, BadHandle, InvalidParam, Library, NotExist, Timeout, VersionError,
)
from saf.types import (
    SA_CLM_LOCAL_NODE_ID, SA_DISPATCH_ALL, SA_DISPATCH_BLOCKING, SA_DISPATCH_ONE, SA_OK,
    SA_TRACK_CHANGES, SA_TRACK_CHANGES_ONLY, SA_TRACK_CURRENT, ClusterChange, Version,
    address_of_node_id, node_id_from_totem, node_id_of_address, totem_from_node_id,
)

A, B, C = "127.0.0.1", "127.0.0.2", "127.0.0.3"
NO_CHANGE = ClusterChange.SA_CLM_NODE_NO_CHANGE
JOINED = ClusterChange.SA_CLM_NODE_JOINED
LEFT = ClusterChange.SA_CLM_NODE_LEFT


def names(cb):
    return [(i.cluster_node.node_name.decode(), i.cluster_change) for i in cb.items]


# --- node ids -----------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_node_id_convention():
    # spec/clm.md 1.3: 192.168.1.98 -> 0x6201a8c0 (address bytes read little-endian)
    assert node_id_of_address("192.168.1.98") == 0x6201A8C0
    assert node_id_from_totem(node_of("192.168.1.98")) == 0x6201A8C0
    assert totem_from_node_id(0x6201A8C0) == node_of("192.168.1.98")
    assert address_of_node_id(0x6201A8C0) == "192.168.1.98"


# --- the service on a fake multi-node ring (no sockets) ------------------------------------

def track(cl, addr, flags):
    conn = cl.connect(addr)
    r = cl.request(addr, conn, w.CLM_REQ_TRACK_START,
                   w.encode_clm_track_start(w.ClmTrackStart(flags, 0)))
    assert r.error == SA_OK
    return conn


def track_cbs(conn):
    out = [w.decode_clm_track_callback_untrusted(f.body) for f in conn.callbacks
           if f.msg_id == w.CLM_CB_TRACK]
    conn.callbacks.clear()
    return out


@pytest.mark.timeout(20)
def test_join_and_leave_changes_vs_changes_only():
    cl = ServiceCluster([A, B, C])
    cl.form([A])
    full = track(cl, A, SA_TRACK_CURRENT | SA_TRACK_CHANGES)
    only = track(cl, A, SA_TRACK_CHANGES_ONLY)
    [cur] = track_cbs(full)
    assert names(cur) == [(A, NO_CHANGE)] and cur.number_of_members == 1
    assert track_cbs(only) == []

    cl.form([A, B])
    [f1] = track_cbs(full)
    [o1] = track_cbs(only)
    assert names(f1) == [(A, NO_CHANGE), (B, JOINED)]
    assert names(o1) == [(B, JOINED)]
    assert f1.number_of_members == o1.number_of_members == 2
    assert f1.view_number > cur.view_number

    cl.form([A, B, C])
    assert names(track_cbs(only)[0]) == [(C, JOINED)]
    track_cbs(full)

    cl.form([A, C])  # B crashed
    [f2] = track_cbs(full)
    [o2] = track_cbs(only)
    assert names(o2) == [(B, LEFT)]
    assert names(f2) == [(A, NO_CHANGE), (C, NO_CHANGE), (B, LEFT)]
    left = [i for i in f2.items if i.cluster_change == LEFT][0]
    assert left.cluster_node.member is False
    assert all(i.cluster_node.member for i in f2.items if i.cluster_change != LEFT)
    assert f2.number_of_members == 2


@pytest.mark.timeout(20)
def test_new_node_sees_everyone_and_views_agree():
    cl = ServiceCluster([A, B, C])
    cl.form([A, B])
    c_conn = track(cl, C, SA_TRACK_CHANGES)
    cl.form([A, B, C])
    [cb] = track_cbs(c_conn)
    # C's view before joining was only itself: A and B are JOINED, C unchanged.
    assert sorted(names(cb)) == [(A, JOINED), (B, JOINED), (C, NO_CHANGE)]
    clms = [cl.hosts[x].service_by_name("clm") for x in (A, B, C)]
    assert len({c.view_number for c in clms}) == 1
    assert len({c.view_members for c in clms}) == 1
    assert all(c.records[node_of(B)].boot_timestamp == BOOT for c in clms)


@pytest.mark.timeout(20)
def test_partition_and_merge():
    cl = ServiceCluster([A, B, C])
    cl.form([A, B, C])
    ta = track(cl, A, SA_TRACK_CHANGES_ONLY)
    tc = track(cl, C, SA_TRACK_CHANGES_ONLY)
    cl.form([A, B], [C])
    assert names(track_cbs(ta)[0]) == [(C, LEFT)]
    assert sorted(names(track_cbs(tc)[0])) == [(A, LEFT), (B, LEFT)]
    cl.form([A, B, C])
    assert names(track_cbs(ta)[0]) == [(C, JOINED)]
    assert sorted(names(track_cbs(tc)[0])) == [(A, JOINED), (B, JOINED)]


@pytest.mark.timeout(20)
def test_member_without_record_is_not_hidden():
    cl = ServiceCluster([A])
    # A node whose executive runs no CLM: it takes part in sync but sends no record.
    bare = ServiceHost(node_of(B), [], cl.sched)
    cl.bus.port(bare)
    cl.form([A])
    t = track(cl, A, SA_TRACK_CHANGES_ONLY)
    cl.form([A, B])
    [cb] = track_cbs(t)
    assert names(cb) == [(B, JOINED)]
    assert cb.items[0].cluster_node.node_id == node_id_of_address(B)


@pytest.mark.timeout(20)
def test_node_get_during_sync_waits_or_times_out():
    cl = ServiceCluster([A, B])
    cl.form([A, B])
    host = cl.hosts[A]
    conn = cl.connect(A)
    remote = w.encode_clm_node_get(w.ClmNodeGet(node_id_of_address(B), 10**9))
    local = w.encode_clm_node_get(w.ClmNodeGet(SA_CLM_LOCAL_NODE_ID, 10**9))
    # Carry out only the configuration change, not the sync round after it.
    cl.bus.pause()
    cl.bus.reconfigure([node_of(A)], [node_of(B)])
    assert cl.bus.step()
    assert host.syncing
    host.lib_request(conn, w.CLM_REQ_NODE_GET, 1, remote)
    host.lib_request(conn, w.CLM_REQ_NODE_GET, 2, local)
    # The local node is answered at once; the remote one waits for the round...
    assert [f.seq for f in conn.responses] == [2]
    cl.bus.resume()
    cl.run()
    # ... which ends with B gone.
    assert [(f.seq, f.error) for f in conn.responses] == [(2, SA_OK), (1, NotExist.code)]
    # A wait that outlasts its timeout gets TIMEOUT.
    cl.bus.pause()
    cl.bus.reconfigure([node_of(A), node_of(B)])
    assert cl.bus.step()
    host.lib_request(conn, w.CLM_REQ_NODE_GET, 3,
                     w.encode_clm_node_get(w.ClmNodeGet(node_id_of_address(B), 10**8)))
    cl.sched.advance(0.2)
    assert conn.responses[-1].seq == 3 and conn.responses[-1].error == Timeout.code
    # A non-positive timeout never waits: answered from the current view.
    host.lib_request(conn, w.CLM_REQ_NODE_GET, 4,
                     w.encode_clm_node_get(w.ClmNodeGet(node_id_of_address(B), 0)))
    assert conn.responses[-1].seq == 4 and conn.responses[-1].error == NotExist.code
    cl.bus.resume()
    cl.run()
    assert not host.syncing
    r = cl.request(A, conn, w.CLM_REQ_NODE_GET, remote)
    assert w.decode_cluster_node_untrusted(r.body).node_name == b"127.0.0.2"


@pytest.mark.timeout(20)
def test_track_flags_and_stop():
    cl = ServiceCluster([A])
    cl.form([A])
    conn = cl.connect(A)
    for bad in (0, 0x08, SA_TRACK_CHANGES | SA_TRACK_CHANGES_ONLY, 0xFF):
        r = cl.request(A, conn, w.CLM_REQ_TRACK_START,
                       w.encode_clm_track_start(w.ClmTrackStart(bad, 0)))
        assert r.error == BadFlags.code
    assert cl.request(A, conn, w.CLM_REQ_TRACK_STOP).error == NotExist.code
    # CURRENT alone does not track.
    cl.request(A, conn, w.CLM_REQ_TRACK_START,
               w.encode_clm_track_start(w.ClmTrackStart(SA_TRACK_CURRENT, 0)))
    assert cl.request(A, conn, w.CLM_REQ_TRACK_STOP).error == NotExist.code
    cl.request(A, conn, w.CLM_REQ_TRACK_START,
               w.encode_clm_track_start(w.ClmTrackStart(SA_TRACK_CHANGES, 0)))
    # A second start updates the tracker instead of adding one.
    cl.request(A, conn, w.CLM_REQ_TRACK_START,
               w.encode_clm_track_start(w.ClmTrackStart(SA_TRACK_CHANGES_ONLY, 0)))
    assert len(cl.hosts[A].service_by_name("clm").trackers) == 1
    assert cl.request(A, conn, w.CLM_REQ_TRACK_STOP).error == SA_OK
    # Disconnect forgets the tracker.
    cl.request(A, conn, w.CLM_REQ_TRACK_START,
               w.encode_clm_track_start(w.ClmTrackStart(SA_TRACK_CHANGES, 0)))
    cl.hosts[A].lib_exit(conn)
    assert not cl.hosts[A].service_by_name("clm").trackers


@pytest.mark.timeout(20)
def test_malformed_request_body_is_protocol_error():
    from saf.errors import IpcProtocolError

    cl = ServiceCluster([A])
    cl.form([A])
    conn = cl.connect(A)
    with pytest.raises(IpcProtocolError):
        cl.hosts[A].lib_request(conn, w.CLM_REQ_NODE_GET, 1, b"\x01")


# --- the library over real sockets ----------------------------------------------------------

class Recorder:
    def __init__(self):
        self.tracks = []
        self.gets = []
        self.callbacks = clm.Callbacks(
            cluster_node_get_callback=lambda inv, node, err: self.gets.append((inv, node, err)),
            cluster_track_callback=lambda buf, n, members, view, err:
                self.tracks.append((buf, n, members, view, err)))

    def wait(self, h, attr, count, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(getattr(self, attr)) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(getattr(self, attr))} {attr} callbacks"
            r, _, _ = select.select([h.selection_object()], [], [], left)
            if r:
                h.dispatch(SA_DISPATCH_ALL)
        return getattr(self, attr)


@pytest.fixture
def trio(sock_dir, monkeypatch):
    ex = ExecThread(sock_dir, [A, B, C], form=False).start()
    ex.reconfigure([A, B])
    monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
    yield ex
    ex.stop()


def item_names(buf):
    return [(i.cluster_node.node_name.decode(), i.cluster_change) for i in buf]


@pytest.mark.timeout(30)
def test_library_single_node_basics(sock_dir, monkeypatch):
    with ExecThread(sock_dir, [A]) as ex:
        monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
        local = clm.cluster_node_get(SA_CLM_LOCAL_NODE_ID, 0)
        assert local.node_id == node_id_of_address(A)
        assert local.node_address == bytes([127, 0, 0, 1])
        assert local.node_name == b"127.0.0.1" and local.cluster_name == b"mvlcge"
        assert local.member and local.boot_timestamp == BOOT
        assert clm.cluster_node_get(local.node_id, 10**9) == local
        with pytest.raises(NotExist):
            clm.cluster_node_get(0x6201A8C0, 0)
        rec = Recorder()
        with clm.initialize(rec.callbacks) as h:
            for inv, node in ((0x55, 0), (0x60, 0x6201A8C0), (0x59, 0), (0x57, 0)):
                h.cluster_node_get_async(inv, node)
            h.cluster_track_start(SA_TRACK_CURRENT | SA_TRACK_CHANGES_ONLY, 64)
            gets = rec.wait(h, "gets", 4)
            assert [g[0] for g in gets] == [0x55, 0x60, 0x59, 0x57]
            assert gets[0] == (0x55, local, SA_OK)
            assert gets[1] == (0x60, None, NotExist.code)
            [(buf, n, members, view, err)] = rec.wait(h, "tracks", 1)
            assert item_names(buf) == [(A, NO_CHANGE)] and n == 1 and members == 1
            assert err == SA_OK and view > 0
            h.cluster_track_stop()
            with pytest.raises(NotExist):
                h.cluster_track_stop()
            with pytest.raises(BadFlags):
                h.cluster_track_start(SA_TRACK_CHANGES | SA_TRACK_CHANGES_ONLY)
            with pytest.raises(InvalidParam):
                h.dispatch(7)
            # Nothing pending: ONE and ALL return at once.
            start = time.monotonic()
            h.dispatch(SA_DISPATCH_ONE)
            h.dispatch(SA_DISPATCH_ALL)
            assert time.monotonic() - start < 1
        with pytest.raises(BadHandle):
            h.cluster_track_stop()
        with pytest.raises(BadHandle):
            h.finalize()
        with pytest.raises(BadHandle):
            h.dispatch(SA_DISPATCH_ALL)


@pytest.mark.timeout(30)
def test_library_version_and_null_callbacks(sock_dir, monkeypatch):
    with ExecThread(sock_dir, [A]) as ex:
        monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
        for bad in (Version("B", 1, 1), Version("A", 2, 1), None):
            with pytest.raises(VersionError):
                clm.initialize(version=bad)
        h = clm.initialize(None, Version("a", 1, 1))
        h.cluster_track_start(SA_TRACK_CURRENT)
        h.cluster_node_get_async(1, 0)
        time.sleep(0.1)
        h.dispatch(SA_DISPATCH_ALL)  # callbacks absent: messages dropped quietly
        h.finalize()


@pytest.mark.timeout(30)
def test_library_multi_node_join_leave(trio, monkeypatch):
    rec_full, rec_only = Recorder(), Recorder()
    hf = clm.initialize(rec_full.callbacks)
    ho = clm.initialize(rec_only.callbacks)
    hf.cluster_track_start(SA_TRACK_CURRENT | SA_TRACK_CHANGES)
    ho.cluster_track_start(SA_TRACK_CHANGES_ONLY)
    [cur] = rec_full.wait(hf, "tracks", 1)
    assert sorted(item_names(cur[0])) == [(A, NO_CHANGE), (B, NO_CHANGE)] and cur[2] == 2

    trio.reconfigure([A, B, C])
    full = rec_full.wait(hf, "tracks", 2)[1]
    only = rec_only.wait(ho, "tracks", 1)[0]
    assert item_names(only[0]) == [(C, JOINED)]
    assert sorted(item_names(full[0])) == [(A, NO_CHANGE), (B, NO_CHANGE), (C, JOINED)]
    assert full[2] == only[2] == 3 and full[3] == only[3] > cur[3]
    assert clm.cluster_node_get(node_id_of_address(C), 10**9).node_name == b"127.0.0.3"

    trio.reconfigure([A, C])
    only = rec_only.wait(ho, "tracks", 2)[1]
    assert item_names(only[0]) == [(B, LEFT)]
    assert only[0][0].cluster_node.member is False and only[2] == 2
    with pytest.raises(NotExist):
        clm.cluster_node_get(node_id_of_address(B), 0)

    # Another node's library sees the same membership.
    monkeypatch.setenv("AIS_SOCKET", trio.socket_of(C))
    assert clm.cluster_node_get(0, 0).node_name == b"127.0.0.3"
    assert clm.cluster_node_get(node_id_of_address(A), 0).node_name == b"127.0.0.1"
    hf.finalize()
    ho.finalize()


@pytest.mark.timeout(30)
def test_library_no_space(trio):
    rec = Recorder()
    with clm.initialize(rec.callbacks) as h:
        h.cluster_track_start(SA_TRACK_CURRENT | SA_TRACK_CHANGES, 1)
        [(buf, n, members, view, err)] = rec.wait(h, "tracks", 1)
        assert buf == [] and err == 15 and n == 2 and members == 2  # SA_ERR_NO_SPACE


@pytest.mark.timeout(30)
def test_finalize_while_blocked_in_dispatch(trio):
    h = clm.initialize(Recorder().callbacks)
    h.cluster_track_start(SA_TRACK_CHANGES)
    result = []

    def block():
        h.dispatch(SA_DISPATCH_BLOCKING)
        result.append("returned")

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.2)
    assert t.is_alive()
    h.finalize()
    t.join(5)
    assert result == ["returned"]


@pytest.mark.timeout(30)
def test_blocking_dispatch_runs_callbacks(trio):
    rec = Recorder()
    h = clm.initialize(rec.callbacks)
    h.cluster_track_start(SA_TRACK_CHANGES_ONLY)
    t = threading.Thread(target=h.dispatch, args=(SA_DISPATCH_BLOCKING,))
    t.start()
    trio.reconfigure([A, B, C])
    deadline = time.monotonic() + 5
    while not rec.tracks and time.monotonic() < deadline:
        time.sleep(0.01)
    h.finalize()
    t.join(5)
    assert item_names(rec.tracks[0][0]) == [(C, JOINED)]


@pytest.mark.timeout(30)
def test_executive_death_gives_prompt_errors(trio):
    h = clm.initialize(Recorder().callbacks)
    h.cluster_track_start(SA_TRACK_CHANGES)
    trio.kill_server(A)
    start = time.monotonic()
    with pytest.raises(Library):
        h.cluster_track_stop()
    with pytest.raises(Library):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # EOF makes the fd readable
            select.select([h.selection_object()], [], [], 1)
            h.dispatch(SA_DISPATCH_ALL)
    assert time.monotonic() - start < 3
    h.finalize()
    from saf.errors import TryAgain
    with pytest.raises(TryAgain):
        clm.initialize()


# --- examples/testclm.py ------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_testclm_example(sock_dir):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(sock_dir, "ex.sock")
    server = subprocess.Popen([sys.executable, os.path.join(root, "test", "helpers_exec.py"),
                               "serve", path], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        env = dict(os.environ, AIS_SOCKET=path)
        proc = subprocess.Popen([sys.executable, os.path.join(root, "examples", "testclm.py")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env)
        lines = []
        deadline = time.monotonic() + 20
        while "Done calling trackCallback" not in lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        out, _ = proc.communicate("\n", timeout=20)
        lines += out.splitlines()
        assert proc.returncode == 0
        assert lines[:2] == ["Result of saClmClusterNodeGet 1",
                             "Node Information for saClmClusterNodeGet SA_CLM_LOCAL_NODE_ID "
                             "result %d"]
        assert "\tnode id is 100007f" in lines and "\tnode address is 127.0.0.1." in lines
        assert "\tCluster name is mvlcge" in lines and "\tMember is 1" in lines
        assert lines.count("result is 1") == 4
        assert any(x.startswith("select fd is ") for x in lines)
        titles = [x for x in lines if x.startswith("Node Information for NodeGetCallback")]
        assert titles == [f"Node Information for NodeGetCallback local machine {i}"
                          for i in ("55", "59", "57")]
        assert "NodeGetCallback 60 error 12" in lines
        assert lines.count("NODE STATE NO CHANGE.") == 1
        assert lines[-2:] == ["TrackStop result is 1 (should be 1)",
                              "Finalize  result is 1 (should be 1)"]
    finally:
        server.kill()
        server.wait(10)
        server.stdout.close()


# --- the service framework itself, with a toy service ------------------------------------

from ais.testing import FakeBus, ManualScheduler  # noqa: E402
from ais.services.base import (  # noqa: E402
    DEFERRED, Service, exec_handler, lib_handler,
)
from helpers_exec import FakeConn  # noqa: E402


class Counter(Service):
    """A replicated list of numbers; joiners get the whole list streamed in chunks."""

    name = "toy-counter"
    service_id = 77
    CHUNK = 3

    def __init__(self):
        self.values = []
        self.sync_log = []

    def sync_start(self, info):
        self.sync_log.append(("start", info.ring_id.seq))
        # The lowest member holding state sends it.
        olds = [g.sender for g in info.groups]
        self._sender = min(olds) if olds else min(info.members)
        self._cursor = 0
        self._incoming = []

    def sync_process(self):
        if self.host.node_id != self._sender:
            return True
        chunk = self.values[self._cursor:self._cursor + self.CHUNK]
        if chunk:
            self.host.mcast_sync(self, 2, bytes(chunk))
            self._cursor += len(chunk)
        return self._cursor >= len(self.values)

    def sync_abort(self):
        self.sync_log.append(("abort",))

    def sync_done(self):
        self.sync_log.append(("done",))
        if self._incoming or self.host.node_id != self._sender:
            self.values = self._incoming

    @exec_handler(2)
    def exec_chunk(self, msg):
        assert msg.sync
        self._incoming.extend(msg.payload)

    @lib_handler(1, hold_during_sync=True)
    def lib_add(self, conn, req):
        self.host.mcast(self, 1, req.body, tag=req.tag)
        return DEFERRED

    @exec_handler(1)
    def exec_add(self, msg):
        self.values.extend(msg.payload)
        self.host.reply(msg.tag, bytes([len(self.values)]))


def toy_cluster(n):
    sched = ManualScheduler()
    bus = FakeBus(sched)
    hosts = [ServiceHost(i + 1, [Counter()], sched) for i in range(n)]
    for h in hosts:
        bus.port(h)
    return sched, bus, hosts


def svc(host):
    return host.service_by_id(Counter.service_id)


@pytest.mark.timeout(20)
def test_framework_replies_only_on_asking_node_and_streams_sync():
    sched, bus, (h1, h2, h3) = toy_cluster(3)
    bus.reconfigure([1, 2])
    sched.run()
    c1 = FakeConn(h1.new_conn_id(), Counter.service_id)
    c2 = FakeConn(h2.new_conn_id(), Counter.service_id)
    h1.lib_connect(c1)
    h2.lib_connect(c2)
    h1.lib_request(c1, 1, 10, bytes(range(5)))
    h2.lib_request(c2, 1, 10, bytes(range(5, 10)))
    sched.run()
    assert svc(h1).values == svc(h2).values == list(range(10))
    # Each client got exactly its own answer, from its own node.
    assert [(f.seq, f.body) for f in c1.responses] == [(10, b"\x05")]
    assert [(f.seq, f.body) for f in c2.responses] == [(10, b"\x0a")]
    # A joiner receives the list in chunks of 3, through the ring, before requests run.
    bus.reconfigure([1, 2, 3])
    h1.lib_request(c1, 1, 11, b"\x63")  # arrives while the round runs: held
    sched.run()
    assert svc(h3).values == svc(h1).values == list(range(10)) + [0x63]
    assert c1.responses[-1].body == bytes([11])


@pytest.mark.timeout(20)
def test_framework_holds_deliveries_and_restarts_abandoned_rounds():
    sched, bus, (h1, h2) = toy_cluster(2)
    bus.reconfigure([1])
    sched.run()
    c1 = FakeConn(h1.new_conn_id(), Counter.service_id)
    h1.lib_connect(c1)
    h1.lib_request(c1, 1, 1, b"\x01\x02")
    sched.run()
    # A configuration change arrives, and another before the first round ends.
    bus.pause()
    bus.reconfigure([1, 2])
    bus.reconfigure([1])
    bus.reconfigure([1, 2])
    while bus.step():
        pass
    bus.resume()
    sched.run()
    log = svc(h1).sync_log
    assert ("abort",) in log and log[-1] == ("done",)
    assert svc(h2).values == svc(h1).values == [1, 2]
    assert not h1.syncing and not h2.syncing
    # A message delivered during a round waits until the round ends.
    bus.pause()
    bus.reconfigure([1], [2])
    h1.mcast(svc(h1), 1, b"\x09")  # e.g. sent by a timer; ordered after the change
    assert bus.step()  # the configuration change only
    assert h1.syncing
    assert bus.step()  # the message: delivered during the round, so held
    assert svc(h1).values == [1, 2]
    bus.resume()
    sched.run()
    assert svc(h1).values == [1, 2, 9]


@pytest.mark.timeout(20)
def test_create_host_with_options():
    from ais.executive import create_host

    host = create_host(node_of(A), ManualScheduler(), {"clm": {"cluster_name": "prod"}})
    assert host.service_by_name("clm").local.cluster_name == b"prod"


@pytest.mark.timeout(30)
def test_dispatch_one_runs_exactly_one(sock_dir, monkeypatch):
    with ExecThread(sock_dir, [A]) as ex:
        monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
        rec = Recorder()
        with clm.initialize(rec.callbacks) as h:
            for inv in range(3):
                h.cluster_node_get_async(inv, 0)
            deadline = time.monotonic() + 5
            while not select.select([h.selection_object()], [], [], 0.1)[0]:
                assert time.monotonic() < deadline
            time.sleep(0.1)  # let all three arrive
            h.dispatch(SA_DISPATCH_ONE)
            assert [g[0] for g in rec.gets] == [0]
            h.dispatch(SA_DISPATCH_ALL)
            assert [g[0] for g in rec.gets] == [0, 1, 2]
            assert not select.select([h.selection_object()], [], [], 0)[0]
