"""The executive's client socket: a gevent StreamServer on a Unix path.

Theory of operation
-------------------
One greenlet per accepted socket reads frames (``saf._wire``) in blocking
style.  The first frame must be HELLO naming a service and a role:

* role REQUEST: a new ``IpcConnection`` is created, registered with the
  host (``lib_connect``), and the greenlet feeds every later frame to
  ``host.lib_request``.  The HELLO response returns a random token.
* role CALLBACK: the token binds this socket to its request connection as
  the callback channel; nothing may be read on it afterwards but EOF.

Peer credentials come from SO_PEERCRED, which the kernel records at
connect() time, so they cannot be misjudged under load.  Accepted: uid 0,
the executive's own uid, or a peer whose gid or supplementary groups (from
/proc/<pid>/status) contain the configured group.  Anyone else gets a
SA_ERR_SECURITY response and is closed; "refused" is logged.

A malformed, truncated or oversized frame (``IpcProtocolError``) closes that
connection with an error logged; nothing else is affected.  Either channel
closing closes both and tells the host (a close is a finalize).

Writes never block the host: each channel has an outbox drained by its own
writer greenlet.  A frame that finds the outbox empty (and the writer not
inside a send) is first offered to the socket without blocking, so an answer
does not wait for the writer's turn in the event loop (a fifth more
synchronous writes per second on 2 nodes); what the socket does not take
waits in the outbox, in order.

Limits (``IpcLimits``, from ``openais.conf`` ``limits``), each logged by
name when it bites (rate-limited, like every line a client can provoke):

* ``max_queued_callbacks`` / ``max_queued_bytes``: frames and bytes waiting
  in one outbox -- including callbacks produced before the client opened its
  callback channel.  Past half the count (or half the bytes), the
  connection's new requests are answered SA_ERR_TRY_AGAIN without running;
  past the limit it is closed.  ``IpcConnection.congested()`` (a quarter)
  lets a service hold back work that can wait.
* ``max_buffered_bytes``: request bytes held for incomplete frames, all
  connections together (beyond the first ``FREE_PARTIAL`` of each, so small
  requests always pass); the connection whose data passes it is closed.
  Bytes are held as they arrive, never allocated from a frame's announced size.
* ``frame_timeout``: a connection silent inside an incomplete frame is closed
  (its buffer freed); between frames a client may idle for ever.
* ``max_connections``: client connections (a handle: two sockets); more are
  answered SA_ERR_NO_RESOURCES.  The default leaves half the descriptor
  limit to the executive itself, so clients cannot exhaust it; should
  ``accept`` fail anyway (EMFILE), that is logged once per window and
  accepting pauses briefly instead of printing a traceback per attempt.

After a connection that held much memory closes, the C heap is trimmed so
the memory goes back to the system.
"""
from __future__ import annotations

import collections
import ctypes
import enum
import errno
import grp
import logging
import os
import resource
import secrets
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.server
from gevent import socket as gsocket

from ais.executive import ServiceHost
from ais.log import RateLimiter
from saf import _wire as w
from saf.errors import SA_OK, IpcProtocolError, NoResources, NotExist, Security, TryAgain

logger = logging.getLogger(__name__)

#: seconds a new connection has to send its HELLO
HANDSHAKE_TIMEOUT = 10.0
#: bytes queued for one slow client before it is dropped (``IpcLimits`` default)
MAX_OUTBOX = 32 * 1024 * 1024
#: bytes of an incomplete frame each connection may hold outside max_buffered_bytes
FREE_PARTIAL = 64 * 1024
#: requests served from one connection's buffer before its greenlet yields
YIELD_EVERY = 8
#: descriptors kept for the executive itself when max_connections is derived
RESERVED_FDS = 64
#: a closing connection that held more than this makes the server trim the heap
TRIM_THRESHOLD = 4 * 1024 * 1024


