"""Unit tests of the Totem state machine: each state, transition and ordering rule.

Driven by ``totem_harness.Net``: a lossless network with scripted faults and a
virtual clock, so every test is deterministic.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from ais.totem import wire
from ais.totem.events import (CancelTimer, ConfChange, Deliver, RingId, Send, SendQueueFull,
                              Stable, StartTimer, TimerKind, TotemConfig)
from ais.totem.srp import RingState, Srp
from totem_harness import LATENCY, Net, ids

A, B, C, D = ids(4)


def formed(n: int, cfg: TotemConfig | None = None, sink: bool = False) -> Net:
    net = Net(ids(n), cfg, sink=sink)
    net.start()
    assert net.run_until(net.one_ring, 5)
    return net


def payloads(node, ring_id=None) -> list[bytes]:
    return [d.payload for d in node.deliveries
            if isinstance(d, Deliver) and (ring_id is None or d.ring_id == ring_id)]


# ------------------------------------------------------------------ formation

def test_lone_node_forms_ring_of_one() -> None:
    net = Net([A])
    net.start()
    assert net.run_until(net.one_ring, 1)
    node = net.nodes[A]
    assert node.confs == [ConfChange(False, node.srp.ring_id, (A,), (), (A,))]
    # it waited one join interval for others before going alone
    assert net.now >= 0.1
    net.mcast(A, b"solo")
    net.run(0.001)  # (a ring of one starts delivering once its installation is handled)
    assert node.messages == [b"solo"]


def test_nodes_starting_together_form_one_ring_directly() -> None:
    net = formed(4)
    for node in net.nodes.values():
        assert len(node.confs) == 1, "no ring of one before the common ring"
        assert node.confs[0].members == (A, B, C, D)
        assert node.confs[0].ring_id.rep == A
    assert net.now < 0.05


def test_ring_id_grows_by_four_and_is_persistable() -> None:
    net = formed(2)
    first = net.nodes[A].srp.ring_id
    net.crash(B)
    assert net.run_until(lambda: net.one_ring([A]), 3)
    second = net.nodes[A].srp.ring_id
    assert second.seq == first.seq + 4
    assert net.nodes[A].srp.max_ring_seq == second.seq


def test_restarted_node_never_reuses_a_ring_id() -> None:
    srp = Srp(A, TotemConfig(), ring_seq=40)
    net = Net([A])
    net.nodes[A].srp = srp
    net.start()
    assert net.run_until(net.one_ring, 1)
    assert srp.ring_id == RingId(44, A)


# ------------------------------------------------------------------- ordering

def test_agreed_order_same_everywhere_fifo_and_self_delivery() -> None:
    net = formed(3)
    for k in range(30):
        for i in (A, B, C):
            net.mcast(i, b"%d-%d" % (i & 255, k))
    net.run(1)
    seqs = [net.nodes[i].messages for i in (A, B, C)]
    assert seqs[0] == seqs[1] == seqs[2]
    assert len(seqs[0]) == 90
    for i in (A, B, C):
        mine = [m for m in seqs[0] if m.startswith(b"%d-" % (i & 255))]
        assert mine == [b"%d-%d" % (i & 255, k) for k in range(30)]


def test_small_messages_are_packed_several_to_a_frame() -> None:
    net = formed(2)
    for k in range(200):
        net.mcast(A, b"x" * 50 + b"%d" % k)
    net.run(1)
    frames = [p for _, s, _, p in net.sent if s == A and isinstance(p, wire.Mcast)]
    assert len(net.nodes[B].messages) == 200
    assert len(frames) < 20


@pytest.mark.parametrize("size", [1400, 5000, 1 << 20])
def test_large_messages_are_fragmented_and_joined(size: int) -> None:
    net = formed(3)
    big = bytes(range(256)) * (size // 256) + b"e" * (size % 256)
    net.mcast(B, b"before")
    net.mcast(B, big)
    net.mcast(C, b"other")
    net.mcast(B, b"after")
    net.run(3)
    for i in (A, B, C):
        msgs = net.nodes[i].messages
        assert big in msgs and msgs.index(b"before") < msgs.index(big) < msgs.index(b"after")
        assert len(msgs) == 4
    frames = [p for _, s, _, p in net.sent if isinstance(p, wire.Mcast)]
    assert all(len(f.payload) <= TotemConfig().frame_size for f in frames)


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_streamed_visit_sends_frames_then_token_and_delivers_its_own_after(loss: float) -> None:
    """With a frame sink (the transport's), a visit's new frames and then its
    token go to the sink as they are made; the sender's own delivery follows
    in the returned actions.  Retransmissions still come back as actions."""
    net = formed(3, sink=True)
    for calls in net.calls.values():
        calls.clear()
    rng = __import__("random").Random(7)
    net.drop = lambda src, dst, pkt: isinstance(pkt, wire.Mcast) and rng.random() < loss
    big = bytes(range(256)) * 80  # ~15 frames
    net.mcast(B, b"small")
    net.mcast(B, big)
    net.mcast(C, b"other")
    assert net.run_until(lambda: all(len(n.messages) == 3 for n in net.nodes.values()), 5)
    assert len({tuple(n.messages) for n in net.nodes.values()}) == 1
    visits = [c for c in net.calls[B] if any(x[0] == "sink" for x in c if isinstance(x, tuple))]
    assert any(x[0] == "sink" and isinstance(x[1], wire.Mcast) for c in visits for x in c
               if isinstance(x, tuple)), "the new frames went through the sink"
    for call in visits:
        kinds = [type(x[1]) for x in call if isinstance(x, tuple)]
        assert kinds[-1] is wire.Token and set(kinds[:-1]) <= {wire.Mcast}
        actions = [x for x in call if not isinstance(x, tuple)]
        sends = [wire.decode_untrusted(a.data) for a in actions if isinstance(a, Send)]
        assert not any(isinstance(p, wire.Token) for p in sends)
        # whatever the visit sent of its own is delivered in the same call, after
        if kinds.count(wire.Mcast) and any(isinstance(a, Deliver) for a in actions):
            assert call.index(next(x for x in call if isinstance(x, tuple))) < \
                call.index(next(a for a in actions if isinstance(a, Deliver)))
    assert big in net.nodes[B].messages
    if loss:
        assert sum(n.srp.stats["retransmits"] for n in net.nodes.values()) > 0


def test_representative_queues_without_a_wake_while_its_idle_token_is_away() -> None:
    """The idle token rests only at the representative: when that node has a
    message while the token is away, the token is coming back anyway, so it
    sends no WAKE (two packets saved per message of a lone writer there)."""
    net = formed(3)
    assert min(net.nodes) == A
    rep = net.nodes[A].srp
    net.run(1)
    net.mcast(B, b"stir")  # the token moves; wait until A passes it on idle
    assert net.run_until(lambda: rep._forwarded_idle and rep._held is None
                         and net.nodes[A].messages == [b"stir"], 2)
    net.sent.clear()
    t0 = net.now
    net.mcast(A, b"mine")
    assert net.run_until(lambda: all(n.messages == [b"stir", b"mine"]
                                     for n in net.nodes.values()), 1)
    assert net.now - t0 < 0.01
    assert not any(isinstance(p, wire.Probe) and p.kind == wire.WAKE for _, _, _, p in net.sent)


def test_representative_message_survives_the_loss_of_the_returning_idle_token() -> None:
    net = formed(3)
    rep = net.nodes[A].srp
    net.run(1)
    net.mcast(B, b"stir")
    assert net.run_until(lambda: rep._forwarded_idle and rep._held is None
                         and net.nodes[A].messages == [b"stir"], 2)
    dropped = []

    def drop(src: int, dst: int, pkt: object) -> bool:
        if isinstance(pkt, wire.Token) and dst == A and not dropped:
            dropped.append(pkt)
            return True
        return False
    net.drop = drop
    net.mcast(A, b"mine")
    assert net.run_until(lambda: all(n.messages == [b"stir", b"mine"]
                                     for n in net.nodes.values()), 2)
    assert dropped
    assert all(len(n.confs) == 1 for n in net.nodes.values()), "no reconfiguration"


def test_lost_frame_is_retransmitted_through_the_token_list() -> None:
    net = formed(3)
    dropped = []

    def drop(src, dst, pkt):
        if isinstance(pkt, wire.Mcast) and dst == C and not dropped:
            dropped.append(pkt.seq)
            return True
        return False

    net.drop = drop
    for k in range(5):
        net.mcast(A, b"m%d" % k)
    net.run(1)
    assert dropped
    assert net.nodes[C].messages == [b"m%d" % k for k in range(5)]
    assert sum(n.srp.stats["retransmits"] for n in net.nodes.values()) >= 1
    assert all(len(n.confs) == 1 for n in net.nodes.values()), "no reconfiguration"


def test_lost_token_is_retransmitted_without_reconfiguration() -> None:
    net = formed(3)
    lost = []

    def drop(src, dst, pkt):
        if isinstance(pkt, wire.Token) and not lost:
            lost.append(pkt.token_seq)
            return True
        return False

    net.drop = drop
    net.mcast(B, b"hello")
    net.run(2)
    assert lost
    assert all(n.messages == [b"hello"] for n in net.nodes.values())
    assert all(len(n.confs) == 1 for n in net.nodes.values())
    assert sum(n.srp.stats["token_retransmits"] for n in net.nodes.values()) >= 1
    assert sum(n.srp.stats["dup_tokens"] for n in net.nodes.values()) >= 0


def test_duplicated_packets_are_harmless() -> None:
    net = formed(3)
    orig = net._perform

    def perform(i, actions):
        orig(i, actions)
        orig(i, [a for a in actions if type(a).__name__ == "Send"])

    net._perform = perform
    for k in range(20):
        net.mcast(C, b"d%d" % k)
    net.run(1)
    assert all(n.messages == [b"d%d" % k for k in range(20)] for n in net.nodes.values())
    assert all(len(n.confs) == 1 for n in net.nodes.values())


@pytest.mark.parametrize("seed", range(6))
def test_receive_many_acts_as_receive_on_each_datagram(seed: int) -> None:
    """The transport hands a read's datagrams to ``receive_many`` at once.  Replayed
    into two copies of one node -- datagrams one by one, and the datagrams of
    each instant in random runs, some twice -- under loss, large and packed
    messages from several senders and a member's crash, both copies send the
    same, deliver (and change configuration) the same in the same order, report
    the same Stables and end in the same state.  (Only where deliveries fall
    among the other actions differs: a batch delivers after its token.)
    """
    import copy
    import random

    rng = random.Random(seed)
    net = formed(4)
    net.drop = lambda src, dst, pkt: rng.random() < 0.08
    inputs: list[tuple[str, tuple, float]] = []
    call = net._call

    def recording(i, fn, *args):
        if i == B:
            inputs.append((fn.__name__, args, net.now))
        call(i, fn, *args)

    net._call = recording
    start = copy.deepcopy(net.nodes[B].srp)
    for k in range(40):
        sender = (A, C, D)[k % 3]
        net.mcast(sender, bytes([k]) * rng.choice((30, 900, 5000, 40000)))
        net.run(0.002)
        if k == 30:
            net.crash(D)
    net.run(4)
    assert net.one_ring([A, B, C])

    def outcome(srp, one_by_one: bool) -> tuple:
        out: list = []
        i = 0
        while i < len(inputs):
            name, args, now = inputs[i]
            if name != "receive":
                out += getattr(srp, name)(*args, now)
                i += 1
                continue
            j = i
            while j < len(inputs) and inputs[j][0] == "receive" and inputs[j][2] == now:
                j += 1
            datas = [a[0] for _, a, _ in inputs[i:j]]
            datas += [d for d in datas if twice.random() < 0.1]  # a few twice
            if one_by_one:
                for d in datas:
                    out += srp.receive(d, now)
            else:
                while datas:
                    cut = cuts.randint(1, len(datas))
                    out += srp.receive_many(datas[:cut], now)
                    datas = datas[cut:]
            i = j
        order = [a for a in out if isinstance(a, (Deliver, ConfChange))]
        stables = [a for a in out if isinstance(a, Stable)]
        sends = [a for a in out if isinstance(a, Send)]
        rx = srp.rx
        return order, stables, sends, (rx.aru, rx.delivered, rx.ring_id), dict(srp.stats)

    cuts = random.Random(seed)
    twice = random.Random(seed)
    single = outcome(copy.deepcopy(start), True)
    twice = random.Random(seed)
    batched = outcome(copy.deepcopy(start), False)
    assert sum(isinstance(a, Deliver) for a in single[0]) >= 30
    for one, many in zip(single, batched):
        assert one == many


def test_flow_control_bounds_frames_per_visit_and_per_rotation() -> None:
    cfg = TotemConfig(max_messages=5, window_size=8, window_bytes=0)
    net = formed(3, cfg)
    for i in (A, B, C):
        for _ in range(100):
            net.mcast(i, b"y" * 1000)
    # count new frames between consecutive token sends of each node
    net.sent.clear()
    net.run(2)
    per_visit: dict[int, int] = {}
    worst = 0
    rotation = 0
    for _, src, _, pkt in net.sent:
        if isinstance(pkt, wire.Mcast):
            per_visit[src] = per_visit.get(src, 0) + 1
            worst = max(worst, per_visit[src])
            rotation += 1
        elif isinstance(pkt, wire.Token):
            per_visit[src] = 0
            if src == A:
                assert pkt.fcc <= cfg.window_size
    assert worst <= cfg.max_messages
    assert all(len(n.messages) == 300 for n in net.nodes.values())


def _most_frames_per_visit(cfg: TotemConfig, size: int) -> int:
    """Largest run of new frames one node sent between two of its token sends."""
    net = formed(2, cfg)
    for _ in range(400):
        net.mcast(A, b"w" * size)
    net.sent.clear()
    net.run(2)
    run = worst = 0
    for _, src, _, pkt in net.sent:
        if src != A:
            continue
        if isinstance(pkt, wire.Mcast):
            run += 1
            worst = max(worst, run)
        elif isinstance(pkt, wire.Token):
            run = 0
    assert all(len(n.messages) == 400 for n in net.nodes.values())
    return worst


def test_window_scales_up_at_small_frames_only() -> None:
    small = TotemConfig()  # 1400-byte frames: 60/20 frames would carry only 84 KB a rotation
    srp = Srp(A, small)
    assert (srp.window, srp.visit_quota) == (200, 66)
    assert _most_frames_per_visit(small, 1000) == 66
    exact = TotemConfig(window_bytes=0)
    assert (Srp(A, exact).window, Srp(A, exact).visit_quota) == (60, 20)
    assert _most_frames_per_visit(exact, 1000) == 20
    big = TotemConfig(frame_size=9000)  # 60 frames hold more than window_bytes already
    assert (Srp(A, big).window, Srp(A, big).visit_quota) == (60, 20)


def test_guard_bounds_follow_the_scaled_window() -> None:
    """Four members each sending a full scaled quota (66 at 1400-byte frames) move
    the seq by up to a whole window (200) between two visits of one member: the
    guard's reach must cover that, or it refuses honest frames and tokens and the
    busy ring re-forms again and again (it did with bounds from window_size)."""
    net = formed(4)
    rings = [n.srp.stats["rings_formed"] for n in net.nodes.values()]
    for i in (A, B, C, D):
        for k in range(600):
            net.mcast(i, b"%d-%d" % (i, k) + b"f" * 1000)
    assert net.run_until(lambda: all(len(n.messages) == 2400 for n in net.nodes.values()), 10)
    assert all(n.srp.stats["refused"] == 0 for n in net.nodes.values())
    assert [n.srp.stats["rings_formed"] for n in net.nodes.values()] == rings
    first = net.nodes[A].messages
    assert all(n.messages == first for n in net.nodes.values())


def test_stable_frames_are_freed() -> None:
    net = formed(3)
    for _ in range(50):
        net.mcast(A, b"z" * 300)
    net.run(2)
    for n in net.nodes.values():
        assert n.srp.rx.frames == {}
        assert n.srp.rx.freed == n.srp.rx.aru > 0


def test_send_queue_limits() -> None:
    cfg = TotemConfig(send_queue_limit=10, max_message_size=1000)
    srp = Srp(A, cfg)
    srp.start(0.0)
    for _ in range(10):
        srp.mcast(b"q", 0.0)
    with pytest.raises(SendQueueFull):
        srp.mcast(b"q", 0.0)
    with pytest.raises(ValueError):
        Srp(B, cfg).mcast(b"x" * 1001, 0.0)


# ------------------------------------------------------------------ idle ring

def _last_token_after(cfg: TotemConfig) -> tuple[float, int]:
    """(seconds the token kept moving after a message's delivery, WAKEs sent
    for a second message 30 ms later from a member that is not the representative)."""
    net = formed(3, cfg)
    net.run(1)
    net.mcast(B, b"first")
    assert net.run_until(lambda: all(n.messages == [b"first"] for n in net.nodes.values()), 1)
    t0 = net.now
    net.sent.clear()
    net.run(0.03)
    moving = max((t for t, _, _, p in net.sent if isinstance(p, wire.Token)), default=t0) - t0
    net.sent.clear()
    net.mcast(C, b"second")
    assert net.run_until(lambda: all(n.messages == [b"first", b"second"]
                                     for n in net.nodes.values()), 1)
    wakes = sum(isinstance(p, wire.Probe) and p.kind == wire.WAKE for _, _, _, p in net.sent)
    return moving, wakes


def test_token_lingers_after_traffic_then_rests() -> None:
    rests, woken = _last_token_after(TotemConfig())
    lingers, _ = _last_token_after(TotemConfig(token_linger=20.0))
    assert rests < 0.005 and woken == 1  # no linger: it rests within a few rotations
    assert 0.02 <= lingers < 0.03  # it moved for the linger, then rested
    # a message within the linger finds the token moving: no WAKE
    net = formed(3, TotemConfig(token_linger=20.0))
    net.run(1)
    net.mcast(B, b"first")
    net.run(0.01)
    net.sent.clear()
    net.mcast(C, b"second")
    assert net.run_until(lambda: all(n.messages == [b"first", b"second"]
                                     for n in net.nodes.values()), 1)
    assert not any(isinstance(p, wire.Probe) and p.kind == wire.WAKE for _, _, _, p in net.sent)


def _sync_writer(net: Net, node: int, count: int, awaited: bool = True) -> list[bool]:
    """A client of ``node`` that sends its next message as soon as the last one is
    held by every member (a checkpoint write answered at stability, turnaround 0).
    Per message: whether ``node`` sent its frame during the ``mcast`` call itself."""
    n = net.nodes[node]
    at_once = []
    call = b"%d:" % len(net.sent) if n.messages else b""  # names unique per call
    for k in range(count):
        before = len(net.sent)
        net.mcast(node, call + b"w%d" % k, awaited)
        at_once.append(any(isinstance(p, wire.Mcast) and src == node
                           for _, src, _, p in net.sent[before:]))

        def held(k: int = k) -> bool:
            mine = [d for d in n.deliveries
                    if isinstance(d, Deliver) and d.payload == call + b"w%d" % k]
            return bool(mine and n.stables and n.stables[-1].seq >= mine[0].seq)
        assert net.run_until(held, 1)
    return at_once


def _answered_after_sent(net: Net, node: int, payload: bytes) -> float:
    """Queue an awaited message at ``node``; the time from its frame leaving to the
    Stable that covers it there."""
    n = net.nodes[node]
    before = len(net.sent)
    net.mcast(node, payload, True)
    assert net.run_until(lambda: any(isinstance(p, wire.Mcast) and src == node
                                     for _, src, _, p in net.sent[before:]), 1)
    left = next(t for t, src, _, p in net.sent[before:]
                if isinstance(p, wire.Mcast) and src == node)

    def stable() -> bool:
        mine = [d.seq for d in n.deliveries if isinstance(d, Deliver) and d.payload == payload]
        return bool(mine and n.stables and n.stables[-1].seq >= mine[0])
    assert net.run_until(stable, 1)
    return net.now - left


def test_stable_acks_answer_a_writer_a_round_trip_after_its_frame() -> None:
    """stable_acks, ring of four: the frame ending an awaited message asks for ACKs;
    each member sends one to the writer alone once it holds the frame; with all
    in, the message is stable -- one round trip after it left, where the token
    takes a rotation (four hops) to bring the same news back."""
    took = {}
    for acks in (True, False):
        net = formed(4, TotemConfig(stable_acks=acks, writer_hold=0.0))
        net.run(1)
        net.sent.clear()
        took[acks] = [_answered_after_sent(net, B, b"w%d" % k) for k in range(5)]
        ack_pkts = [(src, dest, p) for _, src, dest, p in net.sent if isinstance(p, wire.Ack)]
        if acks:
            assert sorted({src for src, _, _ in ack_pkts}) == [A, C, D]
            assert {dest for _, dest, _ in ack_pkts} == {B}
            assert len(ack_pkts) == 3 * 5  # one per member and write
            flagged = [p for _, src, _, p in net.sent
                       if isinstance(p, wire.Mcast) and p.flags & wire.MCAST_ACK]
            assert len(flagged) == 5 and all(p.sender == B for p in flagged)
            assert net.nodes[B].srp.stats["ack_stables"] == 5
        else:
            assert not ack_pkts
    assert max(took[True]) <= 2 * LATENCY + 1e-9, took
    assert min(took[False]) >= 4 * LATENCY - 1e-9, took
    # an ACK has to come from every member: one that lacks the frame holds it back
    net = formed(4, TotemConfig(writer_hold=0.0))
    net.run(1)
    first = [True]

    def lose_once(src: int, dst: int, pkt: object) -> bool:
        if isinstance(pkt, wire.Mcast) and src == B and dst == D and first[0]:
            first[0] = False
            return True
        return False
    net.drop = lose_once
    waited = _answered_after_sent(net, B, b"lost at D")
    assert waited > 4 * LATENCY  # D got it by retransmission, and only then ACKed
    assert b"lost at D" in net.nodes[D].messages


def test_stable_acks_only_where_they_pay() -> None:
    """Nobody asks for ACKs for messages no local client waits for, nor in a ring
    of two (the token goes straight back to the writer), nor while the node's
    earlier awaited messages are still short of stability; lost ACKs cost
    nothing but the early answer: the token still brings stability."""
    net = formed(4)
    net.run(1)
    net.sent.clear()
    _sync_writer(net, B, 10, awaited=False)
    assert not any(isinstance(p, wire.Ack) for _, _, _, p in net.sent)
    net = formed(2)
    net.run(1)
    net.sent.clear()
    _sync_writer(net, B, 10)
    assert not any(isinstance(p, wire.Ack) for _, _, _, p in net.sent)
    net = formed(4, TotemConfig(writer_hold=0.0))
    net.run(1)
    net.drop = lambda src, dst, pkt: isinstance(pkt, wire.Ack)
    assert 4 * LATENCY - 1e-9 <= _answered_after_sent(net, B, b"acks lost") < 0.01
    assert net.nodes[B].srp.stats["ack_stables"] == 0
    # a node whose awaited messages are still short of stability asks for none (its
    # busy clients keep the ring full anyway): m1's ACKs are lost, so m2 leaves
    # on the next visit while m1 waits for the token; m3, after both, asks again
    net.sent.clear()

    def frame_of(payload: bytes) -> wire.Mcast:
        assert net.run_until(lambda: any(isinstance(p, wire.Mcast) and payload in p.payload
                                         for _, _, _, p in net.sent), 1)
        return next(p for _, _, _, p in net.sent
                    if isinstance(p, wire.Mcast) and payload in p.payload)
    net.mcast(B, b"m1", True)
    first = frame_of(b"m1")
    net.mcast(B, b"m2", True)
    second = frame_of(b"m2")
    assert first.flags == wire.MCAST_ACK and second.flags == 0
    net.drop = None
    assert net.run_until(lambda: not net.nodes[B].srp._awaited_sent, 1)
    net.mcast(B, b"m3", True)
    assert frame_of(b"m3").flags == wire.MCAST_ACK


def test_writer_hold_sends_a_synchronous_writers_next_message_on_the_same_visit() -> None:
    """writer_hold: the node whose message just became stable keeps the token a
    moment; the writer's next message goes out on that visit, one rotation a write.
    (Without stable_acks: with them the answer comes before the token is back.)"""
    times = {}
    for hold in (0.5, 0.0):
        net = formed(3, TotemConfig(writer_hold=hold, stable_acks=False))
        net.run(1)
        t0 = net.now
        at_once = _sync_writer(net, B, 40)
        times[hold] = net.now - t0
        assert all(n.messages == [b"w%d" % k for k in range(40)] for n in net.nodes.values())
        if hold:
            assert all(at_once[1:]), at_once  # the first found the token resting elsewhere
        else:
            assert not any(at_once[1:]), at_once
    rotation = 3 * LATENCY
    assert times[0.5] < 40 * 1.5 * rotation < times[0.0]
    # messages nobody waits for (service traffic) do not keep the token
    net = formed(3, TotemConfig(writer_hold=0.5, stable_acks=False))
    net.run(1)
    assert not any(_sync_writer(net, B, 10, awaited=False)[1:])


def test_writer_hold_in_a_ring_of_two_at_either_node() -> None:
    """In a ring of two the representative holds for its writer as the other
    node does: its next message leaves on the same visit, not after the
    token's idle round (where it would rest at the representative)."""
    for hold in (0.5, 0.0):
        net = formed(2, TotemConfig(writer_hold=hold))
        net.run(1)
        assert net.nodes[A].srp.ring_id.rep == A
        for node in (A, B):
            at_once = _sync_writer(net, node, 10)[1:]
            assert all(at_once) if hold else not any(at_once), (hold, node, at_once)


def test_awaiting_from_a_queued_message_until_it_is_stable() -> None:
    """``Srp.awaiting`` (the transport polls while it holds): true from the
    moment a message of ours is queued until the Stable that covers it, false
    at the other nodes and on an idle ring."""
    net = formed(3, TotemConfig(writer_hold=0.0, stable_acks=False))
    net.run(1)
    assert not any(n.srp.awaiting for n in net.nodes.values())
    net.mcast(B, b"w", True)
    assert net.nodes[B].srp.awaiting
    seen = []

    def done() -> bool:
        seen.append(net.nodes[B].srp.awaiting)
        n = net.nodes[B]
        mine = [d.seq for d in n.deliveries if isinstance(d, Deliver) and d.payload == b"w"]
        return bool(mine) and bool(n.stables) and n.stables[-1].seq >= mine[0]
    assert net.run_until(done, 1)
    assert all(seen[:-1])  # sent, not yet stable: still awaiting
    assert not net.nodes[B].srp.awaiting
    assert not net.nodes[A].srp.awaiting and not net.nodes[C].srp.awaiting


def test_writer_hold_waits_for_every_answered_writer() -> None:
    """Three synchronous writers on one node, answered at the same visit: the token
    waits for all three next writes (not just the first), which leave together."""
    net = formed(3, TotemConfig(writer_hold=0.5, stable_acks=False))
    net.run(1)
    n = net.nodes[B]
    for rnd in range(6):
        sent = []
        for w in range(3):
            before = len(net.sent)
            net.mcast(B, b"r%d-w%d" % (rnd, w), True)
            sent.append(sum(isinstance(p, wire.Mcast) and src == B
                            for _, src, _, p in net.sent[before:]))
        if rnd:
            assert sent[:2] == [0, 0] and sent[2] >= 1, sent

        def stable(rnd: int = rnd) -> bool:
            mine = [d.seq for d in n.deliveries
                    if isinstance(d, Deliver) and d.payload.startswith(b"r%d-" % rnd)]
            return len(mine) == 3 and bool(n.stables) and n.stables[-1].seq >= max(mine)
        assert net.run_until(stable, 1)


def test_writer_hold_ends_after_its_time_and_others_are_not_kept_waiting() -> None:
    cfg = TotemConfig(writer_hold=0.5, stable_acks=False)
    net = formed(3, cfg)
    net.run(1)
    _sync_writer(net, B, 5)
    held = net.nodes[B].srp._held
    assert held is not None  # the writer has not sent its next message (yet)
    # C's message waits at most the hold and a rotation
    t0 = net.now
    net.mcast(C, b"from C")
    assert net.run_until(lambda: all(n.messages[-1:] == [b"from C"]
                                     for n in net.nodes.values()), 1)
    assert net.now - t0 <= cfg.writer_hold / 1000 + 3 * 3 * LATENCY
    # with nothing more to send the ring goes quiet: the token rests, nobody forms anew
    net.sent.clear()
    net.run(2)
    tokens = sum(isinstance(p, wire.Token) for _, _, _, p in net.sent)
    assert tokens < 2 * 3 * (1000 / cfg.token_hold) + 10
    assert all(len(n.confs) == 1 for n in net.nodes.values())


def test_writer_hold_not_taken_while_others_have_frames_queued() -> None:
    """Another node's backlog, reported on the token, moves it on at once: C's burst
    takes as long with a (long) writer_hold as without one."""
    took = {}
    for hold in (3.0, 0.0):
        net = formed(3, TotemConfig(writer_hold=hold, stable_acks=False))
        net.run(1)
        t0 = net.now
        for k in range(300):  # several visits' worth of frames
            net.mcast(C, b"c%d" % k + bytes(1000))
        _sync_writer(net, B, 3)
        nodes = list(net.nodes.values())
        assert net.run_until(lambda nodes=nodes: all(len(n.messages) == 303 for n in nodes))
        took[hold] = net.now - t0
    assert took[3.0] < took[0.0] + 3 * LATENCY, took


def test_idle_token_rests_and_wakes_fast() -> None:
    net = formed(3)
    net.run(1)
    net.sent.clear()
    net.run(10)
    tokens = sum(isinstance(p, wire.Token) for _, _, _, p in net.sent)
    # a spinning ring would pass thousands of tokens in 10 s
    assert tokens < 10 * 3 * (1000 / TotemConfig().token_hold) + 10
    assert all(len(n.confs) == 1 for n in net.nodes.values()), "resting is not token loss"
    # first message after the quiet spell, from a node that does not hold the token
    t0 = net.now
    net.mcast(C, b"wake up")
    assert net.run_until(lambda: all(n.messages == [b"wake up"] for n in net.nodes.values()), 1)
    assert net.now - t0 < 0.01
    assert any(isinstance(p, wire.Probe) and p.kind == wire.WAKE for _, _, _, p in net.sent)


# ----------------------------------------------------------------- membership

def test_crashed_node_is_removed_within_target_time() -> None:
    net = formed(3)
    net.run(1)
    net.crash(B)
    t0 = net.now
    assert net.run_until(lambda: net.one_ring([A, C]), 3)
    assert net.now - t0 <= 1.7
    for i in (A, C):
        trans, reg = net.nodes[i].confs[-2:]
        assert trans.transitional and trans.members == (A, C)
        assert not reg.transitional and reg.members == (A, C) and reg.left == (B,)


def test_gather_puts_silent_processors_in_the_fail_set() -> None:
    net = formed(3)
    net.crash(C)
    net.run_until(lambda: net.nodes[A].srp.state is RingState.GATHER, 2)
    srp = net.nodes[A].srp
    assert C in srp._proc and C not in srp._fail
    net.run_until(lambda: C in srp._fail or srp.state is not RingState.GATHER, 1)
    assert C in srp._fail


def test_late_node_joins_running_ring() -> None:
    net = Net(ids(3))
    net.start(A, B)
    assert net.run_until(lambda: net.one_ring([A, B]), 2)
    net.mcast(A, b"early")
    net.run(0.5)
    t0 = net.now
    net.start(C)
    assert net.run_until(net.one_ring, 2)
    assert net.now - t0 < 0.2
    reg = net.nodes[A].confs[-1]
    assert reg.joined == (C,) and reg.members == (A, B, C)
    c_confs = net.nodes[C].confs
    assert c_confs[-1].members == (A, B, C)


def test_partition_makes_two_rings_and_healing_merges_them() -> None:
    net = formed(4)
    net.partition({A, B}, {C, D})
    assert net.run_until(lambda: net.one_ring([A, B]) and net.one_ring([C, D]), 5)
    net.mcast(A, b"left side")
    net.mcast(D, b"right side")
    net.run(0.5)
    assert b"left side" in net.nodes[B].messages and b"left side" not in net.nodes[C].messages
    net.heal()
    assert net.run_until(net.one_ring, 5)
    reg = net.nodes[C].confs[-1]
    assert reg.members == (A, B, C, D) and reg.joined == (A, B)
    trans = net.nodes[C].confs[-2]
    assert trans.transitional and trans.members == (C, D)


def test_commit_token_loss_is_retransmitted() -> None:
    net = Net(ids(3))
    lost = []

    def drop(src, dst, pkt):
        if isinstance(pkt, wire.Commit) and len(lost) < 2:
            lost.append(pkt)
            return True
        return False

    net.drop = drop
    net.start()
    assert net.run_until(net.one_ring, 3)
    assert len(lost) == 2
    assert all(len(n.confs) == 1 for n in net.nodes.values())


def test_commit_token_gone_for_good_returns_to_gather() -> None:
    net = Net(ids(3))
    until = [0.0]

    def drop(src, dst, pkt):
        return isinstance(pkt, wire.Commit) and net.now < 1.5

    net.drop = drop
    net.start()
    net.run(0.5)
    assert net.nodes[A].srp.state is RingState.COMMIT
    assert net.run_until(net.one_ring, 5)
    assert net.nodes[A].srp.stats["gathers"] >= 2
    del until


def test_stale_join_from_a_member_is_ignored() -> None:
    net = formed(2)
    srp = net.nodes[A].srp
    stale = wire.encode_join(wire.Join(B, srp.ring_id.seq - 4, frozenset({A, B}), frozenset()))
    net._perform(A, srp.receive(stale, net.now))
    assert srp.state is RingState.OPERATIONAL
    fresh = wire.encode_join(wire.Join(B, srp.ring_id.seq, frozenset({B}), frozenset()))
    net._perform(A, srp.receive(fresh, net.now))
    assert srp.state is RingState.GATHER


def test_paused_node_ends_in_one_agreed_ring() -> None:
    net = formed(3)
    net.mcast(A, b"x")
    net.run(0.5)
    net.pause(B, 3.0)
    net.run(1.0)
    net.mcast(A, b"during pause")
    assert net.run_until(lambda: net.one_ring([A, C]), 6)
    assert net.now < net.nodes[B].paused_until
    assert net.run_until(lambda: net.now > net.nodes[B].paused_until and net.one_ring(), 10)
    net.run(3)
    assert net.one_ring()
    rings = {n.srp.ring_id for n in net.nodes.values()}
    assert len(rings) == 1


# ------------------------------------------------------------------- recovery

def test_messages_only_some_survivors_hold_are_recovered() -> None:
    net = formed(3)

    def drop(src, dst, pkt):
        return isinstance(pkt, wire.Mcast) and src == C and dst == A

    net.drop = drop
    net.run(0.3)
    net.mcast(C, b"c1")
    net.mcast(C, b"c2")
    # let B get the frames, but crash C before A could ask for them again
    net.run_until(lambda: net.nodes[B].messages == [b"c1", b"c2"], 1)
    net.crash(C)
    assert net.run_until(lambda: net.one_ring([A, B]), 3)
    a, b = net.nodes[A], net.nodes[B]
    assert a.messages == b.messages == [b"c1", b"c2"]
    # delivered in the old ring, before the transitional configuration
    old = a.confs[0].ring_id
    idx = a.deliveries.index(a.confs[1])
    assert [d.payload for d in a.deliveries[:idx] if isinstance(d, Deliver)] == [b"c1", b"c2"]
    assert all(d.ring_id == old for d in a.deliveries[:idx] if isinstance(d, Deliver))


def test_frames_after_a_hole_are_delivered_in_the_transitional_configuration() -> None:
    net = formed(3)
    net.run(0.3)
    hole: list[int] = []

    def drop(src, dst, pkt):
        # C's first frame reaches nobody; its second reaches everyone
        if isinstance(pkt, wire.Mcast) and src == C:
            if not hole:
                hole.append(pkt.seq)
            return pkt.seq == hole[0]
        return False

    net.drop = drop
    net.mcast(C, b"lost")
    net.run_until(
        lambda: net.nodes[C].srp.queue.msgs == net.nodes[C].srp.queue.msgs.__class__(), 0.05)
    net.mcast(C, b"kept")
    net.run_until(lambda: any(isinstance(p, wire.Mcast) and s == C and p.seq > hole[0]
                              for _, s, _, p in net.sent), 1)
    net.run(0.002)
    net.crash(C)
    assert net.run_until(lambda: net.one_ring([A, B]), 3)
    for i in (A, B):
        n = net.nodes[i]
        trans = next(c for c in n.confs if c.transitional)
        idx = n.deliveries.index(trans)
        after = [d.payload for d in n.deliveries[idx:] if isinstance(d, Deliver)]
        assert b"kept" in after and b"lost" not in n.messages
    assert net.nodes[A].messages == net.nodes[B].messages


def test_no_new_messages_are_sent_during_recovery() -> None:
    net = formed(3)
    net.run(0.3)
    net.crash(C)
    states = {}

    def drop(src, dst, pkt):
        if isinstance(pkt, wire.Mcast):
            states.setdefault(pkt.ring_id, []).append(
                (net.nodes[src].srp.state, pkt.flags))
        return False

    net.drop = drop
    net.run_until(lambda: net.nodes[A].srp.state is RingState.RECOVERY, 3)
    for i in (A, B):
        net.mcast(i, b"queued during recovery")
    assert net.run_until(lambda: net.one_ring([A, B]), 3)
    net.run(0.5)
    for sent in states.values():
        for state, flags in sent:
            if state is RingState.RECOVERY:
                assert flags & wire.MCAST_RECOVERED
    new = net.nodes[A].srp.ring_id
    for i in (A, B):
        got = [d for d in net.nodes[i].deliveries if isinstance(d, Deliver)]
        assert [d.ring_id for d in got] == [new, new]


def test_fragmented_message_interrupted_by_reconfiguration_is_sent_again_whole() -> None:
    net = formed(3)
    big = b"F" * 150_000  # more frames than one visit may send
    cut = []

    def drop(src, dst, pkt):
        if isinstance(pkt, wire.Token) and src == A and net.nodes[A].srp.queue._offset and not cut:
            cut.append(1)
            net.crash(C)
        return False

    net.drop = drop
    net.mcast(A, big)
    assert net.run_until(lambda: cut and net.one_ring([A, B]), 5)
    net.run(1)
    assert net.nodes[A].messages.count(big) == 1
    assert net.nodes[B].messages.count(big) == 1


# ------------------------------------------------------------------ robustness

def test_garbage_is_counted_and_ignored() -> None:
    net = formed(2)
    srp = net.nodes[A].srp
    for junk in (b"", b"\x01", b"\xff" * 40, wire.PACKET_HEADER.pack(1, 99, B) + b"abc",
                 wire.PACKET_HEADER.pack(1, wire.TOKEN, B) + b"\x00" * 10):
        assert srp.receive(junk, net.now) == []
    assert srp.stats["bad_packets"] == 5
    assert srp.state is RingState.OPERATIONAL


def test_hostile_token_claims_do_not_make_work_unbounded() -> None:
    net = formed(2)
    srp = net.nodes[A].srp
    t = wire.Token(B, srp.ring_id, 10**9, 2**62, 2**62, B, 0, 0, 0, 0, [])
    # refused at the door (guard.py): such a token would freeze the ring
    assert srp.receive(wire.encode_token(t), net.now) == []
    assert srp.stats["refused"] == 1
    # a plausible token asking for the most retransmissions still yields a bounded token
    t = wire.Token(B, srp.ring_id, srp._last_token_seq + 1, srp.rx.high + 50, 0, B, 0, 0, 0, 0,
                   list(range(1, 51)))
    actions = srp.receive(wire.encode_token(t), net.now)
    sent = [a for a in actions if type(a).__name__ == "Send"]
    tok = wire.decode_untrusted(sent[-1].data)
    assert isinstance(tok, wire.Token) and len(tok.rtr) <= 100


def test_stale_timer_is_ignored() -> None:
    srp = Srp(A, TotemConfig())
    acts = srp.start(0.0)
    arms = {a.kind: a.at for a in acts if isinstance(a, StartTimer)}
    assert TimerKind.JOIN in arms
    assert srp.timer(TimerKind.TOKEN_LOSS, 5.0) == []  # never armed
    assert srp.timer(TimerKind.JOIN, arms[TimerKind.JOIN] - 0.05) == []  # too early
    out = srp.timer(TimerKind.JOIN, arms[TimerKind.JOIN])
    assert any(isinstance(a, ConfChange) for a in out)  # alone: ring of one
    assert any(isinstance(a, CancelTimer) and a.kind is TimerKind.CONSENSUS for a in out)
    # the consensus timer was cancelled: its late firing changes nothing
    assert srp.timer(TimerKind.CONSENSUS, 10.0) == []
    assert srp.state is RingState.OPERATIONAL


# -------------------------------------------------- more membership transitions

def test_token_loss_during_recovery_returns_to_gather_and_keeps_old_messages() -> None:
    net = formed(3)

    def drop_c_to_a(src, dst, pkt):
        return isinstance(pkt, wire.Mcast) and src == C and dst == A

    net.drop = drop_c_to_a
    net.mcast(C, b"held by B and C only")
    net.run_until(lambda: b"held by B and C only" in net.nodes[B].messages, 1)
    net.crash(C)
    recovering = []

    def drop(src, dst, pkt):
        # the new ring's regular tokens vanish while recovery is under way
        if isinstance(pkt, wire.Token) and net.nodes[src].srp.state is RingState.RECOVERY:
            recovering.append(pkt)
            return len(recovering) < 40
        return False

    net.drop = drop
    assert net.run_until(lambda: net.nodes[A].srp.state is RingState.RECOVERY, 3)
    assert net.run_until(lambda: net.nodes[A].srp.state is RingState.GATHER, 3)
    assert net.run_until(lambda: net.one_ring([A, B]), 10)
    a, b = net.nodes[A], net.nodes[B]
    assert a.messages == b.messages == [b"held by B and C only"]
    # A and B never installed the abandoned ring: one transitional, one regular
    assert [c.transitional for c in a.confs] == [False, True, False]
    assert a.confs[1] == b.confs[1] and a.confs[2] == b.confs[2]


def test_message_of_a_foreign_ring_starts_a_gather() -> None:
    net = Net(ids(3))
    net.start(A, B)
    assert net.run_until(lambda: net.one_ring([A, B]), 2)
    srp = net.nodes[A].srp
    foreign = wire.encode_mcast(D, RingId(400, D), 1, 0, b"")
    net._perform(A, srp.receive(foreign, net.now))
    assert srp.state is RingState.GATHER
    # but a stale frame of an old ring from one of our own members is ignored
    net.run_until(lambda: net.one_ring([A, B]), 2)
    stale = wire.encode_mcast(B, RingId(1, A), 1, 0, b"")
    net._perform(A, srp.receive(stale, net.now))
    assert srp.state is RingState.OPERATIONAL


def test_processors_that_fail_each_other_still_merge_afterwards() -> None:
    net = Net(ids(3))
    net.start()
    assert net.run_until(net.one_ring, 2)
    # B and C cannot hear each other for a while: each gives up on the other
    net.blocked = {(B, C), (C, B)}
    net.run(4)
    net.heal()
    assert net.run_until(net.one_ring, 10)
    net.run(2)
    assert net.one_ring()


def test_join_during_commit_from_a_new_member_restarts_gather() -> None:
    net = Net(ids(3))
    seen = []

    def drop(src, dst, pkt):
        if isinstance(pkt, wire.Commit) and not seen:
            seen.append(pkt)
            return True  # hold the commit token back: A stays in COMMIT
        return False

    net.drop = drop
    net.start()
    net.run_until(lambda: net.nodes[A].srp.state is RingState.COMMIT, 1)
    srp = net.nodes[A].srp
    new_seq = srp._new_ring.seq
    join = wire.encode_join(wire.Join(C, new_seq, frozenset({A, B, C}), frozenset()))
    net._perform(A, srp.receive(join, net.now))
    assert srp.state is RingState.GATHER
    assert net.run_until(net.one_ring, 5)


# ------------------------------------------------------------------ safe delivery

def test_stable_covers_a_frame_only_once_every_member_has_it() -> None:
    from ais.totem.events import Stable
    net = formed(3)
    log: list[tuple[float, int, object]] = []  # (time, node, Stable or Deliver)
    perform = net._perform

    def recording(i: int, actions: list) -> None:
        log.extend((net.now, i, a) for a in actions if isinstance(a, (Stable, Deliver)))
        perform(i, actions)

    net._perform = recording  # type: ignore[method-assign]
    dropped: list[int] = []

    def drop_first_copy_to_c(src: int, dst: int, pkt: object) -> bool:
        if dst == C and isinstance(pkt, wire.Mcast) and not dropped:
            dropped.append(pkt.seq)
            return True
        return False

    net.drop = drop_first_copy_to_c
    net.mcast(A, b"x")
    net.run(0.5)
    got = {i: [(t, a) for t, n, a in log if n == i and isinstance(a, Deliver)
               and a.payload == b"x"] for i in (A, B, C)}
    assert all(len(v) == 1 for v in got.values())
    seq = got[A][0][1].seq
    assert dropped == [seq]
    assert {v[0][1].seq for v in got.values()} == {seq}  # the frame's seq, everywhere
    c_has_it = got[C][0][0]
    assert c_has_it > got[A][0][0]  # C got it late, by retransmission
    ring = net.nodes[A].srp.ring_id
    for i in (A, B, C):
        stables = [(t, a) for t, n, a in log if n == i and isinstance(a, Stable)]
        assert all(a.ring_id == ring for _, a in stables)
        covering = [t for t, a in stables if a.seq >= seq]
        assert covering, f"node {i}: never reported the frame stable"
        assert covering[0] >= c_has_it  # not before the last member had it
        seqs = [a.seq for _, a in stables]
        assert seqs == sorted(set(seqs))  # reported only when it advances


def test_ring_of_one_makes_its_frames_stable_at_once() -> None:
    from ais.totem.events import Stable
    net = Net([A])
    net.start()
    assert net.run_until(net.one_ring, 1)
    net.run(0.001)  # (its installation handled: see install_pause)
    out = net.nodes[A].srp.mcast(b"solo", net.now)
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert Stable(d.ring_id, d.seq) in out and d.seq > 0


def test_idle_token_rests_only_after_every_member_reported_the_last_frame_stable() -> None:
    # The representative lacks the frame (first copy lost): the aru reaches seq only at
    # its visit.  Resting the token one rotation later would leave the members before
    # it with one aru==seq visit: their Stable (safe replies) would wait token_hold.
    from ais.totem.events import Stable
    cfg = TotemConfig()
    net = formed(3, cfg)
    net.run(1.0)  # idle: the token rests at the representative
    log: list[tuple[float, int, object]] = []
    perform = net._perform

    def recording(i: int, actions: list) -> None:
        log.extend((net.now, i, a) for a in actions if isinstance(a, (Stable, Deliver)))
        perform(i, actions)

    net._perform = recording  # type: ignore[method-assign]
    dropped: list[int] = []

    def drop_first_copy_to_a(src: int, dst: int, pkt: object) -> bool:
        if dst == A and isinstance(pkt, wire.Mcast) and not dropped:
            dropped.append(pkt.seq)
            return True
        return False

    net.drop = drop_first_copy_to_a
    t0 = net.now
    net.mcast(B, b"x")
    net.run(1.0)
    (seq,) = dropped
    for i in (A, B, C):
        covering = [t for t, n, a in log if n == i and isinstance(a, Stable) and a.seq >= seq]
        assert covering and covering[0] - t0 < cfg.token_hold / 1000 / 2, i

# ------------------------------------------------------------------ liveness

def test_member_that_fails_to_receive_leaves_and_the_others_go_on(caplog) -> None:
    """Finding 4: A's frames over 200 bytes never reach C; tokens and small frames do."""
    net = formed(3)

    def drop(src, dst, pkt):
        return isinstance(pkt, wire.Mcast) and src == A and dst == C and len(pkt.payload) > 200

    net.drop = drop
    net.mcast(A, b"small")
    net.mcast(A, b"L" * 1000)
    with caplog.at_level("WARNING", logger="ais.totem.srp"):
        assert net.run_until(lambda: net.one_ring([A, B]), 5)
    assert any("failed to receive" in r.getMessage() for r in caplog.records)
    assert net.nodes[C].srp.stats["failed_to_receive"] == 1
    assert net.nodes[A].srp.stats["failed_to_receive"] == 0
    assert net.nodes[B].srp.stats["failed_to_receive"] == 0
    assert net.nodes[C].srp.members == (C,)
    # the healthy members keep delivering while C stays apart
    net.mcast(A, b"after" * 100)
    assert net.run_until(lambda: net.nodes[B].messages[-1:] == [b"after" * 100], 1)
    assert net.one_ring([A, B])
    # fault gone: C merges back once its time apart is over
    net.drop = None
    assert net.run_until(lambda: net.one_ring([A, B, C]), 10)
    net.mcast(A, b"together" * 100)
    assert net.run_until(lambda: net.nodes[C].messages[-1:] == [b"together" * 100], 1)


def test_ordinary_loss_is_not_a_failure_to_receive() -> None:
    """Every frame from A to C lost four times before it gets through: slow, not failed."""
    net = formed(3)
    tries: dict[int, int] = {}

    def drop(src, dst, pkt):
        if isinstance(pkt, wire.Mcast) and dst == C:
            tries[pkt.seq] = tries.get(pkt.seq, 0) + 1
            return tries[pkt.seq] <= 4
        return False

    net.drop = drop
    for i in range(30):
        net.mcast(A, b"m%d" % i)
    assert net.run_until(lambda: len(net.nodes[C].messages) == 30, 5)
    assert all(n.srp.stats["failed_to_receive"] == 0 for n in net.nodes.values())
    assert net.one_ring([A, B, C])


def test_resumed_node_drops_its_backlog_and_rejoins_with_one_reformation() -> None:
    """Finding 5: B stopped 3 s; on resuming, its queued joins name it failed."""
    net = formed(3)
    net.pause(B, 3.0)
    assert net.run_until(lambda: net.one_ring([A, C]), 3)
    rings_a = len(net.nodes[A].confs)
    assert net.run_until(lambda: net.now > net.nodes[B].paused_until and net.one_ring(), 5)
    assert net.nodes[B].srp.stats["stalls"] == 1
    assert net.nodes[B].srp.stats["stale_dropped"] > 0
    net.run(2)
    assert net.one_ring()
    # A and C installed exactly one more regular configuration: the one with B
    regular = [c for c in net.nodes[A].confs[rings_a:] if not c.transitional]
    assert [c.members for c in regular] == [(A, B, C)]
    assert net.nodes[A].srp.stats["stalls"] == 0


def test_token_retransmit_wait_follows_measured_rotations() -> None:
    net = formed(3)
    srp = net.nodes[A].srp
    for i in range(40):
        net.mcast(B, b"x%d" % i)
        net.run(0.002)
    cfg = srp.cfg
    # the harness's rotation is well under a millisecond: the floor applies
    assert srp._rto() == cfg.token_retransmit_min
    # a rotation that waited for a resend is left out of the estimate
    before = srp._srtt
    srp._sample_rotation(0.2)
    assert srp._srtt == before


def test_lost_idle_token_is_resent_quickly() -> None:
    """An idle token lost on its way to the representative costs no rest-length wait."""
    net = formed(3)
    net.run(2)  # idle: the token rests at A between rotations
    assert net.nodes[A].srp._held is not None or net.run_until(
        lambda: net.nodes[A].srp._held is not None, 1)
    lost = []

    def drop(src, dst, pkt):
        if isinstance(pkt, wire.Token) and src == C and not lost:
            lost.append(net.now)
            return True
        return False

    net.drop = drop
    assert net.run_until(lambda: bool(lost), 1)
    t0 = net.now
    seq = net.nodes[A].srp._last_token_seq
    assert net.run_until(lambda: net.nodes[A].srp._last_token_seq > seq, 1)
    # A's own wait (a rotation, not the rest) and C's relay, well under the rest
    assert net.now - t0 < net.nodes[A].srp.cfg.token_hold / 1000.0
    assert net.one_ring()


def test_fail_to_receive_settings_come_from_openais_conf() -> None:
    from ais.config import parse_openais_conf
    text = ("network {\n bindnetaddr: 127.0.0.1\n mcastaddr: 226.94.1.1\n mcastport: 5405\n}\n"
            "totem {\n fail_recv_const: 80\n fail_recv_backoff: 5000\n}\n")
    tc = parse_openais_conf(text).to_totem_config()
    assert (tc.fail_recv_const, tc.fail_recv_backoff) == (80, 5000.0)
    with pytest.raises(Exception, match="fail_recv_const"):
        parse_openais_conf(text.replace("80", "0"))


def test_quiet_read_is_an_idle_rings_traffic_only() -> None:
    """``quiet_read`` (what busy polling skips): true after a read of an idle
    ring's token or a merge probe; false once frames come, and at the writer
    whose queued message the token takes."""
    net = Net([1, 2, 3])
    net.start()
    assert net.run_until(net.one_ring, 5)
    net.run(3.0)  # long past the lingering: the token goes round marked idle
    reads: dict[int, list[bool]] = {2: [], 3: []}
    call = net._call

    def recording(i: int, fn: Callable[..., list], *args: object) -> None:
        call(i, fn, *args)
        if i in reads and getattr(fn, "__name__", "") == "receive":
            reads[i].append(net.nodes[i].srp.quiet_read)
    net._call = recording  # type: ignore[method-assign]
    net.run(2.0)
    assert len(reads[2]) >= 4 and all(reads[2]), reads[2]
    reads[2].clear()
    reads[3].clear()
    net.mcast(3, b"m" * 3000)  # three frames from node 3, awaited by nobody
    assert net.run_until(lambda: b"m" * 3000 in net.nodes[2].messages, 5)
    assert not all(reads[2])  # the reads that brought the frames
    assert not all(reads[3])  # the token's visit that sent them


# ------------------------------------------------- re-sends across a configuration change

def _sent_payload_calls(net: Net, i: int, payload: bytes) -> list[int]:
    """Indexes of node i's recorded core calls whose actions send a frame carrying
    ``payload``."""
    return [k for k, acts in enumerate(net.calls.get(i, []))
            for a in acts if isinstance(a, Send) and payload in a.data]


@pytest.mark.parametrize("pause", [True, False])
def test_the_visit_that_installs_a_ring_frames_no_queued_message(pause: bool) -> None:
    """A message queued while the ring re-forms leaves on a later visit than the one
    that installs the new ring (``install_pause``), so the host can still put what an
    abandoned sync round held in front of it; without the pause it leaves at once."""
    net = Net(ids(2), TotemConfig(install_pause=pause), sink=False)
    net._record = True  # every call's actions, for the check below
    net.start()
    assert net.run_until(net.one_ring, 5)
    net.partition({A}, {B})
    net.run(1.5)  # each alone
    net.heal()
    net.mcast(A, b"queued while merging")  # (the merge has not formed yet)
    assert net.run_until(lambda: net.one_ring() and len(net.nodes[A].srp.members) == 2, 10)
    net.run(0.5)
    calls = net.calls[A]
    installing = [k for k, acts in enumerate(calls) for a in acts
                  if isinstance(a, ConfChange) and not a.transitional and len(a.members) == 2]
    sent = _sent_payload_calls(net, A, b"queued while merging")
    assert installing and sent
    assert (sent[0] > installing[-1]) is pause
    assert b"queued while merging" in payloads(net.nodes[B])


def test_requeue_front_goes_ahead_of_what_was_queued_since() -> None:
    net = formed(2)
    srp = net.nodes[A].srp
    net.partition({A}, {B})
    net.run(1.5)
    net.heal()
    for p in (b"later-1", b"later-2"):
        net.mcast(A, p)
    net._call(A, lambda ps, now: srp.requeue_front(ps, now), [b"held-1", b"held-2"])
    assert net.run_until(lambda: len(payloads(net.nodes[B])) >= 4, 10)
    mine = [p for p in payloads(net.nodes[B]) if p[:4] in (b"late", b"held")]
    assert mine == [b"held-1", b"held-2", b"later-1", b"later-2"]
    assert srp.stats["requeued_late"] == 0


def test_requeue_front_behind_a_message_partly_sent_goes_at_the_back() -> None:
    from ais.totem.queues import SendQueue
    q = SendQueue(200)
    q.push(b"x" * 500)
    assert q.take_frame() is not None and q.partly_framed
    q.push(b"later")
    srp = Srp(A, TotemConfig())  # (not started: nothing is framed meanwhile)
    srp.queue = q
    srp.requeue_front([b"held"], 0.0)
    assert srp.stats["requeued_late"] == 1
    assert list(q.msgs) == [b"x" * 500, b"later", b"held"]  # (the partly sent head goes on)
    q2 = SendQueue(200)
    q2.push(b"later")
    q2.push_front([b"held-1", b"held-2"])
    assert list(q2.msgs) == [b"held-1", b"held-2", b"later"] and q2.bytes == 17
