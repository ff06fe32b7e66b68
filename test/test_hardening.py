"""Hardening (issue 8, client and service half): nothing a peer or a local client
sends may end the executive, and no request may make it do unbounded work or hold
unbounded memory.

* A service-level fuzzer: random and mutated payloads into every exec handler of
  every service, through ``ServiceHost.on_deliver`` with a real ``RING_HEADER``
  (``AIS_FUZZ_SEEDS=N`` widens it), and random bodies into every library handler.
* The client cases against in-process hosts served over real Unix sockets.
"""
from __future__ import annotations

import os
import random
from typing import Any

import pytest

from ais.executive import (
    FLAG_RESENT, FLAG_SYNC, ORIGIN, RingMessage, ServiceHost, encode_ring_message,
)
from ais.testing import FakeBus, ManualScheduler
from ais.services.base import NO_TAG, ReplyTag
from ais.services.ckpt import CkptService
from ais.services.clm import ClmService
from ais.totem.events import Deliver, node_of
from helpers_exec import BOOT, FakeConn
from saf import _ckpt_wire as cw
from saf import _clm_wire
from saf import _wire as w
from saf.errors import SA_OK, IpcProtocolError, SaError
from saf.types import SA_TIME_END

A, B = "127.0.0.1", "127.0.0.2"
RW = cw.SA_CKPT_CHECKPOINT_READ | cw.SA_CKPT_CHECKPOINT_WRITE
FUZZ_SEEDS = int(os.environ.get("AIS_FUZZ_SEEDS", "6"))


def attrs(**kw: Any) -> cw.CreationAttributes:
    base = dict(creation_flags=cw.SA_CKPT_WR_ALL_REPLICAS, checkpoint_size=100_000,
                retention_duration=SA_TIME_END, max_sections=10, max_section_size=20_000,
                max_section_id_size=32)
    base.update(kw)
    return cw.CreationAttributes(**base)


