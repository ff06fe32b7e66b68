"""An EVS client for the real-executive tests (run as a subprocess of a node).

    python evs_agent.py NAME OUT MEMBERS [--count N] [--after-left K] [--size B]
                        [--stall SECONDS] [--group G]

Joins group G (default "g"), waits until the group has MEMBERS members, then
sends NAME:i messages (N of them, or without end when N is 0) while
dispatching.  After a confchg in which someone left it sends K more and then
"END:NAME"; it stops once every member of the group's current configuration
has sent END.  Every delivery and confchg is written, in order, to OUT.
Prints READY once the group is complete and DELIVERED n every 200 messages.
``--stall S``: join, print READY, then neither dispatch nor send for S
seconds; then try one call and print ALIVE or DISCONNECTED.
``--watch``: once READY, send NAME:i about every 10 ms and print each confchg
line as it comes, until the file OUT.stop appears (or the time limit).
"""
from __future__ import annotations

import argparse
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import evs  # noqa: E402
from saf.errors import Library, TryAgain  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("out")
    ap.add_argument("members", type=int)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--after-left", type=int, default=-1)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--stall", type=float, default=0.0)
    ap.add_argument("--group", default="g")
    ap.add_argument("--limit", type=float, default=120.0)
    ap.add_argument("--watch", action="store_true")
    a = ap.parse_args()
    log: list[str] = []
    state = {"members": [], "ends": set(), "left_seen": False, "n": 0}

    def deliver(src: str, msg: bytes) -> None:
        text = msg[:64].split(b"|", 1)[0].decode()
        log.append("M " + text)
        state["n"] += 1
        if text.startswith("END:"):
            state["ends"].add(text[4:])
        if state["n"] % 200 == 0:
            print(f"DELIVERED {state['n']}", flush=True)

    def confchg(group, members, left, joined) -> None:
        state["members"] = members
        names = [",".join(m.address for m in ms) for ms in (members, left, joined)]
        log.append("C members={} left={} joined={}".format(*names))
        if a.watch:
            print(log[-1], flush=True)
        if left:
            state["left_seen"] = True

    h = evs.initialize(evs.Callbacks(deliver_callback=deliver, confchg_callback=confchg))
    h.join([a.group])
    end = time.monotonic() + a.limit
    fd = h.fd_get()
    while len(state["members"]) < a.members:
        assert time.monotonic() < end, "group never complete"
        select.select([fd], [], [], 0.2)
        h.dispatch(evs.EVS_DISPATCH_ALL)
    print("READY", flush=True)
    if a.stall:
        time.sleep(a.stall)
        try:
            h.dispatch(evs.EVS_DISPATCH_ALL)
            h.mcast_joined(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, b"late")
            print("ALIVE", flush=True)
        except Library:
            print("DISCONNECTED", flush=True)
        return 0
    if a.watch:
        return watch(h, a, log, end)
    pad = b"|" + b"x" * max(0, a.size)
    sent = after = 0
    ended = False
    names = lambda: {m.address for m in state["members"]}  # noqa: E731
    try:
        while time.monotonic() < end:
            h.dispatch(evs.EVS_DISPATCH_ALL)
            if not ended:
                if state["left_seen"] and a.after_left >= 0 and after >= a.after_left \
                        or a.count and sent >= a.count:
                    msg = f"END:{a.name}".encode()
                else:
                    msg = f"{a.name}:{sent}".encode() + pad
                try:
                    h.mcast_joined(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW, msg)
                except TryAgain:
                    select.select([fd], [], [], 0.001)
                    continue
                if msg.startswith(b"END:"):
                    ended = True
                else:
                    sent += 1
                    if state["left_seen"]:
                        after += 1
            elif len(state["ends"]) >= len(names()):
                break
            else:
                select.select([fd], [], [], 0.2)
    except Library as exc:
        print(f"LIBRARY {exc}", flush=True)
    with open(a.out, "w") as f:
        f.write("\n".join(log) + "\n")
    print(f"DONE {state['n']}", flush=True)
    return 0


def watch(h: evs.EvsHandle, a: argparse.Namespace, log: list[str], end: float) -> int:
    """Send about every 10 ms and dispatch, through whatever the ring goes through."""
    fd = h.fd_get()
    stop = a.out + ".stop"
    sent = 0
    next_send = time.monotonic()
    try:
        while time.monotonic() < end and not os.path.exists(stop):
            select.select([fd], [], [], 0.01)
            h.dispatch(evs.EVS_DISPATCH_ALL)
            if time.monotonic() >= next_send:
                try:
                    h.mcast_joined(evs.EVS_TYPE_AGREED, evs.EVS_PRIO_LOW,
                                   f"{a.name}:{sent}".encode())
                    sent += 1
                    next_send = time.monotonic() + 0.01
                except TryAgain:
                    pass
        h.flush()
        h.dispatch(evs.EVS_DISPATCH_ALL)
    except Library as exc:
        print(f"LIBRARY {exc}", flush=True)
    with open(a.out, "w") as f:
        f.write("\n".join(log) + "\n")
    print(f"DONE {sent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
