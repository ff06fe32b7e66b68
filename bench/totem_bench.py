"""Throughput of the Totem core, driven by the simulator (no sockets, no crypto).

Every node multicasts a burst of messages at once; a cell ends when every node
has delivered every message.  The figure is what one CPU does simulating the
whole cluster: all N cores plus the simulated network share it, so per-node
throughput on real hardware would be higher.  Speed is printed, never asserted.

Usage: python bench/totem_bench.py [--budget SECONDS] [--nodes 2,4] [--sizes 100,1024]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ais.totem.sim import SimOptions, run_load  # noqa: E402

HEADER = """\
Totem core throughput under the simulator (one CPU runs all nodes and the network).
msgs/s and bytes/s count each application message ONCE (not once per receiver),
delivered everywhere, per second of CPU time (time.process_time).
"""


def cell(nodes: int, loss: float, size: int, budget: float, seed: int = 1) -> tuple:
    """Grow the burst until one run takes about ``budget`` CPU seconds; return its figures."""
    per_node = max(4, 200 // nodes) if size <= 1024 else max(2, 20 // nodes)
    while True:
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
    a = p.parse_args(argv)
    print(HEADER)
    print(f"{'nodes':>5} {'loss':>5} {'size':>6} {'msgs':>7} {'cpu s':>6} {'virt s':>7} "
          f"{'msgs/s':>9} {'bytes/s':>11} {'note':>4}")
    for nodes in (int(x) for x in a.nodes.split(",")):
        for loss in (float(x) for x in a.losses.split(",")):
            for size in (int(x) for x in a.sizes.split(",")):
                r, cpu, _ = cell(nodes, loss, size, a.budget)
                total = r.messages_delivered
                want = r.options.messages * nodes
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
