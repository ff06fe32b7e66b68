"""testevs: join groups, multicast with both APIs and print every delivery (spec/evs.md 5).

Run against a running executive (``AIS_SOCKET`` names its socket)::

    python examples/testevs.py [COUNT]

Joins key1, key2 and key3, leaves key1, then sends COUNT (default 500)
messages with ``mcast_joined`` and COUNT more with ``mcast_groups`` to key2
alone, retrying on TRY_AGAIN and dispatching after each send.  Deliveries
print ``API '<label>' msg '<text>'``; configuration changes print the group's
members and who left and joined.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import evs  # noqa: E402
from saf.errors import SA_OK, SaError, TryAgain  # noqa: E402
from evs_common import confchg, result  # noqa: E402

API = ["evs_mcast_joined", "evs_mcast_groups"]
state = {"api": API[0], "delivered": 0}


def deliver(source_addr: str, msg: bytes) -> None:
    text = msg.split(b"\0", 1)[0].decode(errors="replace")
    state["delivered"] += 1
    print(f"API '{state['api']}' msg '{text}'")


def send(h: evs.EvsHandle, fn, *args) -> None:
    """Send one message, retrying while the ring is full; then dispatch what waits."""
    for _ in range(100000):
        try:
            fn(*args)
            break
        except TryAgain:
            h.dispatch(evs.EVS_DISPATCH_ALL)
            time.sleep(0.001)
    h.dispatch(evs.EVS_DISPATCH_ALL)


def settle(h: evs.EvsHandle, total: int, timeout: float = 10.0) -> None:
    """Wait until the messages sent so far (``total``) came back, so each
    delivery is printed under the API that sent it."""
    h.flush()
    end = time.monotonic() + timeout
    while state["delivered"] < total and time.monotonic() < end:
        h.dispatch(evs.EVS_DISPATCH_ALL)
        time.sleep(0.01)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    try:
        h = evs.initialize(evs.Callbacks(deliver_callback=deliver, confchg_callback=confchg))
    except SaError as err:
        print(f"Couldn't initialize EVS service {err.code}")
        return 0
    print(f"Init result {SA_OK}")
    print(f"Join result {result(h.join, [b'key1', b'key2', b'key3'])}")
    print(f"Leave result {result(h.leave, [b'key1'])}")
    buf = bytearray(1000)
    for i in range(count):
        text = f"evs_mcast_joined: This is message {i}".encode()
        buf[:len(text) + 1] = text + b"\0"
        send(h, h.mcast_joined, evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, bytes(buf))
    settle(h, count)
    state["api"] = API[1]
    for i in range(count):
        text = f"evs_mcast_groups: This is message {i}".encode()
        buf[:len(text) + 1] = text + b"\0"
        send(h, h.mcast_groups, evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, [b"key2"], bytes(buf))
    settle(h, 2 * count)
    h.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
