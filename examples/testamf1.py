"""testamf1: component comp_a_in_su_x of unit raidA (SU #1), protection group pgA.

First tries real-time priority (SCHED_RR 99).

Usage: python examples/testamf1.py [-n NAME] [-h N]   (AIS_SOCKET names the executive)
See examples/testamf_common.py for what it prints.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from testamf_common import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("testamf1", "comp_a_in_su_x", realtime=True))
