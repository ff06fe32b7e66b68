"""Throughput of the Totem core (no sockets, no crypto).

By default a lean driver runs the nodes: a heap of packets and timers with a
fixed 0.1 ms latency, per-packet loss from one seeded ``random.Random``, every
node keeping its send queue full, deliveries only counted.  So the figure is
the protocol's own cost in Python: what one CPU does running *all* N cores,
per message delivered everywhere.  ``--sim`` drives the full simulator
instead (payload checking, history recording, fault machinery), which costs
several times more per message than the protocol itself.  A cell ends when
every node has delivered every message.  Speed is printed, never asserted.

Usage: python bench/totem_bench.py [--budget SECONDS] [--nodes 2,4] [--sizes 100,1024] [--sim]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import heapq  # noqa: E402
import random  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from ais.totem.events import (  # noqa: E402
    CancelTimer, Deliver, Send, SendQueueFull, StartTimer, TotemConfig)
from ais.totem.sim import SimOptions, run_load  # noqa: E402
from ais.totem.srp import Srp  # noqa: E402


@dataclass
class LeanResult:
    messages_delivered: int
    time: float
    ok: bool


def lean_run(nodes: int, loss: float, size: int, per_node: int, seed: int = 1) -> LeanResult:
    """Every node sends ``per_node`` messages of ``size`` bytes; run until all delivered."""
    rng = random.Random(seed)
    ids = [0x0A000001 + i for i in range(nodes)]
    srps = {i: Srp(i, TotemConfig()) for i in ids}
    heap: list = []
    gens: dict = {}
    count = 0
    delivered = dict.fromkeys(ids, 0)
    left = dict.fromkeys(ids, per_node)
    payload = b"p" * size
    now = 0.0
    want = per_node * nodes

    def perform(i: int, actions: list) -> None:
        nonlocal count
        for a in actions:
            t = type(a)
            if t is Send:
                for d in ((a.dest,) if a.dest is not None else ids):
                    if d != i and not (loss and rng.random() < loss):
                        count += 1
                        heapq.heappush(heap, (now + 0.0001, count, d, a.data))
            elif t is Deliver:
                delivered[i] += 1
            elif t is StartTimer:
                count += 1
                gens[i, a.kind] = count
                heapq.heappush(heap, (a.at, count, i, a.kind))
            elif t is CancelTimer:
                gens.pop((i, a.kind), None)

    def feed(i: int) -> None:
        srp = srps[i]
        while left[i] and srp.queued() < 512:
            try:
                perform(i, srp.mcast(payload, now))
            except SendQueueFull:
                return
            left[i] -= 1

    for i in ids:
        perform(i, srps[i].start(now))
    steps = 0
    while heap and steps < 50_000_000:
        steps += 1
        now, c, i, what = heapq.heappop(heap)
        srp = srps[i]
        if type(what) is bytes:
            perform(i, srp.receive(what, now))
        elif gens.get((i, what)) == c:
            del gens[i, what]
            perform(i, srp.timer(what, now))
        if left[i] and srp.state.value == "operational" and len(srp.members) == nodes:
            feed(i)
        if all(v == want for v in delivered.values()):
            break
    return LeanResult(min(delivered.values()), now, min(delivered.values()) == want)

HEADER = """\
Totem core throughput (one CPU runs all nodes and the network).
msgs/s and bytes/s count each application message ONCE (not once per receiver),
delivered everywhere, per second of CPU time (time.process_time).
"""


def cell(nodes: int, loss: float, size: int, budget: float, seed: int = 1,
         sim: bool = False) -> tuple:
    """Grow the burst until one run takes about ``budget`` CPU seconds; return its figures."""
    per_node = max(4, 200 // nodes) if size <= 1024 else max(2, 20 // nodes)
    while True:
        if not sim:
            t0 = time.process_time()
            r = lean_run(nodes, loss, size, per_node, seed)
            cpu = time.process_time() - t0
            if cpu >= budget / 4 or per_node >= 1_000_000:
                return r, cpu, per_node
            per_node *= max(2, min(8, int(budget / max(cpu, 1e-3) / 2)))
            continue
        o = SimOptions(nodes=nodes, loss=loss, messages=per_node, size=size, duration=0.06,
                       settle=100_000.0, start_spread=0.0, check=False, trace_tail=0,
                       max_steps=50_000_000)
        t0 = time.process_time()
        r = run_load(seed, o)
        cpu = time.process_time() - t0
        if cpu >= budget / 4 or per_node >= 1_000_000:
            return r, cpu, per_node
        per_node *= max(2, min(8, int(budget / max(cpu, 1e-3) / 2)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=1.0,
                   help="approximate CPU seconds per cell (default 1; raise for steadier figures)")
    p.add_argument("--nodes", default="2,4,8,16")
    p.add_argument("--sizes", default="100,1024,65536")
    p.add_argument("--losses", default="0,0.05")
    p.add_argument("--sim", action="store_true",
                   help="drive the full simulator instead of the lean driver")
    a = p.parse_args(argv)
    print(HEADER + ("driver: full simulator\n" if a.sim else "driver: lean (protocol cost)\n"))
    print(f"{'nodes':>5} {'loss':>5} {'size':>6} {'msgs':>7} {'cpu s':>6} {'virt s':>7} "
          f"{'msgs/s':>9} {'bytes/s':>11} {'note':>4}")
    for nodes in (int(x) for x in a.nodes.split(",")):
        for loss in (float(x) for x in a.losses.split(",")):
            for size in (int(x) for x in a.sizes.split(",")):
                r, cpu, per_node = cell(nodes, loss, size, a.budget, sim=a.sim)
                total = r.messages_delivered
                want = per_node * nodes
                note = "" if total == want and r.ok else f"incomplete {total}/{want}"
                rate = total / cpu if cpu else 0.0
                print(f"{nodes:5d} {loss:5.2f} {size:6d} {total:7d} {cpu:6.2f} {r.time:7.2f} "
                      f"{rate:9.0f} {_human(rate * size):>11} {note}", flush=True)
    return 0


def _human(bps: float) -> str:
    for unit in ("B/s", "KB/s", "MB/s", "GB/s"):
        if bps < 1000:
            return f"{bps:.1f} {unit}"
        bps /= 1000
    return f"{bps:.1f} TB/s"


if __name__ == "__main__":
    sys.exit(main())