class Cluster:
    """Two hosts running CLM and CKPT on a FakeBus, with a recording of every mcast."""

    def __init__(self, addrs: tuple[str, ...] = (A, B)) -> None:
        self.sched = ManualScheduler()
        self.bus = FakeBus(self.sched)
        self.hosts: dict[str, ServiceHost] = {}
        self.sent: list[bytes] = []  # every ring payload any host multicast: the corpus
        orig = self.bus._mcast

        def record(sender: int, payload: bytes) -> None:
            self.sent.append(payload)
            orig(sender, payload)

        self.bus._mcast = record  # type: ignore[method-assign]
        for a in addrs:
            host = ServiceHost(node_of(a), [ClmService("fuzz", boot_timestamp=BOOT),
                                            CkptService()], self.sched)
            self.hosts[a] = host
            self.bus.port(host)
        self.bus.reconfigure([node_of(a) for a in addrs])
        self.settle()
        self.seq = 0

    def settle(self, rounds: int = 500) -> None:
        for _ in range(rounds):
            self.sched.run()
            if not self.bus._queue and not any(h.syncing for h in self.hosts.values()):
                return
            self.sched.advance(0.01)
        raise AssertionError("cluster did not settle")

    def ckpt(self, addr: str) -> CkptService:
        svc = self.hosts[addr].services[cw.CKPT_SERVICE_ID]
        assert isinstance(svc, CkptService)
        return svc

    def connect(self, addr: str, service: int = cw.CKPT_SERVICE_ID) -> FakeConn:
        host = self.hosts[addr]
        conn = FakeConn(host.new_conn_id(), service)
        host.lib_connect(conn)
        return conn

    def call(self, addr: str, conn: FakeConn, msg_id: int, body: bytes = b"") -> w.Frame:
        self.seq += 1
        seq = self.seq
        self.hosts[addr].lib_request(conn, msg_id, seq, body)
        self.settle()
        frame = next((f for f in conn.responses if f.seq == seq), None)
        assert frame is not None, "no response"
        return frame

    def ok(self, addr: str, conn: FakeConn, msg_id: int, body: bytes = b"") -> bytes:
        frame = self.call(addr, conn, msg_id, body)
        if frame.error != SA_OK:
            raise SaError.from_code(frame.error)
        return frame.body

    def populate(self) -> None:
        """Normal traffic of every kind, so the corpus holds a valid payload of each."""
        c = self.connect(A)
        h = cw.decode_handle_untrusted(self.ok(A, c, cw.REQ_OPEN, cw.encode_open(
            cw.OpenReq(b"fuzz", RW | cw.SA_CKPT_CHECKPOINT_CREATE, attrs(), SA_TIME_END))))
        hh = cw.HANDLE.pack(h)
        self.ok(A, c, cw.REQ_SECTION_CREATE, hh + cw.encode_section_create(
            cw.SectionCreateReq(b"s1", SA_TIME_END, SA_TIME_END, 5, b"abc")))
        self.ok(A, c, cw.REQ_SECTION_CREATE, hh + cw.encode_section_create(
            cw.SectionCreateReq(b"s2", 10 ** 18, 5 * 10 ** 9, 5, b"x")))
        self.ok(A, c, cw.REQ_WRITE, hh + cw.encode_write(cw.WriteReq(7, ((b"s1", 1, b"zz"),))))
        self.ok(A, c, cw.REQ_OVERWRITE, hh + cw.encode_overwrite(9, b"s1", b"new"))
        self.ok(A, c, cw.REQ_READ, hh + cw.encode_read([(b"s1", 0, cw.READ_ALL)]))
        self.ok(A, c, cw.REQ_STATUS_GET, hh)
        self.ok(A, c, cw.REQ_SECTION_EXPIRATION_SET,
                hh + cw.encode_section_expiration(b"s2", 10 ** 18 + 1, 10 ** 9))
        self.ok(A, c, cw.REQ_RETENTION_SET, hh + cw.encode_retention(10 ** 9))
        self.ok(A, c, cw.REQ_ITER_INIT, hh + cw.encode_iter_init(cw.SA_CKPT_SECTIONS_ANY, 0))
        self.call(A, c, cw.REQ_SYNCHRONIZE, hh + cw.encode_synchronize(0, False, SA_TIME_END))
        self.ok(A, c, cw.REQ_SECTION_DELETE, hh + b"s1")
        h2 = cw.decode_handle_untrusted(self.ok(A, c, cw.REQ_OPEN, cw.encode_open(
            cw.OpenReq(b"other", RW | cw.SA_CKPT_CHECKPOINT_CREATE,
                       attrs(max_sections=1, checkpoint_size=20_000), SA_TIME_END))))
        self.ok(A, c, cw.REQ_CLOSE, cw.HANDLE.pack(h2))
        self.ok(A, c, cw.REQ_UNLINK, b"other")
        # A join makes every sync message kind travel once.
        self.bus.reconfigure([node_of(A)], [node_of(B)])
        self.settle()
        self.bus.reconfigure([node_of(A), node_of(B)])
        self.settle()
        self.sched.advance(6.0)  # the section expires: SECTION_EXPIRE travels
        self.settle()

    def assert_serves(self) -> None:
        """A normal client still gets normal answers, the same on both nodes."""
        c = self.connect(B)
        name = b"after-%d" % self.seq
        h = cw.decode_handle_untrusted(self.ok(B, c, cw.REQ_OPEN, cw.encode_open(
            cw.OpenReq(name, RW | cw.SA_CKPT_CHECKPOINT_CREATE, attrs(), SA_TIME_END))))
        hh = cw.HANDLE.pack(h)
        self.ok(B, c, cw.REQ_SECTION_CREATE, hh + cw.encode_section_create(
            cw.SectionCreateReq(b"q", SA_TIME_END, SA_TIME_END, 1, b"hello")))
        code, _, datas = cw.decode_read_reply_untrusted(
            self.ok(B, c, cw.REQ_READ, hh + cw.encode_read([(b"q", 0, cw.READ_ALL)])))
        assert (code, datas) == (SA_OK, [b"hello"])
        self.hosts[B].lib_exit(c)
        self.settle()
        assert self.ckpt(A).digest() == self.ckpt(B).digest()


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One random mutation: flip, truncate, extend, splice, overwrite with big integers."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 2:
            buf += rng.randbytes(rng.randint(1, 64))
        elif op == 3 and corpus:
            other = rng.choice(corpus)
            i = rng.randrange(len(buf) + 1)
            buf[i:] = other[rng.randrange(len(other) + 1):]
        elif op == 4 and len(buf) >= 4:
            i = rng.randrange(len(buf) - 3)
            buf[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                                       b"\x00\x00\x00\x00", b"\x80\x00\x00\x00"])
        elif op == 5 and len(buf) >= 8:
            i = rng.randrange(len(buf) - 7)
            buf[i:i + 8] = rng.choice([b"\xff" * 8, b"\x7f" + b"\xff" * 7, bytes(8)])
        else:
            buf[:] = rng.randbytes(rng.randint(0, 200))
    return bytes(buf)


