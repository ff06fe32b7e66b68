"""The service host's sync rounds under churn (in-process, FakeBus, manual clock)."""
from __future__ import annotations

import pytest

from test_clm import svc, toy_cluster


@pytest.mark.timeout(20)
def test_message_held_by_an_abandoned_round_reaches_a_node_that_joins_later():
    sched, bus, (h1, h2, h3) = toy_cluster(3)
    bus.reconfigure([1, 2])
    sched.run()
    h1.mcast(svc(h1), 1, b"\x01\x02")
    sched.run()
    assert svc(h1).values == svc(h2).values == [1, 2]
    bus.pause()
    bus.reconfigure([1], [2])  # a partition: each side starts a round
    h1.mcast(svc(h1), 1, b"\x09")  # ordinary message, delivered during that round
    bus.reconfigure([1, 2, 3])  # healed, and node 3 joins, before the round can finish
    assert bus.step() and bus.step()
    assert h1.syncing and svc(h1).values == [1, 2]  # held
    while bus.step():
        pass
    bus.resume()
    sched.run()
    # applied exactly once, everywhere, including on the nodes that were not
    # in the configuration where it was first delivered
    assert svc(h1).values == svc(h2).values == svc(h3).values == [1, 2, 9]
    assert not any(h.syncing for h in (h1, h2, h3))


@pytest.mark.timeout(20)
def test_held_message_of_a_departed_sender_stays_with_its_sender():
    sched, bus, (h1, h2, h3) = toy_cluster(3)
    bus.reconfigure([1, 2], [3])
    sched.run()
    bus.pause()
    bus.reconfigure([1, 2, 3])  # merge: a round starts on all three
    h3.mcast(svc(h3), 1, b"\x07")
    bus.reconfigure([1, 2], [3])  # split again before the round can end
    assert bus.step() and bus.step()
    assert all(h.syncing for h in (h1, h2, h3))
    while bus.step():
        pass
    bus.resume()
    sched.run()
    # nobody applied it in the abandoned configuration; its sender's side has it
    assert svc(h1).values == svc(h2).values == []
    assert svc(h3).values == [7]


# --- state announcements and safe replies ----------------------------------------------------

from ais.executive import ServiceHost  # noqa: E402
from ais.testing import FakeBus, FakePort, ManualScheduler  # noqa: E402
from ais.services.base import (  # noqa: E402
    DEFERRED, ExecHandlerSpec, Service, exec_handler, lib_handler,
)
from ais.totem.events import ConfChange, RingId, Stable  # noqa: E402
from helpers_exec import FakeConn  # noqa: E402


class Recorder(Service):
    """Records each round's SyncInfo; its one request is answered safe or not."""

    name = "toy-recorder"
    service_id = 78

    def __init__(self) -> None:
        self.infos = []
        self.seqs = []

    def sync_start(self, info):
        self.infos.append(info)

    @lib_handler(1, hold_during_sync=True)
    def lib_do(self, conn, req):
        self.host.mcast(self, 1, req.body, tag=req.tag)
        return DEFERRED

    @lib_handler(2)
    def lib_do_now(self, conn, req):  # not held during a round: its message may be
        self.host.mcast(self, 1, req.body, tag=req.tag)
        return DEFERRED

    @exec_handler(1)
    def exec_do(self, msg):
        self.seqs.append(msg.seq)
        self.host.reply(msg.tag, msg.payload, safe=msg.payload == b"safe")


def recorders(n):
    sched = ManualScheduler()
    bus = FakeBus(sched)
    hosts = {i: ServiceHost(i, [Recorder()], sched) for i in range(1, n + 1)}
    for h in hosts.values():
        bus.port(h)
    return sched, bus, hosts


def rec(host) -> Recorder:
    return host.service_by_id(Recorder.service_id)


