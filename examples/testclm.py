"""testclm: exercise the CLM API the way the 2004 C test program does (spec/clm.md 5).

Run against a running executive (``AIS_SOCKET`` names its socket)::

    python examples/testclm.py

It prints the local node, asks for four node records asynchronously, starts
tracking (current membership, then changes only) and prints every callback
until Enter is pressed; then it stops tracking and finalizes.  Ctrl-C exits 0.
"""
from __future__ import annotations

import os
import select
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import clm  # noqa: E402
from saf.errors import SA_OK, SaError  # noqa: E402
from saf.types import (  # noqa: E402
    SA_CLM_LOCAL_NODE_ID, SA_DISPATCH_ALL, SA_TRACK_CHANGES_ONLY, SA_TRACK_CURRENT,
    ClusterChange, ClusterNode, ClusterNotification, Version,
)

#: 192.168.1.98 as a SAF nodeId, the "different machine" of the C program
OTHER_NODE = 0x6201A8C0


def print_node(title: str, node: ClusterNode) -> None:
    print(f"Node Information for {title}")
    print(f"\tnode id is {node.node_id:x}")
    print("\tnode address is " + "".join(f"{b}." for b in node.node_address))
    print(f"\tNode name is {node.node_name.decode(errors='replace')}")
    print(f"\tCluster name is {node.cluster_name.decode(errors='replace')}")
    print(f"\tMember is {int(node.member)}")
    print(f"\tTimestamp is {node.boot_timestamp:x} nanoseconds")


def node_get_callback(invocation: int, node: ClusterNode | None, error: int) -> None:
    if node is None or error != SA_OK:
        # The C program printed an unfilled record here; we report the error.
        print(f"NodeGetCallback {invocation:x} error {error}")
        return
    print_node(f"NodeGetCallback local machine {invocation:x}", node)


_STATE_TEXT = {
    ClusterChange.SA_CLM_NODE_NO_CHANGE: "NODE STATE NO CHANGE.",
    ClusterChange.SA_CLM_NODE_JOINED: "NODE STATE JOINED.",
    ClusterChange.SA_CLM_NODE_LEFT: "NODE STATE LEFT.",
}


def track_callback(buffer: list[ClusterNotification], number_of_items: int,
                   number_of_members: int, view_number: int, error: int) -> None:
    print(f"Calling track callback {id(buffer):#x}")
    if error != SA_OK:
        print(f"track callback error {error} ({number_of_items} items needed)")
    for item in buffer:
        print(_STATE_TEXT[item.cluster_change])
        print_node("TRACKING", item.cluster_node)
    print("Done calling trackCallback")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    callbacks = clm.Callbacks(cluster_node_get_callback=node_get_callback,
                              cluster_track_callback=track_callback)
    try:
        handle = clm.initialize(callbacks, Version("A", 1, 1))
    except SaError as err:
        print(f"Could not initialize Cluster Membership API instance error {err.code}")
        return 1

    try:
        node = clm.cluster_node_get(SA_CLM_LOCAL_NODE_ID, 0)
        result = SA_OK
    except SaError as err:
        node, result = None, err.code
    print(f"Result of saClmClusterNodeGet {result}")
    if node is not None:
        # The C program's title really does print "%d" verbatim.
        print_node("saClmClusterNodeGet SA_CLM_LOCAL_NODE_ID result %d", node)

    for invocation, node_id in ((0x55, SA_CLM_LOCAL_NODE_ID), (0x60, OTHER_NODE),
                                (0x59, SA_CLM_LOCAL_NODE_ID), (0x57, SA_CLM_LOCAL_NODE_ID)):
        try:
            handle.cluster_node_get_async(invocation, node_id)
            result = SA_OK
        except SaError as err:
            result = err.code
        print(f"result is {result}")

    try:
        handle.cluster_track_start(SA_TRACK_CURRENT | SA_TRACK_CHANGES_ONLY, 64)
    except SaError:
        pass  # the C program does not print this result either

    fd = handle.selection_object()
    print(f"select fd is {fd}")
    print("press the enter key to exit with track stop and finalize.")
    sys.stdout.flush()
    while True:
        readable, _, _ = select.select([fd, sys.stdin], [], [])
        if sys.stdin in readable:
            break
        print("done with select")
        try:
            handle.dispatch(SA_DISPATCH_ALL)
        except SaError as err:
            print(f"dispatch error {err.code}")
            return 1
        sys.stdout.flush()

    try:
        handle.cluster_track_stop()
        result = SA_OK
    except SaError as err:
        result = err.code
    print(f"TrackStop result is {result} (should be 1)")
    try:
        handle.finalize()
        result = SA_OK
    except SaError as err:
        result = err.code
    print(f"Finalize  result is {result} (should be 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
