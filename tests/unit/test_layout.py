"""Imports run downhill only: config ← core ← workers ← producers; the simulator and devstack stand apart,
and the tests and the benches use the product and the harness, never each other.

Every import in every module counts, lazy ones inside functions included, read from the source with
``ast`` (nothing is imported). The picture of these directions is in ARCHITECTURE.md ("Layout").
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Package → the packages of ours it may import (itself always allowed).
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "core": frozenset({"config"}),
    "workers": frozenset({"config", "core"}),
    "producers": frozenset({"config", "core", "workers"}),
    "simulator": frozenset(),
    "devstack": frozenset({"config", "core", "workers", "producers", "simulator"}),
    # The tests and the benches use the product and the harness, never each other.
    "tests": frozenset({"config", "core", "workers", "producers", "simulator", "devstack"}),
    "bench": frozenset({"config", "core", "workers", "producers", "simulator", "devstack"}),
}
OURS = frozenset(ALLOWED)


#: A module or object named in a string, as Celery, uvicorn and importlib take them ("workers.beat:Scheduler").
_DOTTED = re.compile(r"^([a-z_]+)(\.[a-z_][a-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?$")


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of ours in ``path`` — and of every module of ours named
    in a string, which something will import; relative imports stay inside."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.match(node.value):
            names = [node.value]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in OURS]
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_allowed_directions(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in modules(package)
        for line, target in imported_packages(path)
        if target != package and target not in ALLOWED[package]
    ]
    assert not wrong, "imports against the layout's directions:\n" + "\n".join(wrong)


def test_every_package_is_covered() -> None:
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages == set(ALLOWED)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from producers.api import Producer\n    import devstack.services\n"
        'CONSUMER = "workers.consumer:Consumer"\n'
    )
    assert sorted(imported_packages(module)) == [(2, "producers"), (3, "devstack"), (4, "workers")]
