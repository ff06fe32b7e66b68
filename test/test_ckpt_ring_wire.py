"""CKPT's ring-only messages pinned against layouts written out with ``struct`` by hand.

The payloads are captured from the service as it sends them (CLOSE,
CLOSE_MANY, the two expiries and the four sync messages) and compared with
bytes built here from the service's state; struct-built payloads are then
fed back to the handlers.  Any change to one of these layouts' bytes fails here.
(The messages that forward a client body after the checkpoint id are the
client layouts of saf._ckpt_wire, pinned with them.)
"""
from __future__ import annotations

import struct
from typing import Any

import pytest

from ais.services import ckpt as sck
from ais.totem.events import node_of
from saf import _ckpt_wire as cw
from saf.types import SA_TIME_END
from test_ckpt import RW, SEC, A, B, CkCluster, attrs

# CKPT_ID: | ring seq u64 | ring rep u32 | counter u32 |
ID = "!QII"
# CreationAttributes: | flags u32 | size u64 | retention i64 | max_sections u32 |
#                     | max_section_size u64 | max_id_size u32 |
ATTRS = "!IQqIQI"


def _id(ckpt_id: tuple[int, int, int]) -> bytes:
    return struct.pack(ID, *ckpt_id)


def _attrs(a: cw.CreationAttributes) -> bytes:
    return struct.pack(ATTRS, a.creation_flags, a.checkpoint_size, a.retention_duration,
                       a.max_sections, a.max_section_size, a.max_section_id_size)


def _capture(cl: CkCluster) -> list[tuple[str, int, int, bytes]]:
    """(address, msg_id, flags, payload) of every CKPT ring message the hosts send."""
    sent: list[tuple[str, int, int, bytes]] = []
    for addr, host in cl.hosts.items():
        orig = host._send

        def send(msg: Any, addr: str = addr, orig: Any = orig) -> Any:
            if msg.service == cw.CKPT_SERVICE_ID:
                sent.append((addr, msg.msg_id, msg.flags, msg.payload))
            return orig(msg)

        host._send = send  # type: ignore[method-assign]
    return sent


def _of(sent: list[tuple[str, int, int, bytes]], msg_id: int) -> list[tuple[str, int, bytes]]:
    return [(a, f, p) for a, m, f, p in sent if m == msg_id]


def test_pinned_close_and_close_many():
    cl = CkCluster([A, B])
    cl.form([A, B])
    a = cl.client(A)
    h1 = a.open(b"one", RW, attrs())
    a.open(b"two", RW, attrs())
    id1, id2 = cl.svc(A).names[b"one"], cl.svc(A).names[b"two"]
    sent = _capture(cl)
    a.close(h1)
    assert _of(sent, sck.MSG_CLOSE) == [(A, 0, _id(id1) + struct.pack("!I", h1))]
    del sent[:]
    a.open(b"one", RW)
    del sent[:]
    a.exit()  # the node drops the client's references in one message, in handle order
    cl.settle()
    assert _of(sent, sck.MSG_CLOSE_MANY) == [(A, 0, struct.pack("!I", 2) + _id(id2) + _id(id1))]
    assert all(not ck.refs for ck in cl.svc(B).ckpts.values())


def test_pinned_expiries():
    cl = CkCluster([A, B])
    cl.form([A, B])
    a = cl.client(A)
    h = a.open(b"r", RW, attrs(retention_duration=2 * SEC))
    a.section_create(h, b"sec", b"data", exp=SA_TIME_END - 1, remaining=SEC)
    ck_id = cl.svc(A).names[b"r"]
    exp = cl.svc(A).ckpts[ck_id].sections[b"sec"].expiration
    sent = _capture(cl)
    cl.sched.advance(1.5)
    cl.settle()
    # the lowest member (A) sends it: | CKPT_ID | expiration i64 | section id |
    assert _of(sent, sck.MSG_SECTION_EXPIRE) == [
        (A, 0, _id(ck_id) + struct.pack("!q", exp) + b"sec")]
    a.close(h)
    epoch = cl.svc(A).ckpts[ck_id].retention_epoch
    del sent[:]
    cl.sched.advance(3)
    cl.settle()
    # | CKPT_ID | retention epoch u64 |
    assert _of(sent, sck.MSG_RETENTION_EXPIRE) == [(A, 0, _id(ck_id) + struct.pack("!Q", epoch))]
    assert ck_id not in cl.svc(A).ckpts and ck_id not in cl.svc(B).ckpts


