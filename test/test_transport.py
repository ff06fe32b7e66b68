"""Tests of ais.totem.transport over real sockets.

Only loopback (127.0.0.N, udpu) is used on the host; multicast runs only inside
network namespaces the test creates and always deletes (DESIGN.md, "Safety
rules").  Every wait is bounded.

The first group drives the transport with ``StubSrp``, a scripted stand-in for
``Srp`` that returns the actions a test chooses; the later groups use the real
``ais.totem.srp.Srp`` when it exists.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from pathlib import Path

import gevent
import gevent.socket
import pytest

from ais.totem.crypto import Crypto
from ais.totem.events import (
    Action, CancelTimer, ConfChange, Deliver, RingId, Send, SendQueueFull, Stable, StartTimer,
    TimerKind, TotemConfig, node_of)
from ais.totem import transport as transport_module
from ais.totem.transport import (STREAM_FIRST, STREAM_MAX, BusyPoll, Transport,
                                 TransportState, load_ring_seq, save_ring_seq)

KEY = bytes(range(128))
OTHER_KEY = bytes(range(1, 129))
LOGGER = "ais.totem.transport"


# -- helpers -------------------------------------------------------------------

def free_port(hosts: Iterable[str] = ("127.0.0.1", "127.0.0.2", "127.0.0.3",
                                       "127.0.0.4")) -> int:
    """A UDP port free on all ``hosts`` right now (a small race is accepted)."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        socks = []
        try:
            for h in hosts:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((h, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port")


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``pred`` (yielding to gevent) until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        gevent.sleep(step)
    return pred()


def udp_sock(host: str, port: int) -> gevent.socket.socket:
    s = gevent.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    return s


def recv_all(sock: gevent.socket.socket, timeout: float = 0.3) -> list[bytes]:
    """Every datagram that arrives until ``timeout`` seconds of silence."""
    out = []
    sock.settimeout(timeout)
    while len(out) < 1000:
        try:
            out.append(sock.recvfrom(70000)[0])
        except TimeoutError:
            break
    return out


class StubSrp:
    """A scripted stand-in for ``Srp``: records its inputs, returns chosen actions."""

    def __init__(self, addr: str, *,
                 on_start: Callable[[float], list[Action]] = lambda now: [],
                 on_receive: Callable[[bytes, float], list[Action]] = lambda d, now: [],
                 on_timer: Callable[[TimerKind, float], list[Action]] = lambda k, now: []):
        self.node_id = node_of(addr)
        self.max_ring_seq = 0
        self.quiet_read = False
        self.awaiting = False
        self.received: list[bytes] = []
        self.fired: list[tuple[TimerKind, float]] = []
        self._on_start, self._on_receive, self._on_timer = on_start, on_receive, on_timer

    def start(self, now: float) -> list[Action]:
        return self._on_start(now)

    def receive(self, data: bytes, now: float) -> list[Action]:
        self.received.append(data)
        return self._on_receive(data, now)

    def receive_many(self, datas: Sequence[bytes], now: float) -> list[Action]:
        return [a for d in datas for a in self.receive(d, now)]

    def timer(self, kind: TimerKind, now: float) -> list[Action]:
        self.fired.append((kind, now))
        return self._on_timer(kind, now)

    def mcast(self, payload: bytes, now: float, awaited: bool = False) -> list[Action]:
        return [Send(payload)]


class _CountingHub:
    """The gevent hub, counting the loop timers the transport creates."""

    class _Loop:
        def __init__(self, loop: Any) -> None:
            self._loop, self.timers = loop, 0

        def timer(self, *a: Any, **kw: Any) -> Any:
            self.timers += 1
            return self._loop.timer(*a, **kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._loop, name)

    def __init__(self, hub: Any) -> None:
        self._hub, self.loop = hub, self._Loop(hub.loop)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hub, name)


class Harness:
    """One transport plus what its callbacks saw."""

    def __init__(self, srp: StubSrp | object, addr: str, port: int, members: list[str],
                 key: bytes = KEY, **kw: object) -> None:
        self.delivered: list[Deliver] = []
        self.confs: list[ConfChange] = []
        self.events: list[object] = []
        self.fatal: list[BaseException] = []
        self.t = Transport(
            srp, Crypto(key), bind_addr=addr, port=port,  # type: ignore[arg-type]
            mode="udpu", members=members,
            on_deliver=lambda d: (self.delivered.append(d), self.events.append(d)),
            on_confchg=lambda c: (self.confs.append(c), self.events.append(c)),
            on_fatal=self.fatal.append, **kw)  # type: ignore[arg-type]


@pytest.fixture
def cleanup() -> Iterable[list[object]]:
    """Things with stop()/close() to shut down after the test, even on failure."""
    things: list[object] = []
    yield things
    for x in reversed(things):
        getattr(x, "stop", getattr(x, "close", lambda: None))()


# -- stand-in tests ------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_callbacks_of_timers_and_mcast_may_block(cleanup: list) -> None:
    """What a timer or an ``mcast`` brings is performed from the event loop's hub,
    where nothing may block; a delivery there reaches services that may (AMF
    starts component processes), so it runs in a greenlet: a callback that
    yields is no ring failure, and what it delivers arrives in order."""
    port = free_port()
    rid = RingId(8, node_of("127.0.0.1"))
    srp = StubSrp("127.0.0.1",
                  on_start=lambda now: [StartTimer(TimerKind.JOIN, now + 0.01)],
                  on_timer=lambda k, now: [Deliver(1, b"from a timer", rid)])
    srp.mcast = lambda payload, now, awaited=False: [Deliver(1, payload, rid)]  # type: ignore
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    got: list[bytes] = []

    def blocking(d: Deliver) -> None:
        gevent.sleep(0.001)  # (a process start waits on a pipe like this)
        got.append(d.payload)
    h.t.on_deliver = blocking
    h.t.start()
    gevent.sleep(0.05)
    h.t.mcast(b"one")
    h.t.mcast(b"two")
    gevent.sleep(0.05)
    assert h.fatal == []
    assert got == [b"from a timer", b"one", b"two"]


@pytest.mark.timeout(20)
def test_packets_go_encrypted_to_members_but_not_self(cleanup: list) -> None:
    port = free_port()
    raw2 = udp_sock("127.0.0.2", port)
    raw3 = udp_sock("127.0.0.3", port)
    cleanup += [raw2, raw3]
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    cleanup.append(h.t)
    h.t.start()
    marker = b"PLAINTEXT-MARKER " * 10
    h.t.mcast(marker)  # the stub turns this into Send(dest=None)
    got2, got3 = recv_all(raw2), recv_all(raw3)
    assert len(got2) == len(got3) == 1
    for pkt in (got2[0], got3[0]):
        assert b"PLAINTEXT-MARKER" not in pkt
        assert Crypto(KEY).open_untrusted(pkt) == marker
    assert got2[0] == got3[0]  # one seal for the whole fan-out
    # A unicast Send goes to that node only; one addressed to ourselves nowhere.
    h.t._perform([Send(b"just three", dest=node_of("127.0.0.3")),
                  Send(b"to myself", dest=node_of("127.0.0.1"))])
    assert recv_all(raw2) == []
    (uni,) = recv_all(raw3)
    assert Crypto(KEY).open_untrusted(uni) == b"just three"
    assert srp.received == []  # nothing looped back to the sender
    assert h.t.stats["tx_packets"] == 3
    assert h.fatal == []


@pytest.mark.timeout(20)
def test_receive_path_opens_and_feeds_srp(cleanup: list) -> None:
    port = free_port()
    peer = udp_sock("127.0.0.2", port)
    cleanup.append(peer)
    srp = StubSrp("127.0.0.1",
                  on_receive=lambda d, now: [Deliver(node_of("127.0.0.2"), d, RingId(1, 1))])
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    sender = Crypto(KEY)
    for i in range(20):
        peer.sendto(sender.seal(b"m%d" % i), ("127.0.0.1", port))
    assert wait_until(lambda: len(h.delivered) == 20)
    assert [d.payload for d in h.delivered] == [b"m%d" % i for i in range(20)]
    assert h.t.stats["rx_packets"] == 20 and h.t.stats["invalid_digest"] == 0


@pytest.mark.timeout(30)
def test_garbage_and_wrong_key_dropped_counted_logged(cleanup: list,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    offset = [0.0]
    port = free_port()
    peer = udp_sock("127.0.0.2", port)
    cleanup.append(peer)
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"],
                clock=lambda: time.monotonic() + offset[0])
    cleanup.append(h.t)
    h.t.start()
    rng = random.Random(7)
    bad = [rng.randbytes(n) for n in (0, 1, 16, 31, 32, 33, 100, 1441, 9000)]
    bad += [Crypto(OTHER_KEY).seal(b"hello from another cluster") for _ in range(21)]
    for pkt in bad:
        peer.sendto(pkt, ("127.0.0.1", port))
    assert wait_until(lambda: h.t.stats["invalid_digest"] == len(bad))
    lines = [r.getMessage() for r in caplog.records if "invalid digest" in r.getMessage()]
    assert 1 <= len(lines) <= 3  # rate-limited
    # Still serving: a good packet gets through.
    peer.sendto(Crypto(KEY).seal(b"good"), ("127.0.0.1", port))
    assert wait_until(lambda: srp.received == [b"good"])
    # In the next window the suppressed count is reported.
    offset[0] += 11.0
    peer.sendto(b"garbage again", ("127.0.0.1", port))
    assert wait_until(lambda: h.t.stats["invalid_digest"] == len(bad) + 1)
    summary = [r.getMessage() for r in caplog.records if "suppressed" in r.getMessage()]
    assert summary and "invalid digest" in summary[-1] and str(len(bad) - 3) in summary[-1]
    assert h.t.state is TransportState.RUNNING and h.fatal == []


@pytest.mark.timeout(20)
def test_replayed_packet_dropped_quietly(cleanup: list, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    port = free_port()
    peer = udp_sock("127.0.0.2", port)
    cleanup.append(peer)
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    pkt = Crypto(KEY).seal(b"once")
    peer.sendto(pkt, ("127.0.0.1", port))
    peer.sendto(pkt, ("127.0.0.1", port))
    assert wait_until(lambda: h.t.stats["replayed"] == 1)
    assert srp.received == [b"once"]
    assert not any("invalid digest" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(20)
def test_timers_fire_rearm_and_cancel(cleanup: list) -> None:
    port = free_port()
    joins = []

    def on_timer(kind: TimerKind, now: float) -> list[Action]:
        if kind is TimerKind.JOIN:
            joins.append(now)
            if len(joins) < 4:
                # Cancel CONSENSUS each time; it must never fire.
                return [CancelTimer(TimerKind.CONSENSUS), StartTimer(TimerKind.JOIN, now + 0.05)]
        return []

    def on_start(now: float) -> list[Action]:
        return [StartTimer(TimerKind.JOIN, now + 0.05),
                StartTimer(TimerKind.CONSENSUS, now + 0.12),
                StartTimer(TimerKind.TOKEN_LOSS, now + 0.1),
                # re-arming replaces: only the later one fires
                StartTimer(TimerKind.MERGE_DETECT, now + 0.05),
                StartTimer(TimerKind.MERGE_DETECT, now + 0.3),
                # armed and cancelled at once
                StartTimer(TimerKind.WAKE, now + 0.01),
                CancelTimer(TimerKind.WAKE)]

    srp = StubSrp("127.0.0.1", on_start=on_start, on_timer=on_timer)
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    t0 = time.monotonic()
    h.t.start()
    assert wait_until(lambda: len(joins) == 4, timeout=5)
    gevent.sleep(0.4)
    kinds = [k for k, _ in srp.fired]
    assert kinds.count(TimerKind.JOIN) == 4
    assert kinds.count(TimerKind.TOKEN_LOSS) == 1
    assert kinds.count(TimerKind.MERGE_DETECT) == 1
    assert TimerKind.CONSENSUS not in kinds and TimerKind.WAKE not in kinds
    merge_at = next(now for k, now in srp.fired if k is TimerKind.MERGE_DETECT)
    assert merge_at - t0 >= 0.3
    # Never early, and spaced by the re-arm interval.
    assert all(b - a >= 0.05 for a, b in zip(joins, joins[1:]))
    assert h.fatal == [] and h.t._timers == {}


@pytest.mark.timeout(20)
def test_a_timer_moved_later_on_every_visit_fires_once_at_its_last_time(
        cleanup: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token-loss pattern: re-armed later again and again, it keeps the loop
    timer it has (re-arming that one for the rest when it falls due) and fires
    once, never before its latest time; a timer moved earlier fires early."""
    port = free_port()
    moves: list[float] = []  # when TOKEN_LOSS was last moved, and to what

    def on_timer(kind: TimerKind, now: float) -> list[Action]:
        if kind is TimerKind.JOIN and len(moves) < 12:
            moves.append(now + 0.1)
            return [StartTimer(TimerKind.TOKEN_LOSS, now + 0.1),
                    StartTimer(TimerKind.JOIN, now + 0.02)]
        return []

    def on_start(now: float) -> list[Action]:
        moves.append(now + 0.1)
        return [StartTimer(TimerKind.TOKEN_LOSS, now + 0.1),
                StartTimer(TimerKind.JOIN, now + 0.02),
                StartTimer(TimerKind.WAKE, now + 0.3),
                StartTimer(TimerKind.WAKE, now + 0.05)]  # moved earlier

    srp = StubSrp("127.0.0.1", on_start=on_start, on_timer=on_timer)
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    t0 = time.monotonic()
    hub = _CountingHub(gevent.get_hub())
    monkeypatch.setattr(transport_module, "get_hub", lambda: hub)
    h.t.start()
    assert wait_until(lambda: any(k is TimerKind.TOKEN_LOSS for k, _ in srp.fired), timeout=5)
    gevent.sleep(0.2)
    loss = [now for k, now in srp.fired if k is TimerKind.TOKEN_LOSS]
    wake = [now for k, now in srp.fired if k is TimerKind.WAKE]
    assert len(moves) == 12 and len(loss) == 1 and loss[0] >= moves[-1]
    assert len(wake) == 1 and 0.05 <= wake[0] - t0 < 0.3
    # 12 moves of TOKEN_LOSS, 12 JOINs, 2 WAKEs: replacing TOKEN_LOSS's loop
    # timer at each move would take 26; kept, it is re-armed when it falls due
    # (18-22 timers in all here, more when a busy machine runs the loop late)
    assert hub.loop.timers <= 12 + 2 + 9, hub.loop.timers
    assert h.fatal == [] and h.t._timers == {}


@pytest.mark.timeout(20)
def test_stop_cancels_timers(cleanup: list) -> None:
    port = free_port()
    srp = StubSrp("127.0.0.1",
                  on_start=lambda now: [StartTimer(TimerKind.TOKEN_LOSS, now + 0.1)])
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    h.t.start()
    h.t.stop()
    h.t.stop()  # idempotent
    gevent.sleep(0.3)
    assert srp.fired == [] and h.fatal == []
    assert h.t.state is TransportState.STOPPED
    # The port is free again.
    udp_sock("127.0.0.1", port).close()


@pytest.mark.timeout(20)
def test_callbacks_in_order_and_mcast_from_callback(cleanup: list) -> None:
    port = free_port()
    raw2 = udp_sock("127.0.0.2", port)
    cleanup.append(raw2)
    ring = RingId(4, node_of("127.0.0.1"))
    me = node_of("127.0.0.1")

    def on_start(now: float) -> list[Action]:
        return [ConfChange(False, ring, (me,), (), (me,)),
                Deliver(me, b"a", ring), Deliver(me, b"b", ring),
                ConfChange(True, ring, (me,)), Deliver(me, b"c", ring)]

    srp = StubSrp("127.0.0.1", on_start=on_start)
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    seen: list[bytes] = []

    def on_deliver(d: Deliver) -> None:
        seen.append(d.payload)
        if d.payload == b"a":
            # A service replying from inside a delivery: performed after the
            # current actions, not in the middle of them.
            h.t.mcast(b"reply")
            gevent.sleep(0.01)  # a callback that yields must not reorder anything
        h.events.append(d)

    h.t.on_deliver = on_deliver
    h.t.start()
    assert seen == [b"a", b"b", b"c"]
    assert [type(e).__name__ for e in h.events] == [
        "ConfChange", "Deliver", "Deliver", "ConfChange", "Deliver"]
    (pkt,) = recv_all(raw2)
    assert Crypto(KEY).open_untrusted(pkt) == b"reply"


@pytest.mark.timeout(20)
def test_sends_go_out_before_the_deliveries_beside_them(cleanup: list) -> None:
    """A token forwarded in the same visit as local deliveries leaves first: the
    services' delivery work is not on the ring's path.  Nothing crosses a ConfChange."""
    port = free_port()
    raw2 = udp_sock("127.0.0.2", port)
    cleanup.append(raw2)
    me, peer = node_of("127.0.0.1"), node_of("127.0.0.2")
    ring = RingId(8, me)
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    sent_when: list[tuple[bytes, int]] = []
    h.t.on_deliver = lambda d: sent_when.append((d.payload, h.t.stats["tx_packets"]))
    h.t.on_confchg = lambda c: sent_when.append((b"conf", h.t.stats["tx_packets"]))
    h.t._perform([Deliver(me, b"a", ring), Stable(ring, 1), Deliver(me, b"b", ring),
                  Send(b"token", dest=peer),
                  ConfChange(False, ring, (me,), (), (me,)), Deliver(me, b"c", ring),
                  Send(b"after conf", dest=peer)])
    # both deliveries waited for the token; the ConfChange for nothing after it
    assert sent_when == [(b"a", 1), (b"b", 1), (b"conf", 1), (b"c", 2)]
    got = [Crypto(KEY).open_untrusted(p) for p in recv_all(raw2)]
    assert got == [b"token", b"after conf"]
    assert h.fatal == []


@pytest.mark.timeout(20)
def test_send_errors_are_ignored(cleanup: list, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    port = free_port()
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    h.t.mcast(b"x" * 70000)  # larger than any UDP datagram: EMSGSIZE
    assert wait_until(lambda: h.t.stats["send_errors"] == 1)
    assert any("failed" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    h.t.mcast(b"fine")
    assert wait_until(lambda: h.t.stats["tx_packets"] == 1) and h.fatal == []


@pytest.mark.timeout(20)
def test_bug_in_receive_path_is_fatal(cleanup: list) -> None:
    port = free_port()
    peer = udp_sock("127.0.0.2", port)
    cleanup.append(peer)

    def explode(data: bytes, now: float) -> list[Action]:
        raise RuntimeError("bug in the core")

    h = Harness(StubSrp("127.0.0.1", on_receive=explode), "127.0.0.1", port,
                ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    peer.sendto(Crypto(KEY).seal(b"boom"), ("127.0.0.1", port))
    assert wait_until(lambda: h.fatal != [])
    assert isinstance(h.fatal[0], RuntimeError)
    assert h.t.state is TransportState.STOPPED


@pytest.mark.timeout(20)
def test_bug_in_timer_is_fatal(cleanup: list) -> None:
    port = free_port()

    def explode(kind: TimerKind, now: float) -> list[Action]:
        raise ValueError("bug in timer handling")

    h = Harness(StubSrp("127.0.0.1", on_timer=explode,
                        on_start=lambda now: [StartTimer(TimerKind.JOIN, now + 0.01)]),
                "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    assert wait_until(lambda: h.fatal != [])
    assert isinstance(h.fatal[0], ValueError)


@pytest.mark.timeout(20)
def test_bind_conflict_raises(cleanup: list) -> None:
    port = free_port()
    a = Harness(StubSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    b = Harness(StubSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup += [a.t, b.t]
    a.t.start()
    with pytest.raises(OSError):
        b.t.start()


def test_constructor_checks_mode() -> None:
    srp = StubSrp("127.0.0.1")
    kw = dict(bind_addr="127.0.0.1", port=1, on_deliver=print, on_confchg=print)
    with pytest.raises(ValueError):
        Transport(srp, Crypto(KEY), mode="tcp", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Transport(srp, Crypto(KEY), mode="udp", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Transport(srp, Crypto(KEY), mode="udpu", **kw)  # type: ignore[arg-type]


@pytest.mark.timeout(20)
def test_ring_seq_persisted_on_regular_confchange(cleanup: list, tmp_path: Path) -> None:
    state = tmp_path / "ringseq"
    assert load_ring_seq(str(state)) == 0
    port = free_port()
    me = node_of("127.0.0.1")
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"], state_file=str(state))
    cleanup.append(h.t)
    h.t.start()
    srp.max_ring_seq = 8
    h.t._perform([ConfChange(True, RingId(4, me), (me,))])
    assert not state.exists()  # transitional configurations are not persisted
    h.t._perform([ConfChange(False, RingId(8, me), (me,))])
    assert load_ring_seq(str(state)) == 8
    srp.max_ring_seq = 12
    h.t._perform([ConfChange(False, RingId(12, me), (me,))])
    assert state.read_text() == "12\n" and load_ring_seq(str(state)) == 12
    assert not (tmp_path / "ringseq.tmp").exists()
    state.write_text("garbage")
    assert load_ring_seq(str(state)) == 0
    save_ring_seq(str(state), 99)
    assert load_ring_seq(str(state)) == 99


def test_ring_state_file_is_sanity_checked_at_load(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Issue 8.1: a saved lie (2**64-1) once crashed the node at every start."""
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "ringseq"
    for text, want in ((f"{2**64 - 1}\n", 0), (f"{2**64 - 8}\n", 0), (f"{2**62 + 4}\n", 0),
                       (f"{2**62}\n", 2**62), ("-4\n", 0), ("1" * 200, 0), ("40\n", 40)):
        state.write_text(text)
        caplog.clear()
        assert load_ring_seq(str(state)) == want, text
        if want == 0:
            assert len(caplog.records) == 1 and str(state) in caplog.records[0].getMessage()
    state.write_bytes(b"\xff\xfe\x00binary")
    assert load_ring_seq(str(state)) == 0
    state.unlink()
    state.mkdir()  # a directory in its place
    assert load_ring_seq(str(state)) == 0


@pytest.mark.timeout(20)
def test_ring_state_that_cannot_be_saved_is_logged_not_fatal(
        cleanup: list, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    state = tmp_path / "ringseq"
    (state / "sub").mkdir(parents=True)  # a non-empty directory where the file goes
    port = free_port()
    me = node_of("127.0.0.1")
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"], state_file=str(state))
    cleanup.append(h.t)
    h.t.start()
    for i in range(10):
        srp.max_ring_seq = 8 + 4 * i
        h.t._perform([ConfChange(False, RingId(srp.max_ring_seq, me), (me,))])
    assert h.t.stats["state_errors"] == 10 and len(h.confs) == 10
    lines = [r for r in caplog.records if "cannot save ring state" in r.getMessage()]
    assert 1 <= len(lines) <= 3  # rate-limited
    assert not (tmp_path / "ringseq.tmp").exists()
    assert h.t.state is TransportState.RUNNING and h.fatal == []
    with pytest.raises(OSError):
        save_ring_seq(str(state), 4)


@pytest.mark.timeout(20)
def test_udpu_drops_packets_of_unknown_peers(cleanup: list,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    port = free_port(("127.0.0.1", "127.0.0.2", "127.0.0.9"))
    member, stranger = udp_sock("127.0.0.2", port), udp_sock("127.0.0.9", port)
    cleanup += [member, stranger]
    srp = StubSrp("127.0.0.1")
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    for i in range(20):
        stranger.sendto(Crypto(KEY).seal(b"sealed by a stranger %d" % i), ("127.0.0.1", port))
    assert wait_until(lambda: h.t.stats["unknown_peer"] == 20)
    member.sendto(Crypto(KEY).seal(b"from a member"), ("127.0.0.1", port))
    assert wait_until(lambda: srp.received == [b"from a member"])
    lines = [r for r in caplog.records if "not a configured member" in r.getMessage()]
    assert 1 <= len(lines) <= 3


# -- real rings ----------------------------------------------------------------------

srp_mod = pytest.importorskip("ais.totem.srp")


class Node:
    """A real ``Srp`` behind a real transport on 127.0.0.N (udpu)."""

    def __init__(self, addr: str, port: int, members: list[str], key: bytes = KEY,
                 **kw: object) -> None:
        self.addr = addr
        self.srp = srp_mod.Srp(node_of(addr), TotemConfig(),
                               log=logging.getLogger(f"ais.totem.srp.test.{addr}"))
        self.h = Harness(self.srp, addr, port, members, key, **kw)
        self.t = self.h.t

    def regular(self) -> ConfChange | None:
        """The last regular configuration this node installed."""
        regs = [c for c in self.h.confs if not c.transitional]
        return regs[-1] if regs else None

    def members(self) -> tuple[int, ...]:
        reg = self.regular()
        return reg.members if reg else ()

    def deliveries_since_last_regular(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for e in self.h.events:
            if isinstance(e, ConfChange) and not e.transitional:
                out = []
            elif isinstance(e, Deliver):
                out.append((e.sender, e.payload))
        return out


ADDRS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def _mcast_retrying(node: Node, payload: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            node.t.mcast(payload)
            return
        except SendQueueFull:
            if time.monotonic() > deadline:
                raise
            gevent.sleep(0.01)


@pytest.mark.timeout(60)
def test_three_real_nodes_form_one_ring_and_agree_on_order(cleanup: list,
                                                           tmp_path: Path) -> None:
    port = free_port()
    nodes = [Node(a, port, ADDRS, state_file=str(tmp_path / f"seq.{a}")) for a in ADDRS]
    cleanup += [n.t for n in nodes]
    for n in nodes:
        n.t.start()
    everyone = tuple(sorted(node_of(a) for a in ADDRS))
    assert wait_until(lambda: all(n.members() == everyone for n in nodes)
                      and len({n.srp.ring_id for n in nodes}) == 1, timeout=20), \
        [n.members() for n in nodes]
    per_node = 40
    for i in range(per_node):
        for n in nodes:
            _mcast_retrying(n, f"{n.addr} #{i}".encode() + b"~" * (i * 37 % 3000))
        if i % 10 == 0:
            gevent.sleep(0)  # let the ring turn while we keep sending
    total = per_node * len(nodes)
    assert wait_until(lambda: all(len(n.deliveries_since_last_regular()) >= total
                                  for n in nodes), timeout=20), \
        [len(n.deliveries_since_last_regular()) for n in nodes]
    orders = [n.deliveries_since_last_regular() for n in nodes]
    assert orders[0] == orders[1] == orders[2]
    assert len(orders[0]) == total
    # Per-sender FIFO inside the agreed order.
    for a in ADDRS:
        mine = [p for s, p in orders[0] if s == node_of(a)]
        assert [p.split(b"~")[0] for p in mine] == [f"{a} #{i}".encode()
                                                   for i in range(per_node)]
    for n in nodes:
        assert n.h.fatal == [] and n.t.stats["invalid_digest"] == 0
        assert load_ring_seq(str(tmp_path / f"seq.{n.addr}")) == n.srp.max_ring_seq > 0


@pytest.mark.timeout(60)
def test_node_with_another_key_never_joins(cleanup: list,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    port = free_port()
    addrs = ADDRS + ["127.0.0.4"]
    nodes = [Node(a, port, addrs) for a in ADDRS]
    stranger = Node("127.0.0.4", port, addrs, key=OTHER_KEY)
    cleanup += [n.t for n in nodes] + [stranger.t]
    for n in nodes + [stranger]:
        n.t.start()
    three = tuple(sorted(node_of(a) for a in ADDRS))
    assert wait_until(lambda: all(n.members() == three for n in nodes), timeout=20)
    # Give the stranger several join/consensus periods to (fail to) get in.
    gevent.sleep(2.0)
    assert all(n.members() == three for n in nodes)
    assert stranger.members() == (node_of("127.0.0.4"),)
    for n in nodes:
        assert n.t.stats["invalid_digest"] > 0
    assert stranger.t.stats["invalid_digest"] > 0
    lines = [r.getMessage() for r in caplog.records if "invalid digest" in r.getMessage()]
    assert any("from 127.0.0.4" in m for m in lines)  # the members about the stranger
    assert any("from 127.0.0.1" in m for m in lines)  # the stranger about the members
    # The ring still works.
    _mcast_retrying(nodes[0], b"still here")
    assert wait_until(lambda: all((node_of(ADDRS[0]), b"still here")
                                  in n.deliveries_since_last_regular() for n in nodes))
    assert all(n.h.fatal == [] for n in nodes + [stranger])


# -- multicast inside network namespaces -------------------------------------------

#: One ring node, run inside a namespace: ``python -c NODE_SCRIPT`` with
#: AIS_ADDR, AIS_PORT, AIS_MCAST, AIS_KEY (hex), AIS_NODES, AIS_COUNT in the
#: environment.  Prints one JSON line: the agreed deliveries after the last
#: regular configuration, the members and the transport's counters.
NODE_SCRIPT = r'''
import json, logging, os, sys, time
import gevent
from ais.totem.crypto import Crypto
from ais.totem.events import ConfChange, Deliver, SendQueueFull, TotemConfig, node_of
from ais.totem.srp import Srp
from ais.totem.transport import Transport

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
addr, port = os.environ["AIS_ADDR"], int(os.environ["AIS_PORT"])
want_nodes, count = int(os.environ["AIS_NODES"]), int(os.environ["AIS_COUNT"])
events = []
def fatal(exc):
    print(json.dumps({"fatal": repr(exc)}), flush=True)
    os._exit(3)
srp = Srp(node_of(addr), TotemConfig())
t = Transport(srp, Crypto(bytes.fromhex(os.environ["AIS_KEY"])), bind_addr=addr, port=port,
              mode="udp", mcast_addr=os.environ["AIS_MCAST"],
              on_deliver=events.append, on_confchg=events.append, on_fatal=fatal)
def regular():
    regs = [e for e in events if isinstance(e, ConfChange) and not e.transitional]
    return regs[-1] if regs else None
def since_regular():
    out = []
    for e in events:
        if isinstance(e, ConfChange) and not e.transitional:
            out = []
        elif isinstance(e, Deliver):
            out.append([e.sender, e.payload.decode()])
    return out
def wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        gevent.sleep(0.02)
    return pred()
t.start()
formed = wait(lambda: regular() is not None and len(regular().members) == want_nodes, 20)
if formed:
    gevent.sleep(0.5)  # every node is in the ring before anyone sends
    for i in range(count):
        while True:
            try:
                t.mcast(f"{addr} #{i}".encode())
                break
            except SendQueueFull:
                gevent.sleep(0.01)
    wait(lambda: len(since_regular()) >= want_nodes * count, 20)
result = {"formed": formed, "members": list(regular().members) if regular() else [],
          "delivered": since_regular(), "stats": t.stats}
gevent.sleep(2.0)  # stay in the ring while the others finish
t.stop()
print(json.dumps(result), flush=True)
'''


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_multicast_ring_in_network_namespaces(
        netns_lan: tuple[list[str], list[str]]) -> None:
    nss, addrs = netns_lan
    repo = str(Path(__file__).resolve().parent.parent)
    count = 25
    env = dict(os.environ, PYTHONPATH=repo, AIS_PORT="5405", AIS_MCAST="226.94.1.1",
               AIS_KEY=KEY.hex(), AIS_NODES=str(len(nss)), AIS_COUNT=str(count))
    procs = []
    try:
        for ns, addr in zip(nss, addrs):
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", NODE_SCRIPT],
                env=dict(env, AIS_ADDR=addr), cwd=repo, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        outputs = []
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err[-3000:]
            outputs.append((json.loads(out.strip().splitlines()[-1]), err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # by its own pid
                p.wait(timeout=10)
    everyone = sorted(node_of(a) for a in addrs)
    results = [o for o, _ in outputs]
    for r, err in outputs:
        assert r.get("formed") and r["members"] == everyone, (r, err[-3000:])
        assert len(r["delivered"]) == count * len(addrs), err[-3000:]
        assert r["stats"]["invalid_digest"] == 0
        assert r["stats"]["own_dropped"] == 0  # IP_MULTICAST_LOOP is off
    assert results[0]["delivered"] == results[1]["delivered"] == results[2]["delivered"]


@pytest.mark.timeout(20)
def test_bug_in_callback_during_mcast_is_fatal(cleanup: list) -> None:
    port = free_port()
    me = node_of("127.0.0.1")

    class LoopbackSrp(StubSrp):
        def mcast(self, payload: bytes, now: float, awaited: bool = False) -> list[Action]:
            return [Deliver(me, payload, RingId(1, me))]

    h = Harness(LoopbackSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)

    def broken(d: Deliver) -> None:
        raise KeyError("bug in a service")

    h.t.on_deliver = broken
    h.t.start()
    h.t.mcast(b"x")  # the caller is not the one that delivers: it returns normally ...
    assert wait_until(lambda: bool(h.fatal))
    assert isinstance(h.fatal[0], KeyError)  # ... and the supervisor sees the bug
    assert h.t.state is TransportState.STOPPED
    with pytest.raises(RuntimeError):
        h.t.mcast(b"y")


class LoopbackSrp(StubSrp):
    """A ring of one: ``mcast`` delivers the message back, as ``Srp`` does alone."""

    def mcast(self, payload: bytes, now: float, awaited: bool = False) -> list[Action]:
        me = self.node_id
        return [Send(payload), Deliver(me, payload, RingId(1, me))]


@pytest.mark.timeout(20)
def test_mcast_never_calls_back_into_its_caller(cleanup: list) -> None:
    """What the core answers to ``mcast`` is performed after the caller returns, in
    the order of the FIFO: a service handler that multicasts is never re-entered."""
    port = free_port()
    h = Harness(LoopbackSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    handling = False

    def on_deliver(d: Deliver) -> None:
        assert not handling, "delivered inside the handler that multicast it"
        h.delivered.append(d)
        if d.payload == b"first":
            h.t.mcast(b"from a delivery")  # queued behind what is already queued

    h.t.on_deliver = on_deliver
    h.t.start()
    handling = True
    h.t.mcast(b"first")
    h.t.mcast(b"second")
    handling = False
    assert h.delivered == [] and h.t.stats["tx_packets"] == 0
    assert wait_until(lambda: len(h.delivered) == 3)
    assert [d.payload for d in h.delivered] == [b"first", b"second", b"from a delivery"]
    assert h.t.stats["tx_packets"] == 3 and h.fatal == []
    # Whoever drains first performs what mcast queued before its own actions.
    h.delivered.clear()
    h.t.mcast(b"queued")
    me = node_of("127.0.0.1")
    h.t._perform([Deliver(me, b"received", RingId(1, me))])  # as the receiver would
    assert [d.payload for d in h.delivered] == [b"queued", b"received"]
    gevent.sleep(0.05)  # the drainer greenlet finds nothing left to do
    assert [d.payload for d in h.delivered] == [b"queued", b"received"]


@pytest.mark.timeout(30)
def test_mcast_in_a_real_ring_of_one_delivers_after_returning(cleanup: list) -> None:
    """The real core alone delivers inside ``Srp.mcast``; the transport does not."""
    from ais.totem.srp import Srp

    port = free_port(("127.0.0.1",))
    srp = Srp(node_of("127.0.0.1"), TotemConfig(token=200.0, token_retransmit=10.0,
                                               join=20.0, consensus=100.0, token_hold=50.0))
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1"])
    cleanup.append(h.t)
    h.t.start()
    assert wait_until(lambda: any(not c.transitional for c in h.confs), timeout=10)
    for i in range(20):
        h.t.mcast(b"m%d" % i)
        assert [d.payload for d in h.delivered] == [b"m%d" % k for k in range(i)]
        gevent.sleep(0)
        assert wait_until(lambda n=i + 1: len(h.delivered) == n)
    assert h.fatal == []


# -- segmentation offload ---------------------------------------------------------

def _burst(n: int = 30, size: int = 1000) -> list[bytes]:
    """``n`` frames of one size and a shorter last one, as a token visit sends them."""
    return [b"%05d" % i + b"-" * (size - 5) for i in range(n)] + [b"tail"]


@pytest.mark.timeout(20)
def test_a_burst_arrives_whole_and_in_order_at_a_plain_socket(cleanup: list) -> None:
    """Segmented or not, the wire carries one sealed datagram per Send, in order."""
    port = free_port()
    raw = udp_sock("127.0.0.2", port)
    cleanup.append(raw)
    h = Harness(StubSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    burst = _burst()
    h.t._perform([Send(p) for p in burst] + [Send(b"token", dest=node_of("127.0.0.2"))])
    got = recv_all(raw)
    opener = Crypto(KEY)
    assert [opener.open_untrusted(g) for g in got] == [*burst, b"token"]
    assert h.t.stats["tx_packets"] == len(burst) + 1 and h.t.stats["send_errors"] == 0
    if sys.platform.startswith("linux"):
        assert h.t.stats["gso_sends"] >= 1  # the frames left in one segmented send


@pytest.mark.timeout(20)
def test_coalesced_reads_are_cut_into_the_datagrams_sent(cleanup: list) -> None:
    port = free_port()
    a = Harness(StubSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    rx = StubSrp("127.0.0.2")
    b = Harness(rx, "127.0.0.2", port, ["127.0.0.1", "127.0.0.2"])
    cleanup += [a.t, b.t]
    a.t.start()
    b.t.start()
    bursts = [_burst(20, 700 + k) for k in range(5)]
    for burst in bursts:
        a.t._perform([Send(p) for p in burst])
    want = [p for burst in bursts for p in burst]
    assert wait_until(lambda: len(rx.received) >= len(want))
    assert rx.received == want
    assert b.t.stats["invalid_digest"] == b.t.stats["bad_packet"] == 0
    assert b.t.stats["rx_packets"] == len(want)
    if sys.platform.startswith("linux"):
        assert a.t.stats["gso_sends"] == len(bursts)
        assert b.t.stats["gro_reads"] >= 1  # loopback hands segmented sends over whole


class _StreamingSrp(StubSrp):
    """Streams ``count`` frames and a token through ``frame_sink`` on ``mcast``, as
    ``Srp``'s token visit does, and returns the delivery of the message."""

    def __init__(self, addr: str, peer: str, count: int) -> None:
        super().__init__(addr)
        self.frame_sink: Callable[[Send], None] | None = None
        self.peer, self.count = node_of(peer), count

    def mcast(self, payload: bytes, now: float, awaited: bool = False) -> list[Action]:
        assert self.frame_sink is not None, "the transport installs its sink"
        for p in _burst(self.count)[:-1]:
            self.frame_sink(Send(p))
        self.frame_sink(Send(b"token", dest=self.peer))
        return [Deliver(self.node_id, payload, RingId(8, self.node_id))]


@pytest.mark.timeout(20)
def test_streamed_frames_leave_at_once_in_short_runs_then_the_token(cleanup: list) -> None:
    """A visit's frames go out while it is still framing (8, then 16 at a time), the
    token right behind them, and the sender's own delivery only afterwards."""
    port = free_port()
    raw = udp_sock("127.0.0.2", port)
    cleanup.append(raw)
    srp = _StreamingSrp("127.0.0.1", "127.0.0.2", 30)
    h = Harness(srp, "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    seen: list[int] = []
    h.t.on_deliver = lambda d: seen.append(h.t.stats["tx_packets"])
    h.t.mcast(b"msg")
    assert h.t.stats["tx_packets"] == 31 and seen == []  # sent inside mcast, nothing delivered
    gevent.sleep(0.05)
    assert seen == [31]
    opener = Crypto(KEY)
    assert [opener.open_untrusted(g) for g in recv_all(raw)] == _burst(30)[:-1] + [b"token"]
    if sys.platform.startswith("linux") and h.t._gso:
        runs, left, run = 0, 30, STREAM_FIRST  # (8 + 16 + 6 frames; the token alone)
        while left > 0:
            runs, left, run = runs + 1, left - run, min(2 * run, STREAM_MAX)
        assert h.t.stats["gso_sends"] == runs
    assert h.fatal == []


@pytest.mark.timeout(20)
def test_a_token_read_behind_frames_is_forwarded_before_their_deliveries(cleanup: list) -> None:
    """What waits on the socket is read and handed to the core first; the answers are
    performed together, sends first, so the token does not wait for delivery work."""
    port = free_port()
    me, peer = node_of("127.0.0.2"), node_of("127.0.0.1")
    ring = RingId(8, me)

    def answer(data: bytes, now: float) -> list[Action]:
        if data == b"token":
            return [Send(b"forwarded", dest=peer)]
        return [Deliver(peer, data, ring)]
    a = Harness(StubSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    b = Harness(StubSrp("127.0.0.2", on_receive=answer), "127.0.0.2", port,
                ["127.0.0.1", "127.0.0.2"])
    cleanup += [a.t, b.t]
    a.t.start()
    b.t.start()
    seen: list[int] = []
    b.t.on_deliver = lambda d: seen.append(b.t.stats["tx_packets"])
    burst = _burst(12)[:-1]
    a.t._perform([Send(p) for p in burst] + [Send(b"token", dest=me)])
    assert wait_until(lambda: len(seen) == len(burst))
    assert seen == [1] * len(burst)
    assert b.fatal == []


class _NoSegmentation:
    """A socket whose kernel refuses UDP_SEGMENT (EINVAL: as before Linux 4.18;
    EMSGSIZE: segments larger than the interface's MTU)."""

    def __init__(self, sock: socket.socket, code: int = errno.EINVAL) -> None:
        self._sock = sock
        self.code = code
        self.refused = 0

    def sendmsg(self, *args: object) -> int:
        self.refused += 1
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("code", [errno.EINVAL, errno.EMSGSIZE])
def test_without_segmentation_offload_it_falls_back_to_one_send_each(
        cleanup: list, caplog: pytest.LogCaptureFixture, code: int) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    port = free_port()
    raw = udp_sock("127.0.0.2", port)
    cleanup.append(raw)
    h = Harness(StubSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"])
    cleanup.append(h.t)
    h.t.start()
    fake = _NoSegmentation(h.t._sock, code)  # type: ignore[arg-type]
    h.t._sock = fake  # type: ignore[assignment]
    h.t._gso = True
    burst = _burst(10)
    for _ in range(2):
        h.t._perform([Send(p) for p in burst])
    opener = Crypto(KEY)
    assert [opener.open_untrusted(g) for g in recv_all(raw)] == burst + burst
    assert fake.refused == 1 and h.t._gso is False  # tried once, then never again
    assert h.t.stats["send_errors"] == 0 and h.t.stats["gso_sends"] == 0
    assert any("segmentation offload refused" in r.getMessage() for r in caplog.records)
    h.t._sock = fake._sock  # type: ignore[assignment]


# -- busy polling ----------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_busy_poll_keeps_the_loop_turning_for_its_window_then_sleeps() -> None:
    """After a kick the event loop does not block: with nothing to do it turns
    (yielding the processor each time) until the window has passed, then
    stops; a kick inside the window only extends it."""
    stats = {"busy_polls": 0, "busy_poll_us": 0}
    turns = [0]
    bp = BusyPoll(0.3, stats, yield_cpu=lambda: turns.__setitem__(0, turns[0] + 1))
    gevent.sleep(0.03)
    assert turns[0] == 0 and not bp.polling  # nothing kicked: the loop slept
    bp.kick()
    gevent.sleep(0.02)
    assert bp.polling and turns[0] > 0  # it turned while this greenlet slept
    bp.kick()  # extends the window: still one
    assert wait_until(lambda: not bp.polling)
    assert stats["busy_polls"] == 1
    assert 320_000 <= stats["busy_poll_us"] <= 5_000_000
    seen = turns[0]
    gevent.sleep(0.03)
    assert turns[0] == seen  # asleep again


def test_busy_poll_goes_on_while_our_messages_wait_up_to_its_await_window() -> None:
    """Past its window the loop keeps polling while ``awaiting`` says our own
    messages wait (a write on its way to stability), up to ``await_window``
    after the last kick; it stops at the first turn that finds nothing waiting."""
    stats = {"busy_polls": 0, "busy_poll_us": 0}
    now = [10.0]
    waiting = [True]
    asked = [0]

    def awaiting() -> bool:
        asked[0] += 1
        return waiting[0]
    bp = BusyPoll(0.5, stats, clock=lambda: now[0], yield_cpu=None,
                  awaiting=awaiting, await_window=4.0)
    bp.kick()
    for t in (10.2, 10.49):
        now[0] = t
        bp._turn()
        assert bp.polling
    assert asked[0] == 0  # inside the window nothing is asked
    for t in (10.6, 12.0, 13.9):
        now[0] = t
        bp._turn()
        assert bp.polling, t  # past the window, but our message waits
    now[0] = 14.01
    bp._turn()
    assert not bp.polling  # the await window (from the kick) is over
    assert stats["busy_poll_us"] == 4_010_000
    bp.kick()  # at 14.01
    now[0] = 14.6
    bp._turn()
    assert bp.polling
    waiting[0] = False  # the token brought stability
    now[0] = 14.7
    bp._turn()
    assert not bp.polling and stats["busy_polls"] == 2
    # without ``awaiting`` a window is a window
    plain = BusyPoll(0.5, stats, clock=lambda: now[0], yield_cpu=None)
    plain.kick()
    now[0] = 15.21
    plain._turn()
    assert not plain.polling


@pytest.mark.timeout(20)
def test_busy_poll_follows_each_read_and_kick_and_is_off_at_zero(cleanup: list) -> None:
    port = free_port()
    raw = udp_sock("127.0.0.2", port)
    cleanup.append(raw)
    off = Harness(StubSrp("127.0.0.1"), "127.0.0.1", free_port(), ["127.0.0.1", "127.0.0.2"])
    assert off.t.busy is None
    h = Harness(StubSrp("127.0.0.1"), "127.0.0.1", port, ["127.0.0.1", "127.0.0.2"],
                busy_poll=1.0)
    cleanup.append(h.t)
    h.t.start()
    assert h.t.busy is not None and not h.t.busy.polling
    raw.sendto(Crypto(KEY).seal(b"x" * 40), ("127.0.0.1", port))
    assert wait_until(lambda: h.t.stats["rx_packets"] == 1)
    assert h.t.busy.polling and h.t.stats["busy_polls"] == 1
    assert wait_until(lambda: not h.t.busy.polling)
    h.t.kick()  # a client request (the IPC server calls this)
    assert h.t.busy.polling and h.t.stats["busy_polls"] == 2
    h.t.stop()
    assert not h.t.busy.polling and h.t.stats["busy_poll_us"] > 0
