"""Test doubles for the service host: a manual clock and in-process rings (no I/O).

Theory of operation
-------------------
``ManualScheduler`` is a virtual clock: timers run only when a test calls
``run`` or ``advance``.  ``FakeBus`` carries ring messages and scripted
configuration changes between several ``ServiceHost``s in order, on the
next scheduler tick, with the transitional / regular ConfChange pairs and
``Stable`` reports the real transport gives; ``LoopbackRing`` is a ring of
one on top of it.  With these, a test (or a simulation) drives the real
host and its real services without sockets, threads or wall-clock time::

    sched = ManualScheduler()
    bus = FakeBus(sched)
    hosts = [ServiceHost(n, [MyService()], sched) for n in (1, 2, 3)]
    for h in hosts:
        bus.port(h)
    bus.reconfigure([1, 2, 3])   # a ring of three; its sync round runs on sched.run()
    sched.run()

Nothing here is used by the executive itself.
"""
from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from ais.executive import Scheduler, ServiceHost
from ais.totem.events import ConfChange, Deliver, RingId, SendQueueFull, Stable

# --- a manual clock -------------------------------------------------------------------


class _ManualTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """A virtual clock for tests: timers run only in ``run``/``advance``."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _ManualTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, fn: Callable[[], None]) -> _ManualTimer:
        handle = _ManualTimer()
        heapq.heappush(self._heap, (self._now + max(0.0, delay), next(self._seq), handle, fn))
        return handle

    def run(self, max_steps: int = 100_000) -> int:
        """Run every timer due now (including ones they arm for now); return the count."""
        return self.advance(0.0, max_steps)

    def advance(self, dt: float, max_steps: int = 100_000) -> int:
        """Move the clock forward by ``dt``, running timers in time order.

        Raises:
            RuntimeError: more than ``max_steps`` timers ran (a livelock in a test).
        """
        end = self._now + dt
        steps = 0
        while self._heap and self._heap[0][0] <= end:
            at, _, handle, fn = heapq.heappop(self._heap)
            self._now = max(self._now, at)
            if handle.cancelled:
                continue
            steps += 1
            if steps > max_steps:
                raise RuntimeError(f"more than {max_steps} timer runs")
            fn()
        self._now = end
        return steps


# --- in-process rings for tests and single-node runs ----------------------------------


class FakeBus:
    """Several hosts sharing one ordered bus, with scripted configuration changes.

    Every event (a message, a reconfiguration) is queued and carried out in
    order on the next scheduler tick (``flush``), so delivery never re-enters
    a handler that is still running -- as with the real transport.  A message
    goes to every node in its sender's component at delivery time; a
    reconfiguration gives each affected node a transitional then a regular
    ConfChange, extended-virtual-synchrony style.  Nodes in no component are
    down: they neither send nor receive.

    Messages carry a seq per ring.  Every member holds a message as soon as
    it is delivered, so each delivery is followed by a ``Stable`` for it --
    unless ``hold_stable`` is set: then ``Stable`` waits for ``stabilize()``
    (a ring whose members have not all acknowledged yet).
    """

    def __init__(self, scheduler: Scheduler, max_events_per_flush: int = 100_000) -> None:
        self.scheduler = scheduler
        self.hosts: dict[int, ServiceHost] = {}
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._component: dict[int, frozenset[int]] = {}  # node -> its current component
        self._ring: dict[int, RingId] = {}
        self._ring_seq = 0
        self._flush_armed = False
        self._max = max_events_per_flush
        self.delivered = 0
        #: while True, events queue up (a test's way to stop time on the ring)
        self.paused = False
        #: while True, deliveries are not followed by ``Stable`` until ``stabilize``
        self.hold_stable = False
        self._last_seq: dict[RingId, int] = {}
        self._tails_seen: dict[tuple[RingId, int, bytes], int] = {}

    def port(self, host: ServiceHost) -> FakePort:
        """Attach ``host`` to the bus (down until a reconfiguration includes it)."""
        self.hosts[host.node_id] = host
        port = FakePort(self, host.node_id)
        host.attach_ring(port)
        return port

    def remove(self, node_id: int) -> None:
        """Forget a crashed node's host (reconfigure without it first)."""
        self.hosts.pop(node_id, None)
        self._component.pop(node_id, None)
        self._ring.pop(node_id, None)

    def reconfigure(self, *components: Iterable[int],
                    tails: dict[int, list[tuple[int, bytes]]] | None = None) -> None:
        """Queue a membership change: the given node sets become the rings.

        Args:
            tails: per node, (sender, payload) messages of its old ring that it
                delivers after its transitional configuration, as Totem may
                deliver frames past a hole in recovery (each node its own list).
        """
        self._queue.append(("conf", ([frozenset(c) for c in components], dict(tails or {}))))
        self._arm()

    def take_queued(self) -> list[tuple[int, bytes]]:
        """Remove and return the messages queued and not yet delivered (sender, payload)."""
        msgs = [arg for kind, arg in self._queue if kind == "msg"]
        self._queue = collections.deque((k, a) for k, a in self._queue if k != "msg")
        return msgs

    def stabilize(self) -> None:
        """Tell every host that each of its rings' deliveries so far is held by all."""
        for node, host in sorted(self.hosts.items()):
            ring = self._ring.get(node)
            if ring is not None and self._last_seq.get(ring):
                host.on_stable(Stable(ring, self._last_seq[ring]))

    def _mcast(self, sender: int, payload: bytes) -> None:
        if sender not in self._component:
            raise SendQueueFull  # not in a ring: the host turns this into TryAgain
        self._queue.append(("msg", (sender, payload)))
        self._arm()

    def _arm(self) -> None:
        if not self._flush_armed:
            self._flush_armed = True
            self.scheduler.call_later(0.0, self.flush)

    def pause(self) -> None:
        """Stop carrying out events (they queue) until ``resume`` or ``step``."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._arm()

    def flush(self) -> None:
        """Carry out every queued event (and those they cause), bounded."""
        self._flush_armed = False
        steps = 0
        while not self.paused and self._queue:
            steps += 1
            if steps > self._max:
                raise RuntimeError("FakeBus: too many events in one flush (livelock?)")
            self.step()

    def step(self) -> bool:
        """Carry out the next queued event only; False when none is queued."""
        if not self._queue:
            return False
        kind, arg = self._queue.popleft()
        if kind == "msg":
            sender, payload = arg
            comp = self._component.get(sender)
            if comp is not None:
                ring = self._ring[sender]
                seq = self._last_seq[ring] = self._last_seq.get(ring, 0) + 1
                for node in sorted(comp):
                    host = self.hosts.get(node)
                    if host is not None:
                        self.delivered += 1
                        host.on_deliver(Deliver(sender, payload, ring, seq))
                if not self.hold_stable:
                    for node in sorted(comp):
                        host = self.hosts.get(node)
                        if host is not None:
                            host.on_stable(Stable(ring, seq))
        elif kind == "inject":
            for host in list(self.hosts.values()):
                if isinstance(arg, ConfChange):
                    host.on_confchg(arg)
                else:
                    host.on_deliver(arg)
        else:
            self._apply_conf(arg)
        return True

    def _apply_conf(self, arg: tuple[list[frozenset[int]],
                                      dict[int, list[tuple[int, bytes]]]]) -> None:
        components, tails = arg
        new_of: dict[int, frozenset[int]] = {}
        for comp in components:
            for node in comp:
                new_of[node] = comp
        new_rings: dict[frozenset[int], RingId] = {}
        for comp in components:
            if any(self._component.get(n) != comp for n in comp):
                self._ring_seq += 4
                new_rings[comp] = RingId(self._ring_seq, min(comp))
        for node in sorted(set(self._component) - set(new_of)):
            # Down: it simply stops hearing anything.
            del self._component[node]
            self._ring.pop(node, None)
        for comp, ring_id in new_rings.items():
            for node in sorted(comp):
                host = self.hosts.get(node)
                old = self._component.get(node)
                old_ring = self._ring.get(node)
                self._component[node] = comp
                self._ring[node] = ring_id
                if host is None:
                    continue
                if old is not None and old_ring is not None:
                    host.on_confchg(ConfChange(True, old_ring, tuple(sorted(old & comp))))
                    for sender, payload in tails.get(node, ()):
                        host.on_deliver(Deliver(sender, payload, old_ring,
                                                self._tail_seq(old_ring, sender, payload)))
                prev = old or frozenset()
                host.on_confchg(ConfChange(False, ring_id, tuple(sorted(comp)),
                                           left=tuple(sorted(prev - comp)),
                                           joined=tuple(sorted(comp - prev))))


    def _tail_seq(self, ring: RingId, sender: int, payload: bytes) -> int:
        """A frame seq of ``ring`` for a message delivered past its transitional
        configuration: one past the ring's last, the same at every node."""
        key = (ring, sender, payload)
        seq = self._tails_seen.get(key)
        if seq is None:
            seq = self._tails_seen[key] = self._last_seq[ring] = self._last_seq.get(ring, 0) + 1
        return seq


