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
from ais.testing import FakeBus, ManualScheduler  # noqa: E402
from ais.services.base import DEFERRED, Service, exec_handler, lib_handler  # noqa: E402
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
