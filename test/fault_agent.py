"""A CKPT client for the fault tests, run as a client of one node.

    python test/fault_agent.py fill NAME NSECT SIZE      -> "ok"
    python test/fault_agent.py dump NAME                 -> "dump NSECT SHA256"
    python test/fault_agent.py read NAME SECTION
        -> "value TEXT LENGTH SHA" (its first 64 bytes, or "-"; length; digest prefix)
    python test/fault_agent.py writeloop NAME SECTION TAG UNTIL [SIZE [START]]
        -> "done OK ERRORS" then "times T1 T2 ..." (CLOCK_MONOTONIC of each completed write)
    python test/fault_agent.py write NAME SECTION VALUE [START]
        -> "ok" once written, or "error CODE" (not before CLOCK_MONOTONIC START;
           the checkpoint is opened first)
    python test/fault_agent.py writekill NAME SECTION VALUE PID
        -> writes VALUE (SA_CKPT_WR_ALL_REPLICAS), kills PID with SIGKILL as soon as the
           write returned, then prints "ok"

Sections are filled with a recognizable pattern (``pattern(name, i, size)``) so
that a digest tells whether every byte is right.  Every loop is bounded by time.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import ckpt  # noqa: E402
from saf.errors import Library, SaError, TryAgain  # noqa: E402

RW = ckpt.SA_CKPT_CHECKPOINT_READ | ckpt.SA_CKPT_CHECKPOINT_WRITE | ckpt.SA_CKPT_CHECKPOINT_CREATE
FOREVER = 2**63 - 1


def attrs() -> ckpt.CreationAttributes:
    """The same for every checkpoint (an open that creates must match them): up to 64
    sections of up to 4 MiB, kept forever (it outlives every client of the test)."""
    return ckpt.CreationAttributes(ckpt.SA_CKPT_WR_ALL_REPLICAS, 64 << 22, FOREVER,
                                   64, 1 << 22, 16)


def pattern(name: str, i: int, size: int) -> bytes:
    """``size`` bytes that name their checkpoint, section and offset."""
    unit = f"[{name}/{i}]".encode()
    return (unit * (size // len(unit) + 1))[:size]


def retry(fn, *a, limit: float = 30.0, **kw):
    end = time.monotonic() + limit
    while True:
        try:
            return fn(*a, **kw)
        except (TryAgain, Library):
            # TryAgain: the ring is busy; Library: the executive restarted under us
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def opened(name: str) -> tuple[ckpt.CkptHandle, ckpt.CheckpointHandle]:
    h = retry(ckpt.initialize)
    return h, retry(h.checkpoint_open, name, RW, attrs(), timeout=10**10)


def dump(name: str) -> str:
    def once() -> str:
        with ckpt.initialize() as h:
            c = h.checkpoint_open(name, ckpt.SA_CKPT_CHECKPOINT_READ, timeout=10**10)
            out = hashlib.sha256()
            ids = sorted(d.section_id for d in c.sections())
            for sid in ids:
                out.update(sid + b"=" + c.read(ckpt.IOVector(sid))[0] + b";")
            c.close()
            return f"dump {len(ids)} {out.hexdigest()}"
    try:
        return retry(once)
    except SaError as e:
        return f"dump error {e.code}"


def main(argv: list[str]) -> int:
    op, name = argv[0], argv[1]
    if op == "fill":
        nsect, size = int(argv[2]), int(argv[3])
        h, c = opened(name)
        for i in range(nsect):
            sid = b"s%03d" % i
            try:
                retry(c.section_create, sid)
            except SaError as e:
                if e.code != 14:  # SA_ERR_EXIST: a retried create already took effect
                    raise
            retry(c.write, ckpt.IOVector(sid, pattern(name, i, size)))
        print("ok", flush=True)
    elif op == "dump":
        print(dump(name), flush=True)
    elif op == "read":
        with ckpt.initialize() as h:
            c = retry(h.checkpoint_open, name, ckpt.SA_CKPT_CHECKPOINT_READ, timeout=10**10)
            data = retry(c.read, ckpt.IOVector(argv[2].encode()))[0]
            print("value", data[:64].rstrip(b"\0").decode(errors="replace") or "-", len(data),
                  hashlib.sha256(data).hexdigest()[:16], flush=True)
    elif op == "writeloop":
        sid, tag, until = argv[2].encode(), argv[3], float(argv[4])
        size = int(argv[5]) if len(argv) > 5 else 1024
        h, c = opened(name)
        try:
            retry(c.section_create, sid)
        except SaError:
            pass  # another writer created it
        if len(argv) > 6:  # opened and ready before the test's fault starts
            time.sleep(max(0.0, min(float(argv[6]), until) - time.monotonic()))
        ok = errors = 0
        times: list[float] = []
        while time.monotonic() < until:
            data = f"{tag}:{ok}".encode().ljust(size, b".")
            try:
                c.write(ckpt.IOVector(sid, data))
            except SaError:
                errors += 1
                time.sleep(0.05)
                continue
            ok += 1
            times.append(time.monotonic())
        print("done", ok, errors, flush=True)
        print("times", *(f"{t:.3f}" for t in times), flush=True)
    elif op == "write":
        sid, value = argv[2].encode(), argv[3].encode()
        h, c = opened(name)
        try:
            retry(c.section_create, sid)
        except SaError as e:
            if e.code != 14:
                raise
        if len(argv) > 4:  # opened and ready before the test's fault starts
            time.sleep(max(0.0, float(argv[4]) - time.monotonic()))
        try:
            retry(c.write, ckpt.IOVector(sid, value))
        except SaError as e:  # e.g. a partition: the caller decides what it may be
            print("error", e.code, flush=True)
        else:
            print("ok", flush=True)
    elif op == "writekill":
        sid, value, pid = argv[2].encode(), argv[3].encode(), int(argv[4])
        h, c = opened(name)
        try:
            retry(c.section_create, sid)
        except SaError as e:
            if e.code != 14:
                raise
        c.write(ckpt.IOVector(sid, value))
        os.kill(pid, signal.SIGKILL)  # the write returned: its node dies at once
        print("ok", flush=True)
    else:
        raise SystemExit(f"unknown operation {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
