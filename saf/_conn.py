"""Connections to the local executive, shared by every service's client library.

Plain ``socket``/``select`` only: works in threaded programs and under gevent
monkey-patching.  A handle (``Connection``) owns two stream connections:

* the request channel: one request, one response, under a per-handle lock
  (so threads may share a handle); responses are matched by sequence number,
  so a response that arrives after its caller gave up is skipped;
* the callback channel: only callbacks.  Its descriptor is the selection
  object, readable exactly when callbacks wait.  Callbacks run only inside
  ``dispatch()``, in the caller's thread.

Failure handling: no executive (connect fails) -> TryAgain; permission
denied on the socket or refused credentials -> Security; the executive
closing a channel (it died) -> Library, promptly, on the next call or in a
blocked dispatch; no reply within the guard time -> Timeout.
``finalize()`` from another thread shuts the sockets down, which wakes a
dispatch blocked in select(); it then returns normally.

What every service library shares lives here, so that a library is only its
calls: ``initialize`` (the version check, then the handle), the callback
table (``@on_callback(msg_id, decoder)`` on a handle's methods: the frame's
body is decoded, then the method runs with the value and the frame's error;
an unknown id or a body that does not decode is a garbled callback, raised
as Library), ``request(..., decode=)`` (a reply that does not decode raises
Library), ``encode`` (a value that does not fit its field raises
InvalidParam) and ``timeout_guard`` (how long the library waits for a call
with an SaTimeT timeout).
"""
from __future__ import annotations

import enum
import os
import select
import socket
import threading
import time
from typing import Any, ClassVar, TypeVar
from collections.abc import Callable

from saf import _wire as w
from saf.errors import (
    SA_OK, BadHandle, InvalidParam, IpcProtocolError, Library, SaError, Security, Timeout,
    TryAgain, VersionError,
)
from saf.types import (
    SA_DISPATCH_ALL, SA_DISPATCH_BLOCKING, SA_DISPATCH_ONE, SA_TIME_END, SUPPORTED_VERSIONS,
    Version,
)

#: where clients look when AIS_SOCKET is not set
DEFAULT_SOCKET = "/var/run/ais/aisexec.sock"
#: seconds a request waits for its response before Timeout (executive hung)
REQUEST_GUARD = 30.0
#: seconds the rest of a frame may take once its first bytes are in
FRAME_GUARD = 5.0


T = TypeVar("T")
H = TypeVar("H", bound="Connection")


def socket_path() -> str:
    """The executive's socket: ``$AIS_SOCKET`` or the default path."""
    return os.environ.get("AIS_SOCKET", DEFAULT_SOCKET)


#: a library-private dispatch mode: wait until one callback has run (EVS_DISPATCH_ONE)
DISPATCH_WAIT_ONE = -1

