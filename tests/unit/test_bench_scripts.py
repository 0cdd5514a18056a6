"""Every bench starts as the README says (``python bench/<name>.py``), from any folder: its imports resolve
and it prints its usage. A bench that cannot start fails here, not on the night someone runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
#: Helpers the benches start as processes of their own, not benches.
HELPERS = {"__init__.py", "noop_app.py", "rate_limit_app.py"}
SCRIPTS = sorted(path.name for path in BENCH.glob("*.py") if path.name not in HELPERS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_bench_starts_and_prints_its_usage(script: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_every_bench_is_smoke_tested() -> None:
    assert len(SCRIPTS) >= 14 and "catalog.py" in SCRIPTS