@pytest.mark.timeout(20)
def test_state_groups_come_from_announcements_not_from_membership():
    sched, bus, hosts = recorders(4)
    bus.reconfigure([1, 2, 3])
    sched.run()
    first = rec(hosts[1]).infos[-1]
    assert first.groups == () and first.fresh == (1, 2, 3) and not first.transfer
    bus.reconfigure([1, 2], [3])
    sched.run()
    # node 2 restarts empty, node 4 is new; 3 comes back from its own side
    bus.remove(2)
    hosts[2] = ServiceHost(2, [Recorder()], sched)
    bus.port(hosts[2])
    bus.reconfigure([1, 2, 3, 4])
    sched.run()
    infos = [rec(h).infos[-1] for h in hosts.values()]
    # the same on every member (joined/left are each node's own view)
    assert len({(i.ring_id, i.members, i.groups, i.fresh) for i in infos}) == 1
    info = infos[0]
    assert [g.members for g in info.groups] == [(1,), (3,)]
    assert info.fresh == (2, 4) and info.transfer and info.senders == (1, 3)
    assert len({h.state_id for h in hosts.values()}) == 1  # all completed this round
    bus.reconfigure([1, 2, 3], [4])  # one state among 1, 2, 3: nothing to transfer
    sched.run()
    info = rec(hosts[1]).infos[-1]
    assert [g.members for g in info.groups] == [(1, 2, 3)] and not info.transfer
    assert info.senders == () and info.group_of(2) == info.groups[0]
    # back together before the rounds of the split end: 4 left through another ring
    bus.reconfigure([1, 2, 3], [4])  # (no change)
    bus.reconfigure([1, 2], [3, 4])
    bus.reconfigure([1, 2, 3, 4])
    sched.run()
    info = rec(hosts[1]).infos[-1]
    assert [g.members for g in info.groups] == [(1, 2), (3,), (4,)]


@pytest.mark.timeout(20)
def test_safe_reply_waits_for_stable_of_its_ring_or_the_end_of_the_ring():
    sched, bus, hosts = recorders(2)
    bus.reconfigure([1, 2])
    sched.run()
    h = hosts[1]
    conn = FakeConn(h.new_conn_id(), Recorder.service_id)
    h.lib_connect(conn)
    bus.hold_stable = True
    base = bus._last_seq[h.ring_id]  # the round's own messages came first
    for seq, body in ((1, b"safe"), (2, b"fast"), (3, b"safe")):
        h.lib_request(conn, 1, seq, body)
    sched.run()
    assert [f.seq for f in conn.responses] == [2]
    ring = h.ring_id
    h.on_stable(Stable(RingId(ring.seq - 4, ring.rep), 99))  # another ring: nothing
    assert [f.seq for f in conn.responses] == [2]
    h.on_stable(Stable(ring, base + 1))  # covers the first request's message only
    assert [f.seq for f in conn.responses] == [2, 1]
    h.lib_request(conn, 1, 4, b"safe")
    sched.run()
    assert [f.seq for f in conn.responses] == [2, 1]
    h.on_confchg(ConfChange(True, ring, (1,)))  # the ring ended: recovery gave it to all
    assert [f.seq for f in conn.responses] == [2, 1, 3, 4]


@pytest.mark.timeout(20)
def test_safe_reply_to_a_message_held_by_a_round_waits_for_the_round_to_end_everywhere():
    # Held during the round, the message is applied by each member when it completes
    # the round: that it is held by all is not enough, the last barrier must be too
    # (a member that has not completed the round would drop it if the sender died).
    sched, bus, hosts = recorders(3)
    bus.reconfigure([1, 2])
    sched.run()
    h = hosts[1]
    conn = FakeConn(h.new_conn_id(), Recorder.service_id)
    h.lib_connect(conn)
    bus.hold_stable = True
    bus.pause()
    bus.reconfigure([1, 2, 3])
    assert bus.step()  # the new configuration: a round starts
    h.lib_request(conn, 2, 1, b"safe")
    while bus.step():
        pass
    bus.resume()
    sched.run()
    assert not h.syncing and rec(h).seqs
    h.on_stable(Stable(h.ring_id, rec(h).seqs[-1]))
    assert conn.responses == []  # held by all, but not yet applied by all
    bus.stabilize()
    assert [f.seq for f in conn.responses] == [1]


