"""Closing a handle that holds many open checkpoints, on two real executives.

    python bench/close_many_bench.py [--count 30000] [--probes 40]

Starts executives on 127.0.0.1-2 (udpu, default timeouts, encryption on). A
client on node 1 opens ``--count`` checkpoints on one handle (plus one
"keeper" with 1000 s retention, closed at once), then finalizes the handle.
Meanwhile a client on node 2 opens and reads the keeper ``--probes`` times,
0.1 s apart.  Prints the time to open, the slowest probe, the executives' CPU
time and RSS, and how many rings formed afterwards (0: the token never stopped).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from cluster import Cluster  # noqa: E402

from saf import _ckpt_wire as cw  # noqa: E402
from saf import ckpt  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--probes", type=int, default=40)
    args = ap.parse_args()
    attrs = cw.CreationAttributes(cw.SA_CKPT_WR_ALL_REPLICAS, 1000, 1000 * 10**9, 1, 1000, 10)
    limits = (f"}}\nlimits {{\n\tmax_checkpoints: {args.count + 100}\n"
              f"\tmax_checkpoint_opens: {args.count + 100}\n")
    keep = os.environ.get("CLOSE_BENCH_KEEP")  # a directory: keep the logs there
    with (tempfile.TemporaryDirectory(prefix="close-many-") if not keep
          else contextlib.nullcontext(keep)) as root, Cluster(Path(root), 2) as cl:
        for n in (1, 2):
            cl.start(n, extra=limits)
        cl.wait_ring([1, 2])
        pids = [cl.nodes[n].proc.pid for n in (1, 2)]
        os.environ["AIS_SOCKET"] = cl.nodes[1].socket
        h = ckpt.initialize()
        h.checkpoint_open(b"keeper", cw.SA_CKPT_CHECKPOINT_CREATE | 3, attrs).close()
        t = time.monotonic()
        for i in range(args.count):
            h.checkpoint_open(b"c%d" % i, cw.SA_CKPT_CHECKPOINT_CREATE | 3, attrs)
        opened = time.monotonic() - t
        os.environ["AIS_SOCKET"] = cl.nodes[2].socket
        h2 = ckpt.initialize()
        cpu0 = [cpu_seconds(p) for p in pids]
        rss_open = [rss_mib(p) for p in pids]
        rings0 = [len(cl.nodes[n].rings()) for n in (1, 2)]
        t = time.monotonic()
        h.finalize()
        worst = 0.0
        failures = 0
        for _ in range(args.probes):
            t0 = time.monotonic()
            try:
                c = h2.checkpoint_open(b"keeper", 1, timeout=60 * 10**9)
                c.status_get()
                c.close()
            except Exception as exc:  # report, keep measuring
                failures += 1
                print(f"probe failed: {exc!r}")
            worst = max(worst, time.monotonic() - t0)
            if os.environ.get("CLOSE_BENCH_TRACE"):
                print(f"probe at {t0 - t:.2f} s took {time.monotonic() - t0:.2f} s")
            time.sleep(0.1)
        elapsed = time.monotonic() - t
        cpu = [cpu_seconds(p) - c0 for p, c0 in zip(pids, cpu0)]
        rings = [len(cl.nodes[n].rings()) - r0 for n, r0 in zip((1, 2), rings0)]
        print(f"opened {args.count} checkpoints on one handle in {opened:.1f} s")
        print(f"after finalize: {args.probes} probes on node 2 over {elapsed:.1f} s, "
              f"slowest {worst:.2f} s, {failures} failed")
        print(f"CPU during that time: node1 {cpu[0]:.1f} s, node2 {cpu[1]:.1f} s; "
              f"RSS with all open: {rss_open[0]:.0f} / {rss_open[1]:.0f} MiB, "
              f"after: {rss_mib(pids[0]):.0f} / {rss_mib(pids[1]):.0f} MiB")
        print(f"rings formed per node after finalize: {rings} (0: the ring never re-formed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
