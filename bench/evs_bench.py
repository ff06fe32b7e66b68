"""EVS throughput on real executives: evsbench on 1, 2 and 3 nodes on loopback.

    python bench/evs_bench.py [--rounds 3] [--seconds 1.5] [--nodes 1,2,3]
                              [--sizes 100,1024,65536] [--mtu loopback,1500]

Starts 1..3 executives on 127.0.0.1-3 (udpu, encryption on -- it always is),
with the ring's frame size from the loopback interface ("loopback") or from
``netmtu: 1500`` (an Ethernet-sized frame), and a silent EVS receiver joined
to the group on every other node.  On node 1 ``examples/evsbench.py --fixed``
sends messages of each size with ``mcast_joined`` (AGREED), retrying on
TRY_AGAIN and dispatching its own deliveries, as the spec's evsbench does.
Each cell is the median of ``--rounds`` rounds of about ``--seconds`` each.
Progress goes to stderr; the table to stdout.  The figures depend on the
machine's load: say what else ran beside them.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from cluster import ROOT, Cluster  # noqa: E402

RECEIVER = r"""
import select, sys
from saf import evs
h = evs.initialize(evs.Callbacks(deliver_callback=lambda s, m: None))
h.join([b"key2"])
print("READY", flush=True)
fd = h.fd_get()
while True:
    select.select([fd], [], [], 1.0)
    h.dispatch(evs.EVS_DISPATCH_ALL)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_bench(c: Cluster, size: int, count: int, rounds: int) -> list[tuple[float, float]]:
    r = c.client(1, str(ROOT / "examples" / "evsbench.py"), "--fixed", "--rounds", str(rounds),
                 "--count", str(count), "--size", str(size), timeout=600)
    out = []
    for line in r.stdout.splitlines():
        if "TP/s" in line:
            parts = line.split()
            out.append((float(parts[-4]), float(parts[-2])))
    if len(out) != rounds:
        raise RuntimeError(f"evsbench failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return out


def calibrate(c: Cluster, size: int, seconds: float) -> int:
    """A count that takes about ``seconds`` at this size."""
    probe = 2000 if size < 8192 else 200
    [(tps, _)] = run_bench(c, size, probe, 1)
    return max(100, int(tps * seconds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--sizes", default="100,1024,65536")
    ap.add_argument("--mtu", default="loopback,1500")
    a = ap.parse_args()
    nodes = [int(x) for x in a.nodes.split(",")]
    sizes = [int(x) for x in a.sizes.split(",")]
    rows: list[tuple[str, int, int, float, float]] = []
    for mtu in a.mtu.split(","):
        totem = "" if mtu == "loopback" else f"\tnetmtu: {int(mtu)}"
        for n in nodes:
            with tempfile.TemporaryDirectory(prefix="evs-bench-") as tmp, \
                    Cluster(Path(tmp), n, totem=totem) as c:
                log(f"mtu {mtu}, {n} node(s): starting executives")
                c.start_all()
                c.wait_ring(list(range(1, n + 1)))
                receivers = []
                try:
                    for k in range(2, n + 1):
                        p = subprocess.Popen([sys.executable, "-c", RECEIVER],
                                             env=c.nodes[k].env(), stdout=subprocess.PIPE,
                                             text=True)
                        receivers.append(p)
                        if p.stdout.readline().strip() != "READY":
                            raise RuntimeError("receiver did not start")
                    for size in sizes:
                        count = calibrate(c, size, a.seconds)
                        res = run_bench(c, size, count, a.rounds)
                        tps = statistics.median(r[0] for r in res)
                        mbs = statistics.median(r[1] for r in res)
                        log(f"  {size:6d} B x {count}: {tps:9.0f} msgs/s {mbs:8.2f} MB/s "
                            f"(rounds: {', '.join(f'{r[0]:.0f}' for r in res)})")
                        rows.append((mtu, n, size, tps, mbs))
                finally:
                    for p in receivers:
                        p.kill()
                        p.wait()
    print(f"{'frame':>9} {'nodes':>5} {'size':>6} {'msgs/s':>9} {'MB/s':>8}")
    for mtu, n, size, tps, mbs in rows:
        print(f"{mtu:>9} {n:5d} {size:6d} {tps:9.0f} {mbs:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
