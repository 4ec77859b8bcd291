"""Smoke test: the Krylov benchmark script runs end to end (tiny sizes, seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_krylov_benchmark_quick_runs():
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "krylov.py"), "--quick", "--no-write",
        "--problems", "a,b,c", "--grid", "6", "--d", "2000", "--n-small", "100",
        "--solvers", "kktopt minres_qlp", "--repeats", "1", "--max-tries", "3",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "| problem | solver |" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| (")]
    assert len(rows) == 6, out.stdout  # scipy and kktopt on each of (a), (b), (c)
    for label in ("(a)", "(b)", "(c)"):
        assert any(row.startswith(f"| {label}") for row in rows), out.stdout
    assert all("kktopt minres_qlp" in row or "scipy minres" in row for row in rows)
