"""Property-based checks of the ring's entry (issue 8): any field value the wire
format can carry, handed to a running node as if sealed with the real key,
costs that packet only.  ``test_ringguard.py`` has the scripted cases and a
seeded mutation fuzzer; here hypothesis searches the value space and shrinks
what it finds.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ais.totem import wire
from ais.totem.events import RingId
from ais.totem.guard import RING_SEQ_LIMIT
from totem_harness import Net, ids

A, B, C = ids(3)
U32 = st.integers(0, 2 ** 32 - 1)
U64 = st.one_of(st.integers(0, 2 ** 64 - 1), st.sampled_from([0, 1, 2 ** 62, 2 ** 63,
                                                             2 ** 64 - 8, 2 ** 64 - 1]))
NODE = st.one_of(st.sampled_from(ids(3)), U32)
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def ring() -> Net:
    net = Net(ids(3))
    net.start()
    assert net.run_until(net.one_ring, 5)
    return net


def bounded(net: Net) -> bool:
    return all(max(n.srp.max_ring_seq, n.srp._last_token_seq, n.srp._sent_seq,
                   n.srp.rx.high) < RING_SEQ_LIMIT for n in net.nodes.values())


def survives(data: bytes) -> None:
    """Hand ``data`` to every node of a fresh ring; the ring must stay one and deliver."""
    net = ring()
    for i in ids(3):
        net._perform(i, net.nodes[i].srp.receive(data, net.now))
    net.run(0.3)
    assert bounded(net)
    assert net.run_until(net.one_ring, 10)
    net.mcast(A, b"probe")
    assert net.run_until(lambda: all(b"probe" in n.messages for n in net.nodes.values()), 10)
    assert bounded(net)


@SETTINGS
@given(sender=NODE, rseq=U64, tseq=U64, seq=U64, aru=U64, addr=NODE, fcc=U32, backlog=U32,
       retrans=st.integers(0, 255), flags=st.integers(0, 255),
       rtr=st.lists(U64, max_size=20), current=st.booleans())
def test_any_token(sender, rseq, tseq, seq, aru, addr, fcc, backlog, retrans, flags, rtr,
                   current) -> None:
    rid = RingId(4, A) if current else RingId(rseq, sender)
    survives(wire.encode_token(wire.Token(sender, rid, tseq, seq, aru, addr, fcc, backlog,
                                          retrans, flags, rtr)))


@SETTINGS
@given(sender=NODE, rseq=U64, rep=NODE, seq=U64, flags=st.integers(0, 255),
       payload=st.binary(max_size=200), current=st.booleans())
def test_any_frame(sender, rseq, rep, seq, flags, payload, current) -> None:
    rid = RingId(4, A) if current else RingId(rseq, rep)
    survives(wire.encode_mcast(sender, rid, seq, flags, payload))


@SETTINGS
@given(sender=NODE, rseq=U64, proc=st.frozensets(NODE, max_size=80),
       fail=st.frozensets(NODE, max_size=10))
def test_any_join(sender, rseq, proc, fail) -> None:
    survives(wire.encode_join(wire.Join(sender, rseq, proc | {sender}, fail)))


@SETTINGS
@given(sender=NODE, rseq=U64, rep=NODE, nodes=st.frozensets(NODE, min_size=1, max_size=6),
       vals=st.lists(st.tuples(st.booleans(), U64, NODE, U64, U64), min_size=6, max_size=6))
def test_any_commit(sender, rseq, rep, nodes, vals) -> None:
    entries = [wire.CommitEntry(n, f, RingId(os, orep), a, h)
               for n, (f, os, orep, a, h) in zip(sorted(nodes), vals)]
    survives(wire.encode_commit(wire.Commit(sender, RingId(rseq, rep), entries)))


@SETTINGS
@given(kind=st.sampled_from([wire.MERGE_DETECT, wire.WAKE]), sender=NODE, rseq=U64, rep=NODE)
def test_any_probe(kind, sender, rseq, rep) -> None:
    survives(wire.encode_probe(kind, sender, RingId(rseq, rep)))
