"""A userspace Ethernet switch with per-direction faults, for real executives.

This kernel has no netem, so faults are made here: every node runs in its
own network namespace (created by the test) whose only interface is a TAP
device.  The TAP is created from the test process in the host's namespace
and moved at once into the node's namespace (``ip link set ... netns``); its
file descriptor stays with the hub, so every frame a node sends is read by
the hub and written to the TAP(s) of its destination(s).  Nothing else is
created in the host's namespace and nothing is routed anywhere: a node can
reach only the other nodes' TAPs (DESIGN.md, "Safety rules").

Faults are per (source node, destination node) and apply to IPv4 datagrams
only (ARP, ICMP and IGMP always pass, so neighbour resolution never fails
and the faults hit the ring's UDP alone):

* ``loss``      probability that a frame is dropped;
* ``delay_ms`` / ``jitter_ms``  frames are held delay ± jitter (uniform);
* ``reorder``   probability that a frame is held ``reorder_ms`` longer, so
  frames sent after it overtake it;
* ``drop_above`` frames longer than this many bytes (Ethernet frame) are
  dropped: the "only large frames are lost" fault;
* ``cut``       every frame is dropped, including those still held for
  their delay when the cut is made (a cable pulled loses what is on it).

Rules change at run time from the test thread (``set``, ``cut``,
``partition``, ``heal``); the forwarding thread draws all its randomness
from one ``random.Random(seed)``.  Counters per pair (``stats``) tell what
was forwarded and dropped.

    with FaultHub(3, seed=7) as hub:
        hub.set(1, 3, loss=0.1)          # 10 % of node 1's frames to node 3
        hub.partition([1, 2], [3])       # cut both ways between the groups
        hub.heal()

``fault_hub`` is the pytest fixture: it skips with the reason when root,
``/dev/net/tun`` or the ``ip`` command is missing, and removes the
namespaces and devices even when the test fails.
"""
from __future__ import annotations

import dataclasses
import fcntl
import heapq
import itertools
import os
import random
import selectors
import shutil
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pytest

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_P_IP = 0x0800
# IPv4 protocols that are never faulted (ICMP, IGMP): only datagrams are.
UNFAULTED_PROTOCOLS = frozenset({1, 2})
MAX_FRAME = 65536
READ_BURST = 64          # frames read from one TAP before looking at the others
MAX_HELD = 100_000       # frames waiting for their delay; beyond it new ones are dropped


@dataclass(frozen=True)
class Rule:
    """The faults applied to frames from one node to another."""

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 10.0
    drop_above: int | None = None
    cut: bool = False


CLEAN = Rule()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], timeout=10, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


