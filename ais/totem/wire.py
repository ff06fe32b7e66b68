"""Totem packet layouts, declared once.

Every layout is a module-level ``struct.Struct`` in network byte order with
its byte layout drawn above it.  Each packet kind has an ``encode_*`` function
and one ``decode_untrusted`` entry point that raises only ``BadPacket``:
whatever arrives on a socket is untrusted until it has been parsed here.

Conventions: node ids are IPv4 addresses as unsigned 32-bit integers; ring
sequence numbers and message sequence numbers are unsigned 64-bit.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .events import RingId

VERSION = 1

# Packet types.
MCAST = 1
TOKEN = 2
JOIN = 3
COMMIT = 4
MERGE_DETECT = 5
WAKE = 6
LEAVE = 7  #: the sender is stopping and leaves its ring (a PROBE body: that ring)

#: upper bounds that keep a hostile packet from making us allocate much
MAX_NODES = 256
MAX_RTR = 1024


class BadPacket(Exception):
    """A packet that cannot be parsed or authenticated.  Costs that packet only."""


#  0         1         2                   6
#  +---------+---------+-------------------+
#  | version |  type   |  sender node id   |
#  +---------+---------+-------------------+
PACKET_HEADER = struct.Struct("!BBI")

#  ring seq (8) | ring rep (4) | seq (8) | flags (1) | payload ...
MCAST_HEADER = struct.Struct("!QIQB")
MCAST_RECOVERED = 0x01  #: payload is an old ring's frame carried through recovery

#  old ring seq (8) | old ring rep (4) | old seq (8) | old sender (4) | old payload ...
RECOVERED_HEADER = struct.Struct("!QIQI")

#  ring seq (8) | ring rep (4) | token seq (8) | seq (8) | aru (8) | aru addr (4)
#  | fcc (4) | backlog (4) | retrans flag (1) | flags (1) | rtr count (2) | rtr seqs (8 each)
TOKEN_HEADER = struct.Struct("!QIQQQIIIBBH")
TOKEN_IDLE = 0x01  #: nobody sent during the last rotation: the representative may rest it
TOKEN_COMPLETE = 0x02  #: recovery is complete on this ring: become operational
RTR_ITEM = struct.Struct("!Q")

#  highest ring seq seen (8) | process count (2) | fail count (2) | node ids (4 each)
JOIN_HEADER = struct.Struct("!QHH")
NODE_ID = struct.Struct("!I")

#  new ring seq (8) | new ring rep (4) | member count (2) | entries
COMMIT_HEADER = struct.Struct("!QIH")
#  node (4) | filled (1) | old ring seq (8) | old ring rep (4) | old aru (8) | old high seq (8)
COMMIT_ENTRY = struct.Struct("!IBQIQQ")

#  ring seq (8) | ring rep (4)      (MERGE_DETECT, WAKE and LEAVE)
PROBE = struct.Struct("!QI")

# Application items packed inside an MCAST payload.
ITEM_WHOLE = 0
ITEM_FRAGMENT = 1
#  kind (1) | length (4) | data ...
WHOLE_ITEM = struct.Struct("!BI")
#  kind (1) | length (4) | message no (4) | fragment index (4) | fragment count (4) | data ...
FRAGMENT_ITEM = struct.Struct("!BIIII")


@dataclass(slots=True)
class Mcast:
    """A regular message frame, sent by ``sender`` with ``seq`` on ring ``ring_id``."""

    sender: int
    ring_id: RingId
    seq: int
    flags: int
    payload: bytes


@dataclass(slots=True)
class Recovered:
    """An old ring's frame, carried as the payload of a recovery frame."""

    ring_id: RingId
    seq: int
    sender: int
    payload: bytes


@dataclass(slots=True)
class Token:
    """The regular token.  Mutable: each holder updates it and passes it on."""

    sender: int
    ring_id: RingId
    token_seq: int
    seq: int
    aru: int
    aru_addr: int
    fcc: int
    backlog: int
    retrans_flg: int
    flags: int
    rtr: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Join:
    """A gather-state join: the sender's process and fail sets."""

    sender: int
    ring_seq: int
    proc: frozenset[int]
    fail: frozenset[int]


@dataclass(slots=True)
class CommitEntry:
    """One member's record in the commit token, filled on its first rotation."""

    node: int
    filled: bool = False
    old_ring: RingId = RingId(0, 0)
    aru: int = 0
    high: int = 0


@dataclass(slots=True)
class Commit:
    """The commit token that installs ``ring_id`` with ``entries``' members."""

    sender: int
    ring_id: RingId
    entries: list[CommitEntry]

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(e.node for e in self.entries)


@dataclass(slots=True)
class Probe:
    """MERGE_DETECT (a representative's probe), WAKE (release the resting token) or LEAVE."""

    kind: int
    sender: int
    ring_id: RingId


Packet = Mcast | Token | Join | Commit | Probe


def encode_mcast(sender: int, ring_id: RingId, seq: int, flags: int, payload: bytes) -> bytes:
    return (PACKET_HEADER.pack(VERSION, MCAST, sender)
            + MCAST_HEADER.pack(ring_id.seq, ring_id.rep, seq, flags) + payload)


def encode_recovered(ring_id: RingId, seq: int, sender: int, payload: bytes) -> bytes:
    return RECOVERED_HEADER.pack(ring_id.seq, ring_id.rep, seq, sender) + payload


