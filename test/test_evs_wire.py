"""EVS wire bytes pinned against layouts written out with ``struct`` by hand.

Client IPC bodies (saf._evs_wire) and the EVS ring messages
(ais.services.evs, captured from the service as it sends them): any change
to a layout's bytes fails here.
"""
from __future__ import annotations

import struct

import pytest

from ais.services import evs as sev
from ais.totem.events import node_of
from saf import _evs_wire as ew
from saf.errors import SA_OK, IpcProtocolError
from test_evs import A, B, EvsCluster

G1, G2 = ew.group_key(b"key1"), ew.group_key("key2")
M1, M2, M3 = ew.Member(0x7F000001, 3, 1000), ew.Member(0x7F000002, 9, 77), ew.Member(1, 2, 3)


def _members(*ms: ew.Member) -> bytes:
    return b"".join(struct.pack("!III", m.node, m.conn, m.pid) for m in ms)


def test_group_key():
    assert ew.group_key(b"key1") == b"key1" + bytes(28)
    assert ew.group_key(b"x" * 32) == b"x" * 32
    with pytest.raises(ValueError):
        ew.group_key(b"x" * 33)


# (encoded by saf._evs_wire, the same bytes from struct)
PINNED = [
    (lambda: ew.encode_group_list([G1, G2]), struct.pack("!H2x", 2) + G1 + G2),
    (lambda: ew.encode_group_list([]), struct.pack("!H2x", 0)),
    (lambda: ew.encode_mcast(ew.McastRequest(2, 3, (), b"data", ew.MCAST_QUEUE), True),
     struct.pack("!BBBx", 2, 3, 1) + b"data"),
    (lambda: ew.encode_mcast(ew.McastRequest(3, 0, (), b"", 0), True),
     struct.pack("!BBBx", 3, 0, 0)),
    (lambda: ew.encode_mcast(ew.McastRequest(1, 2, (G1, G2), b"xyz", 0), False),
     struct.pack("!BBBxH2x", 1, 2, 0, 2) + G1 + G2 + b"xyz"),
    (lambda: ew.encode_mcast(ew.McastRequest(0, 1, (G2,), b"", 1), False),
     struct.pack("!BBBxH2x", 0, 1, 1, 1) + G2),
    (lambda: ew.encode_member(M1), struct.pack("!III", 0x7F000001, 3, 1000)),
    (lambda: ew.encode_deliver_head(M2), struct.pack("!III", 0x7F000002, 9, 77)),
    (lambda: ew.encode_confchg(ew.ConfchgCallback(G1, (M1, M2), (M3,), ())),
     struct.pack("!32sHHH2x", G1, 2, 1, 0) + _members(M1, M2, M3)),
    (lambda: ew.encode_confchg(ew.ConfchgCallback(G2, (), (), (M1,))),
     struct.pack("!32sHHH2x", G2, 0, 0, 1) + _members(M1)),
]


@pytest.mark.parametrize("encode, expected", PINNED)
def test_pinned_client_bytes(encode, expected):
    assert encode() == expected


def test_pinned_client_bytes_decode_back():
    body = struct.pack("!H2x", 2) + G1 + G2
    assert ew.decode_group_list_untrusted(body) == ((G1, G2), len(body))
    assert ew.decode_group_list_untrusted(b"ab" + body + b"tail", 2, exact=False) == \
        ((G1, G2), 2 + len(body))
    assert ew.decode_mcast_untrusted(struct.pack("!BBBx", 2, 3, 1) + b"data", True) == \
        ew.McastRequest(2, 3, (), b"data", 1)
    assert ew.decode_mcast_untrusted(struct.pack("!BBBxH2x", 1, 2, 0, 2) + G1 + G2 + b"xyz",
                                     False) == ew.McastRequest(1, 2, (G1, G2), b"xyz", 0)
    assert ew.decode_deliver_untrusted(_members(M2) + b"payload") == \
        ew.DeliverCallback(M2, b"payload")
    assert ew.decode_confchg_untrusted(struct.pack("!32sHHH2x", G1, 1, 1, 1)
                                       + _members(M1, M2, M3)) == \
        ew.ConfchgCallback(G1, (M1,), (M2,), (M3,))


