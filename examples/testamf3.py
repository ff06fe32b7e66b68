"""testamf3: component comp_a_in_su_y of unit raidB (SU #2), protection group pgA.

Usage: python examples/testamf3.py [-n NAME] [-h N]   (AIS_SOCKET names the executive)
See examples/testamf_common.py for what it prints.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from testamf_common import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("testamf3", "comp_a_in_su_y"))
