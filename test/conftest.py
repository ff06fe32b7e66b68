"""Shared pytest set-up: the repository root and test/ on sys.path."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from netns import netns_lan  # noqa: E402,F401  (fixture: a LAN in namespaces)


def pytest_collection_modifyitems(config, items):
    """Soak runs (marked slow) run only with AIS_SLOW=1; otherwise deselected, not skipped."""
    if os.environ.get("AIS_SLOW") == "1":
        return
    slow = [i for i in items if i.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if not i.get_closest_marker("slow")]
