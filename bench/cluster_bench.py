"""Measure a real cluster on loopback: failure detection, join time, idle CPU.

    python bench/cluster_bench.py [--rounds 5] [--idle 20]

Starts three executives on 127.0.0.1-3 (udpu, default timeouts, encryption
on) and a CLM tracking client on node 1, then prints:

* detection: kill -9 of node 3 -> the LEFT callback on node 1's client;
* join: node 3's executive opens its client socket (its ring starts right
  after) -> the JOINED callback on node 1's client;
* idle CPU: user+system CPU of each executive over ``--idle`` seconds of an
  idle ring of three, as a percentage of one core.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from cluster import Cluster  # noqa: E402

TRACKER = r"""
import select, sys, time
import saf.clm as clm
from saf.types import SA_TRACK_CHANGES_ONLY, SA_DISPATCH_ALL
names = {2: "JOINED", 3: "LEFT"}
def track(buf, n_items, n_members, view, error):
    now = time.time()
    for item in buf:
        print(names.get(int(item.cluster_change), "OTHER"),
              item.cluster_node.node_name.decode(), now, flush=True)
h = clm.initialize(callbacks=clm.Callbacks(cluster_track_callback=track))
h.cluster_track_start(SA_TRACK_CHANGES_ONLY)
print("READY", flush=True)
fd = h.selection_object()
while True:
    select.select([fd], [], [], 1.0)
    h.dispatch(SA_DISPATCH_ALL)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        parts = line.split()
        if parts and parts[0] == prefix:
            return parts
    raise TimeoutError(f"no {prefix} line within {timeout}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle", type=float, default=20.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), 3) as c:
        c.start_all()
        c.wait_ring([1, 2, 3])
        tracker = subprocess.Popen([sys.executable, "-c", TRACKER], env=c.nodes[1].env(),
                                   stdout=subprocess.PIPE, text=True)
        try:
            wait_line(tracker, "READY", 10)
            time.sleep(2)
            pids = [c.nodes[n].proc.pid for n in (1, 2, 3)]
            before = [cpu_seconds(p) for p in pids]
            time.sleep(args.idle)
            idle = [(cpu_seconds(p) - b) / args.idle * 100 for p, b in zip(pids, before)]
            detect, join = [], []
            for _ in range(args.rounds):
                time.sleep(1.0)
                t0 = time.time()
                c.kill(3)
                parts = wait_line(tracker, "LEFT", 10)
                detect.append(float(parts[2]) - t0)
                if c.nodes[3].socket and os.path.exists(c.nodes[3].socket):
                    os.unlink(c.nodes[3].socket)
                c.start(3)
                while not os.path.exists(c.nodes[3].socket):
                    time.sleep(0.001)
                t1 = time.time()
                parts = wait_line(tracker, "JOINED", 10)
                join.append(float(parts[2]) - t1)
        finally:
            tracker.kill()
    print(f"idle CPU per executive over {args.idle:.0f}s (ring of 3): "
          + ", ".join(f"{x:.2f}%" for x in idle))
    print(f"kill -9 -> CLM LEFT callback on a survivor: median {statistics.median(detect):.3f}s "
          f"(min {min(detect):.3f}, max {max(detect):.3f}, {len(detect)} rounds)")
    print(f"executive started -> CLM JOINED callback:    median {statistics.median(join):.3f}s "
          f"(min {min(join):.3f}, max {max(join):.3f}, {len(join)} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
