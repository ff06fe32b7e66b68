"""Client IPC wire formats, declared once; shared by ``saf`` and ``ais.ipc``.

Conventions (as in ``ais/totem/wire.py``): every layout is a module-level
``struct.Struct`` in network order with a byte-layout comment above it; each
message has an ``encode_x`` / ``decode_x_untrusted`` pair; decoded messages
are frozen dataclasses; ``*_untrusted`` functions raise only
``saf.errors.IpcProtocolError``.  No pickle, no dicts on the wire.

Connections: a library handle opens two stream connections to the executive.
The *request* channel carries requests (client -> executive) and exactly one
response per request (executive -> client, same msg_id and seq).  The
*callback* channel carries only callbacks (executive -> client), so its
descriptor is readable exactly when callbacks wait.  Each channel starts
with a HELLO request naming the service; the callback channel presents the
token the request channel's HELLO response gave, which binds the two.

Service-specific bodies live below the framing, one section per service.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from saf.errors import SA_OK, IpcProtocolError
from saf.types import (
    SA_CLM_MAX_ADDRESS_LENGTH, SA_MAX_NAME_LENGTH, ClusterChange, ClusterNode,
    ClusterNotification,
)

#: largest frame either side sends or accepts (header included)
MAX_FRAME = 8 * 1024 * 1024

# Frame header, in front of every message in both directions (16 bytes):
#  0        4         6         8          12        16
#  | size   | service | msg_id  | error    | seq     | body ...
#  size    u32  whole frame, header included (16 .. MAX_FRAME)
#  service u16  service id named in the handshake (CLM = 1, ...)
#  msg_id  u16  request id; a response repeats it; callbacks have their own ids
#  error   i32  SaErrorT of a response or callback (SA_OK = 1); 0 in requests
#  seq     u32  request number chosen by the client, echoed by the response; 0 in callbacks
FRAME_HEADER = struct.Struct("!IHHiI")

#: msg_id of the handshake, the same for every service
MSG_HELLO = 0xFFFF

ROLE_REQUEST = 1
ROLE_CALLBACK = 2

# HELLO request body (12 bytes):
#  0      1       4         12
#  | role | pad   | token   |
#  role  u8   ROLE_REQUEST or ROLE_CALLBACK
#  token u64  0 on the request channel; on the callback channel, the token
#             that the request channel's HELLO response returned
HELLO_REQ = struct.Struct("!B3xQ")

# HELLO response body (12 bytes), error SA_OK or SA_ERR_SECURITY/... in the header:
#  0         4         12
#  | conn_id | token   |
HELLO_RES = struct.Struct("!IQ")


@dataclass(frozen=True, slots=True)
class Frame:
    """One IPC message."""

    service: int
    msg_id: int
    error: int = 0
    seq: int = 0
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Hello:
    role: int
    token: int = 0


@dataclass(frozen=True, slots=True)
class HelloReply:
    conn_id: int
    token: int


def encode_frame(frame: Frame) -> bytes:
    """Bytes of ``frame``.

    Raises:
        IpcProtocolError: the frame would exceed MAX_FRAME.
    """
    size = FRAME_HEADER.size + len(frame.body)
    if size > MAX_FRAME:
        raise IpcProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        head = FRAME_HEADER.pack(size, frame.service, frame.msg_id, frame.error, frame.seq)
    except struct.error as exc:
        raise IpcProtocolError(f"frame field out of range: {exc}") from None
    return head + frame.body


def decode_frame_size_untrusted(header: bytes) -> int:
    """Total size announced by a frame header, after checking it is sane."""
    if len(header) < FRAME_HEADER.size:
        raise IpcProtocolError("truncated frame header")
    (size,) = struct.unpack_from("!I", header)
    if size < FRAME_HEADER.size:
        raise IpcProtocolError(f"frame size {size} smaller than its header")
    if size > MAX_FRAME:
        raise IpcProtocolError(f"frame size {size} exceeds the {MAX_FRAME}-byte limit")
    return size


def decode_frame_untrusted(data: bytes) -> Frame:
    """Exactly one frame from ``data``."""
    size = decode_frame_size_untrusted(data)
    if size != len(data):
        raise IpcProtocolError(f"frame says {size} bytes, got {len(data)}")
    _, service, msg_id, error, seq = FRAME_HEADER.unpack_from(data)
    return Frame(service, msg_id, error, seq, bytes(data[FRAME_HEADER.size:]))


class FrameBuffer:
    """Splits a byte stream into frames; both ends of a connection use it."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data
        # Check the announced size as soon as a header is in, so an oversized
        # frame is refused before its body is buffered.
        if len(self._buf) >= FRAME_HEADER.size:
            decode_frame_size_untrusted(bytes(self._buf[:FRAME_HEADER.size]))

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if len(self._buf) < FRAME_HEADER.size:
            return None
        size = decode_frame_size_untrusted(bytes(self._buf[:FRAME_HEADER.size]))
        if len(self._buf) < size:
            return None
        frame = decode_frame_untrusted(bytes(self._buf[:size]))
        del self._buf[:size]
        if len(self._buf) >= FRAME_HEADER.size:
            decode_frame_size_untrusted(bytes(self._buf[:FRAME_HEADER.size]))
        return frame

    def has_frame(self) -> bool:
        """A complete frame is buffered (or a bad header, which next_frame will report)."""
        if len(self._buf) < FRAME_HEADER.size:
            return False
        try:
            return len(self._buf) >= decode_frame_size_untrusted(bytes(self._buf[:FRAME_HEADER.size]))
        except IpcProtocolError:
            return True

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a frame (nonzero at EOF = truncation)."""
        return len(self._buf)


def _unpack(layout: struct.Struct, body: bytes, what: str, exact: bool = True) -> tuple:
    if len(body) < layout.size or (exact and len(body) != layout.size):
        raise IpcProtocolError(f"{what}: body of {len(body)} bytes, expected {layout.size}")
    return layout.unpack_from(body)


def encode_hello(hello: Hello) -> bytes:
    return HELLO_REQ.pack(hello.role, hello.token)


def decode_hello_untrusted(body: bytes) -> Hello:
    role, token = _unpack(HELLO_REQ, body, "HELLO")
    if role not in (ROLE_REQUEST, ROLE_CALLBACK):
        raise IpcProtocolError(f"HELLO: unknown role {role}")
    return Hello(role, token)


def encode_hello_reply(reply: HelloReply) -> bytes:
    return HELLO_RES.pack(reply.conn_id, reply.token)


def decode_hello_reply_untrusted(body: bytes) -> HelloReply:
    return HelloReply(*_unpack(HELLO_RES, body, "HELLO reply"))


# ---------------------------------------------------------------------------
# CLM (service id 1).  Request ids, callback ids, bodies.
# ---------------------------------------------------------------------------

CLM_SERVICE_ID = 1

CLM_REQ_TRACK_START = 1
CLM_REQ_TRACK_STOP = 2
CLM_REQ_NODE_GET = 3
CLM_REQ_NODE_GET_ASYNC = 4

CLM_CB_TRACK = 1
CLM_CB_NODE_GET = 2

# SaClmClusterNodeT (594 bytes):
#  0         4        5           69         71            327         329              585      586
#  | node_id | addr_n | addr[64]  | name_n   | name[256]   | cluster_n | cluster[256]   | member | boot_ts (i64) |
#  *_n give the used length of the zero-padded field that follows.
CLUSTER_NODE = struct.Struct("!IB64sH256sH256sBq")

# TRACK_START request (8 bytes): | flags u8 | pad 3 | number_of_items u32 (0: no limit) |
CLM_TRACK_START_REQ = struct.Struct("!B3xI")

# NODE_GET request (12 bytes): | node_id u32 | timeout i64 (ns, SaTimeT) |
CLM_NODE_GET_REQ = struct.Struct("!Iq")

# NODE_GET_ASYNC request (12 bytes): | invocation u64 | node_id u32 |
CLM_NODE_GET_ASYNC_REQ = struct.Struct("!QI")

# Track callback header (16 bytes), then count x (CLUSTER_NODE, change u8):
#  0             8                   12       16
#  | view u64    | number_of_members | count  | items ...
CLM_TRACK_CB = struct.Struct("!QII")
CLM_TRACK_ITEM_CHANGE = struct.Struct("!B")

# Node-get callback: | invocation u64 | CLUSTER_NODE |  (node all zero when error != SA_OK)
CLM_NODE_GET_CB = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class ClmTrackStart:
    flags: int
    number_of_items: int


@dataclass(frozen=True, slots=True)
class ClmNodeGet:
    node_id: int
    timeout: int


@dataclass(frozen=True, slots=True)
class ClmNodeGetAsync:
    invocation: int
    node_id: int


@dataclass(frozen=True, slots=True)
class ClmTrackCallback:
    view_number: int
    number_of_members: int
    items: tuple[ClusterNotification, ...]


@dataclass(frozen=True, slots=True)
class ClmNodeGetCallback:
    invocation: int
    node: ClusterNode | None  #: None when the callback carries an error


_EMPTY_NODE = ClusterNode(0, b"", b"", b"", False, 0)


def encode_cluster_node(node: ClusterNode) -> bytes:
    """Bytes of an SaClmClusterNodeT.

    Raises:
        ValueError: an address or name is too long.
    """
    if len(node.node_address) > SA_CLM_MAX_ADDRESS_LENGTH:
        raise ValueError("node address longer than 64 bytes")
    if len(node.node_name) > SA_MAX_NAME_LENGTH or len(node.cluster_name) > SA_MAX_NAME_LENGTH:
        raise ValueError("name longer than 256 bytes")
    return CLUSTER_NODE.pack(
        node.node_id, len(node.node_address), node.node_address,
        len(node.node_name), node.node_name, len(node.cluster_name), node.cluster_name,
        1 if node.member else 0, node.boot_timestamp)


def decode_cluster_node_untrusted(body: bytes, offset: int = 0) -> ClusterNode:
    """An SaClmClusterNodeT at ``offset`` of ``body``."""
    if len(body) - offset < CLUSTER_NODE.size:
        raise IpcProtocolError("truncated cluster node record")
    (node_id, addr_n, addr, name_n, name, cl_n, cl, member,
     boot) = CLUSTER_NODE.unpack_from(body, offset)
    if addr_n > SA_CLM_MAX_ADDRESS_LENGTH or name_n > SA_MAX_NAME_LENGTH \
            or cl_n > SA_MAX_NAME_LENGTH or member > 1:
        raise IpcProtocolError("cluster node record: length or flag out of range")
    return ClusterNode(node_id, addr[:addr_n], name[:name_n], cl[:cl_n], bool(member), boot)


def encode_clm_track_start(req: ClmTrackStart) -> bytes:
    return CLM_TRACK_START_REQ.pack(req.flags, req.number_of_items)


def decode_clm_track_start_untrusted(body: bytes) -> ClmTrackStart:
    return ClmTrackStart(*_unpack(CLM_TRACK_START_REQ, body, "TRACK_START"))


def encode_clm_node_get(req: ClmNodeGet) -> bytes:
    return CLM_NODE_GET_REQ.pack(req.node_id, req.timeout)


def decode_clm_node_get_untrusted(body: bytes) -> ClmNodeGet:
    return ClmNodeGet(*_unpack(CLM_NODE_GET_REQ, body, "NODE_GET"))


def encode_clm_node_get_async(req: ClmNodeGetAsync) -> bytes:
    return CLM_NODE_GET_ASYNC_REQ.pack(req.invocation, req.node_id)


def decode_clm_node_get_async_untrusted(body: bytes) -> ClmNodeGetAsync:
    return ClmNodeGetAsync(*_unpack(CLM_NODE_GET_ASYNC_REQ, body, "NODE_GET_ASYNC"))


def encode_clm_track_callback(cb: ClmTrackCallback) -> bytes:
    parts = [CLM_TRACK_CB.pack(cb.view_number, cb.number_of_members, len(cb.items))]
    for item in cb.items:
        parts.append(encode_cluster_node(item.cluster_node))
        parts.append(CLM_TRACK_ITEM_CHANGE.pack(int(item.cluster_change)))
    return b"".join(parts)


def decode_clm_track_callback_untrusted(body: bytes) -> ClmTrackCallback:
    view, members, count = _unpack(CLM_TRACK_CB, body, "track callback", exact=False)
    item_size = CLUSTER_NODE.size + CLM_TRACK_ITEM_CHANGE.size
    if len(body) != CLM_TRACK_CB.size + count * item_size:
        raise IpcProtocolError(f"track callback: {count} items do not fit {len(body)} bytes")
    items = []
    off = CLM_TRACK_CB.size
    for _ in range(count):
        node = decode_cluster_node_untrusted(body, off)
        (change,) = CLM_TRACK_ITEM_CHANGE.unpack_from(body, off + CLUSTER_NODE.size)
        try:
            items.append(ClusterNotification(node, ClusterChange(change)))
        except ValueError:
            raise IpcProtocolError(f"track callback: unknown change {change}") from None
        off += item_size
    return ClmTrackCallback(view, members, tuple(items))


def encode_clm_node_get_callback(cb: ClmNodeGetCallback) -> bytes:
    return CLM_NODE_GET_CB.pack(cb.invocation) + encode_cluster_node(cb.node or _EMPTY_NODE)


def decode_clm_node_get_callback_untrusted(body: bytes, error: int) -> ClmNodeGetCallback:
    if len(body) != CLM_NODE_GET_CB.size + CLUSTER_NODE.size:
        raise IpcProtocolError(f"node-get callback of {len(body)} bytes")
    (invocation,) = CLM_NODE_GET_CB.unpack_from(body)
    node = decode_cluster_node_untrusted(body, CLM_NODE_GET_CB.size)
    return ClmNodeGetCallback(invocation, node if error == SA_OK else None)