def _sync_ckpt(ck: sck.Checkpoint) -> bytes:
    head = struct.pack("!BQQIIQ16sBH", ck.linked, ck.updates, ck.last_ring[0], ck.last_ring[1],
                       ck.active_node, ck.retention_epoch, ck.digest, len(ck.history),
                       len(ck.name))
    hist = b"".join(struct.pack("!Q16sB", n, d, b) for n, d, b in ck.history)
    return _id(ck.id) + head + _attrs(ck.attrs) + ck.name + hist


def test_pinned_sync_messages():
    cl = CkCluster([A, B])
    cl.form([A], [B])  # two sides, each with its own state: both stream at the merge
    a, b = cl.client(A), cl.client(B)
    h = a.open(b"big", RW, attrs(creation_flags=cw.SA_CKPT_WR_ACTIVE_REPLICA, max_sections=1,
                                 checkpoint_size=1000, max_section_size=1000))
    a.active_set(h)
    big = bytes(range(256)) * (sck.SYNC_CHUNK // 256 + 3)
    a.write(h, [(b"", 0, big[:100])])
    a.close(h)
    h = a.open(b"big", RW)
    a.overwrite(h, b"", big[:10])
    hb = b.open(b"small", RW, attrs(max_sections=3, checkpoint_size=1000))
    b.section_create(hb, b"s1", b"x" * 10)
    b.open(b"small", RW)  # two references from B
    gone = b.open(b"gone", RW, attrs())
    b.unlink(b"gone")
    b.close(gone)
    gone_id = next(iter(cl.svc(B).tombstones))
    # a section bigger than one chunk, on A
    ha = a.open(b"multi", RW, attrs(max_sections=2, max_section_size=len(big),
                                    checkpoint_size=len(big)))
    a.section_create(ha, b"m", big)
    a.open(b"unlinked", RW, attrs())
    a.unlink(b"unlinked")  # still open: streamed with linked 0
    cks = list(cl.svc(A).ckpts.values())
    # every field of SYNC_CKPT is exercised with a value other than zero
    assert any(not ck.linked for ck in cks) and any(ck.active_node for ck in cks)
    assert {b for ck in cks for _, _, b in ck.history} == {False, True}
    assert all(ck.retention_epoch and ck.updates is not None for ck in cks)
    states = {addr: [(ck.id, _sync_ckpt(ck), {sid: (bytes(s.data), s.expiration,
                                                    s.last_update)
                                              for sid, s in ck.sections.items()})
                     for ck in cl.svc(addr).ckpts.values()]
              for addr in (A, B)}
    refs = {addr: [(ck.id, ck.refs[node_of(addr)]) for ck in cl.svc(addr).ckpts.values()
                   if ck.refs.get(node_of(addr))] for addr in (A, B)}
    tombs = {addr: list(cl.svc(addr).tombstones) for addr in (A, B)}
    assert tombs[B] == [gone_id] and tombs[A] == []
    sent = _capture(cl)
    cl.form([A, B])
    for addr in (A, B):
        mine = [(m, f, p) for ad, m, f, p in sent if ad == addr]
        expected: list[tuple[int, int, bytes]] = [
            (sck.MSG_SYNC_REFS, 1, struct.pack("!I", len(refs[addr])) + b"".join(
                _id(i) + struct.pack("!I", n) for i, n in refs[addr])),
            (sck.MSG_SYNC_TOMBSTONES, 1, struct.pack("!I", len(tombs[addr])) + b"".join(
                _id(i) for i in tombs[addr]))]
        for ck_id, payload, sections in states[addr]:
            expected.append((sck.MSG_SYNC_CKPT, 1, payload))
            for sid, (data, exp, last) in sections.items():
                off = 0
                while True:
                    chunk = data[off:off + sck.SYNC_CHUNK]
                    expected.append((sck.MSG_SYNC_SECTION, 1, _id(ck_id) + struct.pack(
                        "!HqqqQQ", len(sid), exp, SA_TIME_END, last, len(data), off)
                        + sid + chunk))
                    off += len(chunk)
                    if off >= len(data):
                        break
        assert mine == expected, addr
    assert sum(1 for _, m, _, _ in sent if m == sck.MSG_SYNC_SECTION) >= 4
    assert cl.digests()[0] == cl.digests()[1]


def _two() -> CkCluster:
    cl = CkCluster([A, B])
    cl.form([A, B])
    return cl


def test_pinned_ring_bytes_decode_back():
    """Struct-built payloads are what the handlers act on."""
    cl = _two()
    a = cl.client(A)
    h = a.open(b"ck", RW, attrs(retention_duration=SA_TIME_END))
    a.open(b"ck", RW)
    ck_id = cl.svc(A).names[b"ck"]
    host, svc = cl.hosts[A], cl.svc(A)
    me = node_of(A)
    assert svc.ckpts[ck_id].refs == {me: 2}
    host.mcast(svc, sck.MSG_CLOSE, _id(ck_id) + struct.pack("!I", 0))
    cl.settle()
    assert svc.ckpts[ck_id].refs == cl.svc(B).ckpts[ck_id].refs == {me: 1}
    host.mcast(svc, sck.MSG_CLOSE_MANY, struct.pack("!I", 1) + _id(ck_id))
    cl.settle()
    assert svc.ckpts[ck_id].refs == cl.svc(B).ckpts[ck_id].refs == {}
    # an expiry naming another epoch is void; the current one deletes
    a2 = cl.client(A)
    h = a2.open(b"sec", RW, attrs())
    a2.section_create(h, b"s", b"v", exp=SA_TIME_END - 1, remaining=1000 * SEC)
    sid = cl.svc(A).names[b"sec"]
    exp = svc.ckpts[sid].sections[b"s"].expiration
    host.mcast(svc, sck.MSG_SECTION_EXPIRE, _id(sid) + struct.pack("!q", exp - 1) + b"s")
    cl.settle()
    assert b"s" in svc.ckpts[sid].sections
    host.mcast(svc, sck.MSG_SECTION_EXPIRE, _id(sid) + struct.pack("!q", exp) + b"s")
    cl.settle()
    assert b"s" not in svc.ckpts[sid].sections and b"s" not in cl.svc(B).ckpts[sid].sections
    epoch = svc.ckpts[ck_id].retention_epoch
    host.mcast(svc, sck.MSG_RETENTION_EXPIRE, _id(ck_id) + struct.pack("!Q", epoch + 1))
    cl.settle()
    assert ck_id in svc.ckpts
    host.mcast(svc, sck.MSG_RETENTION_EXPIRE, _id(ck_id) + struct.pack("!Q", epoch))
    cl.settle()
    assert ck_id not in svc.ckpts and ck_id not in cl.svc(B).ckpts
    assert cl.digests()[0] == cl.digests()[1]


@pytest.mark.parametrize("msg_id, payload", [
    (sck.MSG_CLOSE, _id((1, 2, 3)) + bytes(3)),
    (sck.MSG_CLOSE, _id((1, 2, 3)) + bytes(5)),
    (sck.MSG_CLOSE, bytes(15)),
    (sck.MSG_CLOSE_MANY, bytes(3)),
    (sck.MSG_CLOSE_MANY, struct.pack("!I", 1) + bytes(15)),
    (sck.MSG_CLOSE_MANY, struct.pack("!I", 1) + bytes(17)),
    (sck.MSG_CLOSE_MANY, struct.pack("!I", sck.CLOSE_BATCH + 1)
     + bytes(16 * (sck.CLOSE_BATCH + 1))),
    (sck.MSG_RETENTION_EXPIRE, _id((1, 2, 3)) + bytes(7)),
    (sck.MSG_RETENTION_EXPIRE, _id((1, 2, 3)) + bytes(9)),
    (sck.MSG_SECTION_EXPIRE, _id((1, 2, 3)) + bytes(7)),
])
def test_bad_ring_payloads_are_dropped(msg_id, payload):
    cl = _two()
    cl.hosts[A].mcast(cl.svc(A), msg_id, payload)
    cl.settle()
    assert cl.hosts[A].bad_messages["ckpt"] == 1
    assert cl.hosts[B].bad_messages["ckpt"] == 1


def _sync_ckpt_bytes(linked: int = 1, nhist: int = 0, name: bytes = b"nm",
                     name_len: int | None = None, hist: bytes = b"") -> bytes:
    head = struct.pack("!BQQIIQ16sBH", linked, 3, 8, 1, 0, 2, bytes(16), nhist,
                       len(name) if name_len is None else name_len)
    return _id((8, 1, 1)) + head + _attrs(attrs()) + name + hist


def test_struct_built_sync_ckpt_decodes_to_the_checkpoint():
    hist = struct.pack("!Q16sB", 1, b"d" * 16, 1) + struct.pack("!Q16sB", 2, b"e" * 16, 0)
    ck = sck.SYNC_CKPT_MSG.decode(_sync_ckpt_bytes(linked=0, nhist=2, hist=hist))
    assert (ck.id, ck.name, ck.attrs, ck.linked, ck.updates, ck.last_ring, ck.active_node,
            ck.retention_epoch, ck.digest, ck.history) == (
        (8, 1, 1), b"nm", attrs(), False, 3, (8, 1), 0, 2, bytes(16),
        [(1, b"d" * 16, True), (2, b"e" * 16, False)])
    assert ck.sections == {} and ck.refs == {}
    assert sck.SYNC_CKPT_MSG.encode(ck) == _sync_ckpt_bytes(linked=0, nhist=2, hist=hist)


# Sync messages refused by their decoders (the Reader-based ones took trailing bytes and
# any nonzero flag byte; the codec's refuse both).
@pytest.mark.parametrize("msg_id, payload", [
    (sck.MSG_SYNC_REFS, bytes(3)),
    (sck.MSG_SYNC_REFS, struct.pack("!I", 1) + bytes(19)),
    (sck.MSG_SYNC_REFS, struct.pack("!I", 1) + bytes(21)),
    (sck.MSG_SYNC_TOMBSTONES, struct.pack("!I", 1) + bytes(15)),
    (sck.MSG_SYNC_TOMBSTONES, struct.pack("!I", 1) + bytes(17)),
    (sck.MSG_SYNC_CKPT, _sync_ckpt_bytes()[:-1]),
    (sck.MSG_SYNC_CKPT, _sync_ckpt_bytes() + b"x"),
    (sck.MSG_SYNC_CKPT, _sync_ckpt_bytes(name_len=300)),
    (sck.MSG_SYNC_CKPT, _sync_ckpt_bytes(linked=2)),
    (sck.MSG_SYNC_CKPT, _sync_ckpt_bytes(nhist=1, hist=struct.pack("!Q16sB", 1, bytes(16), 7))),
    (sck.MSG_SYNC_CKPT, _sync_ckpt_bytes(nhist=2, hist=struct.pack("!Q16sB", 1, bytes(16), 1))),
    (sck.MSG_SYNC_SECTION, _id((1, 2, 3)) + bytes(41)),
    (sck.MSG_SYNC_SECTION, _id((1, 2, 3)) + struct.pack("!HqqqQQ", 5, 0, 0, 0, 4, 0) + b"abcd"),
])
def test_bad_sync_payloads_are_dropped(msg_id, payload):
    cl = _two()
    before = cl.digests()
    cl.hosts[A].mcast(cl.svc(A), msg_id, payload)
    cl.settle()
    assert cl.hosts[A].bad_messages["ckpt"] == cl.hosts[B].bad_messages["ckpt"] == 1
    assert cl.digests() == before
