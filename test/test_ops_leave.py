"""Clean leave: a stopping node tells the ring, the survivors re-form at once.

The core is driven on the scripted network (virtual clock); the transport's
"a leave counts only from its own sender's address" rule over real loopback
sockets.
"""
from __future__ import annotations

import logging

import gevent
import pytest

from ais.totem import wire
from ais.totem.crypto import Crypto
from ais.totem.events import RingId, node_of
from ais.totem.srp import RingState
from test_srp import formed
from test_transport import KEY, Harness, StubSrp, free_port, udp_sock, wait_until, cleanup  # noqa: F401
from totem_harness import ids

A, B, C, D = ids(4)


def _leave(net, i: int) -> None:
    net._perform(i, net.nodes[i].srp.leave(net.now))
    net.crash(i)


def test_leave_makes_the_survivors_reform_without_the_token_timeout() -> None:
    net = formed(3)
    net.run(1)
    t0 = net.now
    _leave(net, B)
    sent = [p for _, s, _, p in net.sent if s == B and isinstance(p, wire.Probe)]
    assert [p.kind for p in sent] == [wire.LEAVE]
    assert net.run_until(lambda: net.one_ring([A, C]), 3)
    # one exchange of joins and two commit rotations, not the 1 s token timeout
    assert net.now - t0 < 0.05
    for i in (A, C):
        reg = net.nodes[i].confs[-1]
        assert reg.members == (A, C) and reg.left == (B,)
        assert net.nodes[i].srp.stats["leaves"] == 1


def test_a_crash_without_leave_still_waits_for_the_token_timeout() -> None:
    # The contrast that makes the figure above meaningful.
    net = formed(3)
    net.run(1)
    t0 = net.now
    net.crash(B)
    assert net.run_until(lambda: net.one_ring([A, C]), 3)
    assert net.now - t0 > 0.9


def test_lost_leave_falls_back_to_the_token_timeout() -> None:
    net = formed(3)
    net.run(1)
    net.drop = lambda src, dst, pkt: isinstance(pkt, wire.Probe) and pkt.kind == wire.LEAVE
    t0 = net.now
    _leave(net, C)
    assert net.run_until(lambda: net.one_ring([A, B]), 3)
    assert net.now - t0 > 0.9
    assert net.nodes[A].confs[-1].left == (C,)


def test_leaving_node_ignores_input_and_timers_afterwards() -> None:
    net = formed(2)
    srp = net.nodes[A].srp
    out = srp.leave(net.now)
    assert len(out) >= 1 and srp._timers == {}
    assert srp.leave(net.now) == []  # idempotent: one LEAVE
    token_like = wire.encode_join(wire.Join(B, 100, frozenset({B}), frozenset()))
    assert srp.receive(token_like, net.now + 0.01) == []


def test_leave_of_a_ring_of_one_sends_nothing() -> None:
    net = formed(1)
    out = net.nodes[A].srp.leave(net.now)
    assert not [a for a in out if hasattr(a, "data")]


def _inject(net, dst: int, data: bytes) -> list:
    actions = net.nodes[dst].srp.receive(data, net.now)
    net._perform(dst, actions)
    return actions


def test_stale_or_foreign_leaves_evict_nobody() -> None:
    net = formed(3)
    net.run(1)
    srp = net.nodes[A].srp
    ring = srp.ring_id
    stale = RingId(ring.seq - 4, ring.rep)
    gathers = srp.stats["gathers"]
    # a leave of an older ring (a replay), of a ring we never had, from a non-member
    for data in (wire.encode_probe(wire.LEAVE, B, stale),
                 wire.encode_probe(wire.LEAVE, B, RingId(ring.seq + 8, B)),
                 wire.encode_probe(wire.LEAVE, D, ring)):
        _inject(net, A, data)
        assert srp.state is RingState.OPERATIONAL and srp.stats["gathers"] == gathers
    assert srp.stats["leaves"] == 0
    net.run(0.5)
    assert net.one_ring([A, B, C])


