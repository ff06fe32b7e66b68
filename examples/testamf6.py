"""testamf6: component comp_b_in_su_z of unit raidC (SU #3), protection group pgB.

Also prints the initialize result.

Usage: python examples/testamf6.py [-n NAME] [-h N]   (AIS_SOCKET names the executive)
See examples/testamf_common.py for what it prints.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from testamf_common import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("testamf6", "comp_b_in_su_z", print_init=True))
