"""Encode/decode rates of wire messages: hand-written struct code against the layout codec.

Run:  python bench/codec_bench.py [--seconds 0.5]

Three messages, each encoded and decoded as its users do:

* a CKPT WRITE request body (one 64-byte write to a 1-byte section id), the
  client library's hot path;
* a Totem MCAST header with a 1400-byte payload, the ring's hot path;
* a Totem token with 8 retransmit requests;
* an EVS MCAST ring message (one group, 100 bytes of data), the EVS
  service's hot path (sent once, decoded on every node).

For each it prints operations per second for the hand-written code the
project had before the codec (copied below as the reference) and for what
the modules use now (``saf._ckpt_wire``, ``ais.totem.wire``,
``ais.services.evs``), best of 5
alternating rounds.  Speed is printed, never asserted.
"""
from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ais.services import evs as sev  # noqa: E402
from ais.totem import wire as tw  # noqa: E402
from ais.totem.events import RingId  # noqa: E402
from saf import _ckpt_wire as cw  # noqa: E402
from saf.errors import IpcProtocolError  # noqa: E402

# --- the hand-written reference (the code before the codec) --------------------------------

WRITE_REQ = struct.Struct("!qI")
IOVEC = struct.Struct("!HQI")


class Reader:
    """The bounds-checked reader saf/_ckpt_wire.py used before the codec."""

    __slots__ = ("data", "off", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.off = 0
        self.what = what

    def take(self, layout: struct.Struct) -> tuple:
        if len(self.data) - self.off < layout.size:
            raise IpcProtocolError(f"{self.what}: truncated at byte {self.off}")
        vals = layout.unpack_from(self.data, self.off)
        self.off += layout.size
        return vals

    def raw(self, n: int) -> bytes:
        if n < 0 or len(self.data) - self.off < n:
            raise IpcProtocolError(f"{self.what}: {n} bytes announced")
        out = bytes(self.data[self.off:self.off + n])
        self.off += n
        return out

    def end(self) -> None:
        if self.off != len(self.data):
            raise IpcProtocolError(f"{self.what}: trailing bytes")


def _pack(layout: struct.Struct, *vals: object) -> bytes:
    try:
        return layout.pack(*vals)
    except struct.error as exc:
        raise ValueError(f"field out of range: {exc}") from None


def ref_encode_write(req: cw.WriteReq) -> bytes:
    parts = [_pack(WRITE_REQ, req.now, len(req.vectors))]
    for sid, off, data in req.vectors:
        parts.append(_pack(IOVEC, len(sid), off, len(data)))
        parts.append(sid)
        parts.append(data)
    return b"".join(parts)


def ref_decode_write(body: bytes) -> cw.WriteReq:
    r = Reader(body, "WRITE")
    now, count = r.take(WRITE_REQ)
    vecs = []
    for _ in range(count):
        n, off, size = r.take(IOVEC)
        sid = r.raw(n)
        vecs.append((sid, off, r.raw(size)))
    r.end()
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


# EVS MCAST ring message, as ais/services/evs.py wrote and read it before the codec
RING_MCAST = struct.Struct("!IIBxHQ")


def ref_encode_evs_mcast(conn: int, pid: int, guarantee: int, seq: int,
                         groups: tuple[bytes, ...], data: bytes) -> bytes:
    return RING_MCAST.pack(conn, pid, guarantee, len(groups), seq) + b"".join(groups) + data


def ref_decode_evs_mcast(payload: bytes) -> tuple:
    if len(payload) < RING_MCAST.size:
        raise IpcProtocolError("truncated MCAST")
    conn, pid, guarantee, count, seq = RING_MCAST.unpack_from(payload)
    if count > 1024:
        raise IpcProtocolError(f"group list: {count} groups")
    end = RING_MCAST.size + count * 32
    if len(payload) < end:
        raise IpcProtocolError(f"group list: {count} groups do not fit {len(payload)} bytes")
    groups = tuple(bytes(payload[i:i + 32]) for i in range(RING_MCAST.size, end, 32))
    return conn, pid, guarantee, seq, groups, payload[end:]


# --- measuring --------------------------------------------------------------------------------


def best_rates(a: Callable[[], object], b: Callable[[], object],
               seconds: float) -> tuple[float, float]:
    """Best calls per second of ``a`` and ``b`` over 5 alternating rounds (other load on
    the machine then biases neither)."""
    ra = rb = 0.0
    for _ in range(5):
        ra = max(ra, rate(a, seconds / 5))
        rb = max(rb, rate(b, seconds / 5))
    return ra, rb


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
    ap.add_argument("--seconds", type=float, default=1.0, help="time per figure")
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

    group = b"g".ljust(32, b"\0")
    evs = (7, 4242, 2, 99, (group,), b"d" * 100)
    ebytes = sev.RING_MCAST.pack(*evs)
    assert ebytes == ref_encode_evs_mcast(*evs)
    assert sev.RING_MCAST.decode(ebytes) == ref_decode_evs_mcast(ebytes) == evs

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
        ("EVS MCAST ring encode", lambda: ref_encode_evs_mcast(*evs),
         lambda: sev.RING_MCAST.pack(*evs)),
        ("EVS MCAST ring decode", lambda: ref_decode_evs_mcast(ebytes),
         lambda: sev.RING_MCAST.decode(ebytes)),
    ]
    print(f"{'message':28} {'hand-written/s':>15} {'modules now/s':>15} {'ratio':>7}")
    for name, ref, now in rows:
        a, b = best_rates(ref, now, s)
        print(f"{name:28} {a:15,.0f} {b:15,.0f} {b / a:7.2f}")


if __name__ == "__main__":
    main()