def test_leave_during_gather_fails_the_leaver_at_once() -> None:
    net = formed(3)
    net.run(1)
    # D knocks: everyone gathers; then C leaves in the middle of it
    net.nodes[D] = type(net.nodes[A])(type(net.nodes[A].srp)(D, net.cfg))
    net.start(D)
    assert net.run_until(lambda: net.nodes[A].srp.state is RingState.GATHER, 1)
    _leave(net, C)
    # well before the 0.5 s consensus timeout that would fail a silent C
    assert net.run_until(lambda: net.one_ring([A, B, D]), 0.3)
    assert net.nodes[A].srp.stats["leaves"] == 1
    assert net.nodes[A].confs[-1].left == (C,)


@pytest.mark.timeout(30)
def test_transport_drops_a_leave_naming_another_node(cleanup: list,  # noqa: F811
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ais.totem.transport")
    port = free_port()
    peer2, peer3 = udp_sock("127.0.0.2", port), udp_sock("127.0.0.3", port)
    cleanup += [peer2, peer3]
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    cleanup.append(h.t)
    h.t.start()
    ring = RingId(8, node_of("127.0.0.1"))
    forged = wire.encode_probe(wire.LEAVE, node_of("127.0.0.2"), ring)
    # authenticated (the key is right) but sent from .3 naming .2
    peer3.sendto(Crypto(KEY).seal(forged), ("127.0.0.1", port))
    assert wait_until(lambda: h.t.stats["leave_refused"] == 1)
    # a short plaintext whose second byte looks like LEAVE is only a bad packet
    peer3.sendto(Crypto(KEY).seal(bytes([1, wire.LEAVE])), ("127.0.0.1", port))
    # the same leave from .2 itself reaches the core
    peer2.sendto(Crypto(KEY).seal(forged), ("127.0.0.1", port))
    assert wait_until(lambda: forged in srp.received)
    gevent.sleep(0.05)
    assert h.t.stats["leave_refused"] == 1 and h.fatal == []
    assert any("naming another node" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("seed", range(6))
def test_leave_in_the_middle_of_traffic_keeps_virtual_synchrony(seed: int) -> None:
    import random

    from ais.totem.events import ConfChange, Deliver
    from ais.totem.invariants import Delivered, History, check, check_liveness
    rng = random.Random(seed)
    net = formed(4)
    # a little loss, so that the leave meets retransmissions and holes
    net.drop = lambda src, dst, pkt: rng.random() < 0.05
    submitted: dict[int, list[bytes]] = {i: [] for i in net.nodes}
    leaver = rng.choice([A, B, C, D])
    n = 0
    for step in range(60):
        for i in net.nodes:
            if net.nodes[i].alive and rng.random() < 0.5:
                payload = b"%d:%d" % (i, n)
                n += 1
                try:
                    net.mcast(i, payload)
                except Exception:  # SendQueueFull: not submitted
                    continue
                submitted[i].append(payload)
        if step == 30:
            _leave(net, leaver)
        net.run(0.002)
    net.drop = None
    survivors = [i for i in net.nodes if i != leaver]
    assert net.run_until(lambda: net.one_ring(survivors), 5)
    net.run(1)
    hists = []
    for i, node in net.nodes.items():
        events = [e if isinstance(e, ConfChange) else Delivered(e.sender, e.payload, e.ring_id)
                  for e in node.deliveries if isinstance(e, (ConfChange, Deliver))]
        hists.append(History(i, 0, events, submitted[i], crashed=(i == leaver)))
    assert check(hists, complete=True) == []
    assert check_liveness(hists, [(i, 0) for i in survivors]) == []
    for i in survivors:
        assert net.nodes[i].confs[-1].left == (leaver,)
    assert any(net.nodes[i].srp.stats["leaves"] for i in survivors)