# --- the ring contract: nothing is delivered inside mcast ------------------------------------
# The host has no re-entry guard: a ring must carry out what mcast causes after mcast
# returned.  Every ring the host is run on in tests is checked here (the real transport
# in test_transport.py, the seeded simulator's port in every servicesim run, which
# reports a "reentry" violation, and the Totem harness's port in test_ckpt.py).


class WatchedPort:
    """A ring port that knows when its host is inside ``mcast``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.inside = False

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        self.inside = True
        try:
            self.inner.mcast(payload)
        finally:
            self.inside = False


class InlinePort(FakePort):
    """What a ring must not do: deliver everything queued before ``mcast`` returns."""

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        super().mcast(payload)
        self.bus.flush()


class Echo(Service):
    """Multicasts from a request, from deliveries and from sync; notes, for every
    callback, whether its host was inside ``mcast``."""

    name = "toy-echo"
    service_id = 76

    def __init__(self) -> None:
        self.port: WatchedPort | None = None
        self.calls: list[tuple[str, bool]] = []
        self.got: list[bytes] = []

    def _note(self, what: str) -> None:
        assert self.port is not None
        self.calls.append((what, self.port.inside))

    def sync_start(self, info):
        self._note("sync_start")

    def sync_process(self):
        self._note("sync_process")
        self.host.mcast_sync(self, 2, b"")
        return True

    def sync_done(self):
        self._note("sync_done")

    @lib_handler(1)
    def lib_go(self, conn, req):
        self._note("lib_go")
        self.host.mcast(self, 1, req.body, tag=req.tag)
        return DEFERRED

    @exec_handler(1)
    def exec_echo(self, msg):
        self._note("exec_echo")
        self.got.append(msg.payload)
        n = msg.payload[0]
        if n and msg.sender == self.host.node_id:  # the sender echoes it on, n - 1 more
            self.host.mcast(self, 1, bytes([n - 1]))
        self.host.reply(msg.tag)

    @exec_handler(2)
    def exec_sync(self, msg):
        self._note("exec_sync")


def _echo_ring(n: int, port_cls) -> tuple[ManualScheduler, FakeBus, dict[int, ServiceHost]]:
    sched = ManualScheduler()
    bus = FakeBus(sched)
    hosts = {i: ServiceHost(i, [Echo()], sched) for i in range(1, n + 1)}
    for i, h in hosts.items():
        bus.hosts[i] = h
        port = WatchedPort(port_cls(bus, i))
        h.attach_ring(port)
        h.service_by_id(Echo.service_id).port = port
    return sched, bus, hosts


@pytest.mark.timeout(20)
@pytest.mark.parametrize("nodes", [1, 3])
def test_no_service_callback_runs_inside_mcast(nodes):
    sched, bus, hosts = _echo_ring(nodes, FakePort)
    bus.reconfigure(list(hosts))
    sched.run()
    conn = FakeConn(hosts[1].new_conn_id(), Echo.service_id)
    hosts[1].lib_connect(conn)
    hosts[1].lib_request(conn, 1, 1, bytes([5]))
    sched.run()
    assert [f.seq for f in conn.responses] == [1]
    for h in hosts.values():
        echo = h.service_by_id(Echo.service_id)
        assert echo.got == [bytes([k]) for k in (5, 4, 3, 2, 1, 0)]
        assert {w for w, _ in echo.calls} == {"sync_start", "sync_process", "sync_done",
                                              "exec_sync", "exec_echo"} | (
            {"lib_go"} if h.node_id == 1 else set())
        assert [c for c in echo.calls if c[1]] == []


@pytest.mark.timeout(20)
def test_a_ring_that_delivers_inside_mcast_is_caught():
    """The check above sees it when a ring breaks the contract (the host no longer
    defers such deliveries: the handler runs inside mcast, re-entered)."""
    sched, bus, hosts = _echo_ring(1, InlinePort)
    bus.reconfigure([1])
    sched.run()
    conn = FakeConn(hosts[1].new_conn_id(), Echo.service_id)
    hosts[1].lib_connect(conn)
    hosts[1].lib_request(conn, 1, 1, bytes([2]))
    echo = hosts[1].service_by_id(Echo.service_id)
    assert ("exec_echo", True) in echo.calls


@pytest.mark.timeout(60)
def test_servicesim_port_never_delivers_inside_mcast(monkeypatch):
    from ais.servicesim import ServiceSim, SvcOptions, run

    o = SvcOptions(messages=15, duration=2.0, partitions=1, amf=False)
    r = run(2, o)
    assert r.ok, r.report()
    assert r.requests > 10
    # a port that carried the core's answer out inside mcast is reported
    monkeypatch.setattr(ServiceSim, "queue_actions", ServiceSim.perform)
    r = run(2, o)
    assert "reentry" in {v.invariant for v in r.violations}


# --- a ring whose members leave it through different transitional configurations -----------

from ais.executive import (  # noqa: E402
    FLAG_RESENT, HOST_MSG_SYNC_BARRIER, HOST_SERVICE_ID, ORIGIN, decode_ring_message_untrusted,
)
from ais.totem.events import Deliver  # noqa: E402


class _Recording:
    """A ring port that only records: what the host multicast, and what it re-sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.front: list[bytes] = []

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        self.sent.append(payload)

    def requeue_front(self, payloads: list[bytes]) -> None:
        self.front.extend(payloads)