class FakePort:
    """One host's view of a ``FakeBus``: ``mcast(payload)``."""

    def __init__(self, bus: FakeBus, node_id: int) -> None:
        self.bus = bus
        self.node_id = node_id

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        self.bus._mcast(self.node_id, payload)


class LoopbackRing:
    """A ring of one: mcasts come back in order on the next scheduler tick.

    ``start()`` delivers the first regular configuration (this node alone);
    ``inject_confchg`` lets a test deliver any ConfChange at the current point
    in the order.
    """

    def __init__(self, host: ServiceHost, scheduler: Scheduler) -> None:
        self.host = host
        self.bus = FakeBus(scheduler)
        self.bus.port(host)

    def start(self) -> None:
        self.bus.reconfigure([self.host.node_id])

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        self.bus._mcast(self.host.node_id, payload)

    def inject_confchg(self, conf: ConfChange) -> None:
        """Deliver ``conf`` as is, after everything queued before it.

        A regular configuration naming other members starts a sync round that
        waits for their barriers; inject those with ``inject_deliver``.
        """
        self.bus._queue.append(("inject", conf))
        self.bus._arm()

    def inject_deliver(self, d: Deliver) -> None:
        """Deliver a message as if ``d.sender`` had sent it."""
        self.bus._queue.append(("inject", d))
        self.bus._arm()


__all__ = ["FakeBus", "FakePort", "LoopbackRing", "ManualScheduler"]
