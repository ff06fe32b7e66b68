"""EVS client IPC bodies (service id 6), declared once; shared by ``saf.evs`` and
``ais.services.evs``.

Framing and the handshake are ``saf._wire``'s.  Conventions as there: one
``struct.Struct`` per layout in network order with a byte-layout comment,
``encode_x`` / ``decode_x_untrusted`` pairs, frozen dataclasses, and the
``*_untrusted`` decoders raise only ``IpcProtocolError``.

A group is a 32-byte key compared on all 32 bytes (spec/evs.md 2): shorter
names are padded with zero bytes, so ``b"key1"`` and ``b"key1\\0"`` are the
same group.  A member is one library handle: (node, conn, pid), where node is
the Totem id (big-endian IPv4) and conn the handle's connection id on that
node's executive.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from saf.errors import IpcProtocolError

#: service id in the handshake and ring header (0 was EVS in 2004; 6 keeps clear
#: of the SAF services' 1..5)
EVS_SERVICE_ID = 6

EVS_REQ_JOIN = 1
EVS_REQ_LEAVE = 2
EVS_REQ_MCAST_JOINED = 3
EVS_REQ_MCAST_GROUPS = 4

EVS_CB_DELIVER = 1
EVS_CB_CONFCHG = 2

#: bytes of a group key
GROUP_SIZE = 32
#: groups one join or leave call may name (more: EVS_ERR_TOO_MANY_GROUPS)
MAX_GROUPS_PER_CALL = 50
#: groups one handle may have joined at once, and one multicast may name
MAX_GROUPS = 1024
#: largest message one multicast may carry (bytes of data)
MAX_MESSAGE = 1024 * 1024

# Group list (JOIN / LEAVE request body): | count u16 | pad u16 | count x group[32] |
GROUP_LIST = struct.Struct("!H2x")

# MCAST_JOINED request: | guarantee u8 | priority u8 | flags u8 | pad u8 | data ... |
MCAST_JOINED_REQ = struct.Struct("!BBBx")

# MCAST_GROUPS request:
#  | guarantee u8 | priority u8 | flags u8 | pad u8 | count u16 | pad u16 |
#  | count x group[32] | data ... |
MCAST_GROUPS_REQ = struct.Struct("!BBBxH2x")

#: MCAST flag: the library pipelines (does not wait for the answer), so when the
#: ring is full the executive holds the request and answers once it is on the
#: ring, instead of answering TRY_AGAIN; at most ``PIPELINE`` per handle.
MCAST_QUEUE = 0x01
#: requests with MCAST_QUEUE one handle may have unanswered
PIPELINE = 32

# A member (12 bytes): | node u32 (Totem id) | conn u32 | pid u32 |
MEMBER = struct.Struct("!III")

# DELIVER callback: | MEMBER (the sender) | data ... |

# CONFCHG callback: | group[32] | members u16 | left u16 | joined u16 | pad u16 |
#                   | (members + left + joined) x MEMBER |
CONFCHG_CB = struct.Struct("!32sHHH2x")


@dataclass(frozen=True, slots=True, order=True)
class Member:
    """One library handle that joined a group."""

    node: int  #: Totem node id (big-endian IPv4 int)
    conn: int  #: connection id on that node's executive
    pid: int


@dataclass(frozen=True, slots=True)
class McastRequest:
    guarantee: int
    priority: int
    groups: tuple[bytes, ...]  #: empty for MCAST_JOINED
    data: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class DeliverCallback:
    sender: Member
    data: bytes


@dataclass(frozen=True, slots=True)
class ConfchgCallback:
    group: bytes  #: the 32-byte key
    members: tuple[Member, ...]
    left: tuple[Member, ...]
    joined: tuple[Member, ...]


def group_key(group: bytes | str) -> bytes:
    """The 32-byte key of a group name (UTF-8 for str, zero-padded).

    Raises:
        ValueError: longer than 32 bytes.
    """
    raw = group.encode() if isinstance(group, str) else bytes(group)
    if len(raw) > GROUP_SIZE:
        raise ValueError(f"group name longer than {GROUP_SIZE} bytes")
    return raw.ljust(GROUP_SIZE, b"\0")


def encode_group_list(groups: tuple[bytes, ...] | list[bytes]) -> bytes:
    """Count and keys (each already 32 bytes, see ``group_key``)."""
    return GROUP_LIST.pack(len(groups)) + b"".join(groups)


def decode_group_list_untrusted(body: bytes, offset: int = 0,
                                exact: bool = True) -> tuple[tuple[bytes, ...], int]:
    """(groups, offset after them).  ``exact``: nothing may follow."""
    if len(body) - offset < GROUP_LIST.size:
        raise IpcProtocolError("group list: truncated")
    (count,) = GROUP_LIST.unpack_from(body, offset)
    return _groups(body, offset + GROUP_LIST.size, count, exact)


def _groups(body: bytes, off: int, count: int, exact: bool) -> tuple[tuple[bytes, ...], int]:
    if count > MAX_GROUPS:
        raise IpcProtocolError(f"group list: {count} groups")
    end = off + count * GROUP_SIZE
    if len(body) < end or (exact and len(body) != end):
        raise IpcProtocolError(f"group list: {count} groups do not fit {len(body)} bytes")
    return tuple(bytes(body[i:i + GROUP_SIZE]) for i in range(off, end, GROUP_SIZE)), end


def encode_mcast(req: McastRequest, joined: bool) -> bytes:
    """An MCAST_JOINED (``joined``) or MCAST_GROUPS request body."""
    if joined:
        return MCAST_JOINED_REQ.pack(req.guarantee, req.priority, req.flags) + req.data
    return (MCAST_GROUPS_REQ.pack(req.guarantee, req.priority, req.flags, len(req.groups))
            + b"".join(req.groups) + req.data)


def decode_mcast_untrusted(body: bytes, joined: bool) -> McastRequest:
    if joined:
        if len(body) < MCAST_JOINED_REQ.size:
            raise IpcProtocolError("MCAST_JOINED: truncated")
        g, p, f = MCAST_JOINED_REQ.unpack_from(body)
        return McastRequest(g, p, (), bytes(body[MCAST_JOINED_REQ.size:]), f)
    if len(body) < MCAST_GROUPS_REQ.size:
        raise IpcProtocolError("MCAST_GROUPS: truncated")
    g, p, f, count = MCAST_GROUPS_REQ.unpack_from(body)
    groups, end = _groups(body, MCAST_GROUPS_REQ.size, count, exact=False)
    return McastRequest(g, p, groups, bytes(body[end:]), f)


def encode_member(m: Member) -> bytes:
    return MEMBER.pack(m.node, m.conn, m.pid)


def encode_deliver_head(sender: Member) -> bytes:
    """The DELIVER callback's prefix; the data follows it."""
    return MEMBER.pack(sender.node, sender.conn, sender.pid)


