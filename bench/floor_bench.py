"""What this machine allows a synchronous write at best: hops, no protocol (issue 12).

    python bench/floor_bench.py [--count 5000] [--size 1024] [--mtu 1500] [--rounds 3]

A synchronous 1 KiB write on a ring of two is at least four process wake-ups
in series: the client's request reaches its executive (a Unix socket), the
frame and the token reach the other executive (UDP), the token comes back
(UDP), the answer reaches the client.  This benchmark runs that chain with
nothing else in it, in plain blocking Python (no gevent, no encryption, no
Totem): ``client -> A -> B -> A -> client`` with A and B in two network
namespaces on a bridge (``test/netns.py``, as ``netns_bench.py``; run as
root), and, for three nodes, ``client -> A -> B -> C -> A -> client`` (the
token's way round); the 2-node chain again with gevent's sockets in the hops
(as the executive's).  It also prints the bare round trips (Unix socket, UDP
between namespaces) the chains are made of.  The chains' rates are a ceiling
for ``netns_bench.py``'s ``1k`` row that no executive written in Python on
this machine can pass.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from netns import lan, lan_possible  # noqa: E402

PORT = 5499

#: one hop of a chain, run as ``python floor_bench.py --hop ...`` in a namespace:
#: receive on ``listen`` (a Unix path or a UDP port), send on to ``to``; A also
#: answers the client on the way back.


def hop_main(args: argparse.Namespace) -> int:
    """A relay: UDP in, UDP out (B, C), or A: Unix in, UDP out, UDP in, Unix out.

    ``--gevent``: with gevent's sockets (each wait a switch to its hub), as
    the executive's."""
    global socket
    if args.gevent:
        from gevent import socket  # type: ignore[no-redef]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", PORT))
    nxt = (args.to, PORT)
    if args.unix is None:
        print("ready", flush=True)
        while True:
            data = udp.recv(65536)
            udp.sendto(data, nxt)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(args.unix)
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
    while True:
        req = conn.recv(65536)
        if not req:
            return 0
        udp.sendto(req, nxt)
        conn.send(udp.recv(65536))


def rate(send: Callable[[bytes], object], recv: Callable[[int], object], size: int,
         count: int) -> float:
    """Round trips per second: ``send`` a message of ``size`` bytes, ``recv`` the
    answer, ``count`` times (after 200 to warm up)."""
    msg = bytes(size)
    for _ in range(200):
        send(msg)
        recv(65536)
    t0 = time.perf_counter()
    for _ in range(count):
        send(msg)
        recv(65536)
    return count / (time.perf_counter() - t0)


def unix_pingpong(size: int, count: int) -> float:
    """Two processes, one Unix seqpacket socket pair: round trips per second."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        a.close()
        while data := b.recv(65536):
            b.send(data)
        os._exit(0)
    b.close()
    r = rate(a.send, a.recv, size, count)
    a.close()
    os.waitpid(pid, 0)
    return r


def ns_popen(ns: str, *argv: str) -> subprocess.Popen:
    """This script in namespace ``ns``, once it says it is ready."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, *argv],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        p.kill()
        p.wait()
        raise RuntimeError(f"{' '.join(argv)} in {ns} did not start")
    return p


def chain(nss: list[str], addrs: list[str], size: int, count: int, tmp: str,
          *extra: str) -> float:
    """client -> A (Unix) -> B ... -> A (UDP) -> client: writes per second."""
    path = os.path.join(tmp, f"a{len(nss)}.sock")
    if os.path.exists(path):
        os.unlink(path)  # the last round's
    procs: list[subprocess.Popen] = []
    try:
        for i in range(1, len(nss)):
            procs.append(ns_popen(nss[i], "--hop", "--to", addrs[(i + 1) % len(nss)], *extra))
        procs.append(ns_popen(nss[0], "--hop", "--to", addrs[1], "--unix", path, *extra))
        # the client runs in A's namespace: a Unix socket is a file, any namespace reaches it
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(path)
        r = rate(c.send, c.recv, size, count)
        c.close()
        return r
    finally:
        for p in procs:
            p.kill()
            p.wait()


def udp_pingpong(nss: list[str], addrs: list[str], size: int, count: int) -> float:
    """A process in namespace 2 echoes what one in namespace 1 sends: round trips/s."""
    echo = ns_popen(nss[1], "--hop", "--to", addrs[0])
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", nss[0], sys.executable, __file__, "--udp-client",
             "--to", addrs[1], "--size", str(size), "--count", str(count)],
            capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])
    finally:
        echo.kill()
        echo.wait()


def udp_client_main(args: argparse.Namespace) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", PORT))
    to = (args.to, PORT)
    print(f"{rate(lambda m: s.sendto(m, to), s.recv, args.size, args.count):.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--udp-client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--to", help=argparse.SUPPRESS)
    ap.add_argument("--unix", help=argparse.SUPPRESS)
    ap.add_argument("--gevent", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hop:
        return hop_main(args)
    if args.udp_client:
        return udp_client_main(args)
    why = lan_possible()
    if why:
        print(f"cannot build namespaces: {why}", file=sys.stderr)
        return 2
    rows: dict[str, list[float]] = {}
    tag = f"aisf{os.getpid() % 10000}"
    with lan(3, mtu=args.mtu, tag=tag, subnet="10.252.0") as (nss, addrs), \
            tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            figures = {
                "Unix socket round trip": unix_pingpong(args.size, args.count),
                "UDP round trip between namespaces": udp_pingpong(nss, addrs, args.size,
                                                                  args.count),
                "chain, 2 nodes: client, A, B, A, client": chain(nss[:2], addrs[:2], args.size,
                                                                 args.count, tmp),
                "chain, 3 nodes: client, A, B, C, A, client": chain(nss, addrs, args.size,
                                                                    args.count, tmp),
                "chain, 2 nodes, the hops on gevent": chain(nss[:2], addrs[:2], args.size,
                                                           args.count, tmp, "--gevent"),
            }
            for k, v in figures.items():
                rows.setdefault(k, []).append(v)
                print(f"  round {r + 1}: {k}: {v:.0f}/s ({1e6 / v:.0f} us)", file=sys.stderr)
    print(f"\nmedians of {args.rounds} round(s), {args.count} round trips of {args.size} bytes, "
          f"MTU {args.mtu}, plain blocking sockets")
    print("| path | per second | us each |")
    print("|---|---|---|")
    for k, runs in rows.items():
        m = statistics.median(runs)
        print(f"| {k} | {m:.0f} | {1e6 / m:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
