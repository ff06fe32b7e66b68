"""Cost of safe delivery in the Totem core, in virtual time (deterministic).

    python bench/safe_delivery_bench.py [--nodes 2,3,5] [--loss 0,0.1] [--count 300]

One closed-loop writer (the next message once the previous one is answered),
on ``test/totem_harness.Net`` (0.2 ms per hop, no CPU cost): the answer comes
either at agreed delivery on the writer's node (``Deliver``, what
WR_ACTIVE_REPLICA writes from the active node wait for) or once every member
holds it (``Stable``, what WR_ALL_REPLICAS writes wait for).  Prints messages
per virtual second and the latency percentiles.  ``--loss`` drops that share
of message frames (the token is never dropped).  Real-executive figures,
which include the CPU cost, come from ``bench/ckpt_cluster_bench.py --modes``.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "test")]
from totem_harness import Net, ids  # noqa: E402

from ais.totem import wire  # noqa: E402
from ais.totem.events import Deliver, Stable  # noqa: E402


def run(n: int, loss: float, count: int, safe: bool, seed: int = 1) -> list[float]:
    net = Net(ids(n))
    net.start()
    if not net.run_until(net.one_ring, 5):
        raise RuntimeError("no ring")
    rnd = random.Random(seed)
    if loss:
        net.drop = lambda s, d, p: isinstance(p, wire.Mcast) and rnd.random() < loss
    writer = ids(n)[-1]  # not the representative
    state: dict[str, int | bool] = {"seq": 0, "done": False}
    perform = net._perform

    def watch(i: int, actions: list) -> None:
        perform(i, actions)
        if i != writer:
            return
        for a in actions:
            if isinstance(a, Deliver) and a.payload == b"m%d" % state["cur"]:
                state["seq"] = a.seq
                if not safe:
                    state["done"] = True
            elif isinstance(a, Stable) and safe and state["seq"] and a.seq >= state["seq"]:
                state["done"] = True

    net._perform = watch  # type: ignore[method-assign]
    lat = []
    for k in range(count):
        state.update(cur=k, seq=0, done=False)
        t0 = net.now
        net.mcast(writer, b"m%d" % k)
        if not net.run_until(lambda: bool(state["done"]), 5.0):
            raise RuntimeError(f"message {k} not answered")
        lat.append(net.now - t0)
    return lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="2,3,5")
    ap.add_argument("--loss", default="0,0.1")
    ap.add_argument("--count", type=int, default=300)
    a = ap.parse_args(argv)
    for n in (int(x) for x in a.nodes.split(",")):
        for loss in (float(x) for x in a.loss.split(",")):
            for safe in (False, True):
                lat = sorted(run(n, loss, a.count, safe))
                total = sum(lat)
                print(f"{n} nodes, loss {loss:4.0%}, {'safe  ' if safe else 'agreed'}: "
                      f"{a.count / total:8.0f} msgs/s  latency ms p50 "
                      f"{lat[len(lat) // 2] * 1e3:6.2f} p90 {lat[int(len(lat) * .9)] * 1e3:6.2f} "
                      f"max {lat[-1] * 1e3:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
