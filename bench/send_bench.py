"""A writer's cost per frame: its token visits replayed with the real cipher.

    python bench/send_bench.py [--nodes 2] [--size 74822] [--count 300] [--frame-size 1413]

A ring of ``--nodes`` on the scripted network (``test/totem_harness.py``);
node 1 writes ``--count`` messages of ``--size`` bytes, one at a time (each
awaited, as a synchronous client's), at Ethernet's frame size.  Everything
node 1 is given meanwhile -- its messages and the tokens that come back -- is
recorded, and replayed into copies of node 1 taken before the writes: the
tokens opened, every packet the core sends sealed, as the transport would
(the frames handed over one by one through ``Srp.frame_sink``).  What a
write costs the writer's core and cipher, all included: framing and sealing
its frames, the token's visits, the delivery of its own message.  Prints
microseconds per write and per frame sent, the best of 7 replays.  Speed is
printed, never asserted.
"""
from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

from ais.totem.crypto import Crypto  # noqa: E402
from ais.totem.events import Send  # noqa: E402
from ais.totem.srp import Srp  # noqa: E402
from totem_harness import add_write_args, record_writes  # noqa: E402

KEY = b"k" * 32


def replay(start: Srp, got: list[tuple[str, tuple[Any, ...]]]) -> tuple[float, int]:
    """Seconds node 1's copy takes for ``got``, and the frames it sent."""
    srp, sealer, opener = copy.deepcopy(start), Crypto(KEY), Crypto(KEY)
    sent: list[bytes] = []
    seal = sealer.seal

    def sink(action: Send) -> None:
        sent.append(seal(action.data))
    srp.frame_sink = sink
    inputs = [(kind, (sealer.seal(args[0]),) + args[1:] if kind == "receive" else args)
              for kind, args in got]
    gc.collect()
    t0 = time.perf_counter()
    for kind, args in inputs:
        if kind == "receive":
            actions = srp.receive(opener.open_untrusted(args[0]), args[1])
        elif kind == "mcast":
            actions = srp.mcast(args[0], args[1], True)
        else:
            actions = srp.timer(*args)
        for a in actions:
            if isinstance(a, Send):
                sent.append(seal(a.data))
        sent.clear()
    elapsed = time.perf_counter() - t0
    return elapsed, srp.stats["frames_sent"] - start.stats["frames_sent"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_write_args(ap, nodes=2)
    ap.add_argument("--replays", type=int, default=7)
    a = ap.parse_args(argv)
    start, got = record_writes(a.nodes, a.size, a.count, a.frame_size, 1)
    best, frames = min(replay(start, got) for _ in range(a.replays))
    print(f"node 1 of {a.nodes} writes {a.count} messages of {a.size} bytes ({frames} frames); "
          f"its core and cipher, best of {a.replays} replays:")
    print(f"  {best / a.count * 1e6:8.1f} us per write {best / frames * 1e6:6.2f} us per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
