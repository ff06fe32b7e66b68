"""Interface discovery: this host's IPv4 addresses, their masks and MTUs.

The configuration layer (``ais.config``) decides which address ``bindnetaddr``
names; this module only asks the kernel what there is: ``ip -o -4 addr`` when
the tool exists (it lists secondary addresses too), else the SIOCGIFCONF ioctl,
and ``/sys/class/net/<name>/mtu`` for an interface's MTU.  Every answer is for
the network namespace the process runs in.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Sequence
from typing import NamedTuple

#: bytes IPv4 (20, no options) and UDP (8) add to every ring datagram
IPV4_UDP_HEADER_BYTES = 20 + 8


class Interface(NamedTuple):
    """One IPv4 address of a local interface."""

    name: str
    address: str
    prefixlen: int


def interface_mtu(address: str, interfaces: Sequence[Interface]) -> int | None:
    """MTU of the interface whose network holds ``address`` (None if unknown)."""
    addr = ipaddress.IPv4Address(address)
    for iface in interfaces:
        net = ipaddress.IPv4Network(f"{iface.address}/{iface.prefixlen}", strict=False)
        if addr in net:
            try:
                with open(f"/sys/class/net/{iface.name}/mtu") as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                return None
    return None


_IP_ADDR_LINE = re.compile(r"^\d+:\s+(\S+)\s+inet\s+([0-9.]+)(?:/(\d+))?")


def parse_ip_addr_output(text: str) -> list[Interface]:
    """Parse ``ip -o -4 addr show`` output into interfaces."""
    out = []
    for line in text.splitlines():
        m = _IP_ADDR_LINE.match(line)
        if m:
            name = m.group(1).split("@", 1)[0]
            out.append(Interface(name, m.group(2), int(m.group(3) or 32)))
    return out


def local_ipv4_addresses() -> list[Interface]:
    """The IPv4 addresses of this host (of this network namespace), in kernel order.

    Uses ``ip -o -4 addr`` when present (it lists secondary addresses too),
    else the SIOCGIFCONF ioctl.
    """
    ip = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.path.exists(p)),
        None)
    if ip is not None:
        try:
            done = subprocess.run([ip, "-o", "-4", "addr", "show"], capture_output=True,
                                  text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0:
            return parse_ip_addr_output(done.stdout)
    return _ioctl_ipv4_addresses()


def _ioctl_ipv4_addresses() -> list[Interface]:
    """Addresses from SIOCGIFCONF; masks from SIOCGIFNETMASK (Linux)."""
    import array
    import fcntl

    siocgifconf, siocgifnetmask = 0x8912, 0x891B
    # struct ifreq: 16-byte name + a union whose largest member is struct ifmap
    # (two unsigned longs, a short and three chars), so its size follows the ABI.
    ifreq_size = 16 + max(16, 2 * struct.calcsize("P") + 8)
    out: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        count = 32
        while True:
            buf = array.array("B", bytes(count * ifreq_size))
            ifconf = struct.pack("iP", len(buf), buf.buffer_info()[0])
            length = struct.unpack("iP", fcntl.ioctl(s.fileno(), siocgifconf, ifconf))[0]
            if length < len(buf):
                break
            count *= 2  # the kernel filled the buffer: there may be more
        data = buf.tobytes()[:length]
        for off in range(0, length, ifreq_size):
            raw_name = data[off:off + 16].split(b"\0", 1)[0]
            address = socket.inet_ntoa(data[off + 20:off + 24])
            req = struct.pack(f"16s{ifreq_size - 16}x", raw_name)
            mask = fcntl.ioctl(s.fileno(), siocgifnetmask, req)[20:24]
            prefixlen = bin(int.from_bytes(mask, "big")).count("1")
            out.append(Interface(raw_name.decode(errors="replace"), address, prefixlen))
    return out



__all__ = ["IPV4_UDP_HEADER_BYTES", "Interface", "interface_mtu", "local_ipv4_addresses",
           "parse_ip_addr_output"]
