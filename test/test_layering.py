"""The architecture stays visible: the protocol core and the services do no I/O.

Checked by reading each module's imports (STYLE.md section 2): the Totem core,
its pure helpers, the simulator and the services import neither gevent,
socket nor time, and use randomness only through ``random.Random`` instances
they are given or create from a seed.  ``saf`` never imports gevent or ``ais``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = ["ais/totem/srp.py", "ais/totem/wire.py", "ais/totem/queues.py", "ais/totem/events.py",
        "ais/totem/sim.py", "ais/totem/invariants.py", "ais/services/base.py",
        "ais/services/clm.py", "ais/services/ckpt.py", "ais/executive.py",
        "ais/services/amf.py"]
FORBIDDEN = {"gevent", "socket", "time", "select", "threading"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def module_level_imports(path: Path) -> set[str]:
    """Imports at module level only (a lazy import inside a function is allowed
    where the module documents it, e.g. the gevent scheduler of the host)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("rel", [p for p in PURE if (ROOT / p).exists()])
def test_core_and_services_do_no_io(rel: str) -> None:
    path = ROOT / rel
    found = (module_level_imports(path) if rel == "ais/executive.py" else imports(path))
    assert not (found & FORBIDDEN), f"{rel} imports {sorted(found & FORBIDDEN)}"


@pytest.mark.parametrize("rel", [p for p in PURE if (ROOT / p).exists()])
def test_no_global_random(rel: str) -> None:
    tree = ast.parse((ROOT / rel).read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "random" and node.attr != "Random"):
            pytest.fail(f"{rel}:{node.lineno} uses the global random.{node.attr}")


def test_totem_does_not_know_the_services() -> None:
    for path in (ROOT / "ais" / "totem").glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
        # saf._codec, the one way to declare a wire layout, is the exception: it needs only
        # the standard library and saf.errors (checked below)
        assert not any(m.startswith(("ais.services", "ais.executive", "saf"))
                       and m != "saf._codec" for m in found), path


def test_codec_stands_alone() -> None:
    """saf/_codec.py, shared by the ring and the client library, needs nothing else of either."""
    path = ROOT / "saf" / "_codec.py"
    assert imports(path) <= {"__future__", "collections", "dataclasses", "enum", "struct", "typing",
                             "saf"}
    found = {n.module for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("saf")}
    assert found <= {"saf.errors"}


def test_saf_needs_no_gevent_and_no_executive() -> None:
    for path in (ROOT / "saf").glob("*.py"):
        found = imports(path)
        assert "gevent" not in found and "ais" not in found, path
