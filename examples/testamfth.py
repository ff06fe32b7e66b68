"""testamfth: BLOCKING dispatch in a thread ends on finalize; re-registration works
(spec/amf.md 9.4).  Registers comp_b_in_su_y (as testamf4 does: run one or the other).

Usage: python examples/testamfth.py [-n NAME]   (AIS_SOCKET names the executive)
"""
import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from testamf_common import Printer, say  # noqa: E402

from saf import amf  # noqa: E402
from saf.errors import SA_OK, SaError  # noqa: E402
from saf.types import SA_DISPATCH_BLOCKING, Version  # noqa: E402


def dispatcher(handle: amf.AmfHandle) -> None:
    say("THREAD DISPATCH starting.")
    try:
        handle.dispatch(SA_DISPATCH_BLOCKING)
        res = SA_OK
    except SaError as err:
        res = err.code
    say(f"THREAD DISPATCH return result is {res}")


def start(name: bytes) -> tuple[amf.AmfHandle, threading.Thread]:
    handle = amf.initialize(Printer(20).callbacks(), Version("A", 1, 1))
    try:
        handle.component_register(name)
        res = SA_OK
    except SaError as err:
        res = err.code
    say(f"register result is {res} (should be {SA_OK})")
    t = threading.Thread(target=dispatcher, args=(handle,), daemon=True)
    t.start()
    return handle, t


def main() -> int:
    p = argparse.ArgumentParser(prog="testamfth")
    p.add_argument("-n", dest="name", default="comp_b_in_su_y")
    name = p.parse_args().name.encode()
    handle, t = start(name)
    time.sleep(5)
    say("Finalizing handle")
    try:
        handle.component_unregister(name)
    except SaError:
        pass
    handle.finalize()
    t.join(10)
    say("Handle Finalized")
    time.sleep(1)
    handle, t = start(name)
    time.sleep(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
