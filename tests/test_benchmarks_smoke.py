"""Smoke tests: the benchmark scripts run end to end in their quick modes (tiny sizes, seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


def _run(script, *args, timeout=600):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


@pytest.mark.slow  # one step per solver, dtype and size: half a minute on 2 cores
def test_kkt_accuracy_quick_mlp_rows_agree_with_their_reported_residual():
    # One problem (m = 16), the default solvers, both dtypes: the float64
    # residual recomputed by the script must agree with the step's own
    # KKTInfo.linearized_residual, and a success status must mean the row
    # meets the constraint tolerance (1e-3 float32, 1e-8 float64).
    stdout = _run("kkt_accuracy.py", "--problems", "mlp", "--sizes", "8", "--solvers", "default", "--repeats", "1")
    rows = [line for line in stdout.splitlines() if "residual" in line and "status" in line]
    assert len(rows) == 8, stdout  # (Hard-SGD, Hard-Adam, Hard-Adam eps=1, Gauss-Newton-KKT) x 2 dtypes
    blocks = stdout.split("MLP m=16 float64")
    assert len(blocks) == 2, stdout
    for block, tol in ((blocks[0], 1e-3), (blocks[1], 1e-8)):
        for line in block.splitlines():
            if "residual" not in line or "status" not in line:
                continue
            words = line.split()
            residual = float(words[words.index("residual") + 1])
            reported = float(words[words.index("(reported") + 1].rstrip(")"))
            status = int(words[words.index("status") + 1])
            assert abs(residual - reported) <= 0.2 * residual + 10 * tol * 1e-3, line
            if status == 0:
                assert residual <= 1.5 * tol, line


def test_step_cost_quick_table_has_status_and_residual_columns():
    stdout = _run("step_cost.py", "--quick", "--models", "mlp", "--repeats", "1", "--methods", "Hard-SGD default")
    assert "| method | s/step (median) | x Soft-Adam | status | lin. residual | iterations |" in stdout, stdout
    rows = [line for line in stdout.splitlines() if line.startswith("| Hard-SGD default")]
    assert [r.split(" | ")[0] for r in rows] == ["| Hard-SGD default (auto)", "| Hard-SGD default (auto), mined 16/128"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0
        assert int(cells[3]) in range(8)  # a KKTStatus code
        float(cells[4])  # the first step's linearised residual


@pytest.mark.slow  # loads kktopt at an earlier revision and compiles both versions' steps
def test_step_cost_before_builds_the_same_rows_with_the_earlier_kktopt():
    stdout = _run("step_cost.py", "--quick", "--models", "mlp", "--repeats", "1",
                  "--methods", "dense Schur", "--before", "a18f10c")
    rows = [line for line in stdout.splitlines() if line.startswith("| Hard-")]
    assert rows and all(len(r.strip("|").split("|")) == 9 for r in rows), stdout
    assert all("istop" in r for r in rows), stdout  # the earlier version reported istop only


@pytest.mark.slow  # compiles the tiny pose step twice (single and vmapped)
def test_study_vmap_benchmark_tiny_runs():
    stdout = _run("study_vmap.py", "--base", "tiny", "--families", "soft-adam", "--sizes", "2",
                  "--repeats", "1")
    line = next(line for line in stdout.splitlines() if line.startswith("soft-adam"))
    assert "vmapped / in turn" in line
    ratio = float(line.rsplit(" ", 1)[-1])
    assert ratio > 0