class Replicated(Service):
    """Replicated state: held messages of an abandoned round are re-sent."""

    name = "toy-replicated"
    service_id = 79

    def __init__(self) -> None:
        self.values: list[bytes] = []

    @exec_handler(1)
    def exec_add(self, msg):
        self.values.append(msg.payload)

    @exec_handler(2)
    def exec_add_plain(self, msg):
        self.values.append(msg.payload)


class PerNode(Replicated):
    """State rebuilt every round (as EVS): held messages are applied where delivered."""

    name = "toy-pernode"
    service_id = 80
    apply_held_on_abort = True


def _split_round(complete: bool = True) -> tuple[dict[int, ServiceHost], dict[int, _Recording]]:
    """Nodes 3 and 4 form ring R; node 4 multicasts one message for each service during
    R's sync round; node 3's barrier reaches only node 3, so node 3 completes the round
    and node 4 does not (``complete`` False: node 3's barrier is lost altogether); the
    ring then splits, each node alone on its side."""
    sched = ManualScheduler()
    hosts = {n: ServiceHost(n, [Replicated(), PerNode()], sched) for n in (3, 4)}
    ports = {n: _Recording() for n in hosts}
    for n, h in hosts.items():
        h.attach_ring(ports[n])
    ring = RingId(8, 3)
    seq = 0

    def deliver(sender: int, payload: bytes, to: tuple[int, ...] = (3, 4)) -> None:
        nonlocal seq
        seq += 1
        for n in to:
            hosts[n].on_deliver(Deliver(sender, payload, ring, seq))
        sched.run()

    for h in hosts.values():
        h.on_confchg(ConfChange(False, ring, (3, 4), joined=(3, 4)))
    sched.run()
    for n in (3, 4):  # the state announcements
        deliver(n, ports[n].sent.pop(0))
    for s in (Replicated, PerNode):
        hosts[4].mcast(hosts[4].service_by_id(s.service_id), 1, b"m")
    sched.run()
    barriers = {}
    for n in (3, 4):
        for p in ports[n].sent:
            m = decode_ring_message_untrusted(p)
            if m.service == HOST_SERVICE_ID and m.msg_id == HOST_MSG_SYNC_BARRIER:
                barriers[n] = p
            else:
                deliver(n, p)  # node 4's two ordinary messages: held by both
        ports[n].sent.clear()
    deliver(4, barriers[4])
    if complete:
        deliver(3, barriers[3], to=(3,))  # lost on its way to node 4, then the split
    assert hosts[3].syncing is not complete and hosts[4].syncing
    for n in (3, 4):
        other = 7 - n
        hosts[n].on_confchg(ConfChange(True, ring, (n,), left=(other,)))
        hosts[n].on_confchg(ConfChange(False, RingId(12, n), (n,), left=(other,)))
    sched.run()
    return hosts, ports


