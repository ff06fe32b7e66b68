"""Administrative operations on AMF service units and nodes:
``python -m ais.amf_admin [-s SOCKET] {lock,unlock,shutdown} UNIT`` or
``python -m ais.amf_admin [-s SOCKET] {lock-node,unlock-node} ADDRESS``.

lock      takes the unit's assignments away at once (CSI-remove callbacks; a standby
          of the group takes over an active unit's work), puts its components out of
          service (readiness OUT_OF_SERVICE) and sends them the terminate callback;
          the unit then stays out of service (DISABLED_LOCKED).
shutdown  asks every component to finish its work first (readiness STOPPING, answered
          with saAmfStoppingComplete within the group's response-timeout, else the
          component has failed), then goes on as lock (ENABLED_STOPPING until then).
unlock    lets the unit come back into service (as standby or spare if the group has
          its actives: no failback); during a shutdown it cancels it.
lock-node locks every unlocked unit with a component on the node (registered there,
          or the unit's node= in groups.conf); unlock-node unlocks the units that
          node's lock locked.

The operation is decided in the cluster's agreed order, like every AMF decision,
whichever node is asked; the command returns once it is agreed (not when the unit
has finished moving: watch ``python -m ais.amf_status``).  The same users as for
any client may run it (root, the executive's user, the configured group).
Exit status 0, or 1 with the SAF error.
"""
from __future__ import annotations

import argparse
import os
import sys

from saf import amf
from saf.errors import SaError

OPS = {"lock": amf.AMF_ADMIN_LOCK, "unlock": amf.AMF_ADMIN_UNLOCK,
       "shutdown": amf.AMF_ADMIN_SHUTDOWN, "lock-node": amf.AMF_ADMIN_LOCK_NODE,
       "unlock-node": amf.AMF_ADMIN_UNLOCK_NODE}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="amf_admin", description=__doc__.split("\n")[0])
    p.add_argument("-s", "--socket", help="executive socket (default: $AIS_SOCKET or "
                   "/var/run/ais/aisexec.sock)")
    p.add_argument("operation", choices=sorted(OPS))
    p.add_argument("unit", help="service unit name, as in groups.conf (node operations: "
                   "the node's IPv4 address)")
    args = p.parse_args(argv)
    if args.socket:
        os.environ["AIS_SOCKET"] = args.socket
    try:
        amf.admin(OPS[args.operation], args.unit)
    except SaError as err:
        print(f"amf_admin: {args.operation} {args.unit}: {err}", file=sys.stderr)
        return 1
    print(f"{args.operation} {args.unit}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