def fuzz_exec(cl: Cluster, rng: random.Random, count: int) -> int:
    """Deliver ``count`` bad messages to both hosts; return how many handlers raised."""
    corpus = [p[28:] for p in cl.sent if len(p) >= 28]
    targets: list[tuple[int, int]] = []
    for host in cl.hosts.values():
        for svc in host.services.values():
            targets += [(svc.service_id, m) for m in svc.exec_handlers]
        break
    ring = cl.hosts[A].ring_id
    assert ring is not None
    before = sum(sum(h.bad_messages.values()) for h in cl.hosts.values())
    for _ in range(count):
        service, msg_id = rng.choice(targets)
        base = rng.choice(corpus) if corpus and rng.random() < 0.8 else b""
        payload = mutate(rng, base, corpus)
        sender = rng.choice([node_of(A), node_of(B)])
        tag = rng.choice([NO_TAG, ReplyTag(node_of(A), rng.randint(0, 5), rng.randint(0, 9)),
                          ReplyTag(node_of(B), 1, 1)])
        flags = rng.choice([FLAG_SYNC, FLAG_RESENT] + [0] * 18)
        if flags == FLAG_RESENT and rng.random() < 0.8:
            # a re-send naming a delivery of this ring or another (maybe a replay)
            payload = ORIGIN.pack(rng.choice([ring.seq, 4, 2**64 - 1]), ring.rep,
                                  rng.randint(0, 50), rng.randint(0, 3)) + payload
        data = encode_ring_message(RingMessage(service, msg_id, flags, tag,
                                               ring.seq if flags == FLAG_SYNC else 0, payload))
        for host in cl.hosts.values():
            host.on_deliver(Deliver(sender, data, ring))
        cl.sched.advance(rng.choice([0.0, 0.0, 0.5, 3.0]))
    cl.settle()
    return sum(sum(h.bad_messages.values()) for h in cl.hosts.values()) - before


def test_ckpt_close_with_one_byte_body_is_dropped_and_counted(caplog):
    """Issue 8 item 3: a CKPT CLOSE with a 1-byte body, claiming another sender."""
    cl = Cluster()
    ring = cl.hosts[A].ring_id
    data = encode_ring_message(RingMessage(cw.CKPT_SERVICE_ID, 2, 0, NO_TAG, 0, b"\x01"))
    for host in cl.hosts.values():
        host.on_deliver(Deliver(node_of(B), data, ring))
    for host in cl.hosts.values():
        assert host.bad_messages["ckpt"] == 1
    assert "dropped bad message 2 from 127.0.0.2" in caplog.text
    cl.assert_serves()


def test_bad_message_log_is_rate_limited(caplog):
    cl = Cluster()
    ring = cl.hosts[A].ring_id
    data = encode_ring_message(RingMessage(cw.CKPT_SERVICE_ID, 2, 0, NO_TAG, 0, b"\x01"))
    for _ in range(200):
        cl.hosts[A].on_deliver(Deliver(node_of(B), data, ring))
    assert cl.hosts[A].bad_messages["ckpt"] == 200
    assert caplog.text.count("dropped bad message") <= 6


@pytest.mark.parametrize("seed", range(FUZZ_SEEDS))
def test_exec_handler_fuzz(seed):
    """Random and mutated payloads for every exec handler: nothing escapes, the
    replicas stay equal, and the hosts still serve normal clients."""
    rng = random.Random(seed)
    cl = Cluster()
    cl.populate()
    raised = fuzz_exec(cl, rng, 400)
    assert raised > 0  # the fuzzer does reach the handlers' decoders
    assert cl.ckpt(A).digest() == cl.ckpt(B).digest()
    cl.assert_serves()


@pytest.mark.parametrize("seed", range(FUZZ_SEEDS))
def test_lib_handler_fuzz(seed):
    """Random bodies for every library handler of every service: only SaError
    (an error response) or IpcProtocolError (the IPC layer drops the client) come out."""
    rng = random.Random(1000 + seed)
    cl = Cluster()
    cl.populate()
    valid = [p[28:] for p in cl.sent if len(p) >= 28]
    for service in (cw.CKPT_SERVICE_ID, _clm_wire.CLM_SERVICE_ID):
        svc = cl.hosts[A].services[service]
        conn = cl.connect(A, service)
        if service == cw.CKPT_SERVICE_ID:
            cl.ok(A, conn, cw.REQ_OPEN, cw.encode_open(
                cw.OpenReq(b"fuzz", RW, None, SA_TIME_END)))
        ids = list(svc.lib_handlers) + [rng.randrange(1 << 16) for _ in range(3)]
        for _ in range(300):
            msg_id = rng.choice(ids)
            body = mutate(rng, rng.choice(valid + [cw.HANDLE.pack(1)]), valid)
            cl.seq += 1
            try:
                cl.hosts[A].lib_request(conn, msg_id, cl.seq, body)
            except IpcProtocolError:
                pass
            cl.sched.advance(rng.choice([0.0, 0.1]))
        cl.hosts[A].lib_exit(conn)
        cl.settle()
    assert cl.ckpt(A).digest() == cl.ckpt(B).digest()
    cl.assert_serves()