@pytest.mark.timeout(20)
def test_split_round_per_node_service_applies_held_messages_once_and_resends_nothing():
    """Node 3 applied node 4's messages when it completed the round; node 4, which could
    not complete it, applies the per-node service's message when the round is abandoned
    instead of re-sending it -- a re-send would reach node 3 again after a merge."""
    hosts, ports = _split_round()
    for n in (3, 4):
        assert hosts[n].service_by_id(PerNode.service_id).values == [b"m"]
    resent = [decode_ring_message_untrusted(p) for p in ports[4].front + ports[4].sent]
    assert [m.service for m in resent if m.service != HOST_SERVICE_ID] == [Replicated.service_id]
    assert not ports[3].front


@pytest.mark.timeout(20)
def test_split_round_replicated_service_resends_its_held_message():
    """The replicated service's message: applied by node 3 in the completed round, never
    applied by node 4 in the abandoned one, and re-sent by node 4, its sender."""
    hosts, ports = _split_round()
    assert hosts[3].service_by_id(Replicated.service_id).values == [b"m"]
    assert hosts[4].service_by_id(Replicated.service_id).values == []
    (front,) = ports[4].front
    m = decode_ring_message_untrusted(front)
    assert (m.service, m.msg_id, m.flags) == (Replicated.service_id, 1, FLAG_RESENT)
    # where it was first delivered travels with it: ring R, the third frame, its first message
    assert m.payload == ORIGIN.pack(8, 3, 3, 0) + b"m"


def _merge(hosts: dict[int, ServiceHost], ports: dict[int, _Recording], ring: RingId) -> None:
    """Both nodes of ``_split_round`` meet again in ``ring``, before either side's own
    round completed; what each queued (node 4's re-send first) is delivered in it."""
    sched = hosts[3].scheduler
    for n in (3, 4):
        hosts[n].on_confchg(ConfChange(True, RingId(12, n), (n,)))
        hosts[n].on_confchg(ConfChange(False, ring, (3, 4), joined=(7 - n,)))
    sched.run()
    seq = 0
    for _ in range(10):
        pending = [(n, p) for n in (3, 4) for p in ports[n].front + ports[n].sent]
        for n in (3, 4):
            ports[n].front.clear()
            ports[n].sent.clear()
        if not pending:
            return
        for sender, p in pending:
            seq += 1
            for n in (3, 4):
                hosts[n].on_deliver(Deliver(sender, p, ring, seq))
            sched.run()
    raise AssertionError("the merged ring never went quiet")


@pytest.mark.timeout(20)
def test_resent_message_already_applied_elsewhere_is_not_applied_again():
    """Node 4 re-sends its message; node 3, which applied it when it completed ring R's
    round, meets node 4 again before node 4's own round could complete.  Node 3's
    announcement names the messages of R its state holds, so in the merged ring the
    re-send is a replay: applied nowhere (node 3's value stays single); messages sent
    in the merged ring are applied as usual."""
    hosts, ports = _split_round()
    for n in (3, 4):
        hosts[n].mcast(hosts[n].service_by_id(Replicated.service_id), 2, b"after")
    _merge(hosts, ports, RingId(16, 3))
    assert not hosts[3].syncing and not hosts[4].syncing
    assert hosts[3].service_by_id(Replicated.service_id).values == [b"m", b"after", b"after"]
    assert hosts[4].service_by_id(Replicated.service_id).values == [b"after", b"after"]
    assert hosts[3].replays_dropped["toy-replicated"] == 1
    assert hosts[4].replays_dropped["toy-replicated"] == 1