class _Channel:
    """One stream connection with frame reassembly."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = w.FrameBuffer()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: w.Frame) -> None:
        data = w.encode_frame(frame)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Library(f"executive connection lost: {exc}") from None

    def ready(self) -> bool:
        """A complete frame is buffered, or bytes (or EOF) wait on the socket."""
        if self.buf.has_frame():
            return True
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True  # closed under us: let the read report it
        return bool(r)

    def recv_frame(self, deadline: float | None) -> w.Frame:
        """The next frame; waits until ``deadline`` (monotonic s, None: forever).

        Raises:
            Library: EOF (the executive closed the connection) or a socket error.
            Timeout: the deadline passed.
            IpcProtocolError: the executive sent garbage.
        """
        buf = self.buf
        while True:
            if buf.pending:
                frame = buf.next_frame()
                if frame is not None:
                    return frame
            if buf.pending and (deadline is None or
                                deadline > time.monotonic() + FRAME_GUARD):
                # Half a frame in: the rest comes at once or never.
                deadline = time.monotonic() + FRAME_GUARD
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            # (select, not the socket's own timeout: that would stay on the
            # socket and bound the next sendall too)
            try:
                r, _, _ = select.select([self.sock], [], [], timeout)
            except (OSError, ValueError) as exc:
                raise Library(f"executive connection lost: {exc}") from None
            if not r:
                raise Timeout("no answer from the executive")
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise Library(f"executive connection lost: {exc}") from None
            if not data:
                raise Library("the executive closed the connection")
            if not buf.pending:
                # the usual read: exactly one whole frame, decoded in place
                frame = w.whole_frame(data)
                if frame is not None:
                    return frame
            buf.feed(data)

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def _connect_channel(service_id: int, role: int, token: int,
                     guard: float = REQUEST_GUARD) -> tuple[_Channel, w.HelloReply]:
    """Open one channel and do the handshake."""
    path = socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except PermissionError as exc:
        sock.close()
        raise Security(f"{path}: {exc.strerror}") from None
    except OSError as exc:
        sock.close()
        raise TryAgain(f"no executive at {path}: {exc.strerror}") from None
    chan = _Channel(sock)
    try:
        chan.send(w.Frame(service_id, w.MSG_HELLO, 0, 0, w.encode_hello(w.Hello(role, token))))
        reply = chan.recv_frame(time.monotonic() + guard)
        if reply.msg_id != w.MSG_HELLO:
            raise IpcProtocolError(f"handshake answered with message {reply.msg_id}")
        if reply.error != SA_OK:
            raise SaError.from_code(reply.error, "refused by the executive")
        return chan, w.decode_hello_reply_untrusted(reply.body)
    except IpcProtocolError as exc:
        chan.close()
        raise Library(f"bad handshake reply: {exc}") from None
    except BaseException:
        chan.close()
        raise


def on_callback(msg_id: int, decode: Callable[[bytes], Any]) -> Callable[[T], T]:
    """Mark a handle method as the handler of callback ``msg_id``.

    ``decode`` turns the frame's body into the value the method gets, as
    ``method(self, value, error)`` with the frame's SaErrorT ``error``.
    """
    def mark(fn: T) -> T:
        fn._saf_callback = (msg_id, decode)  # type: ignore[attr-defined]
        return fn
    return mark


def check_version(version: Version | None) -> None:
    """Raises VersionError unless ``version`` is one this library implements."""
    if version not in SUPPORTED_VERSIONS:
        raise VersionError(f"unsupported version {version!r}")


def initialize(handle_cls: Callable[..., H], callbacks: Any, version: Version | None) -> H:
    """sa<Svc>Initialize: check the version, then connect a new handle.

    Raises:
        VersionError: not A.01.01.  TryAgain: no executive.  Security: not allowed.
    """
    check_version(version)
    return handle_cls(callbacks)


def timeout_guard(timeout: int, *, nonpositive_waits: bool = True) -> float | None:
    """Seconds the library waits for the answer to a call with SaTimeT ``timeout``.

    The executive enforces ``timeout`` itself; the guard only covers a hung
    executive, so it adds FRAME_GUARD.  None (no limit) for SA_TIME_END, and
    for a non-positive timeout when ``nonpositive_waits`` (the service then
    has no limit either); otherwise a non-positive timeout gets FRAME_GUARD.
    """
    if timeout >= SA_TIME_END or (timeout <= 0 and nonpositive_waits):
        return None
    return max(0, timeout) / 1e9 + FRAME_GUARD


def encode(fn: Callable[..., bytes], *args: Any) -> bytes:
    """``fn(*args)``; a value that does not fit its field raises InvalidParam."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise InvalidParam(str(exc)) from None


def decode_reply(fn: Callable[[bytes], T], body: bytes) -> T:
    """``fn(body)`` for a reply from the executive; garbage raises Library."""
    try:
        return fn(body)
    except IpcProtocolError as exc:
        raise Library(f"garbled reply: {exc}") from None


