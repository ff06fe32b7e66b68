"""Print the AMF state a node holds: ``python -m ais.amf_status [-s SOCKET]``.

Groups, units (phase, role, locked or shutting down, pending administrative operation),
components (protection group, node hosting it, the proxy relaying for it, readiness and HA
state, error).  Everything printed is replicated state,
so every node of one ring prints the same text once the ring is quiet.
Exit status 0, or 1 with the SAF error when the executive cannot be asked.
"""
from __future__ import annotations

import argparse
import os
import sys

from saf import amf
from saf.errors import SaError

PHASES = {0: "out of service", 1: "enabling", 2: "assigning", 3: "assigned",
          4: "quiescing", 5: "stopping", 6: "shutting down (stopping)",
          7: "removing assignments"}
ROLES = {0: "-", 1: "active", 2: "standby"}
ADMIN = {0: "", 1: ", locked", 2: ", shutting down"}
READINESS = {1: "OUT_OF_SERVICE", 2: "IN_SERVICE", 3: "STOPPING"}
HA = {1: "ACTIVE", 2: "STANDBY", 3: "QUIESCED"}
PENDING = {0: "", 1: ", pending switchover", 2: ", pending shutdown"}


def node_text(node: int) -> str:
    return f"{node >> 24 & 255}.{node >> 16 & 255}.{node >> 8 & 255}.{node & 255}"


def render(rows: tuple[amf.StatusRow, ...]) -> str:
    """The state as text (one block per group, one line per unit and component)."""
    out: list[str] = []
    group = unit = None
    for r in rows:
        if r.group != group:
            group, unit = r.group, None
            out.append(f"group {r.group.decode()}: active-units {r.active_units}, "
                       f"ring members {r.members}")
        if r.unit != unit:
            unit = r.unit
            role = "spare" if r.su_role == 0 and r.su_phase == 3 else ROLES.get(r.su_role,
                                                                                r.su_role)
            out.append(f"  unit {r.unit.decode()}: {PHASES.get(r.su_phase, r.su_phase)}, "
                       f"role {role}"
                       f"{ADMIN.get(r.su_admin, f', admin {r.su_admin}')}"
                       f"{PENDING.get(r.su_pending, f', pending {r.su_pending}')}")
        where = f"on {node_text(r.host)}" if r.registered else "unregistered"
        if r.proxy:
            where += f" via proxy {r.proxy.decode()}"
        err = f", error {r.error}" if r.error else ""
        out.append(f"    {r.comp.decode()} ({r.csi.decode()}): {where}, "
                   f"{READINESS.get(r.readiness, r.readiness)}/{HA.get(r.ha, r.ha)}{err}")
    if not rows:
        out.append("no AMF model (groups.conf) loaded")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="amf_status", description=__doc__.split("\n")[0])
    p.add_argument("-s", "--socket", help="executive socket (default: $AIS_SOCKET or "
                   "/var/run/ais/aisexec.sock)")
    args = p.parse_args(argv)
    if args.socket:
        os.environ["AIS_SOCKET"] = args.socket
    try:
        rows = amf.status()
    except SaError as err:
        print(f"amf_status: {err}", file=sys.stderr)
        return 1
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
