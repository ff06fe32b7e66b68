"""Ring throughput at Ethernet frame sizes: executives in network namespaces (issue 12).

    python bench/netns_bench.py [--nodes 1,2,3] [--mtu 1500,9000] [--transport udp,udpu]
                                [--work large,25k,1k,1kx8] [--rounds 5]
                                [--large-count 200] [--small-count 2000]

Builds the LAN itself (``test/netns.py``: one namespace per executive, veth
pairs on a bridge in a hub namespace, every link at the MTU asked for; run as
root), starts one executive per namespace (encryption on, as always; frame
size derived from the interface's MTU), and runs ``examples/ckptbench.py`` as
a client of node 1: ``large`` is 73 KiB (~75 KB) writes, ``25k`` 25 KiB
writes, ``1k`` synchronous 1 KiB writes (each returns once the whole ring has
it in agreed order), ``1kx8`` (``1kx16``) the same from 8 (16) client threads at once
(``examples/ckptbenchth.py``, each thread its own handle and section).  Each
round runs every workload once; the table shows the medians over
``--rounds``, and the CPU the executives used during the large writes
(percent of one core each, median), also as processor time per large
write (µs each; busy polling's turns count too: ``--totem "busy_poll: 0"``
leaves only the work).  The namespaces and processes are
removed at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from cluster import ROOT, Cluster  # noqa: E402
from netns import lan, lan_possible  # noqa: E402

#: workload -> (write size in KiB, which count option, figure printed, client threads)
WORKS = {"large": (73, "large", "MB/s", 1), "25k": (25, "large", "MB/s", 1),
         "1k": (1, "small", "writes/s", 1), "1kx8": (1, "small", "writes/s", 8),
         "1kx16": (1, "small", "writes/s", 16)}
TITLES = {"large": "~75 KB writes", "25k": "25 KB writes", "1k": "1 KiB writes/s",
          "1kx8": "1 KiB writes/s, 8 clients", "1kx16": "1 KiB writes/s, 16 clients"}
LINE = re.compile(r"(\d+) KiB(?: x \d+ threads)?: \d+ writes in\s+([\d.]+) s:\s+([\d.]+) "
                  r"writes/s\s+([\d.]+) MB/s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_work(c: Cluster, work: str, count: int, client: int = 1) -> tuple[float, list[float]]:
    """One ckptbench run: (its figure, each executive's CPU % meanwhile)."""
    size, _, unit, threads = WORKS[work]
    pids = [n.proc.pid for n in c.nodes.values() if n.proc is not None]
    before = [cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    if threads == 1:
        p = c.client(client, str(ROOT / "examples" / "ckptbench.py"), "--count", str(count),
                     "--sizes", str(size), timeout=600)
    else:  # each thread its own handle, writes as synchronous as ckptbench's
        p = c.client(client, str(ROOT / "examples" / "ckptbenchth.py"), "--threads",
                     str(threads), "--count", str(max(1, count // threads)),
                     "--sizes", str(size), timeout=600)
    wall = time.monotonic() - t0
    cpu = [(cpu_seconds(q) - b) / wall * 100 for q, b in zip(pids, before)]
    m = LINE.search(p.stdout)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"ckptbench failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
    return float(m.group(3) if unit == "writes/s" else m.group(4)), cpu


def bench_row(nss: list[str], addrs: list[str], nodes: int, transport: str,
              args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d, \
            Cluster(Path(d), nodes, netns=nss[:nodes], addrs=addrs[:nodes],
                    bindnetaddr=addrs[0].rsplit(".", 1)[0] + ".0",
                    port=5405, totem=args.totem) as c:
        c.multicast = transport == "udp"  # Cluster's udpu mode lists every member
        c.start_all()
        for n in c.nodes:
            c.wait_socket(n)
        c.wait_ring(list(c.nodes))
        figures: dict[str, list[float]] = {w: [] for w in args.work}
        cpus: list[list[float]] = []
        cpu_us: list[list[float]] = []  # per round: each executive's CPU per large write
        for r in range(args.rounds):
            for w in args.work:
                count = args.large_count if WORKS[w][1] == "large" else args.small_count
                fig, cpu = run_work(c, w, count,
                                    1 if args.client == "first" else max(c.nodes))
                figures[w].append(fig)
                if w == "large":
                    cpus.append(cpu)
                    writes_per_s = fig * 1e6 / (WORKS[w][0] * 1024)
                    cpu_us.append([x / 100 / writes_per_s * 1e6 for x in cpu])
                print(f"  round {r + 1}: {nodes} node(s) {transport} {w}: {fig:.1f} "
                      f"{WORKS[w][2]}, executives' CPU "
                      + "/".join(f"{x:.0f}%" for x in cpu), file=sys.stderr, flush=True)
        if not all(n.alive for n in c.nodes.values()):
            raise RuntimeError("an executive died during the run")
    row: dict[str, object] = {w: statistics.median(v) for w, v in figures.items()}
    if cpus:
        row["cpu"] = [statistics.median(col) for col in zip(*cpus)]
        row["cpu_us"] = [statistics.median(col) for col in zip(*cpu_us)]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--mtu", default="1500,9000")
    ap.add_argument("--transport", default="udp,udpu")
    ap.add_argument("--work", default="large,25k,1k", help="of: " + ",".join(WORKS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--large-count", type=int, default=200, help="writes per large/25k run")
    ap.add_argument("--small-count", type=int, default=2000, help="writes per 1k run")
    ap.add_argument("--client", default="first", choices=("first", "last"),
                    help="node running ckptbench: the first (the representative) or the last")
    ap.add_argument("--totem", default="", help="extra lines for the totem section")
    args = ap.parse_args(argv)
    args.work = [w for w in args.work.split(",") if w]
    unknown = set(args.work) - set(WORKS)
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    why = lan_possible()
    if why:
        print(f"netns_bench {why}", file=sys.stderr)
        return 2
    nodes = [int(x) for x in args.nodes.split(",")]
    rows = []
    for mtu in (int(x) for x in args.mtu.split(",")):
        with lan(max(nodes), mtu=mtu, tag=f"aisb{os.getpid() % 100000}",
                 subnet="10.251.0") as (nss, addrs):
            for n in nodes:
                for transport in args.transport.split(","):
                    if n == 1 and transport == "udpu" and "udp" in args.transport.split(","):
                        continue  # a ring of one sends nothing: the same row twice
                    row = bench_row(nss, addrs, n, transport, args)
                    rows.append((n, mtu, transport, row))
    head = ["nodes", "MTU", "transport"] + [TITLES[w] for w in args.work]
    if "large" in args.work:
        head += ["executives' CPU (large)", "CPU per large write (µs)"]
    print(f"\nmedians of {args.rounds} round(s); large/25k: {args.large_count} writes, "
          f"1k: {args.small_count} writes; encryption on")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n, mtu, transport, row in rows:
        cells = [str(n), str(mtu), transport]
        for w in args.work:
            v = row[w]
            assert isinstance(v, float)
            cells.append(f"{v:.0f} {WORKS[w][2]}" if WORKS[w][2] == "writes/s"
                         else f"{v:.1f} MB/s")
        if "large" in args.work:
            cpu = row.get("cpu", [])
            assert isinstance(cpu, list)
            cells.append(" / ".join(f"{x:.0f}%" for x in cpu))
            per_write = row.get("cpu_us", [])
            assert isinstance(per_write, list)
            cells.append(" / ".join(f"{x:.0f}" for x in per_write))
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
