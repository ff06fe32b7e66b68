"""testamf2: component comp_b_in_su_x of unit raidA (SU #1), protection group pgB.

After five rounds of callbacks it unregisters, registers again, reports an error on
itself and cancels it (spec/amf.md 9.2): its unit goes out of service and back.

Usage: python examples/testamf2.py [-n NAME] [-h N]   (AIS_SOCKET names the executive)
See examples/testamf_common.py for what it prints.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from testamf_common import run, testamf2_script  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("testamf2", "comp_b_in_su_x", script=testamf2_script))