@pytest.mark.timeout(20)
def test_handler_that_takes_replays_runs_with_the_mark(monkeypatch):
    """A handler declared ``replay=True`` is run for the replay, told it is one and by
    whom it was applied (node 3, on both nodes)."""
    seen: list[tuple[int, bytes, bool, frozenset[int]]] = []

    def record(self, msg):
        seen.append((self.host.node_id, msg.payload, msg.replay, msg.applied_by))

    monkeypatch.setitem(Replicated.exec_handlers, 1, ExecHandlerSpec(record, replay=True))
    hosts, ports = _split_round()
    _merge(hosts, ports, RingId(16, 3))
    assert seen == [(3, b"m", False, frozenset()), (3, b"m", True, frozenset({3})),
                    (4, b"m", True, frozenset({3}))]
    assert not hosts[3].replays_dropped and not hosts[4].replays_dropped
    assert hosts[3].replays["toy-replicated"] == hosts[4].replays["toy-replicated"] == 1


@pytest.mark.timeout(20)
def test_resent_message_nobody_applied_is_applied_once():
    """The same history, but node 3 never completed ring R's round (its barrier was lost
    too): the re-send is the message's first application, on both nodes."""
    hosts, ports = _split_round(complete=False)
    _merge(hosts, ports, RingId(16, 3))
    for n in (3, 4):
        assert hosts[n].service_by_id(Replicated.service_id).values == [b"m"]
        assert not hosts[n].replays_dropped


# --- the sync state announcement and its applied-messages record -----------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ais.executive import (  # noqa: E402
    APPLIED_EXTRA_MAX, APPLIED_RINGS_MAX, Applied, RingMessageError, decode_state_untrusted,
    encode_state, merge_applied,
)
from ais.services.base import StateId  # noqa: E402

_rings = st.builds(RingId, st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1))
_applied = st.builds(Applied, st.integers(0, 2**64 - 1), st.frozensets(
    st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**16 - 1)), max_size=20))
_records = st.dictionaries(_rings, _applied, max_size=APPLIED_RINGS_MAX)


@settings(max_examples=200, deadline=None)
@given(st.none() | st.builds(StateId, _rings, _rings), _records)
def test_announcement_round_trip(state, record):
    assert decode_state_untrusted(encode_state(state, record)) == (state, record)


@settings(max_examples=200, deadline=None)
@given(_records, st.data())
def test_announcement_cut_or_padded_is_refused(record, data):
    wire = encode_state(None, record)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(RingMessageError):
        decode_state_untrusted(wire[:cut])
    with pytest.raises(RingMessageError):
        decode_state_untrusted(wire + data.draw(st.binary(min_size=1, max_size=30)))


def test_announcement_over_its_bounds_is_refused():
    wire = encode_state(None, {RingId(i + 1, 1): Applied(1) for i in range(APPLIED_RINGS_MAX)})
    too_many = wire[:24] + (APPLIED_RINGS_MAX + 1).to_bytes(2, "big") + wire[26:]
    with pytest.raises(RingMessageError, match="rings"):
        decode_state_untrusted(too_many)
    big = encode_state(None, {RingId(1, 1): Applied(0, frozenset(
        (i + 1, 0) for i in range(APPLIED_EXTRA_MAX + 1)))})
    with pytest.raises(RingMessageError):
        decode_state_untrusted(big)


@settings(max_examples=300, deadline=None)
@given(st.lists(_records, max_size=4), st.data())
def test_merged_record_covers_what_any_record_covers(records, data):
    """The union: a name is covered by the merge exactly when some record covers it
    (within the bounds: the newest rings, the highest names beyond ``upto``)."""
    merged = merge_applied(records)
    kept = sorted(set().union(*records))[-APPLIED_RINGS_MAX:]
    assert sorted(merged) == kept
    names = [(r, a.upto, 0) for rec in records for r, a in rec.items()]
    names += [(r, seq, index) for rec in records for r, a in rec.items() for seq, index in a.extra]
    for ring, seq, index in data.draw(st.lists(st.sampled_from(names), max_size=10)) \
            if names else []:
        for probe in ((ring, seq, index), (ring, seq + 1, index), (ring, seq, index + 1)):
            want = probe[0] in kept and any(
                probe[0] in r and r[probe[0]].covers(*probe[1:]) for r in records)
            got = probe[0] in merged and merged[probe[0]].covers(*probe[1:])
            assert got == want
