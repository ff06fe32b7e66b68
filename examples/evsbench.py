"""evsbench: EVS multicast throughput in rounds of shrinking count and growing size
(spec/evs.md 5).

Run against a running executive (``AIS_SOCKET`` names its socket)::

    python examples/evsbench.py [--rounds 35] [--count 100000] [--size 1300]

Each round sends ``count`` messages of ``size`` bytes with ``mcast_joined``
(AGREED, LOW), retrying on TRY_AGAIN and dispatching after each send, and
prints ``count Writes size bytes per write seconds Seconds runtime TP/s MB/s``.
Then count = count * 0.80 and size += 100.  ``--fixed`` keeps count and
size the same every round (what bench/evs_bench.py uses).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import evs  # noqa: E402
from saf.errors import SA_OK, SaError, TryAgain  # noqa: E402
from evs_common import confchg, result  # noqa: E402

BUFFER = 200000


def bench_round(h: evs.EvsHandle, buf: bytes, count: int, size: int) -> tuple[float, float, float]:
    """Send ``count`` messages of ``size`` bytes; (seconds, TP/s, MB/s)."""
    data = buf[:size]
    mcast = h.mcast_joined
    start = time.monotonic()
    for _ in range(count):
        while True:
            try:
                mcast(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, data)
                break
            except TryAgain:
                h.dispatch(evs.EVS_DISPATCH_ALL)
                time.sleep(0.0005)
        h.dispatch(evs.EVS_DISPATCH_ALL)
    secs = max(time.monotonic() - start, 1e-9)
    return secs, count / secs, count * size / (secs * 1_000_000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=35)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--size", type=int, default=1300)
    ap.add_argument("--fixed", action="store_true", help="same count and size every round")
    args = ap.parse_args()
    try:
        h = evs.initialize(evs.Callbacks(deliver_callback=lambda src, msg: None,
                                         confchg_callback=confchg))
    except SaError as err:
        print(f"Couldn't initialize EVS service {err.code}")
        return 0
    print(f"Init result {SA_OK}")
    print(f"Join result {result(h.join, [b'key1', b'key2', b'key3'])}")
    print(f"Leave result {result(h.leave, [b'key1'])}")
    text = b"".join(b"This is message %d " % i for i in range(20000))
    buf = (text * (BUFFER // len(text) + 1))[:BUFFER]
    count, size = args.count, args.size
    for _ in range(args.rounds):
        secs, tps, mbs = bench_round(h, buf, count, min(size, BUFFER))
        print(f"{count:5d} Writes {size:5d} bytes per write {secs:7.3f} Seconds runtime "
              f"{tps:9.3f} TP/s {mbs:7.3f} MB/s.", flush=True)
        if not args.fixed:
            count = int(count * 0.80)
            size += 100
    h.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