@dataclass(frozen=True)
class IpcLimits:
    """Bounds on what clients can make the executive hold (see the module docstring)."""

    #: client connections at once; None: half of what RLIMIT_NOFILE leaves
    max_connections: int | None = None
    #: frames waiting in one outbox (responses, or callbacks)
    max_queued_callbacks: int = 4096
    #: bytes waiting in one outbox
    max_queued_bytes: int = MAX_OUTBOX
    #: bytes of incomplete request frames, all connections together
    max_buffered_bytes: int = 256 * 1024 * 1024
    #: seconds a connection may stay silent inside an incomplete frame
    frame_timeout: float = 10.0

    def connections(self) -> int:
        """``max_connections``, or the default derived from the descriptor limit."""
        if self.max_connections is not None:
            return self.max_connections
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY or soft > 1 << 20:
            soft = 1 << 20
        # Each connection is two sockets; half the rest stays free for the executive.
        return max(1, (soft - RESERVED_FDS) // 4)


def _trim_heap() -> None:
    """Give freed C heap memory back to the system (glibc; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
#: seconds a closing connection may spend sending what was queued
LINGER = 1.0
#: recv size
_CHUNK = 65536

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (native order, from the kernel)


class ConnState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def supplementary_groups(pid: int) -> set[int]:
    """Supplementary gids of process ``pid`` (empty if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


class _Outbox:
    """Frames waiting for one socket; a writer greenlet drains it."""

    def __init__(self, conn: IpcConnection, sock: Any, what: str) -> None:
        self.conn = conn
        self.sock = sock
        self.what = what
        self.queue: collections.deque[bytes] = collections.deque()
        self.bytes = 0
        self.wake = gevent.event.Event()
        self.closing = False
        #: the writer greenlet is inside a send: nothing may overtake it
        self.sending = False
        self.greenlet = gevent.spawn(self._run)

    def put(self, data: bytes) -> None:
        limits = self.conn.server.limits
        if len(self.queue) >= limits.max_queued_callbacks:
            self.conn.limit_hit("max_queued_callbacks", limits.max_queued_callbacks,
                                f"frames waiting on the {self.what} channel")
            return
        if self.bytes + len(data) > limits.max_queued_bytes:
            self.conn.limit_hit("max_queued_bytes", limits.max_queued_bytes,
                                f"bytes waiting on the {self.what} channel")
            return
        raw = getattr(self.sock, "_sock", None)  # the OS socket under gevent's
        if raw is not None and not self.queue and not self.sending and not self.closing:
            # Nothing ahead of it: try the socket at once (never blocking), so
            # an answer does not wait for the writer greenlet's turn.
            try:
                sent = raw.send(data, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the writer meets the error and closes the connection
            if sent == len(data):
                return
            data = data[sent:]
        self.queue.append(data)
        self.bytes += len(data)
        self.conn.peak_bytes = max(self.conn.peak_bytes, self.bytes)
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.queue:
                data = self.queue.popleft()
                self.bytes -= len(data)
                self.sending = True
                try:
                    self.sock.sendall(data)
                except OSError as exc:
                    self.conn.close(f"{self.what} send failed: {exc}", flush=False)
                    return
                finally:
                    self.sending = False
            if self.closing:
                return

    def finish(self, flush: bool) -> None:
        """Stop after sending what is queued (``flush``) or at once."""
        self.closing = True
        if not flush:
            self.queue.clear()
            self.greenlet.kill(block=False)
        self.wake.set()


class IpcConnection:
    """A client library handle's connection: implements ``base.LibConn``."""

    def __init__(self, server: IpcServer, conn_id: int, service_id: int, sock: Any,
                 creds: tuple[int, int, int]) -> None:
        self.server = server
        self.conn_id = conn_id
        self.service_id = service_id
        self.private: dict[str, Any] = {}
        self.pid, self.uid, self.gid = creds
        self.token = secrets.randbits(64)
        self.state = ConnState.OPEN
        self._req_sock = sock
        self._req_out = _Outbox(self, sock, "request")
        self._cb_sock: Any = None
        self._cb_out: _Outbox | None = None
        # Callbacks queued before the callback channel attached (normally none);
        # bounded like an outbox.
        self._early: collections.deque[bytes] = collections.deque()
        self._early_bytes = 0
        self._linger_g: Any = None
        #: most bytes this connection made the executive hold at once
        self.peak_bytes = 0

    @property
    def closed(self) -> bool:
        return self.state is ConnState.CLOSED

    def attach_callback_channel(self, sock: Any) -> None:
        self._cb_sock = sock
        self._cb_out = _Outbox(self, sock, "callback")
        early, self._early = self._early, collections.deque()
        self._early_bytes = 0
        for data in early:
            self._cb_out.put(data)

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        if self.closed:
            return
        self._send(self._req_out, w.Frame(self.service_id, msg_id, error, seq, body))

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        if self.closed:
            return
        frame = w.Frame(self.service_id, msg_id, error, 0, body)
        if self._cb_out is None:
            self._queue_early(frame)
            return
        self._send(self._cb_out, frame)

    def _queue_early(self, frame: w.Frame) -> None:
        limits = self.server.limits
        try:
            data = w.encode_frame(frame)
        except IpcProtocolError as exc:
            self.close(str(exc))
            return
        if len(self._early) >= limits.max_queued_callbacks:
            self.limit_hit("max_queued_callbacks", limits.max_queued_callbacks,
                           "callbacks queued before the callback channel opened")
            return
        if self._early_bytes + len(data) > limits.max_queued_bytes:
            self.limit_hit("max_queued_bytes", limits.max_queued_bytes,
                           "bytes of callbacks queued before the callback channel opened")
            return
        self._early.append(data)
        self._early_bytes += len(data)
        self.peak_bytes = max(self.peak_bytes, self._early_bytes)

    def backlog(self) -> int:
        """Frames queued for the client and not yet written (both channels)."""
        n = len(self._early) + len(self._req_out.queue)
        if self._cb_out is not None:
            n += len(self._cb_out.queue)
        return n

    def backlog_bytes(self) -> int:
        """Bytes queued for the client and not yet written (both channels)."""
        n = self._early_bytes + self._req_out.bytes
        if self._cb_out is not None:
            n += self._cb_out.bytes
        return n

    def congested(self) -> bool:
        """A quarter of the outbox limits is used: work that can wait should (EVS
        holds a pipelining sender's multicasts), before requests are refused at half."""
        limits = self.server.limits
        return (self.backlog() * 4 >= limits.max_queued_callbacks
                or self.backlog_bytes() * 4 >= limits.max_queued_bytes)

    def limit_hit(self, name: str, value: int, what: str) -> None:
        """Close this connection because limit ``name`` was reached; log which."""
        self.server.log_limit(name, "closing connection %d (pid %d): limit %s (%d %s) reached",
                              self.conn_id, self.pid, name, value, what)
        self.close(f"limit {name} reached", flush=False)

    def _send(self, out: _Outbox, frame: w.Frame) -> None:
        try:
            data = w.encode_frame(frame)
        except IpcProtocolError as exc:
            # A service built a body over the frame limit: a bug, but one client's.
            logger.error("connection %d: cannot send: %s", self.conn_id, exc)
            self.close(str(exc))
            return
        out.put(data)

    def close(self, reason: str = "", flush: bool = True) -> None:
        """Close both channels; never blocks (the sockets are closed by a greenlet).

        Args:
            flush: first send what is already queued (an error reply, say),
                for at most ``LINGER`` seconds.
        """
        if self.closed:
            return
        self.state = ConnState.CLOSED
        if reason:
            logger.debug("connection %d closed: %s", self.conn_id, reason)
        self.server._forget(self)
        socks = [s for s in (self._req_sock, self._cb_sock) if s is not None]
        outs = [o for o in (self._req_out, self._cb_out) if o is not None]
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RD)  # wakes the reading greenlet
            except OSError:
                pass
        for out in outs:
            out.finish(flush)
        self._early.clear()
        self._early_bytes = 0
        self._linger_g = gevent.spawn(self._linger, socks, outs)
        self.server.host.lib_exit(self)
        if self.peak_bytes > TRIM_THRESHOLD:
            self.server.trim_later()

    def wait_closed(self, timeout: float = LINGER + 1.0) -> None:
        """Block this greenlet until the sockets are flushed and closed."""
        if self._linger_g is not None:
            self._linger_g.join(timeout)

    @staticmethod
    def _linger(socks: list[Any], outs: list[_Outbox]) -> None:
        gevent.joinall([o.greenlet for o in outs], timeout=LINGER)
        for out in outs:
            out.greenlet.kill(block=False)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class IpcServer:
    """Serve the client socket for ``host``.

    Args:
        host: the service host requests go to.
        path: the socket path (parent directories are created).
        group: name of the group whose members may connect besides root and
            the executive's own user; None or an unknown name: nobody else.
        mode: permission bits of the socket file.
        limits: what clients may make the executive hold (defaults: ``IpcLimits()``).
    """

    def __init__(self, host: ServiceHost, path: str, *, group: str | None = "ais",
                 mode: int = 0o770, limits: IpcLimits | None = None) -> None:
        self.host = host
        self.path = path
        self.mode = mode
        self.limits = limits or IpcLimits()
        self.max_connections = self.limits.connections()
        #: bytes of incomplete request frames held, all connections together
        self.buffered = 0
        #: sockets being served (a handle has two)
        self.sockets = 0
        self._limit_logs: dict[str, RateLimiter] = {}
        self._error_log = RateLimiter(burst=5, interval=10.0)
        self._trim_armed = False
        #: called for each client request read (the transport's busy polling)
        self.on_request: Callable[[], None] | None = None
        self.group_gid: int | None = None
        if group is not None:
            try:
                self.group_gid = grp.getgrnam(group).gr_gid
            except KeyError:
                logger.warning("group %r does not exist: only root and uid %d may connect",
                               group, os.geteuid())
        self._by_token: dict[int, IpcConnection] = {}
        self._conns: dict[int, IpcConnection] = {}
        self._server: gevent.server.StreamServer | None = None

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen.

        Raises:
            OSError: the socket cannot be bound, or another executive serves it.
        """
        parent = os.path.dirname(self.path) or "."
        os.makedirs(parent, mode=0o755, exist_ok=True)
        self._remove_stale()
        listener = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            os.chmod(self.path, self.mode)
            if self.group_gid is not None:
                try:
                    os.chown(self.path, -1, self.group_gid)
                except PermissionError:
                    logger.warning("cannot give %s to group %d", self.path, self.group_gid)
            listener.listen(128)
        except BaseException:
            listener.close()
            raise
        self._server = _Acceptor(self, listener, self._handle)
        self._server.start()
        logger.debug("listening on %s", self.path)

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # nobody listens: a leftover of a dead executive
            return
        finally:
            probe.close()
        raise OSError(f"{self.path}: another executive is serving this socket")

    def stop(self) -> None:
        """Stop listening, close every client (they see EOF), remove the socket."""
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
        for conn in list(self._conns.values()):
            conn.close("executive stopping")
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> IpcServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _forget(self, conn: IpcConnection) -> None:
        self._conns.pop(conn.conn_id, None)
        self._by_token.pop(conn.token, None)

    def log_limit(self, name: str, msg: str, *args: Any) -> None:
        """Log that limit ``name`` refused or closed something (rate-limited per limit
        and kind of action, so one flood does not hide another)."""
        key = name + msg[:12]
        limiter = self._limit_logs.get(key)
        if limiter is None:
            limiter = self._limit_logs[key] = RateLimiter(burst=5, interval=10.0)
        limiter.log(logger, logging.WARNING, msg, *args)

    def trim_later(self) -> None:
        """Trim the C heap soon (once, however many big connections close together)."""
        if not self._trim_armed:
            self._trim_armed = True

            def trim() -> None:
                self._trim_armed = False
                _trim_heap()

            gevent.spawn_later(0.5, trim)

    # --- one greenlet per socket -------------------------------------------------------

    def allowed(self, pid: int, uid: int, gid: int) -> bool:
        """Whether a peer with these credentials may use the APIs."""
        if uid == 0 or uid == os.geteuid():
            return True
        if self.group_gid is None:
            return False
        return gid == self.group_gid or self.group_gid in supplementary_groups(pid)

    def _handle(self, sock: Any, _addr: Any) -> None:
        self.sockets += 1
        reader = _FrameReader(self, sock)
        conn: IpcConnection | None = None
        try:
            creds = peer_credentials(sock)
            hello_frame = None
            with gevent.Timeout(HANDSHAKE_TIMEOUT, False):
                hello_frame = reader.next()
            if hello_frame is None:
                self._error_log.log(logger, logging.INFO,
                                    "client pid %d sent no handshake in time", creds[0])
                sock.close()
                return
            conn = self._handshake(sock, hello_frame, creds)
            if conn is None:
                return
            served = 0
            while not conn.closed:
                frame = reader.next()
                if frame is None:
                    break
                if self.on_request is not None:
                    self.on_request()
                served += 1
                if served % YIELD_EVERY == 0:
                    # A pipelining client: let the writers, the ring and the other
                    # clients run between its requests.
                    gevent.sleep(0)
                    if conn.closed:
                        break
                if sock is conn._cb_sock:
                    raise IpcProtocolError("data on the callback channel")
                if conn.backlog() * 2 >= self.limits.max_queued_callbacks:
                    # The client is not reading: refuse new work until it catches up.
                    self.log_limit("max_queued_callbacks",
                                   "connection %d (pid %d): request refused with TRY_AGAIN: "
                                   "limit max_queued_callbacks (%d frames) half reached",
                                   conn.conn_id, conn.pid, self.limits.max_queued_callbacks)
                    conn.send_response(frame.msg_id, frame.seq, TryAgain.code)
                    continue
                if conn.backlog_bytes() * 2 >= self.limits.max_queued_bytes:
                    # The same in bytes: big callbacks reach the byte limit first.
                    self.log_limit("max_queued_bytes",
                                   "connection %d (pid %d): request refused with TRY_AGAIN: "
                                   "limit max_queued_bytes (%d bytes) half reached",
                                   conn.conn_id, conn.pid, self.limits.max_queued_bytes)
                    conn.send_response(frame.msg_id, frame.seq, TryAgain.code)
                    continue
                try:
                    self.host.lib_request(conn, frame.msg_id, frame.seq, frame.body)
                except IpcProtocolError:
                    raise
                except Exception as exc:  # noqa: BLE001 -- a handler bug: this client's only
                    self._error_log.log(logger, logging.ERROR,
                                        "connection %d: request %d failed: %s: %s",
                                        conn.conn_id, frame.msg_id, type(exc).__name__, exc)
                    conn.close(f"request {frame.msg_id} failed")
        except IpcProtocolError as exc:
            self._error_log.log(logger, logging.ERROR, "closing client connection%s: %s",
                                f" {conn.conn_id}" if conn else "", exc)
        except OSError as exc:
            logger.debug("client connection error: %s", exc)
        finally:
            self.sockets -= 1
            reader.release()
            if conn is not None:
                conn.close("channel closed")
                # StreamServer closes this socket when we return: let queued
                # replies (an error, say) go out first.
                conn.wait_closed()
            else:
                sock.close()

    def _handshake(self, sock: Any, frame: w.Frame,
                   creds: tuple[int, int, int]) -> IpcConnection | None:
        if frame.msg_id != w.MSG_HELLO:
            raise IpcProtocolError(f"first message is {frame.msg_id}, not HELLO")
        hello = w.decode_hello_untrusted(frame.body)
        pid, uid, gid = creds

        def refuse(code: int) -> None:
            reply = w.Frame(frame.service, w.MSG_HELLO, code, frame.seq,
                            w.encode_hello_reply(w.HelloReply(0, 0)))
            try:
                sock.sendall(w.encode_frame(reply))
            except OSError:
                pass
            sock.close()

        if not self.allowed(pid, uid, gid):
            self._error_log.log(logger, logging.WARNING,
                                "refused connection from pid %d uid %d gid %d: "
                                "not root, not uid %d, not in the configured group",
                                pid, uid, gid, os.geteuid())
            refuse(Security.code)
            return None
        if self.host.service_by_id(frame.service) is None:
            self._error_log.log(logger, logging.INFO,
                                "client pid %d asked for unknown service %d", pid, frame.service)
            refuse(NotExist.code)
            return None
        if hello.role == w.ROLE_REQUEST and len(self._conns) >= self.max_connections:
            self.log_limit("max_connections",
                           "refused connection from pid %d: limit max_connections (%d) reached",
                           pid, self.max_connections)
            refuse(NoResources.code)
            return None
        if hello.role == w.ROLE_REQUEST:
            conn = IpcConnection(self, self.host.new_conn_id(), frame.service, sock, creds)
            self._conns[conn.conn_id] = conn
            self._by_token[conn.token] = conn
            conn.send_response(w.MSG_HELLO, frame.seq, SA_OK,
                               w.encode_hello_reply(w.HelloReply(conn.conn_id, conn.token)))
            self.host.lib_connect(conn)
            return conn
        owner = self._by_token.get(hello.token)
        if owner is None or owner._cb_sock is not None or owner.uid != uid \
                or owner.service_id != frame.service:
            raise IpcProtocolError("callback channel with an unknown token")
        sock.sendall(w.encode_frame(w.Frame(frame.service, w.MSG_HELLO, SA_OK, frame.seq,
                                            w.encode_hello_reply(
                                                w.HelloReply(owner.conn_id, 0)))))
        owner.attach_callback_channel(sock)
        return owner


class _FrameReader:
    """Reads one socket's frames, holding incomplete ones against the server's budget."""

    def __init__(self, server: IpcServer, sock: Any) -> None:
        self.server = server
        self.sock = sock
        self.buf = w.FrameBuffer()
        self.held = 0  #: bytes of ours counted in ``server.buffered``

    def next(self) -> w.Frame | None:
        """The next frame, or None at a clean EOF.  Raises IpcProtocolError."""
        limits = self.server.limits
        while True:
            frame = self.buf.next_frame()
            if frame is not None:
                if not self.buf.pending:
                    # Start afresh, so a big frame's buffer is not kept for the
                    # connection's lifetime.
                    self.buf = w.FrameBuffer()
                self._account()
                return frame
            self._account()
            if self.buf.pending:
                data = None
                with gevent.Timeout(limits.frame_timeout, False):
                    data = self.sock.recv(_CHUNK)
                if data is None:
                    self.server.log_limit("frame_timeout",
                                          "closing a client connection: limit frame_timeout "
                                          "(%g s) reached inside a frame (%d bytes held)",
                                          limits.frame_timeout, self.buf.pending)
                    raise IpcProtocolError("silent inside a frame")
            else:
                data = self.sock.recv(_CHUNK)
                if data:
                    # the usual read: exactly one whole request, decoded in place
                    frame = w.whole_frame(data)
                    if frame is not None:
                        return frame
            if not data:
                if self.buf.pending:
                    raise IpcProtocolError(f"connection closed inside a frame "
                                           f"({self.buf.pending} bytes pending)")
                return None
            over = max(0, self.buf.pending + len(data) - FREE_PARTIAL) - self.held
            if over > 0 and self.server.buffered + over > limits.max_buffered_bytes:
                self.server.log_limit("max_buffered_bytes",
                                      "closing a client connection: limit max_buffered_bytes "
                                      "(%d bytes of incomplete frames, all clients) reached",
                                      limits.max_buffered_bytes)
                raise IpcProtocolError("too many bytes of incomplete frames")
            self.buf.feed(data)
            self._account()

    def _account(self) -> None:
        # The first FREE_PARTIAL bytes of each connection are not counted, so a
        # full budget never refuses a small request (a handshake, say).
        counted = max(0, self.buf.pending - FREE_PARTIAL)
        self.server.buffered += counted - self.held
        self.held = counted

    def release(self) -> None:
        """Forget the buffer (the connection is ending)."""
        big = self.held > TRIM_THRESHOLD
        self.server.buffered -= self.held
        self.held = 0
        self.buf = w.FrameBuffer()
        if big:
            self.server.trim_later()


class _Acceptor(gevent.server.StreamServer):
    """A StreamServer that rides out running out of descriptors.

    gevent would print a traceback for every failed accept; here the failure is
    logged (rate-limited) and accepting pauses, longer each time, until one works.
    """

    _PAUSE = (0.05, 1.0)

    def __init__(self, ipc: IpcServer, listener: Any, handle: Any) -> None:
        super().__init__(listener, handle)
        self._ipc = ipc
        self._pause = self._PAUSE[0]
        self._resume_timer: Any = None

    def do_read(self) -> Any:
        try:
            got = super().do_read()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            self._ipc._error_log.log(
                logger, logging.ERROR, "cannot accept a client connection: %s "
                "(%d sockets open); pausing accept for %g s",
                os.strerror(exc.errno or 0), self._ipc.sockets, self._pause)
            self.stop_accepting()
            self._resume_timer = gevent.spawn_later(self._pause, self._resume)
            self._pause = min(self._PAUSE[1], self._pause * 2)
            return None
        if got:
            self._pause = self._PAUSE[0]
        return got

    def _resume(self) -> None:
        self._resume_timer = None
        if self.started:
            self.start_accepting()

    def stop(self, timeout: float | None = None) -> None:
        if self._resume_timer is not None:
            self._resume_timer.kill(block=False)
        super().stop(timeout=timeout)


__all__ = ["HANDSHAKE_TIMEOUT", "IpcConnection", "IpcLimits", "IpcServer", "MAX_OUTBOX",
           "peer_credentials", "supplementary_groups"]
