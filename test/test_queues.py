"""The send queue's framing and the reassembler, against a plain model of them.

The reassembler takes the middle of a large message on a lean path of its own;
these properties check that every sequence of fragments -- in order, broken,
repeated, from several senders, over the size limit -- gives what the rules
give: a message is delivered when its fragments 0..count-1 of one message
number came one after another from its sender, and not above the limit.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ais.totem.queues import Reassembler, SendQueue
from ais.totem.wire import FRAGMENT_ITEM, ITEM_FRAGMENT, ITEM_WHOLE, WHOLE_ITEM

MAX_MESSAGE = 200


class Model:
    """The reassembly rules, written out plainly."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.partial: dict[int, tuple[int, int, int, bytes]] = {}  # no, next, count, data

    def fragment(self, sender: int, no: int, idx: int, count: int, data: bytes) -> list[bytes]:
        p = self.partial.pop(sender, None)
        if idx == 0:
            if count == 1:
                return [data]
            self.partial[sender] = (no, 1, count, data)
            return []
        if p is None or (p[0], p[1], p[2]) != (no, idx, count):
            return []
        joined = p[3] + data
        if len(joined) > self.max_message:
            return []
        if idx + 1 == count:
            return [joined]
        self.partial[sender] = (no, idx + 1, count, joined)
        return []


def frame(no: int, idx: int, count: int, data: bytes) -> bytes:
    return FRAGMENT_ITEM.pack(ITEM_FRAGMENT, len(data), no, idx, count) + data


fragments = st.lists(st.tuples(
    st.integers(1, 3),  # sender
    st.integers(0, 2),  # message number
    st.integers(0, 4),  # index
    st.integers(1, 5),  # count
    st.integers(1, 60)), max_size=80)  # bytes of data


@settings(max_examples=400, deadline=None)
@given(fragments, st.randoms(use_true_random=False))
def test_any_sequence_of_fragments_is_joined_as_the_rules_say(
        frags: list[tuple[int, int, int, int, int]], rnd: random.Random) -> None:
    r, m = Reassembler(MAX_MESSAGE), Model(MAX_MESSAGE)
    # Runs of a well-formed message among the noise, so that the middle
    # fragments (the lean path) are exercised, not only rejected.
    seq: list[tuple[int, int, int, int, int]] = []
    for f in frags:
        seq.append(f)
        if rnd.random() < 0.3:
            sender, no, _, count, n = f
            seq.extend((sender, no, i, count, n) for i in range(count))
    for i, (sender, no, idx, count, n) in enumerate(seq):
        data = bytes([i % 251]) * n
        assert r.unpack(sender, frame(no, idx, count, data)) == \
            m.fragment(sender, no, idx, count, data)
        # what is held is what the rules hold: nothing past the limit
        assert {s: p[4] for s, p in r._partial.items()} == \
            {s: len(p[3]) for s, p in m.partial.items()}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=1, max_size=12), st.integers(40, 300))
def test_queued_messages_come_out_whole_and_in_order(sizes: list[int], capacity: int) -> None:
    q, r = SendQueue(capacity), Reassembler(1 << 20)
    msgs = [bytes([i]) * n for i, n in enumerate(sizes)]
    for msg in msgs:
        q.push(msg)
    out: list[bytes] = []
    while (payload := q.take_frame()) is not None:
        assert len(payload) <= capacity
        out.extend(r.unpack(7, payload))
    assert out == msgs and len(q) == 0 and q.bytes == 0


def test_a_message_restarted_after_a_ring_change_is_joined_from_its_new_fragments() -> None:
    q, r = SendQueue(40), Reassembler(1 << 20)
    msg = bytes(range(100))
    q.push(msg)
    first = q.take_frame()
    assert first is not None and r.unpack(1, first) == []
    q.restart_partial()  # (the receivers reset their reassembly with the ring)
    r.reset()
    out: list[bytes] = []
    while (payload := q.take_frame()) is not None:
        out.extend(r.unpack(1, payload))
    assert out == [msg]


def test_small_messages_share_a_frame() -> None:
    q = SendQueue(100)
    for i in range(4):
        q.push(bytes([i]) * 10)
    payload = q.take_frame()
    assert payload is not None and len(payload) == 4 * (WHOLE_ITEM.size + 10)
    assert Reassembler(1000).unpack(1, payload) == [bytes([i]) * 10 for i in range(4)]



@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 700), min_size=1, max_size=12), st.integers(40, 300))
def test_a_frame_holds_one_fragment_or_whole_messages(sizes: list[int], capacity: int) -> None:
    """A message that spans frames travels one fragment a frame, so a frame holding
    several messages holds whole ones only.  The host names a delivery by its frame's
    seq and its place among the messages that frame ended (ais.executive, re-sent
    messages): with whole messages only, every member that delivers a frame delivers
    all of it, in the same order, even past a gap."""
    q = SendQueue(capacity)
    for i, n in enumerate(sizes):
        q.push(bytes([i]) * n)
    while (payload := q.take_frame()) is not None:
        if payload[0] == ITEM_FRAGMENT:
            _, n, _, _, _ = FRAGMENT_ITEM.unpack_from(payload)
            assert FRAGMENT_ITEM.size + n == len(payload)
        else:
            off = 0
            while off < len(payload):
                kind, n = WHOLE_ITEM.unpack_from(payload, off)
                assert kind == ITEM_WHOLE
                off += WHOLE_ITEM.size + n
            assert off == len(payload)
