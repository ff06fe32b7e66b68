"""The IPC server (ais/ipc.py) with a real socket, a gevent hub thread and fake rings.

Clients are the real ``saf`` library, called from the test thread, from other
threads, or from subprocesses (also with another uid/gid, to see refusals).
"""
import atexit
import grp
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from helpers_exec import ExecThread
from saf import _wire as w
from saf import clm
from saf.errors import SA_OK, Library, Security, TryAgain
from saf.types import SA_DISPATCH_ALL, SA_TRACK_CURRENT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534
NOGROUP = grp.getgrnam("nogroup").gr_gid if "nogroup" in {g.gr_name for g in grp.getgrall()} \
    else 65534

CLIENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from saf import clm
    from saf.errors import SaError
    try:
        node = clm.cluster_node_get(0, 0)
    except SaError as err:
        print("error", err.code)
    else:
        print("ok", node.node_name.decode())
""")


@pytest.fixture
def node(sock_dir, monkeypatch):
    ex = ExecThread(sock_dir, ["127.0.0.1"], group=None, mode=0o777).start()
    monkeypatch.setenv("AIS_SOCKET", ex.socket_of("127.0.0.1"))
    yield ex
    ex.stop()


def _python_for_others():
    """An interpreter another uid may run (ours may live under /root)."""
    for exe in (sys.executable, "/usr/bin/python3"):
        try:
            ok = subprocess.run([exe, "-c", "import sys; assert sys.version_info >= (3, 10)"],
                                user=NOBODY, group=NOGROUP, extra_groups=[],
                                capture_output=True, timeout=20, cwd="/").returncode == 0
        except OSError:
            ok = False
        if ok:
            return exe
    return None


OTHER_PYTHON = _python_for_others() if os.geteuid() == 0 else None
needs_other_user = pytest.mark.skipif(OTHER_PYTHON is None,
                                      reason="needs root and a Python another uid can run")


_READABLE_SAF: list[str] = []


def _saf_for_others() -> str:
    """A copy of the client library another uid can read: the checkout may lie in a
    private directory (a clone under ``mktemp -d`` is mode 0700)."""
    if not _READABLE_SAF:
        d = tempfile.mkdtemp(prefix="ais-saf-")
        os.chmod(d, 0o755)
        shutil.copytree(os.path.join(ROOT, "saf"), os.path.join(d, "saf"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, dirnames, filenames in os.walk(d):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        atexit.register(shutil.rmtree, d, True)
        _READABLE_SAF.append(d)
    return _READABLE_SAF[0]


def run_client(path, *, user=None, group=None, extra_groups=None):
    env = dict(os.environ, AIS_SOCKET=path, PYTHONDONTWRITEBYTECODE="1")
    kw = {}
    exe = sys.executable
    lib = ROOT
    if user is not None:
        kw = dict(user=user, group=group, extra_groups=extra_groups or [])
        exe = OTHER_PYTHON
        lib = _saf_for_others()
    out = subprocess.run([exe, "-c", CLIENT, lib], env=env, capture_output=True,
                         text=True, timeout=20, cwd="/", **kw)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def raw_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_eof(s, limit=1 << 20):
    data = b""
    while len(data) < limit:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("no EOF")


@pytest.mark.timeout(30)
def test_call_from_thread_and_subprocess(node):
    results = []

    def worker():
        results.append(clm.cluster_node_get(0, 0).node_name)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [b"127.0.0.1"] * 4
    assert run_client(node.socket_of("127.0.0.1")) == ["ok", "127.0.0.1"]


@pytest.mark.timeout(30)
def test_shared_handle_across_threads(node):
    with clm.initialize() as h:
        errors = []

        def worker(i):
            try:
                for _ in range(20):
                    h.cluster_node_get_async(i, 0)
            except Exception as exc:  # collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors


@pytest.mark.timeout(30)
def test_no_executive_is_try_again(sock_dir, monkeypatch):
    monkeypatch.setenv("AIS_SOCKET", os.path.join(sock_dir, "nothing.sock"))
    with pytest.raises(TryAgain):
        clm.initialize()
    with pytest.raises(TryAgain):
        clm.cluster_node_get(0, 0)


@needs_other_user
@pytest.mark.timeout(60)
def test_refused_user_gets_security(node, caplog):
    path = node.socket_of("127.0.0.1")
    caplog.set_level("WARNING", logger="ais.ipc")
    assert run_client(path, user=NOBODY, group=NOGROUP) == ["error", str(Security.code)]
    assert any("refused" in r.getMessage() for r in caplog.records)
    # Root still works afterwards.
    assert run_client(path) == ["ok", "127.0.0.1"]


@needs_other_user
@pytest.mark.timeout(60)
def test_socket_permissions_refuse_as_security(sock_dir):
    with ExecThread(sock_dir, ["127.0.0.1"], group=None, mode=0o770) as ex:
        path = ex.socket_of("127.0.0.1")
        assert oct(os.stat(path).st_mode & 0o777) == "0o770"
        assert run_client(path, user=NOBODY, group=NOGROUP) == ["error", str(Security.code)]


@needs_other_user
@pytest.mark.timeout(60)
def test_configured_group_is_accepted(sock_dir):
    with ExecThread(sock_dir, ["127.0.0.1"], group="nogroup", mode=0o777) as ex:
        path = ex.socket_of("127.0.0.1")
        # Primary group.
        assert run_client(path, user=NOBODY, group=NOGROUP) == ["ok", "127.0.0.1"]
        # Supplementary group only (primary group is something else).
        assert run_client(path, user=NOBODY, group=1, extra_groups=[NOGROUP]) == \
            ["ok", "127.0.0.1"]
        # Neither.
        assert run_client(path, user=NOBODY, group=1) == ["error", str(Security.code)]


BAD_STREAMS = [
    pytest.param(b"\xff\xff\xff\xff" + b"\0" * 12, id="oversized"),
    pytest.param(struct.pack("!IHHiI", 8, 1, 1, 0, 0), id="size-below-header"),
    pytest.param(w.encode_frame(w.Frame(1, 3, 0, 1, b"")), id="not-hello-first"),
    pytest.param(w.encode_frame(w.Frame(1, w.MSG_HELLO, 0, 1, b"\x07")), id="bad-hello"),
    pytest.param(w.encode_frame(w.Frame(1, w.MSG_HELLO, 0, 1, w.encode_hello(
        w.Hello(w.ROLE_CALLBACK, 12345)))), id="unknown-token"),
    pytest.param(w.encode_frame(w.Frame(1, w.MSG_HELLO, 0, 0, w.encode_hello(
        w.Hello(w.ROLE_REQUEST, 0))))[:10], id="truncated"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("garbage", BAD_STREAMS)
def test_garbage_closes_only_that_connection(node, garbage, caplog):
    caplog.set_level("DEBUG", logger="ais.ipc")
    h = clm.initialize()
    h.cluster_track_start(SA_TRACK_CURRENT)
    s = raw_connect(node.socket_of("127.0.0.1"))
    s.sendall(garbage)
    if garbage.endswith(b"\0" * 12) or len(garbage) < 16:
        s.shutdown(socket.SHUT_WR)  # truncated: the server sees EOF inside a frame
    read_eof(s)
    s.close()
    # The well-behaved client is unharmed.
    h.dispatch(SA_DISPATCH_ALL)
    h.cluster_node_get_async(1, 0)
    assert clm.cluster_node_get(0, 0).node_name == b"127.0.0.1"
    h.finalize()


@pytest.mark.timeout(30)
def test_garbage_after_handshake_closes_that_client(node, caplog):
    caplog.set_level("ERROR", logger="ais.ipc")
    s = raw_connect(node.socket_of("127.0.0.1"))
    s.sendall(w.encode_frame(w.Frame(1, w.MSG_HELLO, 0, 1, w.encode_hello(
        w.Hello(w.ROLE_REQUEST, 0)))))
    s.sendall(b"\x00\x00\x00\x20" + b"\x01" * 12 + b"\x02" * 16)  # a frame with a bad body
    s.sendall(b"\xff" * 16)  # then an oversized header
    data = read_eof(s)
    assert data  # the HELLO reply (and maybe an error reply) came before the close
    s.close()
    assert any("closing client connection" in r.getMessage() for r in caplog.records)
    assert clm.cluster_node_get(0, 0).node_name == b"127.0.0.1"


@pytest.mark.timeout(30)
def test_executive_death_in_subprocess_is_prompt(sock_dir, monkeypatch):
    path = os.path.join(sock_dir, "sub.sock")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "test", "helpers_exec.py"),
                             "serve", path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        monkeypatch.setenv("AIS_SOCKET", path)
        h = clm.initialize()
        h.cluster_track_start(SA_TRACK_CURRENT)
        blocked_error = []

        def block():
            try:
                h.dispatch(3)
            except Library as exc:
                blocked_error.append(exc)

        t = threading.Thread(target=block)
        t.start()
        time.sleep(0.2)
        proc.kill()
        proc.wait(10)
        t.join(5)
        assert not t.is_alive() and blocked_error
        start = time.monotonic()
        with pytest.raises(Library):
            h.cluster_track_stop()
        assert time.monotonic() - start < 2
        h.finalize()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


@pytest.mark.timeout(30)
def test_stale_socket_is_replaced(sock_dir):
    path = os.path.join(sock_dir, "127.0.0.1.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on
    with ExecThread(sock_dir, ["127.0.0.1"], group=None, mode=0o777):
        assert run_client(path) == ["ok", "127.0.0.1"]


@pytest.mark.timeout(30)
def test_second_executive_on_same_socket_fails(node):
    from ais.executive import ServiceHost
    from ais.testing import ManualScheduler
    from ais.ipc import IpcServer

    host = ServiceHost(1, [], ManualScheduler())
    with pytest.raises(OSError):
        node.call(lambda: IpcServer(host, node.socket_of("127.0.0.1")).start())


def test_outbox_sends_at_once_when_nothing_waits_and_keeps_order_behind_a_backlog() -> None:
    """An answer with nothing queued ahead goes out inside ``put`` (no wait for the
    writer greenlet's turn); one that finds the socket full, or a queue, waits its
    turn, and the client reads everything in order."""
    import types

    import gevent
    from gevent import socket as gsocket

    from ais.ipc import IpcLimits, _Outbox
    a, b = gsocket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    closed: list[str] = []
    conn = types.SimpleNamespace(
        server=types.SimpleNamespace(limits=IpcLimits(max_queued_bytes=1 << 26)),
        peak_bytes=0, limit_hit=lambda *a: None, close=lambda why, flush=True: closed.append(why))
    out = _Outbox(conn, a, "request")  # type: ignore[arg-type]
    try:
        out.put(b"first")
        assert not out.queue and b._sock.recv(100, socket.MSG_DONTWAIT) == b"first"
        big = bytes(range(256)) * (1 << 14)  # 4 MiB: more than the socket takes at once
        out.put(big)
        out.put(b"tail")
        assert out.queue, "the rest of the big frame and the tail wait for the writer"
        got = bytearray()
        want = len(big) + 4
        with gevent.Timeout(10):
            while len(got) < want:
                got += b.recv(1 << 16)
        assert bytes(got) == big + b"tail" and closed == []
    finally:
        out.finish(flush=False)
        a.close()
        b.close()


def _fake_executive(path: str, answer) -> threading.Thread:
    """A stand-in executive on ``path``: completes the handshake of one request
    channel, then calls ``answer(sock, request_frame)`` for each request."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        buf = w.FrameBuffer()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf.feed(data)
                while (f := buf.next_frame()) is not None:
                    if f.msg_id == w.MSG_HELLO:
                        conn.sendall(w.encode_frame(w.Frame(f.service, w.MSG_HELLO, SA_OK, f.seq,
                                                            w.encode_hello_reply(
                                                                w.HelloReply(1, 5)))))
                    else:
                        answer(conn, f)
        finally:
            conn.close()
            srv.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(30)
def test_client_reads_answers_whole_in_pieces_and_late_and_times_out(tmp_path, monkeypatch):
    """The client library's read of an answer: one whole frame in one read (the
    usual case), a frame split over several reads, a late answer to an earlier
    request ahead of the right one in the same read, and no answer at all
    (Timeout after the call's own time, the connection still usable)."""
    from saf._conn import Connection
    from saf.errors import Timeout
    path = str(tmp_path / "fake.sock")
    monkeypatch.setenv("AIS_SOCKET", path)

    def answer(conn: socket.socket, f: w.Frame) -> None:
        kind = f.body
        reply = w.encode_frame(w.Frame(f.service, f.msg_id, SA_OK, f.seq, b"re:" + kind))
        if kind == b"whole":
            conn.sendall(reply)
        elif kind == b"pieces":
            for i in range(0, len(reply), 5):
                conn.sendall(reply[i:i + 5])
                time.sleep(0.01)
        elif kind == b"late":
            old = w.encode_frame(w.Frame(f.service, f.msg_id, SA_OK, f.seq - 1, b"stale"))
            conn.sendall(old + reply)
        # b"silent": no answer
    _fake_executive(path, answer)
    c = Connection(9, with_callbacks=False)
    assert c.request(1, b"whole") == b"re:whole"
    assert c.request(1, b"pieces") == b"re:pieces"
    t0 = time.monotonic()
    with pytest.raises(Timeout):
        c.request(1, b"silent", timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert c.request(1, b"late") == b"re:late"
    assert c.request(1, b"whole") == b"re:whole"
