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
writer greenlet.  A client that stops reading its callbacks until more than
``MAX_OUTBOX`` bytes pile up is dropped.
"""
from __future__ import annotations

import collections
import enum
import grp
import logging
import os
import secrets
import socket
import stat
import struct
from typing import Any

import gevent
import gevent.event
import gevent.server
from gevent import socket as gsocket

from ais.executive import ServiceHost
from saf import _wire as w
from saf.errors import SA_OK, IpcProtocolError, NotExist, Security

logger = logging.getLogger(__name__)

#: seconds a new connection has to send its HELLO
HANDSHAKE_TIMEOUT = 10.0
#: bytes queued for one slow client before it is dropped
MAX_OUTBOX = 32 * 1024 * 1024
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

    def __init__(self, conn: "IpcConnection", sock: Any, what: str) -> None:
        self.conn = conn
        self.sock = sock
        self.what = what
        self.queue: collections.deque[bytes] = collections.deque()
        self.bytes = 0
        self.wake = gevent.event.Event()
        self.closing = False
        self.greenlet = gevent.spawn(self._run)

    def put(self, data: bytes) -> None:
        self.queue.append(data)
        self.bytes += len(data)
        if self.bytes > MAX_OUTBOX:
            self.conn.close(f"client does not read its {self.what} channel", flush=False)
            return
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.queue:
                data = self.queue.popleft()
                self.bytes -= len(data)
                try:
                    self.sock.sendall(data)
                except OSError as exc:
                    self.conn.close(f"{self.what} send failed: {exc}", flush=False)
                    return
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

    def __init__(self, server: "IpcServer", conn_id: int, service_id: int, sock: Any,
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
        # Callbacks queued before the callback channel attached (normally none).
        self._early: list[bytes] = []
        self._linger_g: Any = None

    @property
    def closed(self) -> bool:
        return self.state is ConnState.CLOSED

    def attach_callback_channel(self, sock: Any) -> None:
        self._cb_sock = sock
        self._cb_out = _Outbox(self, sock, "callback")
        for data in self._early:
            self._cb_out.put(data)
        self._early.clear()

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        if self.closed:
            return
        self._send(self._req_out, w.Frame(self.service_id, msg_id, error, seq, body))

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        if self.closed:
            return
        frame = w.Frame(self.service_id, msg_id, error, 0, body)
        if self._cb_out is None:
            self._early.append(w.encode_frame(frame))
            return
        self._send(self._cb_out, frame)

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
        self._linger_g = gevent.spawn(self._linger, socks, outs)
        self.server.host.lib_exit(self)

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
    """

    def __init__(self, host: ServiceHost, path: str, *, group: str | None = "ais",
                 mode: int = 0o770) -> None:
        self.host = host
        self.path = path
        self.mode = mode
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
        self._server = gevent.server.StreamServer(listener, self._handle)
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

    def __enter__(self) -> "IpcServer":
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

    # --- one greenlet per socket -------------------------------------------------------

    def allowed(self, pid: int, uid: int, gid: int) -> bool:
        """Whether a peer with these credentials may use the APIs."""
        if uid == 0 or uid == os.geteuid():
            return True
        if self.group_gid is None:
            return False
        return gid == self.group_gid or self.group_gid in supplementary_groups(pid)

    def _handle(self, sock: Any, _addr: Any) -> None:
        buf = w.FrameBuffer()
        conn: IpcConnection | None = None
        try:
            creds = peer_credentials(sock)
            hello_frame = None
            with gevent.Timeout(HANDSHAKE_TIMEOUT, False):
                hello_frame = self._read_frame(sock, buf)
            if hello_frame is None:
                logger.info("client pid %d sent no handshake in time", creds[0])
                sock.close()
                return
            conn = self._handshake(sock, hello_frame, creds)
            if conn is None:
                return
            while not conn.closed:
                frame = self._read_frame(sock, buf)
                if frame is None:
                    break
                if sock is conn._cb_sock:
                    raise IpcProtocolError("data on the callback channel")
                self.host.lib_request(conn, frame.msg_id, frame.seq, frame.body)
        except IpcProtocolError as exc:
            logger.error("closing client connection%s: %s",
                         f" {conn.conn_id}" if conn else "", exc)
        except OSError as exc:
            logger.debug("client connection error: %s", exc)
        finally:
            if conn is not None:
                conn.close("channel closed")
                # StreamServer closes this socket when we return: let queued
                # replies (an error, say) go out first.
                conn.wait_closed()
            else:
                sock.close()

    def _read_frame(self, sock: Any, buf: w.FrameBuffer) -> w.Frame | None:
        """The next frame, or None at a clean EOF.  Raises IpcProtocolError."""
        while True:
            frame = buf.next_frame()
            if frame is not None:
                return frame
            data = sock.recv(_CHUNK)
            if not data:
                if buf.pending:
                    raise IpcProtocolError(f"connection closed inside a frame "
                                           f"({buf.pending} bytes pending)")
                return None
            buf.feed(data)

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
            logger.warning("refused connection from pid %d uid %d gid %d: "
                           "not root, not uid %d, not in the configured group",
                           pid, uid, gid, os.geteuid())
            refuse(Security.code)
            return None
        if self.host.service_by_id(frame.service) is None:
            logger.info("client pid %d asked for unknown service %d", pid, frame.service)
            refuse(NotExist.code)
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


__all__ = ["HANDSHAKE_TIMEOUT", "IpcConnection", "IpcServer", "MAX_OUTBOX",
           "peer_credentials", "supplementary_groups"]