# --- CKPT: many handles, retries, limits (in process) --------------------------------------------

from ais.services.ckpt import CLOSE_BATCH, MSG_CLOSE, MSG_CLOSE_MANY, CkptLimits  # noqa: E402
from saf.errors import InvalidParam, NoResources, TryAgain  # noqa: E402


def open_many(cl: Cluster, conn: FakeConn, n: int, prefix: bytes = b"m") -> None:
    host = cl.hosts[A]
    for i in range(n):
        cl.seq += 1
        host.lib_request(conn, cw.REQ_OPEN, cl.seq, cw.encode_open(cw.OpenReq(
            prefix + b"%d" % i, RW | cw.SA_CKPT_CHECKPOINT_CREATE, attrs(), SA_TIME_END)))
        if i % 200 == 199:
            cl.settle()
    cl.settle()
    assert all(f.error == SA_OK for f in conn.responses)


def test_closing_many_handles_is_a_few_ring_messages():
    """Issue 8 item 8: a connection with N open checkpoints closes them with
    ceil(N / CLOSE_BATCH) ring messages, and every node drops the references."""
    cl = Cluster()
    for svc in (cl.ckpt(A), cl.ckpt(B)):
        svc.limits = CkptLimits(max_checkpoints=10_000, max_checkpoint_opens=10_000)
    c = cl.connect(A)
    n = 2 * CLOSE_BATCH + 5
    open_many(cl, c, n)
    assert sum(ck.total_refs for ck in cl.ckpt(B).ckpts.values()) == n
    sent = len(cl.sent)
    cl.hosts[A].lib_exit(c)
    cl.settle()
    closes = [p for p in cl.sent[sent:] if int.from_bytes(p[2:4], "big") in (MSG_CLOSE,
                                                                            MSG_CLOSE_MANY)]
    assert len(closes) == 3
    for addr in (A, B):
        assert sum(ck.total_refs for ck in cl.ckpt(addr).ckpts.values()) == 0
    assert cl.ckpt(A).digest() == cl.ckpt(B).digest()


def test_refused_sends_arm_one_retry_timer():
    """A service's own messages (host.mcast_retried) wait in one queue behind one retry
    timer (each used to arm its own, and every firing re-armed: thousands of timers)."""
    cl = Cluster()
    svc = cl.ckpt(A)
    host = cl.hosts[A]
    refuse = [True]
    real_send = host._send

    def send(msg):
        if refuse[0]:
            raise TryAgain("full")
        real_send(msg)

    host._send = send  # type: ignore[method-assign]
    armed = []
    real_call_later = host.call_later
    host.call_later = lambda d, fn: armed.append(d) or real_call_later(d, fn)  # type: ignore
    for _ in range(500):
        host.mcast_retried(svc, MSG_CLOSE_MANY, b"\0\0\0\0")
    assert len(armed) == 1
    cl.sched.advance(1.0)
    queued = host._outbox[svc.service_id]
    # one timer at a time: about one per retry delay, never one per message
    assert len(armed) <= 1.0 / host.RETRY_DELAY + 2 and len(queued) == 500
    refuse[0] = False
    cl.sched.advance(1.0)
    cl.settle()
    assert not queued


def test_host_spreads_deliveries_over_loop_turns():
    """Past its per-turn budget the host keeps deliveries, in order, for the next turn."""

    class TurnScheduler(ManualScheduler):
        """Each timer run is a new event-loop turn with room for 3 deliveries."""

        budget = 3

        def turn_over(self) -> bool:
            self.budget -= 1
            return self.budget < 0

        def call_later(self, delay, fn):
            def turn():
                self.budget = 3
                fn()
            return super().call_later(delay, turn)

    sched = TurnScheduler()
    bus = FakeBus(sched)
    host = ServiceHost(node_of(A), [CkptService()], sched)
    bus.port(host)
    bus.reconfigure([node_of(A)])
    sched.budget = 10 ** 9
    sched.run()
    sched.budget = 3
    seen = []
    host._deliver = lambda d: seen.append(d.payload)  # type: ignore[method-assign]
    for i in range(10):
        host.on_deliver(Deliver(node_of(A), bytes([i]), host.ring_id))
    assert seen == [bytes([i]) for i in range(3)]
    assert sched.run() == 3  # three more turns: 3 + 3 + 1
    assert seen == [bytes([i]) for i in range(10)]


