"""A small, scripted network for unit tests of ``Srp``.

Unlike ``ais.totem.sim`` (random faults, invariant checking), this harness
lets a test decide exactly which packets are lost and when, and inspect each
node's deliveries.  Every loop is bounded by a step count.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass, field

from ais.totem import wire
from ais.totem.events import (CancelTimer, ConfChange, Deliver, Send, Stable, StartTimer,
                              TimerKind, TotemConfig)
from ais.totem.srp import Srp

LATENCY = 0.0002


@dataclass
class Node:
    srp: Srp
    deliveries: list = field(default_factory=list)  # Deliver and ConfChange, in order
    stables: list = field(default_factory=list)  # Stable actions, in order
    timers: dict = field(default_factory=dict)
    alive: bool = True
    started: bool = False
    paused_until: float = 0.0

    @property
    def confs(self) -> list[ConfChange]:
        return [d for d in self.deliveries if isinstance(d, ConfChange)]

    @property
    def messages(self) -> list[bytes]:
        return [d.payload for d in self.deliveries if isinstance(d, Deliver)]


class Net:
    """Nodes 1..n on a lossless network with a fixed latency, plus a drop filter."""

    def __init__(self, ids: list[int], config: TotemConfig | None = None,
                 sink: bool = False) -> None:
        self.cfg = config or TotemConfig()
        self.now = 0.0
        self.nodes: dict[int, Node] = {}
        self.heap: list = []
        self.counter = itertools.count()
        self.blocked: set[tuple[int, int]] = set()  # (src, dst) links that drop everything
        #: a test's filter: return True to drop a packet (src, dst, decoded packet)
        self.drop: Callable[[int, int, object], bool] | None = None
        self.sent: list[tuple[int, int | None, object]] = []
        #: with ``sink``: per node, what each core call produced, in order --
        #: ("sink", packet) as the frame sink got it, then the returned actions
        self.calls: dict[int, list[list]] = {i: [] for i in ids}
        self._record = sink  # (only the sink tests read it: others keep no history)
        for i in ids:
            self.nodes[i] = Node(Srp(i, self.cfg))
            if sink:
                # as the transport does: streamed sends leave at once
                self.nodes[i].srp.frame_sink = lambda a, i=i: self._sunk(i, a)

    def _sunk(self, i: int, a: Send) -> None:
        self.calls[i][-1].append(("sink", wire.decode_untrusted(a.data)))
        self._perform(i, [a])

    def _call(self, i: int, fn: Callable[..., list], *args: object) -> None:
        if not self._record:
            self._perform(i, fn(*args, self.now))
            return
        self.calls.setdefault(i, []).append([])
        actions = fn(*args, self.now)
        self.calls[i][-1].extend(actions)
        self._perform(i, actions)

    def start(self, *ids: int) -> None:
        for i in ids or tuple(self.nodes):
            self.nodes[i].started = True
            self._call(i, self.nodes[i].srp.start)

    def _perform(self, i: int, actions: list) -> None:
        node = self.nodes[i]
        for a in actions:
            if isinstance(a, Send):
                pkt = wire.decode_untrusted(a.data)
                self.sent.append((self.now, i, a.dest, pkt))
                dests = [a.dest] if a.dest is not None else [d for d in self.nodes if d != i]
                for d in dests:
                    if (i, d) in self.blocked:
                        continue
                    if self.drop is not None and self.drop(i, d, pkt):
                        continue
                    heapq.heappush(self.heap,
                                   (self.now + LATENCY, next(self.counter), "pkt", d, a.data))
            elif isinstance(a, (Deliver, ConfChange)):
                node.deliveries.append(a)
            elif isinstance(a, Stable):
                node.stables.append(a)
            elif isinstance(a, StartTimer):
                gen = next(self.counter)
                node.timers[a.kind] = gen
                heapq.heappush(self.heap, (a.at, gen, "timer", i, a.kind))
            elif isinstance(a, CancelTimer):
                node.timers.pop(a.kind, None)

    def mcast(self, i: int, payload: bytes, awaited: bool = False) -> None:
        srp = self.nodes[i].srp
        self._call(i, lambda p, now: srp.mcast(p, now, awaited), payload)

    def crash(self, i: int) -> None:
        self.nodes[i].alive = False

    def pause(self, i: int, seconds: float) -> None:
        """Stop node i for a while (a stalled process): its events wait until then."""
        self.nodes[i].paused_until = self.now + seconds

    def partition(self, *groups: set[int]) -> None:
        self.blocked = {(a, b) for g in groups for a in g for h in groups if h is not g for b in h}

    def heal(self) -> None:
        self.blocked = set()

    def step(self) -> bool:
        if not self.heap:
            return False
        at, gen, kind, i, arg = heapq.heappop(self.heap)
        self.now = max(self.now, at)
        node = self.nodes[i]
        if not node.alive or not node.started:
            return True
        if node.paused_until > self.now:
            heapq.heappush(self.heap, (node.paused_until, gen, kind, i, arg))
            return True
        if kind == "pkt":
            self._call(i, node.srp.receive, arg)
        elif node.timers.get(arg) == gen:
            del node.timers[arg]
            self._call(i, node.srp.timer, arg)
        return True

    def run(self, seconds: float, max_steps: int = 500_000) -> None:
        end = self.now + seconds
        for _ in range(max_steps):
            if not self.heap or self.heap[0][0] > end:
                break
            self.step()
        self.now = max(self.now, end)

    def run_until(self, cond: Callable[[], bool], seconds: float = 10.0,
                  max_steps: int = 500_000) -> bool:
        end = self.now + seconds
        for _ in range(max_steps):
            if cond():
                return True
            if not self.heap or self.heap[0][0] > end:
                return cond()
            self.step()
        return cond()

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.alive and n.started]

    def one_ring(self, ids: list[int] | None = None) -> bool:
        nodes = [self.nodes[i] for i in ids] if ids else self.live()
        want = tuple(sorted(n.srp.node_id for n in nodes))
        return all(n.srp.state.value == "operational" and n.srp.members == want
                   and n.srp.ring_id == nodes[0].srp.ring_id for n in nodes)


def ids(n: int) -> list[int]:
    return [0x0A000001 + k for k in range(n)]


__all__ = ["Net", "Node", "ids", "TimerKind"]


def add_write_args(ap: Any, nodes: int) -> None:
    """The replay benchmarks' options for ``record_writes`` (an argparse parser)."""
    ap.add_argument("--nodes", type=int, default=nodes)
    ap.add_argument("--size", type=int, default=74822)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--frame-size", type=int, default=1413)