def encode_token(t: Token) -> bytes:
    head = PACKET_HEADER.pack(VERSION, TOKEN, t.sender) + TOKEN_HEADER.pack(
        t.ring_id.seq, t.ring_id.rep, t.token_seq, t.seq, t.aru, t.aru_addr,
        t.fcc, t.backlog, t.retrans_flg, t.flags, len(t.rtr))
    if not t.rtr:
        return head
    return head + struct.pack(f"!{len(t.rtr)}Q", *t.rtr)


def encode_join(j: Join) -> bytes:
    proc, fail = sorted(j.proc), sorted(j.fail)
    return (PACKET_HEADER.pack(VERSION, JOIN, j.sender)
            + JOIN_HEADER.pack(j.ring_seq, len(proc), len(fail))
            + struct.pack(f"!{len(proc) + len(fail)}I", *proc, *fail))


def encode_commit(c: Commit) -> bytes:
    parts = [PACKET_HEADER.pack(VERSION, COMMIT, c.sender),
             COMMIT_HEADER.pack(c.ring_id.seq, c.ring_id.rep, len(c.entries))]
    for e in c.entries:
        parts.append(COMMIT_ENTRY.pack(e.node, int(e.filled), e.old_ring.seq, e.old_ring.rep,
                                       e.aru, e.high))
    return b"".join(parts)


def encode_probe(kind: int, sender: int, ring_id: RingId) -> bytes:
    return PACKET_HEADER.pack(VERSION, kind, sender) + PROBE.pack(ring_id.seq, ring_id.rep)


def decode_recovered_untrusted(payload: bytes) -> Recovered:
    if len(payload) < RECOVERED_HEADER.size:
        raise BadPacket("short recovered frame")
    rseq, rrep, seq, sender = RECOVERED_HEADER.unpack_from(payload)
    return Recovered(RingId(rseq, rrep), seq, sender, payload[RECOVERED_HEADER.size:])


def _increasing(ids: tuple[int, ...]) -> bool:
    """Strictly increasing: what the encoder writes (sorted, no repeats)."""
    return all(a < b for a, b in zip(ids, ids[1:]))


def decode_untrusted(data: bytes) -> Packet:
    """Parse one datagram.  Raises only ``BadPacket``."""
    try:
        return _decode(data)
    except BadPacket:
        raise
    except (struct.error, ValueError, IndexError) as e:
        raise BadPacket(f"malformed packet: {e}") from None


def _decode(data: bytes) -> Packet:
    if len(data) < PACKET_HEADER.size:
        raise BadPacket("short packet")
    version, kind, sender = PACKET_HEADER.unpack_from(data)
    if version != VERSION:
        raise BadPacket(f"unknown version {version}")
    off = PACKET_HEADER.size
    if kind == MCAST:
        rseq, rrep, seq, flags = MCAST_HEADER.unpack_from(data, off)
        return Mcast(sender, RingId(rseq, rrep), seq, flags, data[off + MCAST_HEADER.size:])
    if kind == TOKEN:
        (rseq, rrep, tseq, seq, aru, aru_addr, fcc, backlog, retrans, flags,
         nrtr) = TOKEN_HEADER.unpack_from(data, off)
        off += TOKEN_HEADER.size
        if nrtr > MAX_RTR or len(data) != off + 8 * nrtr:
            raise BadPacket("bad retransmit list")
        rtr = list(struct.unpack_from(f"!{nrtr}Q", data, off)) if nrtr else []
        return Token(sender, RingId(rseq, rrep), tseq, seq, aru, aru_addr, fcc, backlog,
                     retrans, flags, rtr)
    if kind == JOIN:
        ring_seq, nproc, nfail = JOIN_HEADER.unpack_from(data, off)
        off += JOIN_HEADER.size
        if nproc > MAX_NODES or nfail > MAX_NODES or len(data) != off + 4 * (nproc + nfail):
            raise BadPacket("bad join sets")
        ids = struct.unpack_from(f"!{nproc + nfail}I", data, off)
        proc, fail = ids[:nproc], ids[nproc:]
        if not (_increasing(proc) and _increasing(fail)):
            raise BadPacket("join sets not sorted")
        return Join(sender, ring_seq, frozenset(proc), frozenset(fail))
    if kind == COMMIT:
        rseq, rrep, n = COMMIT_HEADER.unpack_from(data, off)
        off += COMMIT_HEADER.size
        if not 0 < n <= MAX_NODES or len(data) != off + n * COMMIT_ENTRY.size:
            raise BadPacket("bad commit token")
        entries = []
        for i in range(n):
            node, filled, oseq, orep, aru, high = COMMIT_ENTRY.unpack_from(
                data, off + i * COMMIT_ENTRY.size)
            entries.append(CommitEntry(node, bool(filled), RingId(oseq, orep), aru, high))
        nodes = [e.node for e in entries]
        if nodes != sorted(set(nodes)):
            raise BadPacket("commit token members not sorted")
        return Commit(sender, RingId(rseq, rrep), entries)
    if kind in (MERGE_DETECT, WAKE, LEAVE):
        if len(data) != off + PROBE.size:
            raise BadPacket("bad probe")
        rseq, rrep = PROBE.unpack_from(data, off)
        return Probe(kind, sender, RingId(rseq, rrep))
    raise BadPacket(f"unknown packet type {kind}")
