"""Cost of ``Transport.mcast`` queueing its actions, in a ring of one over loopback.

    python bench/transport_bench.py [--count 20000] [--size 100] [--burst 10]

One real ``Srp`` alone on 127.0.0.1 (udpu, encryption on), driven by the real
``Transport``.  In a ring of one the core delivers a message inside
``Srp.mcast``; the transport performs that delivery from an event-loop
callback after ``mcast`` returns (see ``ais/totem/transport.py``).  Prints
messages per second and microseconds per message for:

* sync: one message at a time, the next once the previous is delivered (a
  synchronous client: every message pays the deferral);
* burst: ``--burst`` messages, then wait until all are delivered.

Speed is printed, never asserted.  Only loopback is used.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from ais.totem.crypto import Crypto  # noqa: E402
from ais.totem.events import ConfChange, Deliver, TotemConfig, node_of  # noqa: E402
from ais.totem.srp import Srp  # noqa: E402
from ais.totem.transport import Transport  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(count: int, size: int, burst: int) -> None:
    delivered: list[Deliver] = []
    confs: list[ConfChange] = []
    arrived = gevent.event.Event()

    def on_deliver(d: Deliver) -> None:
        delivered.append(d)
        arrived.set()

    srp = Srp(node_of("127.0.0.1"), TotemConfig())
    t = Transport(srp, Crypto(bytes(range(128))), bind_addr="127.0.0.1", port=_free_port(),
                  mode="udpu", members=["127.0.0.1"], on_deliver=on_deliver,
                  on_confchg=confs.append)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not any(not c.transitional for c in confs) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        payload = b"x" * size
        for name, group in (("sync", 1), (f"burst {burst}", burst)):
            delivered.clear()
            start = time.perf_counter()
            for done in range(group, count + 1, group):
                for _ in range(group):
                    t.mcast(payload)
                while len(delivered) < done:
                    arrived.clear()
                    arrived.wait(5.0)
            elapsed = time.perf_counter() - start
            n = len(delivered)
            print(f"{name:10s} {n / elapsed:10.0f} msgs/s {elapsed / n * 1e6:8.1f} us/msg")
    finally:
        t.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--burst", type=int, default=10)
    args = ap.parse_args(argv)
    run(args.count, args.size, args.burst)


if __name__ == "__main__":
    main()