@pytest.mark.parametrize("decode, body", [
    (ew.decode_group_list_untrusted, b"\x00"),
    (ew.decode_group_list_untrusted, struct.pack("!H2x", 1) + bytes(31)),
    (ew.decode_group_list_untrusted, struct.pack("!H2x", 1) + bytes(33)),  # trailing
    (ew.decode_group_list_untrusted, struct.pack("!H2x", ew.MAX_GROUPS + 1)
     + bytes(32 * (ew.MAX_GROUPS + 1))),
    (lambda b: ew.decode_mcast_untrusted(b, True), b"\x01\x02\x03"),
    (lambda b: ew.decode_mcast_untrusted(b, False), struct.pack("!BBBx", 1, 2, 0)),
    (lambda b: ew.decode_mcast_untrusted(b, False), struct.pack("!BBBxH2x", 1, 2, 0, 2) + G1),
    (lambda b: ew.decode_mcast_untrusted(b, False),
     struct.pack("!BBBxH2x", 1, 2, 0, ew.MAX_GROUPS + 1) + bytes(32 * (ew.MAX_GROUPS + 1))),
    (ew.decode_deliver_untrusted, bytes(11)),
    (ew.decode_confchg_untrusted, bytes(39)),
    (ew.decode_confchg_untrusted, struct.pack("!32sHHH2x", G1, 1, 0, 0) + bytes(11)),
    (ew.decode_confchg_untrusted, struct.pack("!32sHHH2x", G1, 1, 0, 0) + bytes(13)),
])
def test_bad_client_bodies_raise_protocol_error(decode, body):
    with pytest.raises(IpcProtocolError):
        decode(body)


# --- ring messages, captured as the service sends them ---------------------------------------


def _capture(cl: EvsCluster) -> list[tuple[str, int, int, bytes]]:
    """(address, msg_id, flags, payload) of every EVS ring message the hosts send."""
    sent: list[tuple[str, int, int, bytes]] = []
    for addr, host in cl.hosts.items():
        orig = host._send

        def send(msg, addr=addr, orig=orig):
            if msg.service == ew.EVS_SERVICE_ID:
                sent.append((addr, msg.msg_id, msg.flags, msg.payload))
            return orig(msg)

        host._send = send  # type: ignore[method-assign]
    return sent


def test_pinned_ring_bytes():
    cl = EvsCluster([A, B])
    cl.form([A, B])
    a = cl.connect(A)
    sent = _capture(cl)
    pid = a.pid & 0xFFFFFFFF

    assert cl.join(A, a, G1, G2) == SA_OK
    assert sent == [(A, sev.MSG_JOIN, 0,
                     struct.pack("!II", a.conn_id, pid) + struct.pack("!H2x", 2) + G1 + G2)]
    del sent[:]

    assert cl.send(A, a, b"hello", (G2,)) == SA_OK
    assert cl.send(A, a, b"") == SA_OK  # MCAST_JOINED: the handle's groups, sorted
    assert sent == [
        (A, sev.MSG_MCAST, 0, struct.pack("!IIBxHQ", a.conn_id, pid, sev.EVS_TYPE_AGREED, 1, 1)
         + G2 + b"hello"),
        (A, sev.MSG_MCAST, 0, struct.pack("!IIBxHQ", a.conn_id, pid, sev.EVS_TYPE_AGREED, 2, 2)
         + G1 + G2)]
    del sent[:]

    assert cl.send(A, a, b"s", (G1,), guarantee=sev.EVS_TYPE_SAFE) == SA_OK
    assert sent == [(A, sev.MSG_MCAST, 0, struct.pack("!IIBxHQ", a.conn_id, pid,
                                                      sev.EVS_TYPE_SAFE, 1, 3) + G1 + b"s")]
    del sent[:]

    assert cl.leave(A, a, G2) == SA_OK
    assert sent == [(A, sev.MSG_LEAVE, 0,
                     struct.pack("!II", a.conn_id, pid) + struct.pack("!H2x", 1) + G2)]
    del sent[:]

    # a configuration change: every node announces its own members
    a2 = cl.connect(A)
    assert cl.join(A, a2, G2) == SA_OK
    del sent[:]
    cl.form([A], [B])
    sync = [s for s in sent if s[1] == sev.MSG_SYNC_MEMBERS]
    entries = sorted([(G1, a.conn_id, pid), (G2, a2.conn_id, a2.pid & 0xFFFFFFFF)])
    assert sync == [(A, sev.MSG_SYNC_MEMBERS, 1, struct.pack("!H2x", 2) + b"".join(
        struct.pack("!32sII", *e) for e in entries))]
    del sent[:]

    cl.hosts[A].lib_exit(a)
    cl.run()
    assert sent == [(A, sev.MSG_EXIT, 0, struct.pack("!I", a.conn_id))]


