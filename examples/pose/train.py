"""Minibatches, evaluation and the training loop of the pose experiment.

Files (results JSON, checkpoints) and the compiled step come from `harness`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import harness
from pose import metrics as pose_metrics

__all__ = ["EVAL_CHUNK", "THRESHOLDS_MM", "Evaluator", "Interrupted", "as_lam", "batch_indices",
           "split_metrics", "summarise_stats", "train_loop"]

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
        """MPJPE, median |C| and the proportion of |C| <= each of `THRESHOLDS_MM` (all mm).

        A model with non-finite predictions gets ``"status": "diverged"`` and
        None (JSON null) for every metric.
        """
        images, joints = self.splits[split]
        return split_metrics(self.predict(params, images), joints)


def split_metrics(pred: np.ndarray, joints: np.ndarray) -> dict[str, Any]:
    """MPJPE, median |C| and the proportion of |C| <= each of `THRESHOLDS_MM` of predictions (mm).

    Non-finite predictions (a diverged model) give ``"status": "diverged"``
    and None (JSON null) for every metric: the constraint metrics of NaN
    poses would read as 0.
    """
    bad = int(np.sum(~np.all(np.isfinite(pred), axis=(1, 2))))
    if bad:
        return {"status": "diverged", "mpjpe_mm": None, "median_abs_c_mm": None,
                "fraction_met": [None] * len(THRESHOLDS_MM), "nonfinite_predictions": bad}
    return {
        "mpjpe_mm": float(pose_metrics.mpjpe(pred, joints)),
        "median_abs_c_mm": float(pose_metrics.median_abs_constraint(pred)),
        "fraction_met": [float(v) for v in pose_metrics.fraction_met(pred, THRESHOLDS_MM)],
    }


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


def summarise_stats(window: list[dict[str, float]]) -> dict[str, Any]:
    """The training statistics of a checkpoint window.

    Means of every per-step number (``loss_mean``, ``iterations_mean``, ...)
    and, for hard steps, what they achieved (`harness.summarise_solves`:
    median, 90th percentile and max of the linearised residual
    ``||A dw + c|| / ||c||``, median and max iterations, counts per stop
    code) plus the per-step values themselves under ``"solves"`` (so that
    a table can take the median over all steps of a run).
    """
    if not window:
        return {}
    keys = window[0].keys()
    out: dict[str, Any] = {f"{k}_mean": float(np.mean([w[k] for w in window]))
                           for k in keys if k not in ("istop", "status")}
    if "linearized_residual" in keys:
        out.update(harness.summarise_solves(window))
        out["solves"] = {k: [w[k] for w in window] for k in harness.SOLVE_KEYS + ("status",)
                         if k in keys}
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
    window: list[dict[str, float]] = []
    with harness.progress(steps, initial=start, desc=desc, enabled=progress) as bar:
        for t in range(start, steps):
            batch, pool = get_batch(t)
            t0 = time.perf_counter()
            params, opt_state, stats = step(params, opt_state, batch, pool, lam)
            jax.block_until_ready((params, opt_state, stats))
            timing["step_seconds"] += time.perf_counter() - t0
            timing["steps_timed"] += 1
            window.append(harness.host_scalars(stats))
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
    """The soft penalty weight as the step's float32 argument (0 for other methods)."""
    return jnp.asarray(0.0 if lam is None else lam, jnp.float32)
