"""Checkpoint write throughput under loss, on real executives behind the fault hub.

    sudo python bench/fault_bench.py [--seconds 10] [--size 1024] [--writers 2]
                                     [--conditions clean,loss10,loss30,delay]

Three executives, each in its own network namespace, talk multicast through
``test/faulthub.py`` (a userspace switch: this kernel has no netem).  For
each condition, ``--writers`` clients (on nodes 1, 2, ...) write ``--size``
bytes to their own section of one SA_CKPT_WR_ALL_REPLICAS checkpoint as fast
as they can for ``--seconds``; the bench prints writes/s (all writers
together), the longest wait between two completed writes of one writer, and
how many times the ring was re-formed.  Conditions (every link, both ways):

    clean    no fault
    loss10   10 % of datagrams lost
    loss30   30 % of datagrams lost
    delay    5 ± 2 ms delay and 10 % of frames held 10 ms more (reordered)

Issue 7 measured 1512 writes/s clean, 75 at 10 %, 8 at 30 % (4 re-formations)
and 123 with delay and reorder.  Figures are printed, never checked.  Needs
root and /dev/net/tun.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "test"))
sys.path.insert(0, str(HERE.parent))

from cluster import Cluster  # noqa: E402
from faulthub import FaultHub, missing_requirement  # noqa: E402

AGENT = str(HERE.parent / "test" / "fault_agent.py")

CONDITIONS = {
    "clean": {},
    "loss10": {"loss": 0.10},
    "loss30": {"loss": 0.30},
    "delay": {"delay_ms": 5.0, "jitter_ms": 2.0, "reorder": 0.10, "reorder_ms": 10.0},
}


def writer(c: Cluster, n: int, name: str, section: str, until: float,
           size: int) -> subprocess.Popen:
    node = c.nodes[n]
    return subprocess.Popen(
        ["ip", "netns", "exec", node.netns, sys.executable, AGENT, "writeloop", name, section,
         f"W{n}", str(until), str(size)],
        env=node.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_condition(c: Cluster, hub: FaultHub, label: str, seconds: float, size: int,
                  writers: int) -> None:
    hub.heal()
    hub.set(**CONDITIONS[label])
    before = {n: len(node.rings()) for n, node in c.nodes.items()}
    start = time.monotonic() + 1.0  # the writers' start-up is not measured
    until = start + seconds
    procs = [writer(c, 1 + i % c.size, f"bench-{label}", f"w{i}", until, size)
             for i in range(writers)]
    times: list[list[float]] = []
    errors = 0
    for p in procs:
        try:
            out, err = p.communicate(timeout=seconds + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        lines = out.splitlines()
        if p.returncode != 0 or not lines:
            print(f"  writer failed: {err[-500:]}", flush=True)
            times.append([])
            continue
        errors += int(lines[0].split()[2])
        times.append([float(t) for t in lines[1].split()[1:]] if len(lines) > 1 else [])
    hub.heal()
    counted = [[t for t in ts if t >= start] for ts in times]
    total = sum(len(ts) for ts in counted)
    gaps = [max((b - a for a, b in zip([start] + ts, ts + [until])), default=seconds)
            for ts in counted]
    reformed = max(len(node.rings()) - before[n] for n, node in c.nodes.items())
    print(f"{label:7s} {total / seconds:9.1f} writes/s  ({total} in {seconds:.0f} s, "
          f"{writers} writers of {size} B; longest wait {max(gaps) * 1000:7.0f} ms; "
          f"errors {errors}; re-formations {reformed})", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--conditions", default="clean,loss10,loss30,delay")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    why = missing_requirement()
    if why:
        print(why, file=sys.stderr)
        return 2
    labels = a.conditions.split(",")
    for label in labels:
        if label not in CONDITIONS:
            ap.error(f"unknown condition {label}; known: {', '.join(CONDITIONS)}")
    with FaultHub(3, seed=a.seed) as hub, tempfile.TemporaryDirectory() as d, \
            Cluster(Path(d), 3, netns=hub.nss, addrs=hub.addrs, bindnetaddr=hub.network,
                    port=5405) as c:
        c.start_all()
        for n in c.nodes:
            c.wait_socket(n)
        c.wait_ring(list(c.nodes))
        print(f"=== 3 executives behind the fault hub, multicast, {a.writers} writers of "
              f"{a.size} B, {a.seconds:.0f} s per condition", flush=True)
        for label in labels:
            run_condition(c, hub, label, a.seconds, a.size, a.writers)
            c.wait_ring(list(c.nodes), timeout=30)  # the next condition starts whole
    return 0


if __name__ == "__main__":
    sys.exit(main())