def test_pinned_ring_bytes_decode_back():
    """The same struct-built payloads are accepted by the service's handlers."""
    cl = EvsCluster([A, B])
    cl.form([A, B])
    b = cl.connect(B)
    assert cl.join(B, b, G1) == SA_OK
    host, svc = cl.hosts[A], cl.evs(A)
    host.mcast(svc, sev.MSG_JOIN, struct.pack("!II", 5, 55) + struct.pack("!H2x", 2) + G1 + G2)
    cl.run()
    me = node_of(A)
    assert svc.groups[G2] == {(me, 5): 55} and svc.groups[G1][(me, 5)] == 55
    b.callbacks.clear()
    host.mcast(svc, sev.MSG_MCAST, struct.pack("!IIBxHQ", 5, 55, sev.EVS_TYPE_AGREED, 1, 1)
               + G1 + b"ring")
    cl.run()
    [cb] = b.callbacks
    assert cb.body == struct.pack("!III", me, 5, 55) + b"ring"
    host.mcast(svc, sev.MSG_LEAVE, struct.pack("!II", 5, 55) + struct.pack("!H2x", 1) + G2)
    cl.run()
    assert G2 not in svc.groups
    host.mcast(svc, sev.MSG_EXIT, struct.pack("!I", 5))
    cl.run()
    assert (me, 5) not in svc.groups[G1]
    assert cl.evs(A).groups == cl.evs(B).groups


@pytest.mark.parametrize("msg_id, payload", [
    (sev.MSG_JOIN, struct.pack("!II", 5, 55) + struct.pack("!H2x", 1) + bytes(31)),
    (sev.MSG_JOIN, struct.pack("!II", 5, 55) + struct.pack("!H2x", 1) + bytes(33)),
    (sev.MSG_LEAVE, struct.pack("!II", 5, 55)),
    (sev.MSG_MCAST, struct.pack("!IIBxHQ", 5, 55, 2, 2, 1) + bytes(40)),
    (sev.MSG_MCAST, bytes(19)),
    (sev.MSG_EXIT, bytes(3)),
    (sev.MSG_EXIT, bytes(5)),
    (sev.MSG_SYNC_MEMBERS, struct.pack("!H2x", 1) + bytes(39)),
])
def test_bad_ring_payloads_are_dropped(msg_id, payload):
    cl = EvsCluster([A, B])
    cl.form([A, B])
    before = dict(cl.hosts[A].bad_messages)
    cl.hosts[A].mcast(cl.evs(A), msg_id, payload)
    cl.run()
    assert cl.hosts[A].bad_messages["evs"] == before.get("evs", 0) + 1
    assert cl.hosts[B].bad_messages["evs"] == before.get("evs", 0) + 1
