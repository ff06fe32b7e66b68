"""What testamf1 .. testamf6 share (spec/amf.md section 9.1): a component that
registers, then prints and answers every callback, forever.

Each program is ``run(default_name, ...)`` with its own extras.  Options:
``-n NAME`` (component name) and ``-h N`` (print only every N-th healthcheck
line).  The executive is found through ``AIS_SOCKET``.  Ctrl-C exits 0; any
other end of the process (kill, crash) closes the connection, which
unregisters the component.
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import amf  # noqa: E402
from saf.errors import SA_OK, SaError  # noqa: E402
from saf.types import SA_DISPATCH_ALL, Version  # noqa: E402

READINESS = {1: "SA_AMF_OUT_OF_SERVICE", 2: "SA_AMF_IN_SERVICE", 3: "SA_AMF_STOPPING"}
HA = {1: "SA_AMF_ACTIVE", 2: "SA_AMF_STANDBY", 3: "SA_AMF_QUIESCED"}


def say(text: str) -> None:
    print(text, flush=True)


def parse(prog: str, default_name: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, add_help=False,
                                description="An AMF component (spec/amf.md section 9).")
    p.add_argument("-n", dest="name", default=default_name, help="component name")
    p.add_argument("-h", dest="every", type=int, default=1,
                   help="print every N-th healthcheck line (N > 0)")
    p.add_argument("--help", action="help")
    args = p.parse_args(argv)
    if args.every <= 0:
        p.error("-h needs a number greater than 0")
    return args


def answer(invocation: int) -> None:
    try:
        amf.response(invocation, SA_OK)
    except SaError as err:
        say(f"response res is {err.code}")


class Printer:
    """The ten callbacks, printing as the C test programs do."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.count = 0

    def healthcheck(self, invocation: int, comp: bytes, check_type: int) -> None:
        self.count += 1
        answer(invocation)
        if self.count % self.every == 0:
            say(f"{self.count} HealthcheckCallback have occured for component: "
                f"{comp.decode(errors='replace')}")

    def readiness(self, invocation: int, comp: bytes, state: int) -> None:
        say(f"ReadinessStateSetCallback: '{comp.decode(errors='replace')}' requested to enter "
            f"operational state {READINESS.get(state, state)}.")
        if state == amf.SA_AMF_STOPPING:
            amf.stopping_complete(invocation, SA_OK)
        else:
            answer(invocation)

    def csi_set(self, invocation: int, comp: bytes, csi: bytes, flags: int, ha: int,
                active: bytes, transition: int) -> None:
        say(f"CSISetCallback: '{comp.decode(errors='replace')}' for CSI "
            f"'{csi.decode(errors='replace')}' requested to enter hastate {HA.get(ha, ha)}.")
        answer(invocation)

    def csi_remove(self, invocation: int, comp: bytes, csi: bytes, flags: int) -> None:
        say(f"CSIRemoveCallback for component '{comp.decode(errors='replace')}' in CSI "
            f"'{csi.decode(errors='replace')}'")
        answer(invocation)

    def pg_track(self, csi: bytes, items: list, number_of_items: int, members: int,
                 error: int) -> None:
        say(f"ProtectionGroupTrackCallback items {number_of_items} members {members}")
        say(f"buffer is {id(items):#x}")
        for item in items:
            say(f"component name{item.member.comp_name.decode(errors='replace')}")
            say(f"\treadiness state is {item.member.readiness_state}")
            say(f"\thastate {item.member.ha_state}")
            say(f"\tchange is {item.change}")

    def callbacks(self) -> amf.Callbacks:
        return amf.Callbacks(
            healthcheck_callback=self.healthcheck,
            readiness_state_set_callback=self.readiness,
            component_terminate_callback=lambda i, c: say("ComponentTerminateCallback"),
            csi_set_callback=self.csi_set,
            csi_remove_callback=self.csi_remove,
            protection_group_track_callback=self.pg_track,
            external_component_restart_callback=lambda i, c: say(
                "ExternalComponentRestartCallback"),
            external_component_control_callback=lambda i, c, a: say(
                "ExternalComponentControlCallback"),
            pending_operation_confirm_callback=lambda i, c, f: say(
                "PendingOperationConfirmCallback"),
            pending_operation_expired_callback=lambda c, f: say(
                "PendingOperationExpiredCallback"),
        )


def wait_and_dispatch(handle: amf.AmfHandle) -> None:
    fd = handle.selection_object()
    select.select([fd], [], [])
    handle.dispatch(SA_DISPATCH_ALL)


def run(prog: str, default_name: str, *, realtime: bool = False, print_init: bool = False,
        script: Callable[[amf.AmfHandle, bytes], None] | None = None,
        argv: list[str] | None = None) -> int:
    args = parse(prog, default_name, argv)
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(99))
        except (OSError, AttributeError):
            say("couldn't set sched priority")
    printer = Printer(args.every)
    try:
        handle = amf.initialize(printer.callbacks(), Version("A", 1, 1))
    except SaError as err:
        say(f"initialize result is {err.code}")
        return 1
    if print_init:
        say(f"initialize result is {SA_OK}")
    name = args.name.encode()
    try:
        handle.component_register(name, None)
        result = SA_OK
    except SaError as err:
        result = err.code
    say(f"register result is {result} (should be {SA_OK})")
    if script is not None:
        script(handle, name)
    while True:
        wait_and_dispatch(handle)


def testamf2_script(handle: amf.AmfHandle, name: bytes) -> None:
    """spec/amf.md 9.2: unregister, register again, report an error and cancel it."""
    def quiet(fn: Callable[[], object]) -> None:
        try:
            fn()
        except SaError:
            pass  # the C program does not print these results

    for _ in range(5):
        wait_and_dispatch(handle)
    say("Unregistering component")
    quiet(lambda: handle.component_unregister(name, None))
    handle.dispatch(SA_DISPATCH_ALL)
    time.sleep(1)
    say("Registering component")
    quiet(lambda: handle.component_register(name, None))
    time.sleep(1)
    wait_and_dispatch(handle)
    say("REPORTING ERROR.")
    quiet(lambda: amf.error_report(name, name, 0, amf.ErrorDescriptor(
        probable_cause=amf.SA_AMF_COMMUNICATION_SUBSYSTEM_FAILURE)))
    wait_and_dispatch(handle)
    time.sleep(1)
    say("CANCELING ERROR.")
    quiet(lambda: amf.error_cancel_all(name))
