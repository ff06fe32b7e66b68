"""IPC framing (saf/_wire.py): exact bytes both ways, and garbage raises only IpcProtocolError."""
import random
import struct

import pytest

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
    (w.ClmTrackStart(0x05, 64), w.encode_clm_track_start, w.decode_clm_track_start_untrusted,
     b"\x05\x00\x00\x00\x00\x00\x00\x40"),
    (w.ClmNodeGet(0x6201A8C0, -1), w.encode_clm_node_get, w.decode_clm_node_get_untrusted,
     b"\x62\x01\xa8\xc0" + b"\xff" * 8),
    (w.ClmNodeGetAsync(0x55, 0), w.encode_clm_node_get_async,
     w.decode_clm_node_get_async_untrusted, b"\x00" * 7 + b"\x55" + b"\x00" * 4),
    (NODE, w.encode_cluster_node, w.decode_cluster_node_untrusted, _node_bytes(NODE)),
    (w.ClmTrackCallback(8, 2, (ClusterNotification(NODE, ClusterChange.SA_CLM_NODE_LEFT),)),
     w.encode_clm_track_callback, w.decode_clm_track_callback_untrusted,
     struct.pack("!QII", 8, 2, 1) + _node_bytes(NODE) + b"\x03"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("obj,enc,dec,data", CASES)
def test_round_trip(obj, enc, dec, data):
    assert enc(obj) == data
    assert dec(data) == obj


@pytest.mark.timeout(10)
def test_node_get_callback_round_trip():
    cb = w.ClmNodeGetCallback(0x60, NODE)
    data = w.encode_clm_node_get_callback(cb)
    assert w.decode_clm_node_get_callback_untrusted(data, 1) == cb
    # With an error the record is not handed out.
    assert w.decode_clm_node_get_callback_untrusted(data, 12).node is None


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
    w.decode_clm_track_start_untrusted, w.decode_clm_node_get_untrusted,
    w.decode_clm_node_get_async_untrusted, w.decode_cluster_node_untrusted,
    w.decode_clm_track_callback_untrusted,
    lambda d: w.decode_clm_node_get_callback_untrusted(d, 1),
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