def test_checkpoint_limits(caplog):
    """Item 11: cluster-wide checkpoints and sections, handles per connection:
    NO_RESOURCES and a log line naming the limit, decided alike on every node."""
    cl = Cluster()
    for svc in (cl.ckpt(A), cl.ckpt(B)):
        svc.limits = CkptLimits(max_checkpoints=3, max_checkpoint_opens=4, max_sections=5)
    c = cl.connect(A)

    def open_(name: bytes, a: Any = None) -> w.Frame:
        flags = RW | (cw.SA_CKPT_CHECKPOINT_CREATE if a is not None else 0)
        return cl.call(A, c, cw.REQ_OPEN, cw.encode_open(cw.OpenReq(name, flags, a,
                                                                    SA_TIME_END)))

    handles = [cw.decode_handle_untrusted(open_(b"k%d" % i, attrs()).body) for i in range(3)]
    assert open_(b"k3", attrs()).error == NoResources.code
    assert "limit max_checkpoints (3 in the cluster) reached" in caplog.text
    assert len(cl.ckpt(B).ckpts) == 3
    assert open_(b"k0").error == SA_OK  # a fourth handle: an existing checkpoint
    assert open_(b"k1").error == NoResources.code
    assert "limit max_checkpoint_opens (4 handles per connection) reached" in caplog.text
    hh = cw.HANDLE.pack(handles[0])
    for i in range(5):
        f = cl.call(A, c, cw.REQ_SECTION_CREATE, hh + cw.encode_section_create(
            cw.SectionCreateReq(b"s%d" % i, SA_TIME_END, SA_TIME_END, 1, b"")))
        assert f.error == (SA_OK if i < 5 else NoResources.code)
    h1 = cw.HANDLE.pack(handles[1])
    f = cl.call(A, c, cw.REQ_SECTION_CREATE, h1 + cw.encode_section_create(
        cw.SectionCreateReq(b"x", SA_TIME_END, SA_TIME_END, 1, b"")))
    assert f.error == NoResources.code
    assert "limit max_sections (5 in the cluster) reached" in caplog.text
    # Freed sections count again.
    assert cl.call(A, c, cw.REQ_SECTION_DELETE, hh + b"s0").error == SA_OK
    assert cl.call(A, c, cw.REQ_SECTION_CREATE, h1 + cw.encode_section_create(
        cw.SectionCreateReq(b"x", SA_TIME_END, SA_TIME_END, 1, b""))).error == SA_OK
    assert cl.ckpt(A)._sections_total() == 5 == sum(
        len(ck.sections) for ck in cl.ckpt(B).ckpts.values())
    assert cl.ckpt(A).digest() == cl.ckpt(B).digest()


def test_too_large_section_size_is_logged(caplog):
    cl = Cluster()
    c = cl.connect(A)
    f = cl.call(A, c, cw.REQ_OPEN, cw.encode_open(cw.OpenReq(
        b"big", RW | cw.SA_CKPT_CHECKPOINT_CREATE,
        attrs(max_section_size=cw.MAX_IO_BYTES + 1, checkpoint_size=cw.MAX_IO_BYTES + 1),
        SA_TIME_END)))
    assert f.error == InvalidParam.code
    assert ("open of b'big' refused: SA_ERR_INVALID_PARAM (7): maxSectionSize must be at most "
            f"{cw.MAX_IO_BYTES}") in caplog.text


# --- the client cases over real Unix sockets --------------------------------------------------

import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from helpers_exec import ExecThread  # noqa: E402
from saf import clm  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LimitedExec(ExecThread):
    """ExecThread with CLM and CKPT and the given IPC limits."""

    def __init__(self, sock_dir: str, limits: Any) -> None:
        super().__init__(sock_dir, [A], group=None, mode=0o777)
        self.limits = limits

    def make_host(self, addr: str, sched: Any) -> ServiceHost:
        return ServiceHost(node_of(addr), [ClmService("lim", boot_timestamp=BOOT),
                                           CkptService()], sched)

    def _add(self, addr: str, sched: Any, server_cls: Any) -> None:
        host = self.make_host(addr, sched)
        assert self.bus is not None
        self.bus.port(host)
        srv = server_cls(host, self.socket_of(addr), group=None, mode=0o777,
                         limits=self.limits)
        srv.start()
        self.hosts[addr] = host
        self.servers[addr] = srv


