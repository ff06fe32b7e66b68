"""Builders for executive/service tests.

* ``FakeConn``: a ``LibConn`` that records responses and callbacks (no sockets).
* ``ServiceCluster``: N ``ServiceHost``s on a ``FakeBus`` with a manual clock,
  for multi-node service tests without I/O.
* ``ExecThread``: a gevent hub in a background thread serving real Unix
  sockets (``IpcServer``) for hosts on a ``FakeBus``; the test thread uses the
  blocking ``saf`` library against it.
* ``python test/helpers_exec.py serve SOCKET [ADDR]``: a single-node loopback
  executive in its own process (for "the executive dies" tests).
"""
from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ais.executive import ServiceHost  # noqa: E402
from ais.testing import FakeBus, ManualScheduler  # noqa: E402
from ais.services.clm import ClmService  # noqa: E402
from ais.totem.events import node_of  # noqa: E402
from saf import _clm_wire  # noqa: E402
from saf import _wire as w  # noqa: E402
from saf.errors import SA_OK  # noqa: E402

#: boot timestamp given to every test node, so records are predictable
BOOT = 1_700_000_000 * 1_000_000_000


@dataclass
class FakeConn:
    """A client connection without a socket; frames are kept as ``w.Frame``."""

    conn_id: int
    service_id: int
    private: dict[str, Any] = field(default_factory=dict)
    uid: int = 0
    gid: int = 0
    pid: int = 0
    responses: list[w.Frame] = field(default_factory=list)
    callbacks: list[w.Frame] = field(default_factory=list)
    _closed: bool = False

    @property
    def closed(self) -> bool:
        return self._closed

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        if not self._closed:
            self.callbacks.append(w.Frame(self.service_id, msg_id, error, 0, body))

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        if not self._closed:
            self.responses.append(w.Frame(self.service_id, msg_id, error, seq, body))

    def close(self, reason: str = "") -> None:
        self._closed = True


def make_host(addr: str, sched: Any, cluster_name: str = "mvlcge") -> ServiceHost:
    return ServiceHost(node_of(addr), [ClmService(cluster_name, boot_timestamp=BOOT)], sched)


class ServiceCluster:
    """Hosts with CLM on one FakeBus and a ManualScheduler; no sockets, no threads."""

    def __init__(self, addrs: Iterable[str]) -> None:
        self.sched = ManualScheduler()
        self.bus = FakeBus(self.sched)
        self.hosts: dict[str, ServiceHost] = {}
        self._seq = 1000  # clear of the small seqs tests pick by hand
        for a in addrs:
            self.add(a)

    def add(self, addr: str) -> ServiceHost:
        host = make_host(addr, self.sched)
        self.hosts[addr] = host
        self.bus.port(host)
        return host

    def form(self, *components: Iterable[str]) -> None:
        """Reconfigure into these address groups and run to quiescence."""
        self.bus.reconfigure(*[[node_of(a) for a in c] for c in components])
        self.run()

    def run(self) -> None:
        self.sched.run()

    def connect(self, addr: str) -> FakeConn:
        host = self.hosts[addr]
        conn = FakeConn(host.new_conn_id(), _clm_wire.CLM_SERVICE_ID)
        host.lib_connect(conn)
        return conn

    def request(self, addr: str, conn: FakeConn, msg_id: int, body: bytes = b"") -> w.Frame | None:
        """Send a request, run the bus; the response (None if still pending)."""
        self._seq += 1
        seq = self._seq
        self.hosts[addr].lib_request(conn, msg_id, seq, body)
        self.run()
        for f in reversed(conn.responses):
            if f.seq == seq:
                return f
        return None


