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
from harness import SOLVE_KEYS, compile_step, read_json, summarise_solves, to_json, write_json
from kktopt.active import take_samples

from hypersphere.config import ALL_METHODS, METHODS, HypersphereConfig
from hypersphere.methods import chunk_fn, fns, step_key, values_fn
from hypersphere.problem import HypersphereProblem, geometry, make_problem
from hypersphere.report import format_table, plot_fig3, plot_fig4

__all__ = ["CHUNK", "load_existing", "run", "run_method", "step_metrics"]


CHUNK = 50
"""Steps per compiled ``lax.scan`` (the progress bar moves once per chunk)."""

_NO_KKT = ("soft", "auglag")  # the methods without a KKT solve


def _loop(method, config, carry, args, progress):
    """Run ``config.iters`` steps in compiled chunks; returns the carry, the stacked records, seconds."""
    key = step_key(config)
    n, length = config.iters, min(CHUNK, max(config.iters, 1))
    parts, seconds = [], 0.0
    with harness.progress(n, desc=f"{method:>10}", enabled=progress) as bar:
        done = 0
        while done < n:
            size = min(length, n - done)
            chunk = chunk_fn(key, method, size)
            t0 = time.perf_counter()
            carry, records = chunk(carry, *args)
            records = jax.device_get(records)  # waits for the chunk
            seconds += time.perf_counter() - t0
            parts.append(records)
            done += size
            bar.set_postfix_str(f"median|C|={np.median(np.abs(records['values'][-1])):.2e}", refresh=False)
            bar.update(size)
    stacked = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return carry, stacked, seconds


def step_metrics(values: np.ndarray, indices: np.ndarray) -> dict[str, list]:
    """Fig. 4's metrics from the constraint values at every iterate and the active indices of every step.

    ``values``: ``(iters + 1, m)``, all constraint values at iterates 0 .. iters;
    ``indices``: ``(iters, k)``, the active constraints of each step.
    """
    a = np.abs(values)
    t = np.arange(len(indices))[:, None]
    before, after = a[:-1][t, indices], a[1:][t, indices]
    change = np.median(after, axis=1) - np.median(before, axis=1)
    return {
        "median_abs_c": np.median(a, axis=1).tolist(),
        "active_change": change.tolist(),
        "active_change_nonpositive_fraction": float(np.mean(change <= 0)) if change.size else 0.0,
        "active_max_abs_c": np.max(after, axis=1).tolist() if change.size else [],
    }


def run_method(
    method: str,
    config: HypersphereConfig,
    problem: HypersphereProblem,
    *,
    progress: bool = True,
    return_final: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], jax.Array]:
    """Run one method for ``config.iters`` steps from ``w = x0``.

    Must run with the config's dtype enabled (:func:`run` does it). The
    steps run as compiled chunks of `CHUNK` steps (`hypersphere.methods.chunk_fn`);
    each step returns the constraint values it computed at its start, so
    the metrics need no further pass over the centres (one more evaluation
    at the end, for the last iterate).

    Args:
      method: one of :data:`ALL_METHODS`.
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
      with ``active_change <= 0``), ``active_max_abs_c`` (per step, max |C|
      over that step's active constraints after the step), ``step_norm``
      (per step, ||dw||), ``seconds_per_iter`` (wall time of the compiled
      loop, compilation excluded), ``compile_seconds``, ``kkt_solver`` (the
      ``system/method/jacobian`` of a hard method, None for ``soft``),
      ``solver`` (per step, from the transform's :class:`kktopt.KKTInfo`
      via `harness.solve_record`: ``linearized_residual`` = ||A dw + c|| /
      ||c||, ``iterations`` and ``istop`` of the inner solve, ``status``
      where kktopt reports one; empty lists for ``soft``) and
      ``solver_summary`` (their distribution, `harness.summarise_solves`:
      median, 90th percentile and max residual, median and max iterations,
      counts per stop code; empty for ``soft``).
    """
    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}.")
    key = step_key(config)
    x0, centres, fixed = problem
    # hard-fixed's constraint batch: its 20 centres, gathered once.
    fixed_batch = take_samples(centres, fixed) if method == "hard-fixed" else None
    args = (x0, centres, fixed_batch, fixed)
    t0 = time.perf_counter()
    init, _ = fns(key, method)
    carry = init(x0, x0, centres)
    length = min(CHUNK, max(config.iters, 1))
    for size in {length, config.iters % length or length}:  # the chunk lengths the loop runs
        compile_step(chunk_fn(key, method, size), carry, *args)
    jax.block_until_ready(carry)
    compile_seconds = time.perf_counter() - t0  # init included

    carry, rec, seconds = _loop(method, config, carry, args, progress)
    w = carry[0]
    last = np.asarray(jax.device_get(values_fn(key)(w, centres)))[None]
    values = np.concatenate([rec["values"], last]) if rec else last
    indices = rec["indices"] if rec else np.zeros((0, 1), np.int32)
    solver_lists = {k: rec[k].tolist() for k in SOLVE_KEYS + ("status",) if k in rec} if method not in _NO_KKT else {}
    solver_lists = solver_lists or {k: [] for k in SOLVE_KEYS}
    out = {
        **step_metrics(values, indices),
        "step_norm": rec["step_norm"].tolist() if rec else [],
        "seconds_per_iter": seconds / max(config.iters, 1),
        "compile_seconds": compile_seconds,
        "kkt_solver": None if method in _NO_KKT else config.solver_choice(method).label(),
        "solver": solver_lists,
        "solver_summary": summarise_solves(solver_lists) if method not in _NO_KKT else {},
    }
    # Diverged: non-finite |C| somewhere (written as null in metrics.json).
    out["status"] = "done" if np.all(np.isfinite(out["median_abs_c"])) else "diverged"
    if return_final:
        return out, w
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
    """Run the experiment and write ``metrics.json``, ``table.md``, ``fig3.png`` and ``fig4.png``.

    ``metrics.json`` is rewritten after every method. Methods already in it
    (from a run with the same config) are skipped unless ``force``; a file
    from a different config is an error unless ``force`` (then it is
    replaced).

    Args:
      config: the settings.
      out_dir: output folder (created).
      methods: a subset of :data:`ALL_METHODS` (default the paper's :data:`METHODS`).
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
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose among {list(ALL_METHODS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    config_dict = config.to_dict()
    done = load_existing(path, config_dict, force)
    todo = [m for m in ALL_METHODS if m in methods and (force or m not in done)]
    with jax.enable_x64(config.dtype == "float64"):
        result = {"config": config_dict, "methods": dict(done)}
        if todo or not path.exists():
            problem = make_problem(config)
            result["geometry"] = geometry(config, problem)
            for method in todo:
                result["methods"][method] = run_method(method, config, problem, progress=progress)
                result["methods"] = {k: result["methods"][k] for k in ALL_METHODS if k in result["methods"]}
                write_json(path, result)
            write_json(path, result)
        else:
            result = read_json(path)
    (out / "table.md").write_text(format_table(result) + "\n")
    if figures:
        plot_fig4(result, out / "fig4.png")
        plot_fig3(out / "fig3.png", seed=config.seed)
    return to_json(result)  # as written: standard JSON, non-finite numbers as None

