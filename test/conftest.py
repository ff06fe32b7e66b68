"""Shared pytest set-up: the repository root and test/ on sys.path."""
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from netns import netns_lan  # noqa: E402,F401  (fixture: a LAN in namespaces)


@pytest.fixture
def sock_dir():
    """A directory for executives' sockets, world-traversable (unlike pytest's tmp_path) so
    clients run as another uid can reach them."""
    d = tempfile.mkdtemp(prefix="ais-sock-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Soak runs (marked slow) run only with AIS_SLOW=1; otherwise deselected, not skipped."""
    if os.environ.get("AIS_SLOW") == "1":
        return
    slow = [i for i in items if i.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if not i.get_closest_marker("slow")]
