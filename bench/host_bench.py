"""CPU cost of the service host and CKPT per client request, in-process (no I/O).

    python bench/host_bench.py [--nodes 3] [--count 2000] [--rounds 3]

Three hosts with CKPT on one ``FakeBus`` and a manual clock; a client on node
1 opens ``--count`` checkpoints (with a timeout, so each open is deferred),
writes each once, closes them, and finally the checkpoints expire by
retention (the lowest member decides).  Prints the process CPU time per
request (best of ``--rounds``), which is what the service kit's bookkeeping
adds to or takes from each call; the ring and the sockets are not measured.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

from helpers_exec import FakeConn

from ais.executive import ServiceHost
from ais.services.ckpt import CkptService
from saf import _ckpt_wire as cw

try:
    from ais.testing import FakeBus, ManualScheduler
except ImportError:  # before the fakes moved out of the executive
    from ais.executive import FakeBus, ManualScheduler  # type: ignore[attr-defined,no-redef]

SEC = 1_000_000_000


def one_round(nodes: int, count: int) -> tuple[float, int]:
    sched = ManualScheduler()
    bus = FakeBus(sched)
    hosts = [ServiceHost(i, [CkptService()], sched) for i in range(1, nodes + 1)]
    for h in hosts:
        bus.port(h)
    bus.reconfigure(range(1, nodes + 1))
    sched.run()
    h = hosts[0]
    conn = FakeConn(h.new_conn_id(), cw.CKPT_SERVICE_ID)
    h.lib_connect(conn)
    attrs = cw.CreationAttributes(cw.SA_CKPT_WR_ALL_REPLICAS, checkpoint_size=1000,
                                  retention_duration=SEC, max_sections=1, max_section_size=1000)
    flags = cw.SA_CKPT_CHECKPOINT_CREATE | cw.SA_CKPT_CHECKPOINT_WRITE
    seq = 0
    start = time.process_time()
    for i in range(count):
        seq += 1
        h.lib_request(conn, cw.REQ_OPEN, seq, cw.encode_open(
            cw.OpenReq(b"ck-%d" % i, flags, attrs, 10 * SEC)))
    sched.run()
    handles = [cw.HANDLE.unpack(f.body)[0] for f in conn.responses]
    assert len(handles) == count, "an open failed"
    for hd in handles:
        seq += 1
        h.lib_request(conn, cw.REQ_WRITE, seq, cw.HANDLE.pack(hd) + cw.encode_write(
            cw.WriteReq(0, ((cw.SA_CKPT_DEFAULT_SECTION_ID, 0, b"x" * 100),))))
    sched.run()
    for hd in handles:
        seq += 1
        h.lib_request(conn, cw.REQ_CLOSE, seq, cw.HANDLE.pack(hd))
    sched.run()
    sched.advance(2.0)  # retention (1 s) passes: every checkpoint expires
    cpu = time.process_time() - start
    left = sum(len(x.service_by_id(cw.CKPT_SERVICE_ID).ckpts) for x in hosts)
    assert left == 0, f"{left} checkpoints did not expire"
    return cpu, seq + count  # client requests plus one retention expiry each


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    o = ap.parse_args()
    best = min(one_round(o.nodes, o.count) for _ in range(o.rounds))
    cpu, ops = best
    print(f"{o.nodes} nodes, {o.count} checkpoints: {ops} operations in {cpu:.2f} s CPU, "
          f"{cpu / ops * 1e6:.0f} us per operation (all nodes together) [{os.getcwd()}]")


if __name__ == "__main__":
    main()
