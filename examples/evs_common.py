"""What testevs and evsbench share: the configuration change printout
(spec/evs.md section 5) and the SaErrorT of a call."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import evs  # noqa: E402
from saf.errors import SA_OK, SaError  # noqa: E402


def confchg(group: bytes, members: list[evs.EvsMember], left: list[evs.EvsMember],
            joined: list[evs.EvsMember]) -> None:
    print("CONFIGURATION CHANGE")
    print("--------------------")
    print(f"Group {group.decode(errors='replace')}")
    print("New configuration")
    for m in members:
        print(f"{m.address} pid {m.pid}")
    print("Members Left:")
    for m in left:
        print(f"{m.address} pid {m.pid}")
    print("Members Joined:")
    for m in joined:
        print(f"{m.address} pid {m.pid}")


def result(fn: Callable[..., Any], *args: Any) -> int:
    """SA_OK, or the code of the SaError that ``fn(*args)`` raised."""
    try:
        fn(*args)
        return SA_OK
    except SaError as err:
        return err.code
