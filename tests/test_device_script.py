"""Smoke test: benchmarks/device.sh --quick runs both benchmarks and appends one dated section."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the step-cost benchmark compiles a dozen training steps: minutes on 2 cores
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_device_script_quick_appends_a_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Existing\n\nkept\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device.sh"), "--quick", "--results", str(results)],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=env,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\n## Existing\n\nkept\n")
    head = f"## Device run {datetime.date.today().isoformat()}: cpu"
    assert text.count(head) == 1, text
    section = text.split(head, 1)[1]
    assert "jax " in section and "Python " in section
    assert "### Krylov solvers (benchmarks/krylov.py): ok" in section
    assert "### Step cost (benchmarks/step_cost.py): ok" in section
    assert "| (a) 3-D Laplacian" in section and "Soft-Adam" in section
    assert "paper preset" not in section  # GPU only
