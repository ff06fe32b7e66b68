"""ckptbenchth: checkpoint write throughput from several threads, per write size.

Run against a running executive (``AIS_SOCKET`` names its socket)::

    python examples/ckptbenchth.py [--threads T] [--count N] [--sizes 1,10,100] [--shared]

Each thread writes N times to its own section of one checkpoint.  By default
every thread has its own library handle (its requests travel in parallel);
``--shared`` makes all threads share one handle, whose calls the library
serialises.  Prints total writes/s and MB/s per size; never checks them.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import ckpt  # noqa: E402
from ckptbench import KIB, write_retrying  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--count", type=int, default=200, help="writes per thread and size")
    p.add_argument("--sizes", default="1,2,5,10,20,50,100", help="write sizes in KiB")
    p.add_argument("--shared", action="store_true", help="all threads share one handle")
    p.add_argument("--name", default=f"ckptbenchth-{os.getpid()}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rw = ckpt.SA_CKPT_CHECKPOINT_READ | ckpt.SA_CKPT_CHECKPOINT_WRITE
    errors: list[BaseException] = []
    with ckpt.initialize() as main_handle:
        for size in [int(s) * KIB for s in args.sizes.split(",")]:
            name = f"{args.name}-{size}"
            attrs = ckpt.CreationAttributes(
                creation_flags=ckpt.SA_CKPT_WR_ALL_REPLICAS,
                checkpoint_size=size * args.threads, retention_duration=0,
                max_sections=args.threads, max_section_size=size, max_section_id_size=8)
            setup = main_handle.checkpoint_open(name, rw, attrs)
            for t in range(args.threads):
                setup.section_create(b"t%d" % t)
            data = os.urandom(size)
            handles = [main_handle if args.shared else ckpt.initialize()
                       for _ in range(args.threads)]
            ckpts = [hd.checkpoint_open(name, rw) for hd in handles]
            go = threading.Barrier(args.threads + 1)

            # Each round's threads are joined before the next round rebinds these.
            def work(t: int) -> None:
                vec = ckpt.IOVector(b"t%d" % t, data)  # noqa: B023
                try:
                    go.wait()  # noqa: B023
                    for _ in range(args.count):
                        write_retrying(ckpts[t], vec)  # noqa: B023
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(t,)) for t in range(args.threads)]
            for th in threads:
                th.start()
            go.wait()
            start = time.perf_counter()
            for th in threads:
                th.join()
            elapsed = time.perf_counter() - start
            main_handle.checkpoint_unlink(name)  # gone once the last handle closes
            for c in ckpts:
                c.close()
            for hd in handles:
                if hd is not main_handle:
                    hd.finalize()
            setup.close()
            if errors:
                raise errors[0]
            total = args.count * args.threads
            rate = total / elapsed
            print(f"{size // KIB:5d} KiB x {args.threads} threads"
                  f"{' (shared handle)' if args.shared else ''}: {total} writes in "
                  f"{elapsed:7.3f} s: {rate:9.1f} writes/s {rate * size / 1e6:8.2f} MB/s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
