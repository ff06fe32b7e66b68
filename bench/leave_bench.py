"""SIGTERM vs kill -9: how long until a survivor's CLM client sees the node LEFT.

    python bench/leave_bench.py [--rounds 5] [--nodes 3]

Starts ``--nodes`` executives on 127.0.0.1..N (udpu, default totem timers),
and a CLM client on node 1 tracking changes (SA_TRACK_CHANGES_ONLY) that
stamps each LEFT callback with the wall clock.  Each round stops the last
node -- alternately by SIGTERM (a clean leave: it tells the ring) and by
SIGKILL (the survivors notice only at the token timeout, 1000 ms, then
gather) -- measures signal -> LEFT callback on node 1, restarts the node and
waits for the full ring again.  Figures are printed, never checked; the aim
(issue 13) is under 100 ms for SIGTERM, about 1.5 s for kill -9.
"""
from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "test"))
sys.path.insert(0, str(HERE.parent))

from cluster import Cluster  # noqa: E402

TRACKER = (
    "import time, select, saf.clm as clm\n"
    "from saf.types import SA_TRACK_CHANGES_ONLY, SA_DISPATCH_ALL\n"
    "def cb(items, n, members, view, err):\n"
    "    now = time.time()\n"
    "    for i in items:\n"
    "        print(i.cluster_change.name, i.cluster_node.node_name.decode(), repr(now),\n"
    "              flush=True)\n"
    "h = clm.initialize(callbacks=clm.Callbacks(cluster_track_callback=cb))\n"
    "h.cluster_track_start(SA_TRACK_CHANGES_ONLY)\n"
    "print('tracking', flush=True)\n"
    "end = time.monotonic() + 3600\n"
    "while time.monotonic() < end:\n"
    "    if select.select([h.selection_object()], [], [], 1.0)[0]:\n"
    "        h.dispatch(SA_DISPATCH_ALL)\n"
)


class Tracker:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def wait_left(self, addr: str, after: int, timeout: float = 10.0) -> float | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines[after:]:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "SA_CLM_NODE_LEFT" and parts[1] == addr:
                    return float(parts[2])
            time.sleep(0.005)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per way of stopping")
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[float]] = {"SIGTERM": [], "SIGKILL": []}
    with tempfile.TemporaryDirectory(prefix="leave-bench-") as d, \
            Cluster(Path(d), args.nodes) as c:
        c.start_all()
        everyone = list(range(1, args.nodes + 1))
        c.wait_ring(everyone)
        proc = subprocess.Popen([sys.executable, "-c", TRACKER], env=c.nodes[1].env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tr = Tracker(proc)
        try:
            end = time.monotonic() + 15
            while "tracking" not in tr.lines and time.monotonic() < end:
                time.sleep(0.01)
            last = c.nodes[args.nodes]
            for r in range(2 * args.rounds):
                how = "SIGTERM" if r % 2 == 0 else "SIGKILL"
                time.sleep(1.5)  # a settled ring (token resting, sync done)
                mark = len(tr.lines)
                assert last.proc is not None
                t0 = time.time()
                last.proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
                seen = tr.wait_left(last.addr, mark)
                last.proc.wait(timeout=10)
                if seen is None:
                    print(f"round {r}: {how}: no LEFT within 10 s")
                else:
                    results[how].append(1000.0 * (seen - t0))
                    print(f"round {r}: {how}: LEFT after {1000.0 * (seen - t0):.1f} ms",
                          flush=True)
                c.start(args.nodes)
                c.wait_ring(everyone)
        finally:
            proc.kill()
            proc.wait()
    for how, xs in results.items():
        if xs:
            print(f"{how:8s} signal -> LEFT on a survivor: median {statistics.median(xs):.1f} ms, "
                  f"min {min(xs):.1f}, max {max(xs):.1f} ({len(xs)} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
