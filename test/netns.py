"""Network namespaces for multicast tests and benchmarks: a LAN built and removed here.

Nothing is created in the host's own namespace, so no packet can leave
through the machine's real interfaces (DESIGN.md, "Safety rules").
``lan`` is the one builder; the ``netns_lan`` fixture and
``bench/netns_bench.py`` both use it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator

import pytest


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, timeout=10, capture_output=True, text=True)


def lan_possible() -> str | None:
    """Why a LAN cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return None


@contextlib.contextmanager
def lan(size: int = 3, *, mtu: int = 1500, tag: str | None = None,
        subnet: str = "10.250.0") -> Iterator[tuple[list[str], list[str]]]:
    """``size`` namespaces on one bridge (in a hub namespace), ``subnet``.1 .. .size/24.

    Every link (veth ends and bridge) gets ``mtu``.  Yields (namespaces,
    addresses).  Everything is deleted afterwards even if setup or the body
    fails.
    """
    tag = tag or f"aist{os.getpid() % 100000}"
    hub = f"{tag}hub"
    nss = [f"{tag}n{i}" for i in range(size)]
    addrs = [f"{subnet}.{i + 1}" for i in range(size)]
    created: list[str] = []
    try:
        for ns in [hub, *nss]:
            _ip("netns", "del", ns, check=False)  # a leftover of a killed run
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # No IGMP querier on this LAN: keep the bridge from filtering multicast.
        _ip("-n", hub, "link", "add", "br0", "mtu", str(mtu), "type", "bridge",
            "mcast_snooping", "0")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(nss, addrs)):
            # Created inside the node's namespace, peer moved straight into the hub's.
            _ip("-n", ns, "link", "add", "eth0", "mtu", str(mtu), "type", "veth", "peer",
                "name", f"p{i}", "mtu", str(mtu), "netns", hub)
            _ip("-n", hub, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        yield nss, addrs
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def netns_lan() -> Iterable[tuple[list[str], list[str]]]:  # noqa: D401
    """Three namespaces on one bridge (in a fourth namespace), 10.250.0.1-3/24."""
    why = lan_possible()
    if why:
        pytest.skip(f"multicast test {why}")
    with lan(3) as built:
        yield built
