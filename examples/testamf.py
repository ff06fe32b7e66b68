"""testamf: AMF API smoke test without registering (spec/amf.md 9.3).

Two handles; component comp_a_in_su_x, protection group pgA.  Prints the
capability model (12 = NOT_EXIST unless comp_a_in_su_x is registered), starts
tracking pgA (CURRENT | CHANGES) on the first handle and start/stop on the
second, reads a readiness state, then prints every callback of the first
handle forever: the current members of pgA at once, then each change.

Usage: python examples/testamf.py   (AIS_SOCKET names the executive; Ctrl-C exits 0)
"""
import os
import select
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from testamf_common import Printer, say  # noqa: E402

from saf import amf  # noqa: E402
from saf.errors import SA_OK, SaError  # noqa: E402
from saf.types import (  # noqa: E402
    SA_DISPATCH_ALL, SA_TRACK_CHANGES, SA_TRACK_CURRENT, Version,
)

COMP = b"comp_a_in_su_x"
CSI = b"pgA"


def result(fn) -> int:
    try:
        fn()
        return SA_OK
    except SaError as err:
        return err.code


def main() -> int:
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    printer = Printer(1)
    cbs = printer.callbacks()
    cbs = amf.Callbacks(**{**cbs.__dict__, "readiness_state_set_callback": readiness,
                           "csi_remove_callback": csi_remove})
    try:
        h1 = amf.initialize(cbs, Version("A", 1, 1))
        h2 = amf.initialize(cbs, Version("A", 1, 1))
    except SaError as err:
        say(f"initialize result is {err.code}")
        return 1
    try:
        model = amf.component_capability_model_get(COMP)
    except SaError as err:
        model = err.code
    say(f"component capability model get is {model} (should be 1)")
    started = result(lambda: h1.protection_group_track_start(
        CSI, SA_TRACK_CURRENT | SA_TRACK_CHANGES))
    say(f"track start result is {started} (should be 1)")
    h2.protection_group_track_start(CSI, SA_TRACK_CHANGES)
    say(f"track stop result is {result(lambda: h2.protection_group_track_stop(CSI))} "
        f"(should be 1)")
    result(lambda: amf.readiness_state_get(COMP))
    fd = h1.selection_object()
    while True:
        select.select([fd], [], [])
        h1.dispatch(SA_DISPATCH_ALL)


def readiness(invocation: int, comp: bytes, state: int) -> None:
    if state == amf.SA_AMF_STOPPING:
        say(f"ReadinessStateSetCallback: '{comp.decode()}' requested to stop, stopping.")
        amf.stopping_complete(invocation, SA_OK)
    else:
        say(f"ReadinessStateSetCallback: '{comp.decode()}' requested to enter operational "
            f"state {state}.")
        amf.response(invocation, SA_OK)


def csi_remove(invocation: int, comp: bytes, csi: bytes, flags: int) -> None:
    say(f"CSIRemoveCallback invocation id {invocation:x} compName {comp.decode()} "
        f"csiName {csi.decode()}")
    amf.response(invocation, SA_OK)


if __name__ == "__main__":
    sys.exit(main())
