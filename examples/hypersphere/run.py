"""Running the hypersphere experiment: one method for ``iters`` steps, and the resumable run.

``metrics.json`` is standard JSON (`harness.write_json`): a diverged method
has null in place of its non-finite numbers and ``"status": "diverged"``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

import harness
from harness import compile_step, read_json, to_json, write_json
from kktopt.active import take_samples

from hypersphere.config import METHODS, HypersphereConfig
from hypersphere.methods import hard_fns, median_abs, soft_fns, step_key
from hypersphere.problem import HypersphereProblem, geometry, make_problem
from hypersphere.report import plot_fig3, plot_fig4

__all__ = ["load_existing", "run", "run_method"]


def run_method(
    method: str,
    config: HypersphereConfig,
    problem: HypersphereProblem,
    *,
    progress: bool = True,
    return_final: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], jax.Array]:
    """Run one method for ``config.iters`` steps from ``w = x0``.

    Must run with the config's dtype enabled (:func:`run` does it).

    Args:
      method: one of :data:`METHODS`.
      config: the settings.
      problem: from :func:`make_problem` with the same config.
      progress: show a tqdm bar.
      return_final: also return the final w.

    Returns:
      The method's entry of metrics.json: ``median_abs_c`` (``iters + 1``
      values, entry 0 at the start point), ``active_change`` (``iters``
      values; entry t for the step from iterate t to t + 1: median |C| over
      that step's active constraints after the step minus before; for
      ``soft`` the active set is the random draw ``hard`` uses at the same
      step), ``active_change_nonpositive_fraction`` (the fraction of steps
      with ``active_change <= 0``), ``active_max_abs_c`` (per step, max |C| over that step's
      active constraints after the step), ``step_norm`` (per step, ||dw||),
      ``seconds_per_iter`` (wall time of the loop, metrics included,
      compilation excluded), ``compile_seconds`` and ``solver`` (per step,
      from the transform's :class:`kktopt.KKTInfo`: ``iterations`` and
      ``istop`` of the inner solve, ``linearized_residual`` = ||A dw + c|| /
      ||c|| and ``active_violation_norm`` = ||c|| over the active constraints
      before the step; empty for ``soft``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    key = step_key(config)
    x0, centres, fixed = problem
    t0 = time.perf_counter()
    if method == "soft":
        init, step = soft_fns(key)
        args = (x0, centres)
    else:
        init, step = hard_fns(key, method)
        # hard-fixed's constraint batch: its 20 centres, gathered once.
        fixed_batch = take_samples(centres, fixed) if method == "hard-fixed" else None
        args = (x0, centres, fixed_batch, fixed)
    carry = init(x0, x0, centres)
    step_c, _ = compile_step(step, carry, *args)
    compile_seconds = time.perf_counter() - t0  # init included

    c0 = carry[2]
    per_step: dict[str, list] = {}
    t0 = time.perf_counter()
    with harness.progress(config.iters, desc=f"{method:>10}", enabled=progress) as bar:
        for _ in range(config.iters):
            carry, metrics = step_c(carry, *args)
            for name, value in jax.device_get(metrics).items():
                per_step.setdefault(name, []).append(value.item())
            bar.set_postfix_str(f"median|C|={per_step['median_abs_c'][-1]:.2e}", refresh=False)
            bar.update()
    seconds = time.perf_counter() - t0
    solver_keys = ("iterations", "istop", "linearized_residual", "active_violation_norm")
    out = {
        "median_abs_c": [float(median_abs(c0))] + per_step["median_abs_c"],
        "active_change": per_step["active_change"],
        "active_change_nonpositive_fraction": float(np.mean(np.asarray(per_step["active_change"]) <= 0)),
        "active_max_abs_c": per_step["active_max_abs_c"],
        "step_norm": per_step["step_norm"],
        "seconds_per_iter": seconds / config.iters,
        "compile_seconds": compile_seconds,
        "solver": {k: per_step.get(k, []) for k in solver_keys},
        # Diverged: non-finite |C| somewhere (written as null in metrics.json).
        "status": "done" if np.all(np.isfinite(per_step["median_abs_c"])) else "diverged",
    }
    if return_final:
        return out, carry[0]
    return out


def load_existing(path: Path, config_dict: dict, force: bool) -> dict:
    """The methods already in ``metrics.json`` for the same settings (resuming a run)."""
    if not path.exists():
        return {}
    old = read_json(path)
    if old.get("config") != config_dict:
        if force:
            return {}
        changed = sorted(
            k for k in set(config_dict) | set(old.get("config", {}))
            if config_dict.get(k) != old.get("config", {}).get(k)
        )
        raise ValueError(
            f"{path} holds results of different settings (differing: {', '.join(changed)}); "
            "pass force=True (--force) to overwrite them, or choose another output folder."
        )
    return old.get("methods", {})


def run(
    config: HypersphereConfig,
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str] = METHODS,
    force: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """Run the experiment and write ``metrics.json``, ``fig3.png`` and ``fig4.png``.

    ``metrics.json`` is rewritten after every method. Methods already in it
    (from a run with the same config) are skipped unless ``force``; a file
    from a different config is an error unless ``force`` (then it is
    replaced).

    Args:
      config: the settings.
      out_dir: output folder (created).
      methods: a subset of :data:`METHODS`.
      force: recompute the requested methods even if present.
      progress: tqdm bars.
      figures: write the figures (needs matplotlib).

    Returns:
      The content of metrics.json:
      ``{"config": ..., "geometry": ..., "methods": {name: ...}}``.

    Example:
      >>> from hypersphere import HypersphereConfig, run
      >>> cfg = HypersphereConfig(dim=500, constraints=20, active=4, iters=5)
      >>> res = run(cfg, "/tmp/hs-doc", methods=["soft", "hard"], force=True,
      ...           progress=False, figures=False)
      >>> len(res["methods"]["hard"]["median_abs_c"])
      6
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose among {list(METHODS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    config_dict = config.to_dict()
    done = load_existing(path, config_dict, force)
    todo = [m for m in METHODS if m in methods and (force or m not in done)]
    with jax.enable_x64(config.dtype == "float64"):
        result = {"config": config_dict, "methods": dict(done)}
        if todo or not path.exists():
            problem = make_problem(config)
            result["geometry"] = geometry(config, problem)
            for method in todo:
                result["methods"][method] = run_method(method, config, problem, progress=progress)
                result["methods"] = {k: result["methods"][k] for k in METHODS if k in result["methods"]}
                write_json(path, result)
            write_json(path, result)
        else:
            result = read_json(path)
    if figures:
        plot_fig4(result, out / "fig4.png")
        plot_fig3(out / "fig3.png", seed=config.seed)
    return to_json(result)  # as written: standard JSON, non-finite numbers as None