def decode_deliver_untrusted(body: bytes) -> DeliverCallback:
    if len(body) < MEMBER.size:
        raise IpcProtocolError("DELIVER: truncated")
    return DeliverCallback(Member(*MEMBER.unpack_from(body)), bytes(body[MEMBER.size:]))


def encode_confchg(cb: ConfchgCallback) -> bytes:
    parts = [CONFCHG_CB.pack(cb.group, len(cb.members), len(cb.left), len(cb.joined))]
    for m in cb.members + cb.left + cb.joined:
        parts.append(MEMBER.pack(m.node, m.conn, m.pid))
    return b"".join(parts)


def decode_confchg_untrusted(body: bytes) -> ConfchgCallback:
    if len(body) < CONFCHG_CB.size:
        raise IpcProtocolError("CONFCHG: truncated")
    group, nm, nl, nj = CONFCHG_CB.unpack_from(body)
    total = nm + nl + nj
    if len(body) != CONFCHG_CB.size + total * MEMBER.size:
        raise IpcProtocolError(f"CONFCHG: {total} members do not fit {len(body)} bytes")
    ms = [Member(*MEMBER.unpack_from(body, CONFCHG_CB.size + i * MEMBER.size))
          for i in range(total)]
    return ConfchgCallback(group, tuple(ms[:nm]), tuple(ms[nm:nm + nl]), tuple(ms[nm + nl:]))


__all__ = [
    "ConfchgCallback", "DeliverCallback", "EVS_CB_CONFCHG", "EVS_CB_DELIVER",
    "EVS_REQ_JOIN", "EVS_REQ_LEAVE", "EVS_REQ_MCAST_GROUPS", "EVS_REQ_MCAST_JOINED",
    "EVS_SERVICE_ID", "GROUP_SIZE", "MAX_GROUPS", "MAX_GROUPS_PER_CALL", "MAX_MESSAGE",
    "MCAST_QUEUE", "McastRequest", "Member", "PIPELINE", "decode_confchg_untrusted",
    "decode_deliver_untrusted",
    "decode_group_list_untrusted", "decode_mcast_untrusted", "encode_confchg",
    "encode_deliver_head", "encode_group_list", "encode_mcast", "encode_member", "group_key",
]