def record_writes(nodes: int, size: int, count: int, frame_size: int, node: int
                  ) -> tuple[Srp, list[tuple[str, tuple]]]:
    """For the replay benchmarks: a ring of ``nodes`` at ``frame_size`` whose
    node 1 writes ``count`` messages of ``size`` bytes, one at a time (each
    awaited, each waited for at node 2).  Returns a copy of ``node``'s core
    taken before the writes and what it was given during them: ("receive",
    (data, now)), ("mcast", (payload, now)) or ("timer", (kind, now)).
    """
    import copy
    import dataclasses
    net = Net(list(range(1, nodes + 1)), dataclasses.replace(TotemConfig(),
                                                              frame_size=frame_size))
    net.start()
    assert net.run_until(net.one_ring, 5)
    payload = bytes(size)

    def write(n: int) -> None:
        reader = net.nodes[2]
        for _ in range(n):
            reader.deliveries.clear()  # (keeps memory flat)
            net.sent.clear()
            net.mcast(1, payload, True)
            assert net.run_until(lambda: bool(reader.messages), 5)
    write(10)
    start = copy.deepcopy(net.nodes[node].srp)
    got: list[tuple[str, tuple]] = []
    call = net._call

    def recording(i: int, fn: Callable[..., list], *args: object) -> None:
        if i == node:
            kind = fn.__name__ if fn.__name__ in ("receive", "timer") else "mcast"
            got.append((kind, args + (net.now,)))
        call(i, fn, *args)
    net._call = recording  # type: ignore[method-assign]
    write(count)
    return start, got
