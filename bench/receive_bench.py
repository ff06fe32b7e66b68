"""A receiver's cost per datagram: ``Srp.receive`` one by one against ``receive_many``.

    python bench/receive_bench.py [--nodes 3] [--size 74822] [--count 300] [--frame-size 1413]

A ring of ``--nodes`` on the scripted network (``test/totem_harness.py``);
node 1 writes ``--count`` messages of ``--size`` bytes, one at a time, at
Ethernet's frame size.  Everything node 2 receives meanwhile (frames and
tokens) is recorded, sealed with the ring's cipher, and replayed into copies
of node 2 taken before the writes: opened and handed to the core one
datagram at a time, and in the runs a read brings (up to 44 frames, what
``UDP_GRO`` coalesces into 64 KiB; a token alone), opened one by one or,
as the transport does with a coalesced read, by ``Crypto.open_run``.  Prints microseconds per
datagram, the best of 7 replays.  Speed is printed, never asserted.
"""
from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

from ais.totem.crypto import Crypto  # noqa: E402
from ais.totem.srp import Srp  # noqa: E402
from totem_harness import add_write_args, record_writes  # noqa: E402

KEY = b"k" * 32
RUN = 44  #: frames of 1448 bytes in one 64 KiB GRO read


def record(nodes: int, size: int, count: int, frame_size: int) -> tuple[Srp, list]:
    """Node 2 before the writes, and what it received during them: (data, now)."""
    start, got = record_writes(nodes, size, count, frame_size, 2)
    return start, [args for kind, args in got if kind == "receive"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_write_args(ap, nodes=3)
    a = ap.parse_args(argv)
    start, got = record(a.nodes, a.size, a.count, a.frame_size)
    sealer = Crypto(KEY)
    sealed = [(sealer.seal(d), now) for d, now in got]
    runs: list[list] = []
    cur: list = []
    for d, now in sealed:
        if len(d) < 300:  # a token: a read of its own
            if cur:
                runs.append(cur)
                cur = []
            runs.append([(d, now)])
        else:
            cur.append((d, now))
            # (a shorter datagram, a message's last fragment, ends a coalesced run)
            if len(cur) == RUN or len(d) < len(cur[0][0]):
                runs.append(cur)
                cur = []
    if cur:
        runs.append(cur)
    # each run as UDP_GRO hands it over: one buffer and its segment size
    reads = [(b"".join(d for d, _ in run), len(run[0][0]), run[-1][1]) for run in runs]

    def one_by_one() -> float:
        srp, opener = copy.deepcopy(start), Crypto(KEY)
        gc.collect()
        t0 = time.perf_counter()
        for d, now in sealed:
            srp.receive(opener.open_untrusted(d), now)
        return time.perf_counter() - t0

    def by_read() -> float:
        srp, opener = copy.deepcopy(start), Crypto(KEY)
        gc.collect()
        t0 = time.perf_counter()
        for run in runs:
            srp.receive_many([opener.open_untrusted(d) for d, _ in run], run[-1][1])
        return time.perf_counter() - t0

    def coalesced() -> float:
        srp, opener = copy.deepcopy(start), Crypto(KEY)
        gc.collect()
        t0 = time.perf_counter()
        for data, seg, now in reads:
            plains = opener.open_run(data, seg) if len(data) > seg else None
            if plains is None:
                plains = [opener.open_untrusted(data[i:i + seg])
                          for i in range(0, len(data), seg)]
            srp.receive_many(plains, now)
        return time.perf_counter() - t0

    frames = sum(len(d) > 300 for d, _ in got)
    print(f"node 2 of {a.nodes}: {len(got)} datagrams ({frames} frames) for {a.count} "
          f"writes of {a.size} bytes; opened and handed to the core:")
    ways = [("receive, one by one", one_by_one)]
    if hasattr(Srp, "receive_many"):  # (so that older trees can be measured too)
        ways.append(("receive_many, per read", by_read))
    if hasattr(Crypto, "open_run"):
        ways.append(("coalesced reads, open_run", coalesced))
    for name, fn in ways:
        best = min(fn() for _ in range(7))
        print(f"  {name:24} {best / len(got) * 1e6:6.2f} us per datagram")
    return 0


if __name__ == "__main__":
    sys.exit(main())
