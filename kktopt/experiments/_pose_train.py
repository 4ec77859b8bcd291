"""Training loop, evaluation and checkpoints of the pose experiment."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from kktopt.pose import metrics as pose_metrics

PyTree = Any

THRESHOLDS_MM: tuple[float, ...] = tuple(float(t) for t in np.round(np.geomspace(0.1, 100, 31), 4))
"""Violation thresholds (mm) at which the proportion of constraints met is recorded (Fig. 2b)."""

EVAL_CHUNK = 256
"""Images per compiled prediction call during evaluation."""


class Interrupted(Exception):
    """Raised when a run stops early on purpose (``stop_after_checkpoints``)."""


# --------------------------------------------------------------------------
# Minibatches
# --------------------------------------------------------------------------


def batch_indices(n: int, batch: int, step: int, seed: int, stream: int) -> np.ndarray:
    """Indices of minibatch `step`: epochs of shuffled, non-overlapping batches.

    A pure function of its arguments, so an interrupted run draws the same
    minibatches when it resumes. Each epoch is a fresh permutation seeded by
    (seed, stream, epoch); the last incomplete batch of an epoch is dropped.
    """
    batch = min(batch, n)
    per_epoch = n // batch
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, stream, epoch]).permutation(n)
    return perm[j * batch:(j + 1) * batch]


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


class Evaluator:
    """Predicts a split in fixed-size chunks (one compilation) and computes the paper's metrics."""

    def __init__(self, predict: Callable[[PyTree, jax.Array], jax.Array],
                 splits: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.splits = splits
        self._predict = jax.jit(predict)

    def predict(self, params: PyTree, images: np.ndarray) -> np.ndarray:
        n = len(images)
        chunk = min(EVAL_CHUNK, n)
        out = []
        for start in range(0, n, chunk):
            x = images[start:start + chunk]
            if len(x) < chunk:  # pad to the compiled size
                x = np.concatenate([x, np.repeat(x[-1:], chunk - len(x), axis=0)])
            out.append(np.asarray(self._predict(params, x)))
        return np.concatenate(out)[:n]

    def metrics(self, params: PyTree, split: str) -> dict[str, Any]:
        """MPJPE, median |C| and the proportion of |C| <= each of `THRESHOLDS_MM` (all mm)."""
        images, joints = self.splits[split]
        pred = self.predict(params, images)
        bad = int(np.sum(~np.all(np.isfinite(pred), axis=(1, 2))))
        if bad:  # a diverged model: the constraint metrics of NaN poses would read as 0
            return {"mpjpe_mm": math.nan, "median_abs_c_mm": math.nan,
                    "fraction_met": [math.nan] * len(THRESHOLDS_MM), "nonfinite_predictions": bad}
        return {
            "mpjpe_mm": float(pose_metrics.mpjpe(pred, joints)),
            "median_abs_c_mm": float(pose_metrics.median_abs_constraint(pred)),
            "fraction_met": [float(v) for v in pose_metrics.fraction_met(pred, THRESHOLDS_MM)],
        }


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a killed run never leaves a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def save_tree(path: Path, tree: PyTree) -> None:
    """``eqx.tree_serialise_leaves``, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    eqx.tree_serialise_leaves(tmp, tree)
    os.replace(tmp, path)


def load_tree(path: Path, like: PyTree) -> PyTree:
    return eqx.tree_deserialise_leaves(path, like)


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


def compile_step(step: Callable, *args) -> tuple[Callable, float]:
    """Ahead-of-time compile ``jax.jit(step)`` for `args`; returns it and the seconds taken."""
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _host(stats: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items()}


def summarise_stats(window: list[dict[str, float]]) -> dict[str, float]:
    """Means (and for KKT codes, the share of successful solves) over a checkpoint window."""
    if not window:
        return {}
    keys = window[0].keys()
    out = {f"{k}_mean": float(np.mean([w[k] for w in window])) for k in keys if k != "istop"}
    if "istop" in keys:
        codes = np.array([w["istop"] for w in window])
        out["solver_success_fraction"] = float(np.mean((codes >= 1) & (codes <= 8)))
        out["solver_maxiter_fraction"] = float(np.mean(codes == 9))
    if "linearized_residual" in keys:
        out["linearized_residual_median"] = float(np.median([w["linearized_residual"]
                                                             for w in window]))
    return out


def train_loop(
    step: Callable,
    params: PyTree,
    opt_state: PyTree,
    *,
    start: int,
    steps: int,
    eval_every: int,
    get_batch: Callable[[int], tuple[Any, Any]],
    lam: jax.Array,
    timing: dict[str, float],
    checkpoint: Callable[[int, PyTree, PyTree, dict[str, float]], None],
    desc: str,
    progress: bool = True,
) -> tuple[PyTree, PyTree]:
    """Run iterations ``start .. steps - 1`` of a compiled `step`, checkpointing every `eval_every`.

    Every iteration is timed from the call to ``block_until_ready`` of its
    outputs (the compiled step only: no compilation, batching or evaluation);
    ``timing["step_seconds"]`` and ``timing["steps_timed"]`` accumulate.
    ``checkpoint(step, params, opt_state, window_stats)`` runs after
    iterations that are multiples of `eval_every` and after the last one.
    """
    from tqdm.auto import tqdm

    window: list[dict[str, float]] = []
    with tqdm(total=steps, initial=start, desc=desc, disable=not progress, leave=True,
              dynamic_ncols=True) as bar:
        for t in range(start, steps):
            batch, pool = get_batch(t)
            t0 = time.perf_counter()
            params, opt_state, stats = step(params, opt_state, batch, pool, lam)
            jax.block_until_ready((params, opt_state, stats))
            timing["step_seconds"] += time.perf_counter() - t0
            timing["steps_timed"] += 1
            window.append(_host(stats))
            post = {"loss": f"{window[-1]['loss']:.3g}",
                    "s/it": f"{timing['step_seconds'] / timing['steps_timed']:.3g}"}
            if "iterations" in window[-1]:
                post["kkt_it"] = int(window[-1]["iterations"])
            bar.set_postfix(post, refresh=False)
            bar.update(1)
            if (t + 1) % eval_every == 0 or t + 1 == steps:
                checkpoint(t + 1, params, opt_state, summarise_stats(window))
                window = []
    return params, opt_state


def as_lam(lam: float | None) -> jax.Array:
    return jnp.asarray(0.0 if lam is None else lam, jnp.float32)