def limited(sock_dir: str, monkeypatch, **kw: Any) -> LimitedExec:
    from ais.ipc import IpcLimits
    ex = LimitedExec(sock_dir, IpcLimits(**kw)).start()
    monkeypatch.setenv("AIS_SOCKET", ex.socket_of(A))
    return ex


def raw_client(path: str, service: int = cw.CKPT_SERVICE_ID) -> socket.socket:
    """A request channel that never opens its callback channel."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(w.encode_frame(w.Frame(service, w.MSG_HELLO, 0, 1,
                                     w.encode_hello(w.Hello(w.ROLE_REQUEST, 0)))))
    buf = w.FrameBuffer()
    while not buf.has_frame():
        data = s.recv(65536)
        if not data:
            raise ConnectionResetError("closed during the handshake")
        buf.feed(data)
    assert buf.next_frame().error == SA_OK
    return s


def read_until_eof(s: socket.socket, limit: int = 64 << 20,
                   max_frames: int = 1 << 30) -> list[w.Frame]:
    """Frames until EOF (or ``max_frames`` of them)."""
    buf = w.FrameBuffer()
    frames: list[w.Frame] = []
    total = 0
    while total < limit and len(frames) < max_frames:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        total += len(data)
        buf.feed(data)
        while (f := buf.next_frame()) is not None:
            frames.append(f)
    return frames


def server_state(ex: LimitedExec, what: str) -> Any:
    srv = ex.servers[A]
    return ex.call(lambda: {"conns": srv.connections, "buffered": srv.buffered,
                            "sockets": srv.sockets}[what])


def async_open(seq: int) -> bytes:
    return w.encode_frame(w.Frame(cw.CKPT_SERVICE_ID, cw.REQ_OPEN_ASYNC, 0, seq, cw.encode_open(
        cw.OpenReq(b"absent", RW, None, SA_TIME_END, invocation=seq, is_async=True))))


@pytest.mark.timeout(60)
def test_callbacks_before_the_callback_channel_are_bounded(sock_dir, monkeypatch, caplog):
    """Item 9: async requests answered before the client opens its callback channel.
    Requests past half the limit get TRY_AGAIN; a burst past the limit closes the
    connection; nothing more is held."""
    ex = limited(sock_dir, monkeypatch, max_queued_callbacks=40)
    try:
        s = raw_client(ex.socket_of(A))
        buf = w.FrameBuffer()
        codes = []
        for seq in range(2, 200):  # one at a time: each answered before the next
            s.sendall(async_open(seq))
            while not buf.has_frame():
                buf.feed(s.recv(65536))
            codes.append(buf.next_frame().error)
            ex.settle()
        conn = ex.call(lambda: next(iter(ex.servers[A]._conns.values())))
        assert ex.call(lambda: len(conn._early)) <= 20
        assert codes.count(TryAgain.code) >= 170 and codes[:10] == [SA_OK] * 10
        assert "limit max_queued_callbacks (40 frames) half reached" in caplog.text
        s.close()
        # A burst of pipelined requests: refused with TRY_AGAIN, or the connection
        # closed at the limit; never more held than the limit allows.
        s = raw_client(ex.socket_of(A))
        conn = ex.call(lambda: max(ex.servers[A]._conns.values(), key=lambda c: c.conn_id))
        s.sendall(b"".join(async_open(seq) for seq in range(2, 400)))
        frames = read_until_eof(s, max_frames=398)
        assert len(frames) <= 398
        refused = sum(f.error == TryAgain.code for f in frames)
        # Requests read in one burst are all in flight before their callbacks come:
        # then the limit closes the connection when they do.
        ex.settle()
        assert refused or (ex.wait_until(lambda: conn.closed) and
                           f"closing connection 2 (pid {os.getpid()}): limit "
                           "max_queued_callbacks" in caplog.text)
        assert ex.call(lambda: conn.peak_bytes) <= 40 * (w.FRAME_HEADER.size + 12)
        s.close()
        # Past the limit itself (callbacks the client caused earlier): closed, and said so.
        s = raw_client(ex.socket_of(A))
        conn = ex.call(lambda: next(iter(ex.servers[A]._conns.values())))
        ex.call(lambda: [conn.send_callback(cw.CB_OPEN, b"x" * 12) for _ in range(41)])
        read_until_eof(s)
        s.close()
        assert (f"closing connection 3 (pid {os.getpid()}): limit max_queued_callbacks "
                "(40 callbacks queued before the callback channel opened) reached"
                in caplog.text)
        assert ex.wait_until(lambda: ex.servers[A].connections == 0)
        assert clm.cluster_node_get(0, 0).node_name == b"127.0.0.1"
    finally:
        ex.stop()


@pytest.mark.timeout(60)
def test_partial_frame_is_dropped_after_frame_timeout(sock_dir, monkeypatch, caplog):
    """Item 10: a frame left one byte short of 8 MiB is not held for ever."""
    ex = limited(sock_dir, monkeypatch, frame_timeout=0.5)
    try:
        s = raw_client(ex.socket_of(A))
        body = w.MAX_FRAME - w.FRAME_HEADER.size
        header = w.FRAME_HEADER.pack(w.MAX_FRAME, cw.CKPT_SERVICE_ID, cw.REQ_WRITE, 0, 9)
        s.sendall(header + bytes(body - 1))
        assert ex.wait_until(lambda: ex.servers[A].buffered >= 7 << 20)
        read_until_eof(s)  # the server closes it
        s.close()
        assert server_state(ex, "buffered") == 0
        assert "limit frame_timeout (0.5 s) reached inside a frame" in caplog.text
        # An idle client between frames is left alone.
        with clm.initialize() as h:
            time.sleep(1.0)
            h.cluster_track_start(1)
    finally:
        ex.stop()


@pytest.mark.timeout(60)
def test_partial_frames_share_one_budget(sock_dir, monkeypatch, caplog):
    """Item 10: incomplete frames of all connections together are bounded."""
    ex = limited(sock_dir, monkeypatch, max_buffered_bytes=3 << 20)
    socks = []
    try:
        header = w.FRAME_HEADER.pack(w.MAX_FRAME, cw.CKPT_SERVICE_ID, cw.REQ_WRITE, 0, 9)
        for _ in range(4):
            s = raw_client(ex.socket_of(A))
            try:
                s.sendall(header + bytes(1 << 20))
            except OSError:
                pass
            socks.append(s)
        assert ex.wait_until(lambda: "max_buffered_bytes" in caplog.text)
        assert server_state(ex, "buffered") <= 3 << 20
        assert "limit max_buffered_bytes (3145728 bytes of incomplete frames, all " \
               "clients) reached" in caplog.text
        for s in socks:
            s.close()
        assert ex.wait_until(lambda: ex.servers[A].buffered == 0)
    finally:
        for s in socks:
            s.close()
        ex.stop()


@pytest.mark.timeout(60)
def test_max_connections(sock_dir, monkeypatch, caplog):
    ex = limited(sock_dir, monkeypatch, max_connections=3)
    handles = [clm.initialize() for _ in range(3)]
    try:
        with pytest.raises(NoResources):
            clm.initialize()
        assert "limit max_connections (3) reached" in caplog.text
        handles.pop().finalize()
        assert ex.wait_until(lambda: ex.servers[A].connections == 2)
        handles.append(clm.initialize())
        assert handles[-1].cluster_node_get_async(1, 0) is None
    finally:
        for h in handles:
            h.finalize()
        ex.stop()


@pytest.mark.timeout(90)
def test_accept_at_the_descriptor_limit(sock_dir):
    """Item 12: out of descriptors, accept failures are logged (rate-limited) and
    accepting pauses; no traceback, and clients are served again afterwards."""
    import resource

    path = os.path.join(sock_dir, "lim.sock")
    env = dict(os.environ, PYTHONPATH=ROOT)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "test", "helpers_exec.py"),
                             "serve", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=low_limit)
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for _ in range(120):  # silent sockets: accepted until the descriptors run out
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            socks.append(s)
        time.sleep(2.0)  # let the server hit EMFILE many times over
        for s in socks:
            s.close()
        socks.clear()
        env_c = dict(env, AIS_SOCKET=path)
        out = subprocess.run([sys.executable, "-c", "from saf import clm; "
                              "print(clm.cluster_node_get(0, 0).node_name.decode())"],
                             env=env_c, capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "127.0.0.1", out.stderr
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err[:2000]
    assert "cannot accept a client connection: Too many open files" in err
    assert err.count("cannot accept a client connection") <= 7, err[:2000]


# --- the client cases against real executives ------------------------------------------------

from pathlib import Path  # noqa: E402

from cluster import Cluster as ExecCluster  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def limits_conf(**kw: Any) -> str:
    # Cluster.write_conf puts ``extra`` inside ``aisexec {``: close it, add ``limits``.
    return "}\nlimits {\n" + "".join(f"\t{k}: {v}\n" for k, v in kw.items())


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_real_executive_bounds_callbacks_and_partial_frames(tmp_path: Path):
    """Items 9 and 10 on a real executive: a client that never opens its callback
    channel, and 24 connections each leaving a frame one byte short of 8 MiB,
    leave the executive's memory where it was (old code: +200 MB held)."""
    with ExecCluster(tmp_path, 1) as cl:
        cl.start(1, extra=limits_conf(max_queued_callbacks=64, frame_timeout=1500,
                                      max_buffered_bytes=64 << 20))
        cl.wait_ring([1])
        node = cl.nodes[1]
        pid = node.proc.pid
        # Warm up the code paths once, then take the baseline.
        s = raw_client(node.socket)
        s.sendall(async_open(2))
        s.close()
        time.sleep(0.5)
        base = rss_kib(pid)
        s = raw_client(node.socket)
        codes = []
        buf = w.FrameBuffer()
        for seq in range(2, 3000):
            s.sendall(async_open(seq))
            try:
                while not buf.has_frame():
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionResetError
                    buf.feed(data)
            except ConnectionResetError:
                break
            codes.append(buf.next_frame().error)
        s.close()
        assert TryAgain.code in codes or len(codes) < 2998
        header = w.FRAME_HEADER.pack(w.MAX_FRAME, cw.CKPT_SERVICE_ID, cw.REQ_WRITE, 0, 9)
        socks = []
        for _ in range(24):
            s = raw_client(node.socket)
            try:
                s.sendall(header + bytes(w.MAX_FRAME - w.FRAME_HEADER.size - 1))
            except OSError:
                pass  # refused: the buffered-bytes budget was full
            socks.append(s)
        peak = rss_kib(pid)
        for s in socks:
            read_until_eof(s)  # each is closed: frame_timeout or max_buffered_bytes
            s.close()
        time.sleep(1.0)
        after = rss_kib(pid)
        log = node.log_text()
        assert "limit max_queued_callbacks" in log
        assert "limit frame_timeout (1.5 s) reached inside a frame" in log
        assert "limit max_buffered_bytes (67108864 bytes" in log
        assert "Traceback" not in (node.dir / "stdout.txt").read_text()
        print(f"RSS KiB: base {base}, with 24 partial frames {peak}, after {after}")
        assert peak - base < 120 * 1024  # 64 MiB budget + slack, not 24 x 8 MiB
        assert after - base < 40 * 1024
        out = cl.client(1, "from saf import clm; print(clm.cluster_node_get(0, 0).node_name)")
        assert out.stdout.strip() == "b'127.0.0.1'", out.stderr


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_executives_close_30000_checkpoints_without_losing_the_ring(tmp_path: Path):
    """Item 8: finalizing a handle with 30,000 open checkpoints; the ring keeps its
    token (no new ring forms), reads elsewhere go on, a retained checkpoint stays."""
    script = r"""
import sys, time
from saf import ckpt
from saf import _ckpt_wire as cw
n = int(sys.argv[1])
A = cw.CreationAttributes(cw.SA_CKPT_WR_ALL_REPLICAS, 1000, 1000 * 10**9, 1, 1000, 10)
h = ckpt.initialize()
keep = h.checkpoint_open(b"keeper", cw.SA_CKPT_CHECKPOINT_CREATE | 3, A)
keep.close()
hs = [h.checkpoint_open(b"c%d" % i, cw.SA_CKPT_CHECKPOINT_CREATE | 3, A) for i in range(n)]
print("opened", flush=True)
h.finalize()
print("finalized", flush=True)
"""
    probe = r"""
from saf import ckpt
h = ckpt.initialize()
c = h.checkpoint_open(b"keeper", 1, timeout=60 * 10**9)
print(c.status_get().memory_used)
"""
    with ExecCluster(tmp_path, 2) as cl:
        for n in (1, 2):
            cl.start(n, extra=limits_conf(max_checkpoints=40000, max_checkpoint_opens=40000))
        ring = cl.wait_ring([1, 2])
        out = cl.client(1, script, "30000", timeout=600)
        assert out.stdout.split() == ["opened", "finalized"], out.stderr
        for _ in range(20):
            assert cl.client(2, probe, timeout=120).returncode == 0
            time.sleep(0.5)
        assert cl.wait_ring([1, 2]) == ring
        assert [r for r in cl.nodes[2].rings()][-1][0] == ring
        assert len(cl.nodes[2].rings()) == 1
