"""Totem packet layouts, declared once.

Every layout is declared once with ``saf._codec.Layout`` (network byte
order, its bytes drawn above it; the codec merges each run of fixed fields
into one precompiled ``struct.Struct``, so the generated code is the
hand-written code's equal: see bench/codec_bench.py).  Each packet kind has
an ``encode_*`` function and one ``decode_untrusted`` entry point that raises
only ``BadPacket``: whatever arrives on a socket is untrusted until it has
been parsed here.  The application items inside an MCAST payload stay plain
``struct.Struct`` layouts: ``queues.py`` packs and unpacks them in its own
loops, item by item, where a generated function per item would cost a call.

Conventions: node ids are IPv4 addresses as unsigned 32-bit integers; ring
sequence numbers and message sequence numbers are unsigned 64-bit.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from saf._codec import Const, Layout, array, flag, rest, u8, u16, u32, u64

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
ACK = 8  #: a member holds every frame up to ``aru``: the answer to a frame flagged MCAST_ACK

#: upper bounds that keep a hostile packet from making us allocate much
MAX_NODES = 256
MAX_RTR = 1024


class BadPacket(Exception):
    """A packet that cannot be parsed or authenticated.  Costs that packet only."""


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
class Ack:
    """``sender`` holds every frame of ``ring_id`` up to ``aru`` (unicast to a frame's
    sender that asked with ``MCAST_ACK``)."""

    sender: int
    ring_id: RingId
    aru: int


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


Packet = Mcast | Token | Join | Commit | Probe | Ack


def _layout(cls: type | None, name: str, *entries: object, **kw: Any) -> Layout:
    return Layout(cls, name, *entries, error=BadPacket, **kw)


def _header(kind: int) -> tuple:
    """The packet header's fields for packets of type ``kind``."""
    return (Const(u8, VERSION), Const(u8, kind), ("sender", u32))


#  0         1         2                   6
#  +---------+---------+-------------------+
#  | version |  type   |  sender node id   |
#  +---------+---------+-------------------+
PACKET_HEADER: struct.Struct = _layout(  # type: ignore[assignment]
    None, "packet header", ("version", u8), ("type", u8), ("sender", u32)).struct

#  ring seq (8) | ring rep (4)
RING_ID = _layout(RingId, "ring id", ("seq", u64), ("rep", u32))

#  header | ring id (12) | seq (8) | flags (1) | payload ...
MCAST_PACKET = _layout(Mcast, "MCAST", *_header(MCAST), ("ring_id", RING_ID), ("seq", u64),
                       ("flags", u8), ("payload", rest()))
#: MCAST_PACKET's fixed part, flat (the receivers' hot path parses it in one go)
MCAST_FIXED: struct.Struct = _layout(  # type: ignore[assignment]
    None, "MCAST fixed part", *_header(MCAST), ("ring_seq", u64), ("ring_rep", u32),
    ("seq", u64), ("flags", u8)).struct
assert MCAST_FIXED.size == MCAST_PACKET.min_size
MCAST_RECOVERED = 0x01  #: payload is an old ring's frame carried through recovery
#: a client of the sender waits for a message that ends in this frame: each member
#: sends an ACK once it holds everything up to the frame (stability within a hop)
MCAST_ACK = 0x02
#: bytes a regular frame's packet adds to its payload (packet and mcast headers)
MCAST_OVERHEAD = MCAST_PACKET.min_size

#  old ring seq (8) | old ring rep (4) | old seq (8) | old sender (4) | old payload ...
RECOVERED = _layout(Recovered, "recovered frame", ("ring_id", RING_ID), ("seq", u64),
                    ("sender", u32), ("payload", rest()))
RECOVERED_HEADER = struct.Struct("!QIQI")  #: RECOVERED's fixed part (its size bounds frames)
assert RECOVERED.min_size == RECOVERED_HEADER.size

#  header | ring id (12) | token seq (8) | seq (8) | aru (8) | aru addr (4) | fcc (4)
#  | backlog (4) | retrans flag (1) | flags (1) | rtr count (2) | rtr seqs (8 each)
TOKEN_PACKET = _layout(Token, "TOKEN", *_header(TOKEN), ("ring_id", RING_ID),
                       ("token_seq", u64), ("seq", u64), ("aru", u64), ("aru_addr", u32),
                       ("fcc", u32), ("backlog", u32), ("retrans_flg", u8), ("flags", u8),
                       ("rtr", array(u64, u16, max=MAX_RTR, container=list)))