def missing_requirement() -> str | None:
    """Why a fault hub cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "fault hub needs root (network namespaces and TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "fault hub needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "fault hub needs the ip command (iproute2)"
    return None


class FaultHub:
    """``size`` namespaces at ``subnet``.1 .. ``subnet``.size/24 joined by a faulty switch."""

    def __init__(self, size: int, *, seed: int = 0, subnet: str = "10.251.0",
                 tag: str | None = None) -> None:
        self.size = size
        self.seed = seed
        self.tag = tag or f"fh{os.getpid() % 100000}"
        self.nss = [f"{self.tag}n{i}" for i in range(1, size + 1)]
        self.addrs = [f"{subnet}.{i}" for i in range(1, size + 1)]
        self.network = f"{subnet}.0"
        self._rules: dict[tuple[int, int], Rule] = {}
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, int], dict[str, int]] = {}
        self._fds: dict[int, int] = {}      # node -> TAP fd
        self._macs: dict[bytes, int] = {}   # learned source MAC -> node
        self._created: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rnd = random.Random(seed)
        self._wake_r, self._wake_w = os.pipe()

    # ---- life cycle -------------------------------------------------------------

    def __enter__(self) -> FaultHub:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for n, (ns, addr) in enumerate(zip(self.nss, self.addrs), start=1):
            _ip("netns", "del", ns, check=False)  # a leftover of a killed run
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            dev = f"{self.tag}t{n}"
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            self._fds[n] = fd
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", dev.encode(), IFF_TAP | IFF_NO_PI))
            # Created down and without an address in the host's namespace, moved at once.
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "link", "set", dev, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        self._thread = threading.Thread(target=self._run, name="faulthub", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=10)
        for fd in self._fds.values():  # a TAP whose fd closes is removed by the kernel
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        for ns in reversed(self._created):
            _ip("netns", "del", ns, check=False)
        self._created.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # ---- rules (called from the test) -------------------------------------------

    def _pairs(self, src: int | Iterable[int] | None,
               dst: int | Iterable[int] | None) -> Iterator[tuple[int, int]]:
        def nodes(x: int | Iterable[int] | None) -> list[int]:
            if x is None:
                return list(range(1, self.size + 1))
            return [x] if isinstance(x, int) else list(x)
        for s in nodes(src):
            for d in nodes(dst):
                if s != d:
                    yield s, d

    def set(self, src: int | Iterable[int] | None = None, dst: int | Iterable[int] | None = None,
            **faults: object) -> None:
        """Change the given fields of the rules from ``src`` to ``dst`` (None: every node)."""
        with self._lock:
            for pair in self._pairs(src, dst):
                self._rules[pair] = dataclasses.replace(self._rules.get(pair, CLEAN), **faults)

    def cut(self, src: int | Iterable[int] | None, dst: int | Iterable[int] | None) -> None:
        """Drop everything from ``src`` to ``dst`` (one direction)."""
        self.set(src, dst, cut=True)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut both ways between every two of ``groups``; within a group nothing changes."""
        gs = [list(g) for g in groups]
        for i, a in enumerate(gs):
            for b in gs[i + 1:]:
                self.cut(a, b)
                self.cut(b, a)

    def uncut(self, src: int | Iterable[int] | None = None,
              dst: int | Iterable[int] | None = None) -> None:
        self.set(src, dst, cut=False)

    def heal(self) -> None:
        """Every fault removed, every direction."""
        with self._lock:
            self._rules.clear()

    def rule(self, src: int, dst: int) -> Rule:
        with self._lock:
            return self._rules.get((src, dst), CLEAN)

    def stats(self) -> dict[tuple[int, int], dict[str, int]]:
        """Per (src, dst): frames ``sent``, ``dropped`` (loss, cut, size) and ``held``."""
        with self._lock:
            return {k: dict(v) for k, v in self._counts.items()}

    # ---- the switch (its own thread) --------------------------------------------

    def _count(self, pair: tuple[int, int], what: str) -> None:
        c = self._counts.setdefault(pair, {"sent": 0, "dropped": 0, "held": 0})
        c[what] = c.get(what, 0) + 1

    @staticmethod
    def _faultable(frame: bytes) -> bool:
        if len(frame) < 34 or (frame[12] << 8 | frame[13]) != ETH_P_IP:
            return False
        return frame[23] not in UNFAULTED_PROTOCOLS

    def _destinations(self, src: int, frame: bytes) -> list[int]:
        self._macs[bytes(frame[6:12])] = src
        if frame[0] & 1:  # broadcast or multicast: everybody else
            return [n for n in self._fds if n != src]
        d = self._macs.get(bytes(frame[0:6]))
        if d is not None and d != src:
            return [d]
        return [n for n in self._fds if n != src]

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for n, fd in self._fds.items():
            sel.register(fd, selectors.EVENT_READ, n)
        sel.register(self._wake_r, selectors.EVENT_READ, 0)
        held: list[tuple[float, int, int, int, bytes]] = []  # (due, seq, src, dst, frame)
        seq = itertools.count()
        rnd = self._rnd
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while held and held[0][0] <= now:
                    _, _, s, d, frame = heapq.heappop(held)
                    with self._lock:
                        # a cut also loses what was on the wire when it happened
                        if self._rules.get((s, d), CLEAN).cut:
                            self._count((s, d), "dropped")
                            continue
                    self._send(d, frame)
                timeout = 0.05 if not held else max(0.0, min(0.05, held[0][0] - now))
                for key, _ in sel.select(timeout):
                    src = key.data
                    if src == 0:
                        os.read(self._wake_r, 64)
                        continue
                    for _ in range(READ_BURST):
                        try:
                            frame = os.read(key.fd, MAX_FRAME)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break
                        if not frame:
                            break
                        faultable = self._faultable(frame)
                        for d in self._destinations(src, frame):
                            due = self._decide(rnd, (src, d), frame, faultable)
                            if due is None:
                                continue
                            if due <= 0 and not held:
                                self._send(d, frame)
                            elif len(held) < MAX_HELD:
                                heapq.heappush(held, (time.monotonic() + max(0.0, due),
                                                      next(seq), src, d, frame))
                            else:
                                with self._lock:
                                    self._count((src, d), "dropped")
        finally:
            sel.close()

    def _decide(self, rnd: random.Random, pair: tuple[int, int], frame: bytes,
                faultable: bool) -> float | None:
        """None: drop; else how long to hold the frame (seconds)."""
        with self._lock:
            r = self._rules.get(pair, CLEAN)
            if not faultable or r == CLEAN:
                self._count(pair, "sent")
                return 0.0
            if (r.cut or (r.drop_above is not None and len(frame) > r.drop_above)
                    or (r.loss and rnd.random() < r.loss)):
                self._count(pair, "dropped")
                return None
            hold = r.delay_ms
            if r.jitter_ms:
                hold += rnd.uniform(-r.jitter_ms, r.jitter_ms)
            if r.reorder and rnd.random() < r.reorder:
                hold += r.reorder_ms
                self._count(pair, "held")
            self._count(pair, "sent")
            return max(0.0, hold) / 1000.0

    def _send(self, d: int, frame: bytes) -> None:
        fd = self._fds.get(d)
        if fd is None:
            return
        try:
            os.write(fd, frame)
        except OSError:
            pass  # the namespace's queue is full, or it is going away: a lost frame


@pytest.fixture
def fault_hub(request: pytest.FixtureRequest) -> Iterator[FaultHub]:
    """Three nodes behind a fault hub, seeded from the test's name."""
    why = missing_requirement()
    if why:
        pytest.skip(why)
    # crc32, not hash(): the same seed in every run
    with FaultHub(3, seed=zlib.crc32(request.node.name.encode())) as hub:
        yield hub
