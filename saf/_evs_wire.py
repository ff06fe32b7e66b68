"""EVS client IPC bodies (service id 6), declared once; shared by ``saf.evs`` and
``ais.services.evs``.

Framing and the handshake are ``saf._wire``'s.  Conventions as there: each
layout is a ``saf._codec.Layout`` with its bytes drawn above it; the
``encode_x`` / ``decode_x_untrusted`` pairs are its generated functions or
thin wrappers keeping the call shapes ``saf.evs`` and the service use;
decoded messages are frozen dataclasses, and ``*_untrusted`` raises only
``IpcProtocolError``.

A group is a 32-byte key compared on all 32 bytes (spec/evs.md 2): shorter
names are padded with zero bytes, so ``b"key1"`` and ``b"key1\\0"`` are the
same group.  A member is one library handle: (node, conn, pid), where node is
the Totem id (big-endian IPv4) and conn the handle's connection id on that
node's executive.
"""
from __future__ import annotations

from dataclasses import dataclass

from saf._codec import Layout, array, pad, raw, rest, u8, u16, u32

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

#: MCAST flag: the library pipelines (does not wait for the answer), so when the
#: ring is full the executive holds the request and answers once it is on the
#: ring, instead of answering TRY_AGAIN; at most ``PIPELINE`` per handle.
MCAST_QUEUE = 0x01
#: requests with MCAST_QUEUE one handle may have unanswered
PIPELINE = 32


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


# --- layouts ---------------------------------------------------------------------------------

#: a group key (32 bytes)
GROUP = raw(GROUP_SIZE)

# Group list (JOIN / LEAVE request body): | count u16 | pad u16 | count x group[32] |
GROUP_LIST = Layout(None, "group list", ("count", u16), pad(2),
                    ("groups", array(GROUP, "count", max=MAX_GROUPS)))

# MCAST_JOINED request: | guarantee u8 | priority u8 | flags u8 | pad u8 | data ... |
MCAST_JOINED_REQ = Layout(None, "MCAST_JOINED", ("guarantee", u8), ("priority", u8),
                          ("flags", u8), pad(1), ("data", rest()))

# MCAST_GROUPS request:
#  | guarantee u8 | priority u8 | flags u8 | pad u8 | count u16 | pad u16 |
#  | count x group[32] | data ... |
MCAST_GROUPS_REQ = Layout(McastRequest, "MCAST_GROUPS", ("guarantee", u8), ("priority", u8),
                          ("flags", u8), pad(1), ("count", u16), pad(2),
                          ("groups", array(GROUP, "count", max=MAX_GROUPS)), ("data", rest()))

# A member (12 bytes): | node u32 (Totem id) | conn u32 | pid u32 |
MEMBER = Layout(Member, "member", ("node", u32), ("conn", u32), ("pid", u32))

# DELIVER callback: | MEMBER (the sender) | data ... |
DELIVER_CB = Layout(DeliverCallback, "DELIVER", ("sender", MEMBER), ("data", rest()))

# CONFCHG callback: | group[32] | members u16 | left u16 | joined u16 | pad u16 |
#                   | (members + left + joined) x MEMBER |
CONFCHG_CB = Layout(ConfchgCallback, "CONFCHG", ("group", GROUP), ("n_members", u16),
                    ("n_left", u16), ("n_joined", u16), pad(2),
                    ("members", array(MEMBER, "n_members")), ("left", array(MEMBER, "n_left")),
                    ("joined", array(MEMBER, "n_joined")))


def group_key(group: bytes | str) -> bytes:
    """The 32-byte key of a group name (UTF-8 for str, zero-padded).

    Raises:
        ValueError: longer than 32 bytes.
    """
    key = group.encode() if isinstance(group, str) else bytes(group)
    if len(key) > GROUP_SIZE:
        raise ValueError(f"group name longer than {GROUP_SIZE} bytes")
    return key.ljust(GROUP_SIZE, b"\0")


def encode_group_list(groups: tuple[bytes, ...] | list[bytes]) -> bytes:
    """Count and keys (each already 32 bytes, see ``group_key``)."""
    return GROUP_LIST.pack(groups)


def decode_group_list_untrusted(body: bytes, offset: int = 0,
                                exact: bool = True) -> tuple[tuple[bytes, ...], int]:
    """(groups, offset after them).  ``exact``: nothing may follow."""
    if exact and not offset:
        (groups,) = GROUP_LIST.decode(body)
        return groups, len(body)
    (groups,), end = GROUP_LIST.decode_from(body, offset)
    if exact and end != len(body):
        raise GROUP_LIST.error(f"group list: {len(body) - end} trailing bytes after byte {end}")
    return groups, end


def encode_mcast(req: McastRequest, joined: bool) -> bytes:
    """An MCAST_JOINED (``joined``: ``req.groups`` is not sent) or MCAST_GROUPS request body."""
    if joined:
        return MCAST_JOINED_REQ.pack(req.guarantee, req.priority, req.flags, req.data)
    return MCAST_GROUPS_REQ.encode(req)


def decode_mcast_untrusted(body: bytes, joined: bool) -> McastRequest:
    if joined:
        g, p, f, data = MCAST_JOINED_REQ.decode(body)
        return McastRequest(g, p, (), data, f)
    req: McastRequest = MCAST_GROUPS_REQ.decode(body)
    return req


encode_member = MEMBER.encode
#: the DELIVER callback's prefix; the data follows it
encode_deliver_head = MEMBER.encode
decode_deliver_untrusted = DELIVER_CB.decode
encode_confchg = CONFCHG_CB.encode
decode_confchg_untrusted = CONFCHG_CB.decode


__all__ = [
    "ConfchgCallback", "DeliverCallback", "EVS_CB_CONFCHG", "EVS_CB_DELIVER",
    "EVS_REQ_JOIN", "EVS_REQ_LEAVE", "EVS_REQ_MCAST_GROUPS", "EVS_REQ_MCAST_JOINED",
    "EVS_SERVICE_ID", "GROUP_SIZE", "MAX_GROUPS", "MAX_GROUPS_PER_CALL", "MAX_MESSAGE",
    "MCAST_QUEUE", "McastRequest", "Member", "PIPELINE", "decode_confchg_untrusted",
    "decode_deliver_untrusted",
    "decode_group_list_untrusted", "decode_mcast_untrusted", "encode_confchg",
    "encode_deliver_head", "encode_group_list", "encode_mcast", "encode_member", "group_key",
]
