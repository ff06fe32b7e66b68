"""Throughput of the Totem core (no sockets, no crypto).

By default a lean driver runs the nodes: a heap of packets and timers with a
fixed 0.1 ms latency, per-packet loss from one seeded ``random.Random``, every
node keeping its send queue full, deliveries only counted.  So the figure is
the protocol's own cost in Python: what one CPU does running *all* N cores,
per message delivered everywhere.  ``--sim`` drives the full simulator
instead (payload checking, history recording, fault machinery), which costs
several times more per message than the protocol itself.  A cell ends when
every node has delivered every message.  Speed is printed, never asserted.

``--sync`` measures something else: latency-bound synchronous writes under
loss, in SIMULATED time.  In the full simulator, two of three nodes each write
1 KiB messages one at a time (the next only once the previous is acknowledged:
delivered back to its writer, or with ``--ack all`` delivered by every node),
for ``--sim-seconds`` of simulated time per cell; the figure is acknowledged
writes per simulated second, summed over the writers, with the number of ring
re-formations seen.  That is what the protocol's timers cost a synchronous
client; CPU speed does not enter into it.

Usage: python bench/totem_bench.py [--budget SECONDS] [--nodes 2,4] [--sizes 100,1024] [--sim]
       python bench/totem_bench.py --sync [--ack self|all] [--sim-seconds 20] [--seeds 3]
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
from ais.totem.sim import SimOptions, run_load, run_sync  # noqa: E402
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


#: (label, loss, delay range s, reorder probability) of the --sync cells
SYNC_CELLS = [
    ("no loss", 0.0, (0.0001, 0.0005), 0.0),
    ("10% loss", 0.1, (0.0001, 0.0005), 0.0),
    ("30% loss", 0.3, (0.0001, 0.0005), 0.0),
    ("5+-2 ms delay, 10% reorder", 0.0, (0.003, 0.007), 0.1),
]


def sync_main(a: argparse.Namespace) -> int:
    print("Synchronous writers: 3 nodes, 2 of them writing 1 KiB messages one at a time "
          f"(ack: {a.ack}).\nwrites/s are acknowledged writes per SIMULATED second, both "
          f"writers together; mean of {a.seeds} seeds of {a.sim_seconds:g} simulated s.\n")
    print(f"{'case':<28} {'writes/s':>9} {'re-formations':>14} {'cpu s':>6}")
    for label, loss, delay, reorder in SYNC_CELLS:
        rates, reforms = [], 0
        t0 = time.process_time()
        for seed in range(1, a.seeds + 1):
            o = SimOptions(nodes=3, loss=loss, delay=delay, reorder=reorder, sync_writers=2,
                           sync_ack=a.ack, messages=10_000_000, size=1024,
                           duration=a.sim_seconds, start_spread=0.0, trace_tail=0,
                           max_steps=50_000_000)
            r = run_sync(seed, o)
            rates.append(r.writes / r.time if r.time else 0.0)
            reforms += r.reformations
        cpu = time.process_time() - t0
        print(f"{label:<28} {sum(rates) / len(rates):9.1f} {reforms:14d} {cpu:6.1f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sync", action="store_true",
                   help="synchronous writers under loss, in simulated time (see above)")
    p.add_argument("--ack", choices=("self", "all"), default="self",
                   help="--sync: a write is acknowledged when its writer delivers it (self) "
                        "or every node does (all)")
    p.add_argument("--sim-seconds", type=float, default=20.0,
                   help="--sync: simulated seconds per seed")
    p.add_argument("--seeds", type=int, default=3, help="--sync: seeds per cell")
    p.add_argument("--budget", type=float, default=1.0,
                   help="approximate CPU seconds per cell (default 1; raise for steadier figures)")
    p.add_argument("--nodes", default="2,4,8,16")
    p.add_argument("--sizes", default="100,1024,65536")
    p.add_argument("--losses", default="0,0.05")
    p.add_argument("--sim", action="store_true",
                   help="drive the full simulator instead of the lean driver")
    a = p.parse_args(argv)
    if a.sync:
        return sync_main(a)
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