class ExecThread:
    """In-process executives served over real Unix sockets by a gevent hub thread.

    Args:
        sock_dir: where the sockets go (``<dir>/<addr>.sock``).
        addrs: node addresses; all start in one ring.
        group / mode: passed to ``IpcServer``.
    """

    def __init__(self, sock_dir: str, addrs: Iterable[str], *, group: str | None = None,
                 mode: int = 0o770, form: bool = True) -> None:
        self.sock_dir = sock_dir
        self.addrs = list(addrs)
        self.group = group
        self.mode = mode
        self.hosts: dict[str, ServiceHost] = {}
        self.servers: dict[str, Any] = {}
        self.bus: FakeBus | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._form = form
        self._thread = threading.Thread(target=self._main, name="exec-hub", daemon=True)

    def socket_of(self, addr: str) -> str:
        return os.path.join(self.sock_dir, f"{addr}.sock")

    def start(self) -> ExecThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("executive thread did not start")
        if self._error is not None:
            raise self._error
        if self._form:
            self.reconfigure(self.addrs)
        return self

    def _main(self) -> None:
        import gevent
        import gevent.event

        from ais.executive import GeventScheduler
        from ais.ipc import IpcServer

        try:
            self.hub = gevent.get_hub()
            self._stop_ev = gevent.event.Event()
            sched = GeventScheduler()
            self.bus = FakeBus(sched)
            for a in self.addrs:
                self._add(a, sched, IpcServer)
            self.sched = sched
        except BaseException as exc:  # report start-up failure to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._stop_ev.wait()
        for srv in self.servers.values():
            srv.stop()
        self.hub.destroy(destroy_loop=True)

    def make_host(self, addr: str, sched: Any) -> ServiceHost:
        """The host of one node (override to run other services)."""
        return make_host(addr, sched)

    def _add(self, addr: str, sched: Any, server_cls: Any) -> None:
        host = self.make_host(addr, sched)
        assert self.bus is not None
        self.bus.port(host)
        srv = server_cls(host, self.socket_of(addr), group=self.group, mode=self.mode)
        srv.start()
        self.hosts[addr] = host
        self.servers[addr] = srv

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` in a greenlet of the hub thread; return its result."""
        import gevent

        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

        self.hub.loop.run_callback_threadsafe(lambda: gevent.spawn(run))
        return fut.result(timeout)

    def reconfigure(self, *components: Iterable[str], settle: bool = True) -> None:
        comps = [[node_of(a) for a in c] for c in components]
        self.call(lambda: self.bus.reconfigure(*comps))  # type: ignore[union-attr]
        if settle:
            self.settle()

    def wait_until(self, pred: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``pred`` in the hub thread until it holds (True) or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call(pred):
                return True
            time.sleep(0.01)
        return bool(self.call(pred))

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until the bus is idle and no running host is in a sync round."""
        bus = self.bus
        assert bus is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            quiet = self.call(lambda: not bus._queue and
                              all(not h.syncing for h in self.hosts.values()
                                  if h.node_id in bus._component))
            if quiet:
                return
            time.sleep(0.01)
        raise TimeoutError("cluster did not settle")

    def kill_server(self, addr: str) -> None:
        """Simulate this executive dying: stop serving and drop its clients."""
        self.call(lambda: self.servers[addr].stop())

    def stop(self) -> None:
        if self._thread.is_alive() and hasattr(self, "_stop_ev"):
            try:
                self.call(lambda: self._stop_ev.set(), timeout=5)
            except Exception:
                pass
            self._thread.join(10)

    def __enter__(self) -> ExecThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def on(et: ExecThread, addr: str) -> None:
    """Point the saf library of this process at ``addr``'s executive."""
    os.environ["AIS_SOCKET"] = et.socket_of(addr)


def serve_main(argv: list[str]) -> int:
    """``serve SOCKET [ADDR]``: one loopback executive until killed."""
    import gevent

    from ais.executive import GeventScheduler
    from ais.testing import LoopbackRing
    from ais.ipc import IpcServer

    path = argv[1]
    addr = argv[2] if len(argv) > 2 else "127.0.0.1"
    sched = GeventScheduler()
    host = make_host(addr, sched)
    ring = LoopbackRing(host, sched)
    server = IpcServer(host, path, group=None, mode=0o777)
    server.start()
    ring.start()
    print("ready", flush=True)
    while True:
        gevent.sleep(3600)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        sys.exit(serve_main(sys.argv[1:]))
    print("usage: helpers_exec.py serve SOCKET [ADDR]", file=sys.stderr)
    sys.exit(2)