TOKEN_IDLE = 0x01  #: nobody sent during the last rotation: the representative may rest it
TOKEN_COMPLETE = 0x02  #: recovery is complete on this ring: become operational

#  header | highest ring seq seen (8) | process count (2) | fail count (2)
#  | node ids (4 each), each set strictly increasing
JOIN_PACKET = _layout(Join, "JOIN", *_header(JOIN), ("ring_seq", u64), ("nproc", u16),
                      ("nfail", u16),
                      ("proc", array(u32, "nproc", max=MAX_NODES, sorted=True,
                                     container=frozenset)),
                      ("fail", array(u32, "nfail", max=MAX_NODES, sorted=True,
                                     container=frozenset)))
JOIN_HEADER = struct.Struct("!QHH")  #: JOIN's fixed part after the header (for tests' forgeries)
NODE_ID = struct.Struct("!I")

#  node (4) | filled (1) | old ring seq (8) | old ring rep (4) | old aru (8) | old high seq (8)
COMMIT_ENTRY = _layout(CommitEntry, "commit entry", ("node", u32), ("filled", flag),
                       ("old_ring", RING_ID), ("aru", u64), ("high", u64))


def _commit_check(c: Commit) -> str | None:
    nodes = [e.node for e in c.entries]
    if not nodes:
        return "no members"
    if any(a >= b for a, b in zip(nodes, nodes[1:])):
        return "members not sorted"
    return None


#  header | new ring seq (8) | new ring rep (4) | member count (2) | entries (1..MAX_NODES)
COMMIT_PACKET = _layout(Commit, "COMMIT", *_header(COMMIT), ("ring_id", RING_ID),
                        ("entries", array(COMMIT_ENTRY, u16, max=MAX_NODES, container=list)),
                        check=_commit_check)

#  version (1) | type: MERGE_DETECT, WAKE or LEAVE (1) | sender (4) | ring seq (8) | ring rep (4)
PROBE_PACKET = _layout(Probe, "probe", Const(u8, VERSION),
                       ("kind", u8.only(MERGE_DETECT, WAKE, LEAVE)),
                       ("sender", u32), ("ring_id", RING_ID))

#  header | ring id (12) | aru (8)
ACK_PACKET = _layout(Ack, "ACK", *_header(ACK), ("ring_id", RING_ID), ("aru", u64))

# Application items packed inside an MCAST payload.
ITEM_WHOLE = 0
ITEM_FRAGMENT = 1
#  kind (1) | length (4) | data ...
WHOLE_ITEM = struct.Struct("!BI")
#  kind (1) | length (4) | message no (4) | fragment index (4) | fragment count (4) | data ...
FRAGMENT_ITEM = struct.Struct("!BIIII")


#: (sender, ring_id, seq, flags, payload) -> bytes
encode_mcast = MCAST_PACKET.pack
#: (ring_id, seq, sender, payload) -> bytes
encode_recovered = RECOVERED.pack
encode_token = TOKEN_PACKET.encode
encode_join = JOIN_PACKET.encode
encode_commit = COMMIT_PACKET.encode
#: (kind, sender, ring_id) -> bytes
encode_probe = PROBE_PACKET.pack
#: (sender, ring_id, aru) -> bytes
encode_ack = ACK_PACKET.pack


def decode_recovered_untrusted(payload: bytes) -> Recovered:
    return RECOVERED.decode(payload)


_DECODE_BY_TYPE: dict[int, Callable[[bytes], Packet]] = {
    kind: layout.decode for kind, layout in (
        (MCAST, MCAST_PACKET), (TOKEN, TOKEN_PACKET), (JOIN, JOIN_PACKET),
        (COMMIT, COMMIT_PACKET), (MERGE_DETECT, PROBE_PACKET), (WAKE, PROBE_PACKET),
        (LEAVE, PROBE_PACKET), (ACK, ACK_PACKET))}


def decode_untrusted(data: bytes) -> Packet:
    """Parse one datagram.  Raises only ``BadPacket``."""
    try:
        decode = _DECODE_BY_TYPE[data[1]]
    except IndexError:
        raise BadPacket("short packet") from None
    except KeyError:
        raise BadPacket(f"unknown packet type {data[1]}") from None
    try:
        return decode(data)  # checks the version and the type byte too
    except BadPacket:
        raise
    except Exception as e:  # the generated decoders raise only BadPacket; a bug costs a packet
        raise BadPacket(f"malformed packet: {e!r}") from None
