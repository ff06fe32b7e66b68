"""Encode/decode rates of wire messages: hand-written struct code against the layout codec.

Run:  python bench/codec_bench.py [--seconds 0.5]

Three messages, each encoded and decoded as its users do:

* a CKPT WRITE request body (one 64-byte write to a 1-byte section id), the
  client library's hot path;
* a Totem MCAST header with a 1400-byte payload, the ring's hot path;
* a Totem token with 8 retransmit requests.

For each it prints operations per second for the hand-written code the
project had before the codec (kept below as the reference) and for what the
modules use now (``saf._ckpt_wire``, ``ais.totem.wire``).  Speed is printed,
never asserted.
"""
from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ais.totem import wire as tw  # noqa: E402
from ais.totem.events import RingId  # noqa: E402
from saf import _ckpt_wire as cw  # noqa: E402
from saf.errors import IpcProtocolError  # noqa: E402

# --- the hand-written reference (the code before the codec) --------------------------------

WRITE_REQ = struct.Struct("!qI")
IOVEC = struct.Struct("!HQI")


def ref_encode_write(req: cw.WriteReq) -> bytes:
    parts = [WRITE_REQ.pack(req.now, len(req.vectors))]
    for sid, off, data in req.vectors:
        parts.append(IOVEC.pack(len(sid), off, len(data)))
        parts.append(sid)
        parts.append(data)
    return b"".join(parts)


def ref_decode_write(body: bytes) -> cw.WriteReq:
    if len(body) < WRITE_REQ.size:
        raise IpcProtocolError("truncated")
    now, count = WRITE_REQ.unpack_from(body)
    off = WRITE_REQ.size
    vecs = []
    for _ in range(count):
        if len(body) - off < IOVEC.size:
            raise IpcProtocolError("truncated")
        n, o, size = IOVEC.unpack_from(body, off)
        off += IOVEC.size
        if len(body) - off < n + size:
            raise IpcProtocolError("truncated")
        sid = bytes(body[off:off + n])
        data = bytes(body[off + n:off + n + size])
        off += n + size
        vecs.append((sid, o, data))
    if off != len(body):
        raise IpcProtocolError("trailing")
    return cw.WriteReq(now, tuple(vecs))


PACKET_HEADER = struct.Struct("!BBI")
MCAST_HEADER = struct.Struct("!QIQB")
TOKEN_HEADER = struct.Struct("!QIQQQIIIBBH")


def ref_encode_mcast(sender: int, ring_id: RingId, seq: int, flags: int, payload: bytes) -> bytes:
    return (PACKET_HEADER.pack(1, tw.MCAST, sender)
            + MCAST_HEADER.pack(ring_id.seq, ring_id.rep, seq, flags) + payload)


def ref_decode(data: bytes) -> object:
    try:
        return _ref_decode(data)
    except tw.BadPacket:
        raise
    except (struct.error, ValueError, IndexError) as e:
        raise tw.BadPacket(f"malformed packet: {e}") from None


def _ref_decode(data: bytes) -> object:
    if len(data) < PACKET_HEADER.size:
        raise tw.BadPacket("short packet")
    version, kind, sender = PACKET_HEADER.unpack_from(data)
    off = PACKET_HEADER.size
    if kind == tw.MCAST:
        rseq, rrep, seq, flags = MCAST_HEADER.unpack_from(data, off)
        return tw.Mcast(sender, RingId(rseq, rrep), seq, flags, data[off + MCAST_HEADER.size:])
    (rseq, rrep, tseq, seq, aru, aru_addr, fcc, backlog, retrans, flags,
     nrtr) = TOKEN_HEADER.unpack_from(data, off)
    off += TOKEN_HEADER.size
    if nrtr > tw.MAX_RTR or len(data) != off + 8 * nrtr:
        raise tw.BadPacket("bad retransmit list")
    rtr = list(struct.unpack_from(f"!{nrtr}Q", data, off)) if nrtr else []
    return tw.Token(sender, RingId(rseq, rrep), tseq, seq, aru, aru_addr, fcc, backlog,
                    retrans, flags, rtr)


def ref_encode_token(t: tw.Token) -> bytes:
    head = PACKET_HEADER.pack(1, tw.TOKEN, t.sender) + TOKEN_HEADER.pack(
        t.ring_id.seq, t.ring_id.rep, t.token_seq, t.seq, t.aru, t.aru_addr,
        t.fcc, t.backlog, t.retrans_flg, t.flags, len(t.rtr))
    if not t.rtr:
        return head
    return head + struct.pack(f"!{len(t.rtr)}Q", *t.rtr)


# --- measuring --------------------------------------------------------------------------------


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n, batch = 0, 1000
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per figure")
    args = ap.parse_args()
    s = args.seconds

    write = cw.WriteReq(1_700_000_000_000_000_000, ((b"s", 128, b"x" * 64),))
    wbody = cw.encode_write(write)
    assert wbody == ref_encode_write(write) and cw.decode_write_untrusted(wbody) == write
    ring = RingId(42, 0x0A000001)
    payload = b"p" * 1400
    mbytes = tw.encode_mcast(0x0A000002, ring, 1234, 0, payload)
    assert mbytes == ref_encode_mcast(0x0A000002, ring, 1234, 0, payload)
    assert tw.decode_untrusted(mbytes) == ref_decode(mbytes)
    tok = tw.Token(0x0A000002, ring, 7, 1234, 1200, 0x0A000003, 10, 3, 0, 0,
                   list(range(1200, 1208)))
    tbytes = tw.encode_token(tok)
    assert tbytes == ref_encode_token(tok) and tw.decode_untrusted(tbytes) == tok

    rows = [
        ("CKPT WRITE request encode", lambda: ref_encode_write(write),
         lambda: cw.encode_write(write)),
        ("CKPT WRITE request decode", lambda: ref_decode_write(wbody),
         lambda: cw.decode_write_untrusted(wbody)),
        ("Totem MCAST encode", lambda: ref_encode_mcast(0x0A000002, ring, 1234, 0, payload),
         lambda: tw.encode_mcast(0x0A000002, ring, 1234, 0, payload)),
        ("Totem MCAST decode", lambda: ref_decode(mbytes), lambda: tw.decode_untrusted(mbytes)),
        ("Totem token encode", lambda: ref_encode_token(tok), lambda: tw.encode_token(tok)),
        ("Totem token decode", lambda: ref_decode(tbytes), lambda: tw.decode_untrusted(tbytes)),
    ]
    print(f"{'message':28} {'hand-written/s':>15} {'modules now/s':>15} {'ratio':>7}")
    for name, ref, now in rows:
        a, b = rate(ref, s), rate(now, s)
        print(f"{name:28} {a:15,.0f} {b:15,.0f} {b / a:7.2f}")


if __name__ == "__main__":
    main()
