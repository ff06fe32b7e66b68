"""Client IPC and ring wire formats.

Exact bytes both ways; garbage raises only the decoder's error.
"""
import random
import struct

import pytest

from saf import _clm_wire as clw
from saf import _wire as w
from saf.errors import IpcProtocolError
from saf.types import ClusterChange, ClusterNode, ClusterNotification

NODE = ClusterNode(0x0100007F, b"\x7f\x00\x00\x01", b"127.0.0.1", b"mvlcge", True, 5 * 10**18)


def _node_bytes(n: ClusterNode) -> bytes:
    return (struct.pack("!IB", n.node_id, len(n.node_address)) + n.node_address.ljust(64, b"\0")
            + struct.pack("!H", len(n.node_name)) + n.node_name.ljust(256, b"\0")
            + struct.pack("!H", len(n.cluster_name)) + n.cluster_name.ljust(256, b"\0")
            + struct.pack("!Bq", int(n.member), n.boot_timestamp))


# (object, encoder, decoder, expected bytes)
CASES = [
    (w.Frame(1, 3, 0, 7, b"xy"), w.encode_frame, w.decode_frame_untrusted,
     b"\x00\x00\x00\x12\x00\x01\x00\x03\x00\x00\x00\x00\x00\x00\x00\x07xy"),
    (w.Frame(1, w.MSG_HELLO, 29, 0), w.encode_frame, w.decode_frame_untrusted,
     b"\x00\x00\x00\x10\x00\x01\xff\xff\x00\x00\x00\x1d\x00\x00\x00\x00"),
    (w.Hello(w.ROLE_CALLBACK, 0x0102030405060708), w.encode_hello, w.decode_hello_untrusted,
     b"\x02\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08"),
    (w.HelloReply(5, 9), w.encode_hello_reply, w.decode_hello_reply_untrusted,
     b"\x00\x00\x00\x05" + b"\x00" * 7 + b"\x09"),
    (clw.ClmTrackStart(0x05, 64), clw.encode_clm_track_start, clw.decode_clm_track_start_untrusted,
     b"\x05\x00\x00\x00\x00\x00\x00\x40"),
    (clw.ClmNodeGet(0x6201A8C0, -1), clw.encode_clm_node_get, clw.decode_clm_node_get_untrusted,
     b"\x62\x01\xa8\xc0" + b"\xff" * 8),
    (clw.ClmNodeGetAsync(0x55, 0), clw.encode_clm_node_get_async,
     clw.decode_clm_node_get_async_untrusted, b"\x00" * 7 + b"\x55" + b"\x00" * 4),
    (NODE, clw.encode_cluster_node, clw.decode_cluster_node_untrusted, _node_bytes(NODE)),
    (clw.ClmTrackCallback(8, 2, (ClusterNotification(NODE, ClusterChange.SA_CLM_NODE_LEFT),)),
     clw.encode_clm_track_callback, clw.decode_clm_track_callback_untrusted,
     struct.pack("!QII", 8, 2, 1) + _node_bytes(NODE) + b"\x03"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("obj,enc,dec,data", CASES)
def test_round_trip(obj, enc, dec, data):
    assert enc(obj) == data
    assert dec(data) == obj


@pytest.mark.timeout(10)
def test_node_get_callback_round_trip():
    cb = clw.ClmNodeGetCallback(0x60, NODE)
    data = clw.encode_clm_node_get_callback(cb)
    assert clw.decode_clm_node_get_callback_untrusted(data, 1) == cb
    # With an error the record is not handed out.
    assert clw.decode_clm_node_get_callback_untrusted(data, 12).node is None


@pytest.mark.timeout(10)
def test_frame_buffer_splits_stream():
    frames = [w.Frame(1, i, 1, i, bytes([i]) * i) for i in range(1, 20)]
    stream = b"".join(w.encode_frame(f) for f in frames)
    buf = w.FrameBuffer()
    out = []
    for i in range(0, len(stream), 7):
        buf.feed(stream[i:i + 7])
        while (f := buf.next_frame()) is not None:
            out.append(f)
    assert out == frames and buf.pending == 0


@pytest.mark.timeout(10)
def test_oversized_refused_both_ways():
    with pytest.raises(IpcProtocolError):
        w.encode_frame(w.Frame(1, 1, 0, 0, b"\0" * w.MAX_FRAME))
    buf = w.FrameBuffer()
    with pytest.raises(IpcProtocolError):
        buf.feed(struct.pack("!IHHiI", w.MAX_FRAME + 1, 1, 1, 0, 0))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("data", [
    b"", b"\x00\x00\x00", b"\x00\x00\x00\x05" + b"\0" * 12,           # size below header
    b"\x00\x00\x00\x20" + b"\0" * 12,                                  # truncated body
    b"\xff\xff\xff\xff" + b"\0" * 12,                                  # oversized
])
def test_bad_frames(data):
    with pytest.raises(IpcProtocolError):
        w.decode_frame_untrusted(data)


DECODERS = [
    w.decode_frame_untrusted, w.decode_hello_untrusted, w.decode_hello_reply_untrusted,
    clw.decode_clm_track_start_untrusted, clw.decode_clm_node_get_untrusted,
    clw.decode_clm_node_get_async_untrusted, clw.decode_cluster_node_untrusted,
    clw.decode_clm_track_callback_untrusted,
    lambda d: clw.decode_clm_node_get_callback_untrusted(d, 1),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("decode", DECODERS)
def test_garbage_raises_only_protocol_error(decode):
    rng = random.Random(0)
    seeds = [enc(obj) for obj, enc, _, _ in CASES]
    for _ in range(2000):
        choice = rng.random()
        if choice < 0.4:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:
            base = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                if base:
                    base[rng.randrange(len(base))] = rng.randrange(256)
            data = bytes(base[:rng.randrange(len(base) + 1)]) if choice < 0.7 else bytes(base)
        try:
            decode(data)
        except IpcProtocolError:
            pass


@pytest.mark.timeout(30)
def test_frame_buffer_garbage():
    rng = random.Random(1)
    for _ in range(500):
        buf = w.FrameBuffer()
        try:
            for _ in range(5):
                buf.feed(bytes(rng.randrange(256) for _ in range(rng.randrange(30))))
                while buf.next_frame() is not None:
                    pass
        except IpcProtocolError:
            pass


# --- pinned bytes of CKPT bodies and Totem packets, written out with struct by hand -----------
# (taken before these modules moved to saf/_codec.py: the move must not change one byte)

from ais.totem import wire as tw  # noqa: E402
from ais.totem.events import RingId  # noqa: E402
from saf import _ckpt_wire as cw  # noqa: E402

ATTRS = cw.CreationAttributes(cw.SA_CKPT_WR_ACTIVE_REPLICA, 1 << 33, -5, 7, 1 << 20, 9)
_ATTRS_BYTES = struct.pack("!IQqIQI", 2, 1 << 33, -5, 7, 1 << 20, 9)
_RING = RingId(0x0102030405060708, 0x0A000001)

PINNED = [
    (lambda: cw.encode_open(cw.OpenReq(b"ck", 3, ATTRS, 99, 5, True)),
     struct.pack("!QIBBq", 5, 3, 1, 1, 99) + _ATTRS_BYTES + b"ck"),
    (lambda: cw.encode_open(cw.OpenReq(b"ck", 1, None)),
     struct.pack("!QIBBq", 0, 1, 0, 0, 0x7FFFFFFFFFFFFFFF) + bytes(36) + b"ck"),
    (lambda: cw.encode_open_callback(7, 3), struct.pack("!QI", 7, 3)),
    (lambda: cw.encode_retention(-1), b"\xff" * 8),
    (lambda: cw.encode_status(cw.CheckpointStatus(ATTRS, 4, 1000)),
     _ATTRS_BYTES + struct.pack("!IQ", 4, 1000)),
    (lambda: cw.encode_section_create(cw.SectionCreateReq(b"sid", 10, 20, 30, b"data")),
     struct.pack("!qqqH", 10, 20, 30, 3) + b"sid" + b"data"),
    (lambda: cw.encode_section_expiration(b"s", 1, 2), struct.pack("!qq", 1, 2) + b"s"),
    (lambda: cw.encode_iter_init(5, -2), struct.pack("!Iq", 5, -2)),
    (lambda: cw.encode_iter_id(0x01020304), b"\x01\x02\x03\x04"),
    (lambda: cw.encode_iter_next_reply(True, [cw.SectionDescriptor(b"ab", 1, 2, 1, 3)]),
     struct.pack("!BI", 1, 1) + struct.pack("!HqQBq", 2, 1, 2, 1, 3) + b"ab"),
    (lambda: cw.encode_write(cw.WriteReq(6, ((b"a", 8, b"xyz"), (b"", 0, b""))),),
     struct.pack("!qI", 6, 2) + struct.pack("!HQI", 1, 8, 3) + b"axyz"
     + struct.pack("!HQI", 0, 0, 0)),
    (lambda: cw.encode_overwrite(4, b"id", b"dd"), struct.pack("!qH", 4, 2) + b"iddd"),
    (lambda: cw.encode_read([(b"q", 1, cw.READ_ALL)]),
     struct.pack("!I", 1) + struct.pack("!HQI", 1, 1, 0xFFFFFFFF) + b"q"),
    (lambda: cw.encode_io_status(12, 3), struct.pack("!iI", 12, 3)),
    (lambda: cw.encode_read_reply(1, 0, [b"ab", b""]),
     struct.pack("!iII", 1, 0, 2) + b"\x00\x00\x00\x02ab" + b"\x00" * 4),
    (lambda: cw.encode_synchronize(9, True, 11), struct.pack("!QBq", 9, 1, 11)),
    (lambda: cw.encode_sync_callback(9), struct.pack("!Q", 9)),
    (lambda: cw.encode_attrs(ATTRS), _ATTRS_BYTES),
    (lambda: tw.encode_mcast(0x0A000002, _RING, 77, 1, b"pay"),
     struct.pack("!BBI", 1, 1, 0x0A000002) + struct.pack("!QIQB", _RING.seq, _RING.rep, 77, 1)
     + b"pay"),
    (lambda: tw.encode_recovered(_RING, 5, 0x0A000003, b"old"),
     struct.pack("!QIQI", _RING.seq, _RING.rep, 5, 0x0A000003) + b"old"),
    (lambda: tw.encode_token(tw.Token(3, _RING, 1, 2, 3, 4, 5, 6, 1, 2, [9, 8])),
     struct.pack("!BBI", 1, 2, 3) + struct.pack("!QIQQQIIIBBH", _RING.seq, _RING.rep, 1, 2, 3,
                                                4, 5, 6, 1, 2, 2) + struct.pack("!QQ", 9, 8)),
    (lambda: tw.encode_join(tw.Join(3, 40, frozenset({9, 2}), frozenset({5}))),
     struct.pack("!BBI", 1, 3, 3) + struct.pack("!QHH", 40, 2, 1) + struct.pack("!III", 2, 9, 5)),
    (lambda: tw.encode_commit(tw.Commit(3, _RING, [tw.CommitEntry(1, True, RingId(5, 1), 6, 7),
                                                   tw.CommitEntry(2)])),
     struct.pack("!BBI", 1, 4, 3) + struct.pack("!QIH", _RING.seq, _RING.rep, 2)
     + struct.pack("!IBQIQQ", 1, 1, 5, 1, 6, 7) + struct.pack("!IBQIQQ", 2, 0, 0, 0, 0, 0)),
    (lambda: tw.encode_probe(tw.WAKE, 3, _RING),
     struct.pack("!BBI", 1, 6, 3) + struct.pack("!QI", _RING.seq, _RING.rep)),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("encode,expected", PINNED)
def test_pinned_bytes(encode, expected):
    assert encode() == expected


@pytest.mark.timeout(10)
def test_pinned_ckpt_and_totem_decode_back():
    assert cw.decode_open_untrusted(PINNED[0][1]) == cw.OpenReq(b"ck", 3, ATTRS, 99, 5, True)
    assert cw.decode_open_untrusted(PINNED[1][1]) == cw.OpenReq(b"ck", 1, None)
    assert cw.decode_write_untrusted(PINNED[10][1]) == cw.WriteReq(
        6, ((b"a", 8, b"xyz"), (b"", 0, b"")))
    assert cw.decode_read_reply_untrusted(PINNED[14][1]) == (1, 0, [b"ab", b""])
    assert cw.decode_iter_next_reply_untrusted(PINNED[9][1]) == (
        True, [cw.SectionDescriptor(b"ab", 1, 2, 1, 3)])
    assert tw.decode_untrusted(PINNED[18][1]) == tw.Mcast(0x0A000002, _RING, 77, 1, b"pay")
    assert tw.decode_untrusted(PINNED[20][1]) == tw.Token(3, _RING, 1, 2, 3, 4, 5, 6, 1, 2, [9, 8])
    assert tw.decode_untrusted(PINNED[21][1]) == tw.Join(3, 40, frozenset({9, 2}), frozenset({5}))
    assert tw.decode_untrusted(PINNED[23][1]) == tw.Probe(tw.WAKE, 3, _RING)


@pytest.mark.timeout(60)
def test_totem_garbage_raises_only_bad_packet():
    rng = random.Random(2)
    seeds = [expected for _, expected in PINNED[18:]]
    for _ in range(3000):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 5)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        if rng.random() < 0.5:
            base = base[:rng.randrange(len(base) + 1)]
        try:
            tw.decode_untrusted(bytes(base))
        except tw.BadPacket:
            pass


# --- saf/_conn.py: the callback table and the shared call helpers --------------------------------

from saf import _conn  # noqa: E402
from saf.errors import InvalidParam, Library, VersionError  # noqa: E402
from saf.types import SA_TIME_END, Version  # noqa: E402


class _Handle(_conn.Connection):
    service_id = clw.CLM_SERVICE_ID

    @_conn.on_callback(clw.CLM_CB_TRACK, clw.decode_clm_track_callback_untrusted)
    def _track(self, cb, error):
        self.seen.append(("track", cb, error))

    @_conn.on_callback(clw.CLM_CB_NODE_GET, clw.CLM_NODE_GET_CB.decode)
    def _node(self, cb, error):
        self.seen.append(("node", cb, error))


class _Sub(_Handle):
    @_conn.on_callback(clw.CLM_CB_NODE_GET, clw.CLM_NODE_GET_CB.decode)
    def _node2(self, cb, error):
        self.seen.append(("node2", cb, error))


def _unconnected(cls):
    h = object.__new__(cls)  # the table needs no socket
    h.seen = []
    return h


@pytest.mark.timeout(10)
def test_callback_table_runs_the_handler_with_the_decoded_value():
    h = _unconnected(_Handle)
    track = clw.ClmTrackCallback(3, 1, ())
    h._run_callback(w.Frame(1, clw.CLM_CB_TRACK, 1, 0, clw.encode_clm_track_callback(track)))
    body = clw.encode_clm_node_get_callback(clw.ClmNodeGetCallback(7, NODE))
    h._run_callback(w.Frame(1, clw.CLM_CB_NODE_GET, 12, 0, body))
    assert h.seen == [("track", track, 1), ("node", (7, NODE), 12)]
    sub = _unconnected(_Sub)  # a subclass keeps the parent's entries and may replace one
    sub._run_callback(w.Frame(1, clw.CLM_CB_NODE_GET, 1, 0, body))
    sub._run_callback(w.Frame(1, clw.CLM_CB_TRACK, 1, 0, clw.encode_clm_track_callback(track)))
    assert [s[0] for s in sub.seen] == ["node2", "track"]


@pytest.mark.timeout(10)
def test_callback_table_garbage_is_library_error():
    h = _unconnected(_Handle)
    with pytest.raises(Library, match="unknown callback id 9"):
        h._run_callback(w.Frame(1, 9, 1, 0, b""))
    with pytest.raises(Library, match="garbled callback: track callback"):
        h._run_callback(w.Frame(1, clw.CLM_CB_TRACK, 1, 0, b"\x00" * 15))
    assert h.seen == []


@pytest.mark.timeout(10)
def test_call_helpers():
    assert _conn.timeout_guard(SA_TIME_END) is None
    assert _conn.timeout_guard(0) is None and _conn.timeout_guard(-5) is None
    assert _conn.timeout_guard(0, nonpositive_waits=False) == _conn.FRAME_GUARD
    assert _conn.timeout_guard(2 * 10**9) == 2 + _conn.FRAME_GUARD
    with pytest.raises(InvalidParam, match="out of range"):
        _conn.encode(clw.encode_clm_node_get, clw.ClmNodeGet(-1, 0))
    with pytest.raises(Library, match="garbled reply"):
        _conn.decode_reply(clw.decode_cluster_node_untrusted, b"\x01")


@pytest.mark.timeout(10)
def test_initialize_checks_the_version_before_connecting(monkeypatch, tmp_path):
    monkeypatch.setenv("AIS_SOCKET", str(tmp_path / "none.sock"))
    with pytest.raises(VersionError):
        _conn.initialize(_Handle, None, Version("B", 1, 1))
    _conn.check_version(Version("A", 1, 1))


@pytest.mark.timeout(30)
def test_whole_frame_agrees_with_the_frame_buffer():
    """``whole_frame`` (the one-read fast path of both ends) decodes exactly
    what a FrameBuffer fed the same bytes would, when they are one whole frame,
    and declines anything else: a frame and more, part of one, garbage (which
    either declines or raises IpcProtocolError like the buffer)."""
    one = w.encode_frame(w.Frame(3, 7, 0, 42, b"answer"))
    assert w.whole_frame(one) == w.Frame(3, 7, 0, 42, b"answer")
    assert w.whole_frame(one + one) is None
    assert w.whole_frame(one[:-1]) is None
    assert w.whole_frame(one[:5]) is None
    with pytest.raises(IpcProtocolError):
        w.whole_frame(struct.pack("!IHHiI", w.MAX_FRAME + 1, 1, 1, 0, 0))
    rng = random.Random(2)
    for _ in range(3000):
        data = bytearray(one if rng.random() < 0.5 else w.encode_frame(
            w.Frame(1, 2, 0, 3, bytes(rng.randrange(256) for _ in range(rng.randrange(50))))))
        for _ in range(rng.randrange(3)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[:rng.randrange(len(data) + 1)] if rng.random() < 0.3 else data
        buf = w.FrameBuffer()
        try:
            buf.feed(bytes(data))
            expect = buf.next_frame()
            if buf.pending:
                expect = None
        except IpcProtocolError:
            try:  # a bad header, or a frame then a bad one: never a frame
                assert w.whole_frame(bytes(data)) is None
            except IpcProtocolError:
                pass
            continue
        assert w.whole_frame(bytes(data)) == expect
