"""ckptbench against real executives on loopback, encryption on.

    python bench/ckpt_cluster_bench.py [--nodes 1,2] [--sizes 1,10,100,500]
                                       [--count 300] [--frame-size 1400] [--threads 0]
                                       [--modes all,active,weak]

Starts N executives on 127.0.0.1..N (udpu), with ``frame_size`` derived from
loopback's MTU (65536) unless ``--frame-size`` is given (1400 mimics an
Ethernet's 1500-byte MTU), runs
``examples/ckptbench.py`` (or ``ckptbenchth.py`` with ``--threads``) as a
client of node 1 and prints its figures; ``--modes`` runs ckptbench once per
checkpoint creation mode (all: WR_ALL_REPLICAS, active: WR_ACTIVE_REPLICA
written from the active replica's node, weak: WR_ACTIVE_REPLICA_WEAK).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from cluster import ROOT, Cluster  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1,2")
    ap.add_argument("--sizes", default="1,10,100,500")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--frame-size", type=int, default=0,
                    help="frame_size to configure (default: derived from loopback's MTU)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--modes", default="all", help="ckptbench.py --mode values, comma-separated")
    ap.add_argument("--totem", default="", help="extra lines for the totem section")
    a = ap.parse_args(argv)
    totem = "\n".join(filter(None, [f"\tframe_size: {a.frame_size}" if a.frame_size else "",
                                     a.totem]))
    for n in (int(x) for x in a.nodes.split(",")):
        with tempfile.TemporaryDirectory() as d, Cluster(Path(d), n, totem=totem) as c:
            c.start_all()
            for i in range(1, n + 1):
                c.wait_socket(i)
            c.wait_ring(list(range(1, n + 1)))
            prog = "ckptbenchth.py" if a.threads else "ckptbench.py"
            for mode in a.modes.split(","):
                args = ["--count", str(a.count), "--sizes", a.sizes]
                if a.threads:
                    args += ["--threads", str(a.threads)]
                elif mode != "all":
                    args += ["--mode", mode]
                print(f"=== {n} node(s), frame_size {a.frame_size or 'from the MTU'}: "
                      f"{prog} {' '.join(args)}",
                      flush=True)
                p = c.client(1, str(ROOT / "examples" / prog), *args, timeout=900)
                print(p.stdout, p.stderr[-2000:], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
