"""Network namespaces for multicast tests: a LAN the test builds and removes.

Nothing is created in the host's own namespace, so no packet can leave
through the machine's real interfaces (DESIGN.md, "Safety rules").
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable

import pytest


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, timeout=10, capture_output=True, text=True)


@pytest.fixture
def netns_lan() -> Iterable[tuple[list[str], list[str]]]:  # noqa: D401
    """Three namespaces on one bridge (in a fourth namespace), 10.250.0.1-3/24.

    Nothing is created in the host's own namespace; all of it is deleted
    afterwards even if setup or the test fails.
    """
    if os.geteuid() != 0:
        pytest.skip("multicast test needs root for ip netns")
    if shutil.which("ip") is None:
        pytest.skip("multicast test needs the ip command (iproute2)")
    tag = f"aist{os.getpid() % 100000}"
    hub = f"{tag}hub"
    nss = [f"{tag}n{i}" for i in range(3)]
    addrs = [f"10.250.0.{i + 1}" for i in range(3)]
    created: list[str] = []
    try:
        for ns in [hub, *nss]:
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # No IGMP querier on this LAN: keep the bridge from filtering multicast.
        _ip("-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(nss, addrs)):
            # Created inside the node's namespace, peer moved straight into the hub's.
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
                "netns", hub)
            _ip("-n", hub, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        yield nss, addrs
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


