"""Client IPC wire formats, declared once; shared by ``saf`` and ``ais.ipc``.

Conventions: every layout is declared once with ``saf._codec.Layout``, a
byte-layout comment above it; each message has an ``encode_x`` /
``decode_x_untrusted`` pair (the layout's generated functions); decoded
messages are frozen dataclasses; ``*_untrusted`` functions raise only
``saf.errors.IpcProtocolError``.  No pickle, no dicts on the wire.

Connections: a library handle opens two stream connections to the executive.
The *request* channel carries requests (client -> executive) and exactly one
response per request (executive -> client, same msg_id and seq).  The
*callback* channel carries only callbacks (executive -> client), so its
descriptor is readable exactly when callbacks wait.  Each channel starts
with a HELLO request naming the service; the callback channel presents the
token the request channel's HELLO response gave, which binds the two.

This module holds the framing and the handshake only; each service's bodies
live in its own wire module (``saf._clm_wire``, ``saf._ckpt_wire``, ...).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from saf._codec import Layout, i32, pad, u8, u16, u32, u64
from saf.errors import IpcProtocolError

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
FRAME_HEADER_LAYOUT = Layout(None, "frame header", ("size", u32), ("service", u16),
                             ("msg_id", u16), ("error", i32), ("seq", u32))
#: the header's precompiled Struct: every frame both ways goes through it
FRAME_HEADER: struct.Struct = FRAME_HEADER_LAYOUT.struct  # type: ignore[assignment]

#: msg_id of the handshake, the same for every service
MSG_HELLO = 0xFFFF

ROLE_REQUEST = 1
ROLE_CALLBACK = 2


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


# HELLO request body (12 bytes):
#  0      1       4         12
#  | role | pad   | token   |
#  role  u8   ROLE_REQUEST or ROLE_CALLBACK
#  token u64  0 on the request channel; on the callback channel, the token
#             that the request channel's HELLO response returned
HELLO_REQ = Layout(Hello, "HELLO", ("role", u8.only(ROLE_REQUEST, ROLE_CALLBACK)), pad(3),
                   ("token", u64))

# HELLO response body (12 bytes), error SA_OK or SA_ERR_SECURITY/... in the header:
#  0         4         12
#  | conn_id | token   |
HELLO_RES = Layout(HelloReply, "HELLO reply", ("conn_id", u32), ("token", u64))


def encode_frame(frame: Frame) -> bytes:
    """Bytes of ``frame``.

    Raises:
        IpcProtocolError: the frame would exceed MAX_FRAME.
    """
    size = FRAME_HEADER.size + len(frame.body)
    if size > MAX_FRAME:
        raise IpcProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        head = FRAME_HEADER_LAYOUT.pack(size, frame.service, frame.msg_id, frame.error, frame.seq)
    except ValueError as exc:
        raise IpcProtocolError(str(exc)) from None
    return head + frame.body


_SIZE = struct.Struct("!I")  # the first field of FRAME_HEADER, read alone


def decode_frame_size_untrusted(header: bytes | memoryview) -> int:
    """Total size announced by a frame header, after checking it is sane."""
    if len(header) < FRAME_HEADER.size:
        raise IpcProtocolError("truncated frame header")
    (size,) = _SIZE.unpack_from(header)
    if size < FRAME_HEADER.size:
        raise IpcProtocolError(f"frame size {size} smaller than its header")
    if size > MAX_FRAME:
        raise IpcProtocolError(f"frame size {size} exceeds the {MAX_FRAME}-byte limit")
    return size


def decode_frame_untrusted(data: bytes | memoryview) -> Frame:
    """Exactly one frame from ``data``."""
    size = decode_frame_size_untrusted(data)
    if size != len(data):
        raise IpcProtocolError(f"frame says {size} bytes, got {len(data)}")
    _, service, msg_id, error, seq = FRAME_HEADER.unpack_from(data)
    return Frame(service, msg_id, error, seq, bytes(data[FRAME_HEADER.size:]))


def whole_frame(data: bytes) -> Frame | None:
    """``data`` decoded when it is exactly one frame; None when it is more or
    less (a stream's pieces: ``FrameBuffer``).  Raises IpcProtocolError."""
    if len(data) < FRAME_HEADER.size or decode_frame_size_untrusted(data) != len(data):
        return None
    return decode_frame_untrusted(data)


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
        with memoryview(self._buf) as view:  # the body is copied once, not three times
            frame = decode_frame_untrusted(view[:size])
        del self._buf[:size]
        if len(self._buf) >= FRAME_HEADER.size:
            decode_frame_size_untrusted(bytes(self._buf[:FRAME_HEADER.size]))
        return frame

    def has_frame(self) -> bool:
        """A complete frame is buffered (or a bad header, which next_frame will report)."""
        if len(self._buf) < FRAME_HEADER.size:
            return False
        try:
            head = bytes(self._buf[:FRAME_HEADER.size])
            return len(self._buf) >= decode_frame_size_untrusted(head)
        except IpcProtocolError:
            return True

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a frame (nonzero at EOF = truncation)."""
        return len(self._buf)


encode_hello = HELLO_REQ.encode
decode_hello_untrusted = HELLO_REQ.decode
encode_hello_reply = HELLO_RES.encode
decode_hello_reply_untrusted = HELLO_RES.decode
