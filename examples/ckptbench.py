"""ckptbench: checkpoint write throughput from one thread, per write size.

Run against a running executive (``AIS_SOCKET`` names its socket)::

    python examples/ckptbench.py [--count N] [--sizes 1,2,5,10,20,50,100,200]

For each size (KiB) it opens a fresh one-section checkpoint, makes N
synchronous writes of that size (each returns once the whole cluster has it
in agreed order) and prints writes/s and MB/s.  The figures are printed,
never checked.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import ckpt  # noqa: E402
from saf.errors import TryAgain  # noqa: E402

KIB = 1024
MODES = {"all": ckpt.SA_CKPT_WR_ALL_REPLICAS, "active": ckpt.SA_CKPT_WR_ACTIVE_REPLICA,
         "weak": ckpt.SA_CKPT_WR_ACTIVE_REPLICA_WEAK}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=500, help="writes per size")
    p.add_argument("--sizes", default="1,2,5,10,20,50,100,200",
                   help="comma-separated write sizes in KiB")
    p.add_argument("--name", default=f"ckptbench-{os.getpid()}", help="checkpoint name prefix")
    p.add_argument("--mode", choices=sorted(MODES), default="all",
                   help="creation flags: WR_ALL_REPLICAS (all), WR_ACTIVE_REPLICA (active, "
                        "this node's replica made active) or WR_ACTIVE_REPLICA_WEAK (weak)")
    return p.parse_args(argv)


def write_retrying(c: ckpt.CheckpointHandle, vec: ckpt.IOVector) -> None:
    """A write; TryAgain (the ring's send queue is full) waits a little and retries."""
    for _ in range(1000):
        try:
            c.write(vec)
            return
        except TryAgain:
            time.sleep(0.005)
    raise TryAgain("the ring stayed full")


def attributes(size: int, mode: str = "all") -> ckpt.CreationAttributes:
    return ckpt.CreationAttributes(
        creation_flags=MODES[mode], checkpoint_size=size,
        retention_duration=0, max_sections=1, max_section_size=size, max_section_id_size=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) * KIB for s in args.sizes.split(",")]
    rw = ckpt.SA_CKPT_CHECKPOINT_READ | ckpt.SA_CKPT_CHECKPOINT_WRITE
    with ckpt.initialize() as h:
        for size in sizes:
            data = os.urandom(size)
            name = f"{args.name}-{size}"
            with h.checkpoint_open(name, rw, attributes(size, args.mode)) as c:
                if args.mode != "all":
                    c.active_checkpoint_set()
                vec = ckpt.IOVector(ckpt.SA_CKPT_DEFAULT_SECTION_ID, data)
                write_retrying(c, vec)  # warm up
                start = time.perf_counter()
                for _ in range(args.count):
                    write_retrying(c, vec)
                elapsed = time.perf_counter() - start
                h.checkpoint_unlink(name)
            rate = args.count / elapsed
            print(f"{size // KIB:5d} KiB: {args.count} writes in {elapsed:7.3f} s: "
                  f"{rate:9.1f} writes/s {rate * size / 1e6:8.2f} MB/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