class HandleState(enum.Enum):
    OPEN = "open"
    FINALIZED = "finalized"


class Connection:
    """A library handle's link to the executive; service handles subclass it.

    Subclasses set ``service_id`` and mark their callback handlers with
    ``@on_callback``.

    Args:
        service_id: overrides the class attribute (generic one-shot use).
        with_callbacks: open the callback channel too (False for one-shot
            calls such as cluster_node_get that never dispatch).
    """

    service_id: int = -1
    #: callback msg id -> (body decoder, handler); built from the @on_callback methods
    _callback_table: ClassVar[dict[int, tuple[Callable[[bytes], Any], Callable[..., None]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table = dict(cls._callback_table)
        for attr in vars(cls).values():
            mark = getattr(attr, "_saf_callback", None)
            if mark is not None:
                table[mark[0]] = (mark[1], attr)
        cls._callback_table = table

    def __init__(self, service_id: int | None = None, *, with_callbacks: bool = True) -> None:
        if service_id is not None:
            self.service_id = service_id
        self._state = HandleState.FINALIZED  # until both channels are up
        self._req, hello = _connect_channel(self.service_id, w.ROLE_REQUEST, 0)
        self.conn_id = hello.conn_id
        self._cb: _Channel | None = None
        if with_callbacks:
            try:
                self._cb, _ = _connect_channel(self.service_id, w.ROLE_CALLBACK, hello.token)
            except BaseException:
                self._req.close()
                raise
        self._state = HandleState.OPEN
        self._state_lock = threading.Lock()
        self._req_lock = threading.Lock()
        self._dispatch_lock = threading.Lock()
        self._dispatching = 0
        self._seq = 0

    # --- requests ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is not HandleState.OPEN:
            raise BadHandle("handle is finalized")

    def request(self, msg_id: int, body: bytes = b"", *,
                timeout: float | None = REQUEST_GUARD,
                decode: Callable[[bytes], Any] | None = None) -> Any:
        """Send one request and wait for its response body.

        Args:
            timeout: seconds to wait (None: until the executive answers or dies).
            decode: applied to the response body (None: the bytes are returned).

        Raises:
            SaError: the executive's error code, BadHandle when finalized,
                Library when the executive is gone or the reply does not decode,
                Timeout.
        """
        body = self._request(msg_id, body, timeout)
        return body if decode is None else decode_reply(decode, body)

    def _request(self, msg_id: int, body: bytes, timeout: float | None) -> bytes:
        self._check_open()
        with self._req_lock:
            self._check_open()
            self._seq = (self._seq % 0xFFFFFFFF) + 1
            seq = self._seq
            self._req.send(w.Frame(self.service_id, msg_id, 0, seq, body))
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    frame = self._req.recv_frame(deadline)
                except IpcProtocolError as exc:
                    raise Library(f"garbled reply: {exc}") from None
                except Library:
                    if self._state is not HandleState.OPEN:
                        raise BadHandle("handle finalized during the call") from None
                    raise
                if frame.seq != seq:
                    continue  # the late answer to a request that timed out
                if frame.error != SA_OK:
                    try:
                        raise SaError.from_code(frame.error)
                    except ValueError:
                        raise Library(f"unknown error code {frame.error}") from None
                return frame.body

    # --- callbacks ------------------------------------------------------------------

    def selection_object(self) -> int:
        """The descriptor to select()/poll() on: readable when callbacks wait."""
        self._check_open()
        if self._cb is None:
            raise BadHandle("this handle has no callback channel")
        return self._cb.fileno()

    def dispatch(self, flags: int) -> None:
        """Run waiting callbacks in this thread.

        Args:
            flags: SA_DISPATCH_ONE (at most one, never waits), SA_DISPATCH_ALL
                (every one waiting now), SA_DISPATCH_BLOCKING (until finalize).

        Raises:
            InvalidParam: unknown flags.  BadHandle: finalized.
            Library: the executive went away.
        """
        if flags not in (SA_DISPATCH_ONE, SA_DISPATCH_ALL, SA_DISPATCH_BLOCKING):
            raise InvalidParam(f"dispatch flags {flags!r}")
        self._dispatch(flags)

    def _dispatch(self, flags: int) -> None:
        """``dispatch`` after its flags were checked; also ``DISPATCH_WAIT_ONE``."""
        with self._state_lock:
            self._check_open()
            if self._cb is None:
                raise BadHandle("this handle has no callback channel")
            self._dispatching += 1
        cb = self._cb
        try:
            with self._dispatch_lock:
                if flags == DISPATCH_WAIT_ONE:
                    self._dispatch_one(cb, block=True)
                elif flags == SA_DISPATCH_ONE:
                    if cb.ready():
                        self._dispatch_one(cb, block=False)
                elif flags == SA_DISPATCH_ALL:
                    while cb.ready():
                        if not self._dispatch_one(cb, block=False):
                            break
                else:
                    while self._dispatch_one(cb, block=True):
                        pass
        finally:
            with self._state_lock:
                self._dispatching -= 1
                last = self._dispatching == 0 and self._state is not HandleState.OPEN
            if last:
                cb.close()

    def _dispatch_one(self, cb: _Channel, block: bool) -> bool:
        """Read and run one callback; False when the handle was finalized meanwhile."""
        if self._state is not HandleState.OPEN:
            return False
        try:
            frame = cb.recv_frame(None if block else time.monotonic() + FRAME_GUARD)
        except Library:
            if self._state is not HandleState.OPEN:
                return False  # our own finalize shut the socket: a normal return
            raise
        except IpcProtocolError as exc:
            raise Library(f"garbled callback: {exc}") from None
        if self._state is not HandleState.OPEN:
            return False
        self._run_callback(frame)
        return True

    def _run_callback(self, frame: w.Frame) -> None:
        entry = self._callback_table.get(frame.msg_id)
        if entry is None:
            raise Library(f"unknown callback id {frame.msg_id} for service {self.service_id}")
        decode, handler = entry
        try:
            value = decode(frame.body)
        except IpcProtocolError as exc:
            raise Library(f"garbled callback: {exc}") from None
        handler(self, value, frame.error)

    # --- end ------------------------------------------------------------------------

    def finalize(self) -> None:
        """Close the handle; a dispatch blocked in another thread returns.

        Raises:
            BadHandle: already finalized.
        """
        with self._state_lock:
            self._check_open()
            self._state = HandleState.FINALIZED
            dispatching = self._dispatching
        # shutdown() wakes threads blocked in select()/recv() on these sockets;
        # the descriptors are closed only once nobody uses them.
        self._req.shutdown()
        if self._cb is not None:
            self._cb.shutdown()
            if not dispatching:
                self._cb.close()
        with self._req_lock:
            self._req.close()

    @property
    def finalized(self) -> bool:
        return self._state is not HandleState.OPEN

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state is HandleState.OPEN:
            self.finalize()

    def __del__(self) -> None:
        # A handle dropped without finalize must not leak its descriptors.
        try:
            if getattr(self, "_state", None) is HandleState.OPEN:
                self.finalize()
        except Exception:
            pass


def one_shot(service_id: int, msg_id: int, body: bytes, timeout: float | None,
             decode: Callable[[bytes], Any] | None = None) -> Any:
    """A request on a short-lived connection without a handle (e.g. cluster_node_get)."""
    conn = Connection(service_id, with_callbacks=False)
    try:
        return conn.request(msg_id, body, timeout=timeout, decode=decode)
    finally:
        conn.finalize()


__all__ = ["Connection", "DEFAULT_SOCKET", "FRAME_GUARD", "REQUEST_GUARD", "check_version",
           "decode_reply", "encode", "initialize", "on_callback", "one_shot", "socket_path",
           "timeout_guard"]
