"""The pose study: every method over a hyperparameter grid and three seeds, grids vmapped.

Issue-11 protocol, on the data and the unconstrained model of a pose preset
(`ExperimentPreset`, default ``small``):

* every configuration starts from the same unconstrained Adam model and runs
  the same number of iterations (`StudyPreset.steps`), with checkpoints
  every `StudyPreset.eval_every` (test and pool metrics, training means);
* baselines: the unconstrained model **continued** with Adam for the same
  number of steps, Soft-Adam over a (lambda x learning rate) grid, the
  paper's Hard-SGD (Eq. 5) and Hard-Adam (Eq. 12), Hard-Adam with a
  multiplier memory; beyond the paper: the feedback gain ``alpha``
  (``A dw = -alpha c``), SQP-Adam and SQP-momentum (Piermarini, Curtis,
  Wang and Zhu 2026: moments of projected gradients), and the augmented
  Lagrangian with one multiplier per pool sample (Cooper's formulation);
* every (configuration, seed) pair of a method family runs through one
  compiled program: the hyperparameters are traced arguments of the kktopt
  transforms (what the library promises), so with ``StudyPreset.vmap`` the
  step is ``jax.vmap``-ed over the stacked parameters, optimiser states,
  hyperparameters and minibatches of up to `StudyPreset.chunk` runs, and
  without it one compiled step serves every run of the family in turn. On a
  2-core CPU the vmapped CNN step costs 1.2-1.6x more per run than the
  single one (batched convolutions with per-run weights;
  `benchmarks/study_vmap.py`), so the CPU preset runs them in turn;
* seeds change the minibatches (labeled and pool) and the random draws of
  selectors, not the data or the starting model;
* resumable: each chunk's stacked state is saved at every checkpoint with its
  progress, and a rerun of the same command continues where it stopped.

The numbers the verdict needs are recorded for every run at every
checkpoint: test and pool MPJPE, median |C| and the fraction of constraints
met at thresholds; per step the loss, the step norm ``||dw||`` and, for hard
steps, the linearised residual and status; at checkpoints the *normal share*
of the step, ``||dw_n|| / ||dw||`` with ``dw_n`` the component of ``dw`` in
the row space of the Jacobian of the step's 16 most violated pool samples
(the part of the step that changes their constraint values to first order;
for Hard-SGD it is exactly the feasibility correction), and the mean
|multiplier| of the methods that keep multipliers.

``python examples/run_pose_study.py --preset study --out DIR``; the report
(`pose.study_report`) writes ``study.md``, ``pareto_test.png``,
``pareto_pool.png`` and ``curves.png`` next to ``results.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import harness
import kktopt
from harness import fingerprint, load_tree, read_json, save_tree, write_json

from pose import metrics as pose_metrics
from pose.constraints import bone_symmetry
from pose.config import ExperimentPreset, get_preset
from pose.methods import MinedFromRandom
from pose.run import STREAM_LABELED, STREAM_POOL, _Run, machine
from pose.train import EVAL_CHUNK, THRESHOLDS_MM, batch_indices, split_metrics

__all__ = ["FAMILIES", "STUDY_PRESETS", "SCHEMA", "Family", "StudyPreset", "get_study",
           "run_study"]

SCHEMA = "kktopt.pose_study/1"
PyTree = Any

_INSTRUMENT_K = 16  # samples whose row space defines the normal share
_NORMAL_SHARE_VERSION = 2  # 1 (no field): the instrument without the rounding offset removed


@dataclasses.dataclass(frozen=True)
class Family:
    """A method of the study and its grid.

    Attributes:
      name: identifier (results key prefix).
      label: display name.
      kind: the optimiser builder (see `_build`).
      grid: the configurations, one mapping of hyperparameter name to value each;
        every name is a traced argument of the step.
      fixed: static settings of the kind (memory size, ...).
    """

    name: str
    label: str
    kind: str
    grid: tuple[Mapping[str, float], ...]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def config_id(self, hp: Mapping[str, float]) -> str:
        return self.name + "/" + ",".join(f"{k}={v:g}" for k, v in sorted(hp.items()))


def _product(**values) -> tuple[dict[str, float], ...]:
    out: list[dict[str, float]] = [{}]
    for name, vs in values.items():
        out = [{**c, name: float(v)} for c in out for v in vs]
    return tuple(out)


def _one_at_a_time(centre: Mapping[str, float], **values) -> tuple[dict[str, float], ...]:
    """The centre configuration and, for each name, the centre with that one value changed."""
    out = [dict(centre)]
    for name, vs in values.items():
        out += [{**centre, name: float(v)} for v in vs if float(v) != centre[name]]
    return tuple(out)


_LRS_ADAM = (3e-5, 1e-4, 3e-4)
_ALPHAS = (0.1, 0.3)

FAMILIES: tuple[Family, ...] = (
    Family("adam", "Adam (continued)", "adam", _product(lr=_LRS_ADAM)),
    Family("soft-adam", "Soft-Adam", "soft-adam",
           _product(lam=(0.01, 0.1, 1.0, 10.0), lr=_LRS_ADAM)),
    Family("al-adam", "AugLag-Adam", "al-adam",
           _product(penalty=(0.2, 2.0, 20.0), lr=(1e-4,))),
    Family("hard-sgd", "Hard-SGD", "hard-sgd", _product(lr=(3e-9, 1e-8, 3e-8), alpha=(1.0,))),
    Family("hard-adam", "Hard-Adam", "hard-adam",
           _one_at_a_time({"lr": 1e-4, "alpha": 1.0}, lr=_LRS_ADAM, alpha=_ALPHAS)),
    Family("hard-adam-memory", "Hard-Adam + memory", "hard-adam-memory",
           _product(decay=(1.0, 0.9, 0.5), lr=(1e-4,)), fixed={"memory": 256}),
    Family("sqp-adam", "SQP-Adam", "sqp-adam",
           _one_at_a_time({"lr": 1e-4, "alpha": 1.0}, lr=_LRS_ADAM, alpha=_ALPHAS)),
    Family("sqp-momentum", "SQP-momentum", "sqp-momentum",
           _product(lr=(3e-9, 1e-8, 3e-8), alpha=(1.0,))),
    Family("adam-layer", "Adam through the projection layer", "adam-layer",
           _product(lr=_LRS_ADAM)),
)
"""The study's methods. Units as in `pose.config`: learning rates for the loss
of Eq. 14 in mm^2; lambda multiplies the sum of squared constraint values
(mm^2) over the 128 samples of the pool minibatch; the augmented Lagrangian
``penalty`` rho multiplies ``1/2 sum c^2`` over the same samples (rho = 2
lambda is the same quadratic term as Soft-Adam's lambda), with the dual step
``dual_lr = rho`` (the method of multipliers). Hard methods mine the 16 most
violated samples of the pool minibatch (Eq. 9) and solve their KKT systems
exactly (dense Schur complement on per-sample Jacobians; the paper's
MINRES-QLP reaches the same step at its tolerance). Hard-Adam and SQP-Adam
use eps = 1 in Adam's metric (see `pose.config`). ``adam-layer`` trains
through the output-projection layer: its loss is Eq. 14 on
``kktopt.project_outputs(bone_symmetry, predictions)`` (implicit backward
pass), and it is evaluated on projected predictions."""


@dataclasses.dataclass(frozen=True)
class StudyPreset:
    """One study: the pose preset of its data and starting model, the schedule and the methods."""

    name: str
    base: str
    steps: int
    eval_every: int
    seeds: tuple[int, ...]
    families: tuple[Family, ...]
    chunk: int = 12
    vmap: bool = False
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["families"] = [{**dataclasses.asdict(f), "grid": [dict(g) for g in f.grid],
                          "fixed": dict(f.fixed)} for f in self.families]
        return d


def _tiny_families() -> tuple[Family, ...]:
    pick = {"adam": 1, "soft-adam": 2, "al-adam": 1, "hard-adam": 2, "hard-adam-memory": 1,
            "sqp-adam": 1, "sqp-momentum": 1, "hard-sgd": 1, "adam-layer": 1}
    out = []
    for f in FAMILIES:
        fixed = {**f.fixed, "memory": 32} if "memory" in f.fixed else f.fixed
        out.append(dataclasses.replace(f, grid=f.grid[:pick[f.name]], fixed=fixed))
    return tuple(out)


def _long_families() -> tuple[Family, ...]:
    """`FAMILIES` with learning-rate sweeps for the augmented Lagrangian and the memory.

    In the 120-iteration study both had one learning rate, and the memory
    diverged at every decay (1, 0.9, 0.5). Its multipliers carry the
    feasibility correction of the step they were found in, which the learning
    rate does not scale, and a pool sample is active again only every few
    hundred steps, so until then the stored pull acts with a total weight
    of ``1 / (1 - decay)``. So the memory's sweep goes down to a decay of
    0.01 per step, with Hard-Adam's learning rates (it still diverged there:
    ``docs/results/pose_study_long``). The families are ordered
    so that an interrupted run has the baselines first.
    """
    by_name = {f.name: f for f in FAMILIES}
    al = dataclasses.replace(by_name["al-adam"], grid=_one_at_a_time(
        {"penalty": 2.0, "lr": 1e-4}, penalty=(0.2, 2.0, 20.0), lr=_LRS_ADAM))
    memory = dataclasses.replace(by_name["hard-adam-memory"], grid=_one_at_a_time(
        {"decay": 0.1, "lr": 1e-4}, decay=(0.5, 0.1, 0.01), lr=_LRS_ADAM))
    order = ("adam", "soft-adam", "hard-adam", "hard-sgd", "sqp-adam", "sqp-momentum",
             "al-adam", "adam-layer", "hard-adam-memory")
    swap = {"al-adam": al, "hard-adam-memory": memory}
    return tuple(swap.get(n, by_name[n]) for n in order)


STUDY_PRESETS: dict[str, StudyPreset] = {
    p.name: p for p in (
        StudyPreset("study", "small", steps=120, eval_every=20, seeds=(0, 1, 2),
                    families=FAMILIES,
                    notes="Every family over its grid, 3 seeds, 120 iterations (7.5 epochs of D) "
                          "from the small unconstrained model; fits a 2-core CPU in about an hour."),
        StudyPreset("study-long", "small", steps=240, eval_every=30, seeds=(0, 1, 2),
                    families=_long_families(),
                    notes="The study run twice as long (240 iterations, 15 epochs of D), with "
                          "learning-rate sweeps for the augmented Lagrangian and the multiplier "
                          "memory: 132 runs, about two hours of a 2-core CPU with Python 3.12 "
                          "and jax 0.12."),
        StudyPreset("study-tiny", "tiny", steps=4, eval_every=2, seeds=(0, 1),
                    families=_tiny_families(), chunk=4,
                    notes="For the tests: a few steps of a few configurations."),
    )}


def get_study(name: str) -> StudyPreset:
    if name not in STUDY_PRESETS:
        raise ValueError(f"unknown study preset {name!r}; choose one of {sorted(STUDY_PRESETS)}.")
    return STUDY_PRESETS[name]


# --------------------------------------------------------------------------
# Optimisers: built inside the traced step, hyperparameters traced
# --------------------------------------------------------------------------


def _solver() -> kktopt.KKTSolver:
    return harness.solver_choice("schur").build()


def _build(kind: str, problem, hp: Mapping[str, Any], fixed: Mapping[str, Any], *,
           base: ExperimentPreset, pool: Any, seed: int) -> optax.GradientTransformationExtraArgs:
    """The optimiser of `kind` with hyperparameters `hp` (floats at init, tracers in the step)."""
    cfn = problem.constraints
    mined = kktopt.active.mined_samples(base.mined)
    if kind in ("adam", "soft-adam", "adam-layer"):
        return optax.adam(hp["lr"])
    if kind == "al-adam":
        # Cooper's AugmentedLagrangian with an IndexedMultiplier over the pool;
        # dual_lr = penalty: the method of multipliers.
        return optax.chain(
            kktopt.augmented_lagrangian(cfn, pool_size=base.pool_size, constraint_shape=(6,),
                                        penalty=hp["penalty"], dual_lr=hp["penalty"]),
            optax.adam(hp["lr"]))
    if kind == "hard-sgd":
        return optax.chain(optax.sgd(hp["lr"]),
                           kktopt.project_kkt(cfn, solver=_solver(), active=mined,
                                              alpha=hp["alpha"]))
    if kind == "hard-adam":
        return kktopt.hard_adam(hp["lr"], cfn, eps=1.0, solver=_solver(), active=mined,
                                alpha=hp["alpha"])
    if kind == "hard-adam-memory":
        memory = kktopt.memory.multiplier_memory(fixed["memory"], pool, decay=hp["decay"])
        active = MinedFromRandom(batch=base.batch_size, k=base.mined, seed=seed)
        return kktopt.hard_adam(hp["lr"], cfn, eps=1.0, solver=_solver(), active=active,
                                memory=memory)
    if kind == "sqp-adam":
        return kktopt.sqp_adam(hp["lr"], cfn, eps=1.0, solver=_solver(), active=mined,
                               alpha=hp["alpha"])
    if kind == "sqp-momentum":
        return kktopt.sqp_momentum(hp["lr"], cfn, momentum=0.9, solver=_solver(), active=mined,
                                   alpha=hp["alpha"])
    raise ValueError(f"unknown study method kind {kind!r}.")


def _uses_whole_pool(kind: str) -> bool:
    return kind == "hard-adam-memory"


def _multiplier_mean(kind: str, state) -> jax.Array | None:
    """Mean |multiplier| over the samples that have one (methods that keep multipliers)."""
    if kind == "al-adam":
        s = state[0]
        n = jnp.maximum(jnp.sum(s.observed), 1)
        return jnp.sum(jnp.abs(s.multipliers) * s.observed) / n
    if kind == "hard-adam-memory":
        found = optax.tree_utils.tree_get_all_with_path(
            state, "memory", filtering=lambda _, v: isinstance(v, kktopt.memory.MultiplierMemoryState))
        if found:
            mem = found[0][1]
            valid = mem.valid.reshape(mem.valid.shape + (1,) * (mem.multipliers.ndim - 1))
            n = jnp.maximum(jnp.sum(valid) * (mem.multipliers[0].size), 1)
            return jnp.sum(jnp.abs(mem.multipliers) * valid) / n
    return None


def make_study_step(family: Family, problem, base: ExperimentPreset, pool_like: Any) -> Callable:
    """``step(params, state, hp, images, joints, pool_images, pool_idx, whole_pool)`` of one run.

    Returns ``(params, state, stats)``; vmap it over every argument but
    ``whole_pool``.
    """
    kind, cfn = family.kind, problem.constraints

    def step(params, state, hp, images, joints, pool_images, pool_idx, whole_pool):
        tx = _build(kind, problem, hp, family.fixed, base=base, pool=pool_like, seed=0)
        batch = (images, joints)
        stats = {}
        if kind == "soft-adam":
            objective = kktopt.soft_constrained_loss(problem.loss, cfn, hp["lam"])  # Eq. 3
            loss, grads = jax.value_and_grad(objective)(params, batch, pool_images)
        elif kind == "adam-layer":
            loss, grads = jax.value_and_grad(layer_loss(problem))(params, batch)
        else:
            loss, grads = jax.value_and_grad(problem.loss)(params, batch)
        if kind in ("adam", "soft-adam", "adam-layer"):
            updates, state = tx.update(grads, state, params)
        elif kind == "al-adam":
            updates, state = tx.update(grads, state, params, constraint_batch=pool_images,
                                       constraint_indices=pool_idx)
        else:
            cb = whole_pool if _uses_whole_pool(kind) else pool_images
            updates, state = tx.update(grads, state, params, constraint_batch=cb)
        stats["loss"] = loss
        stats["step_norm"] = optax.tree_utils.tree_norm(updates)
        info = harness.kkt_info(state)
        if info is not None:
            stats["linearized_residual"] = info.linearized_residual
            stats["kkt_ok"] = info.success.astype(jnp.float32)
            stats["violation_norm"] = info.violation_norm
        lam = _multiplier_mean(kind, state)
        if lam is not None:
            stats["multiplier_abs_mean"] = lam
        return optax.apply_updates(params, updates), state, stats

    return step


def project(pred: jax.Array) -> tuple[jax.Array, Any]:
    """The output-projection layer on a batch of poses: ``kktopt.project_outputs(bone_symmetry, pred)``."""
    return kktopt.project_outputs(bone_symmetry, pred)


def layer_loss(problem) -> Callable:
    """Eq. 14 on projected predictions (the loss of training through the layer)."""

    def loss(params, batch):
        images, joints = batch
        y, _ = project(problem.predict(params, images))
        return jnp.mean(jnp.sum((y - joints) ** 2, axis=(-2, -1)))

    return loss


def make_normal_share(problem, k: int = _INSTRUMENT_K) -> Callable:
    """``share(params, dw, pool_images)``: ``||dw_n|| / ||dw||``, dw_n in the row space of A.

    ``A`` is the Jacobian of the constraints of the `k` most violated samples
    of ``pool_images`` at ``params``; ``dw - dw_n`` is the Euclidean
    projection of ``dw`` onto the null space of ``A``, computed with
    ``kktopt.project_kkt`` on the constraints shifted to 0 at ``params``. The
    shifted values are 0 only up to rounding, and the projection would add
    the minimum-norm step that meets them (for ill-conditioned ``A`` larger
    than a small ``dw``), so the projection of ``dw`` minus the projection of
    the zero step is taken: the step is affine in its input, and the
    difference is exactly the null-space projection.
    """
    cfn = problem.constraints

    def share(params, dw, pool_images):
        idx = kktopt.mine_active_constraints(jax.lax.stop_gradient(cfn(params, pool_images)), k)
        x = pool_images[idx]
        c0 = jax.lax.stop_gradient(cfn(params, x))
        tx = kktopt.project_kkt(lambda p, b: cfn(p, b) - c0, solver=_solver())
        state = tx.init(params)
        moved, _ = tx.update(dw, state, params, constraint_batch=x)
        offset, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, dw), state, params,
                              constraint_batch=x)
        normal = jax.tree_util.tree_map(lambda d, m, o: d - (m - o), dw, moved, offset)
        total = optax.tree_utils.tree_norm(dw)
        return optax.tree_utils.tree_norm(normal) / jnp.where(total > 0, total, 1.0)

    return share


# --------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------


def _stack(trees: list[PyTree]) -> PyTree:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _take(trees: tuple, k: int) -> tuple:
    """Run `k` of stacked pytrees."""
    return tuple(jax.tree_util.tree_map(lambda a: a[k], t) for t in trees)


class _Study:
    def __init__(self, study: StudyPreset, out: Path, *, data_dir: Path | None,
                 unconstrained_from: Path | None, progress: bool,
                 stop_after_checkpoints: int | None, log: Callable[[str], None]):
        self.study, self.out, self.log, self.progress = study, out, log, progress
        self.base = get_preset(study.base)
        self.results_path = out / "results.json"
        self.results = read_json(self.results_path) if self.results_path.exists() else {}
        if self.results.get("schema") not in (None, SCHEMA):
            raise ValueError(f"{self.results_path} was written by another version; use another --out.")
        self.results.update(schema=SCHEMA, study=study.to_dict(), base_preset=self.base.to_dict(),
                            thresholds_mm=list(THRESHOLDS_MM),
                            machine={**machine(), "kktopt": kktopt.__version__}, complete=False)
        self.results.setdefault("runs", {})
        self.stop_after, self.saved = stop_after_checkpoints, 0
        self._run = _Run(self.base, out, self.results, progress=progress,
                         stop_after_checkpoints=None, log=log, reuse=unconstrained_from)
        self._run.setup(data_dir if data_dir is not None else out / "data")
        self.problem = self._run.problem
        self.start = self._run.pretrain()
        self.train = self._run.train
        self.pool = self._run.pool
        self.splits = {s: self._run.evaluator.splits[s] for s in ("test", "pool")}
        self._pool_device = jax.device_put(self.pool)

    def save(self) -> None:
        write_json(self.results_path, self.results)

    # -- data --------------------------------------------------------------
    def batch(self, seeds: list[int], t: int):
        n, b, s0 = len(self.train[0]), self.base.batch_size, self.base.seed
        lab = [batch_indices(n, b, t, s0 + s, STREAM_LABELED) for s in seeds]
        pidx = [batch_indices(len(self.pool), b, t, s0 + s, STREAM_POOL) for s in seeds]
        images = np.stack([self.train[0][i] for i in lab])
        joints = np.stack([self.train[1][i] for i in lab])
        pool = np.stack([self.pool[i] for i in pidx])
        return images, joints, pool, np.stack(pidx).astype(np.int32)

    # -- evaluation ----------------------------------------------------------
    def predictions(self, predict_many: Callable, params: PyTree, split: str) -> np.ndarray:
        """Predictions ``(runs, n, 17, 3)`` of a chunk's stacked `params` on `split`."""
        images = self.splits[split][0]
        n = len(images)
        chunk = min(EVAL_CHUNK, n)
        preds = []
        for s in range(0, n, chunk):
            x = images[s:s + chunk]
            if len(x) < chunk:  # pad to the compiled size
                x = np.concatenate([x, np.repeat(x[-1:], chunk - len(x), axis=0)])
            preds.append(np.asarray(predict_many(params, x)))
        return np.concatenate(preds, axis=1)[:, :n]

    def evaluate(self, predict_many: Callable, params: PyTree, split: str,
                 projected: bool = False) -> list[dict[str, Any]]:
        """Metrics of every run of a chunk on `split` (of projected predictions if `projected`)."""
        joints = self.splits[split][1]
        pred = self.predictions(predict_many, params, split)
        if projected:
            pred = np.stack([self.projected(p)[0] if np.all(np.isfinite(p)) else p for p in pred])
        return [split_metrics(p, joints) for p in pred]

    # -- the output-projection layer ---------------------------------------------
    def projected(self, pred: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """`pred` (n, 17, 3) through `project` in batches of 128; the outputs and the layer's record."""
        b = self.base.batch_size
        if not hasattr(self, "_project"):
            self._project = jax.jit(project)
            jax.block_until_ready(self._project(jnp.zeros((b, 17, 3), jnp.float32)))  # compile
        outs, status, its, seconds = [], [], [], 0.0
        for s0 in range(0, len(pred), b):
            x = pred[s0:s0 + b]
            k = len(x)
            if k < b:
                x = np.concatenate([x, np.repeat(x[-1:], b - k, axis=0)])
            t0 = time.perf_counter()
            y, info = jax.block_until_ready(self._project(jnp.asarray(x, jnp.float32)))
            seconds += time.perf_counter() - t0
            outs.append(np.asarray(y)[:k])
            status.append(np.asarray(info.status)[:k])
            its.append(np.asarray(info.iterations)[:k])
        status, its = np.concatenate(status), np.concatenate(its)
        record = {"status_counts": {kktopt.ProjectionStatus(int(v)).name: int((status == v).sum())
                                    for v in np.unique(status)},
                  "iterations_median": float(np.median(its)), "iterations_max": int(its.max()),
                  "ms_per_batch": 1e3 * seconds / max(len(outs), 1)}
        return np.concatenate(outs), record

    def project_final(self, family: Family) -> None:
        """Every finished run's final model with the projection layer at test (issue 12)."""
        runs = [(dict(hp), s) for hp in family.grid for s in self.study.seeds]
        for j, (chunk_runs, size) in enumerate(self.chunks(runs)):
            ids = [f"{family.config_id(hp)}/seed={s}" for hp, s in chunk_runs]
            entries = [self.results["runs"].get(i) for i in ids]
            if not all(e and e.get("status") == "done" for e in entries):
                continue
            if all("projected" in e and e["projected"].get("fingerprint") == e["fingerprint"]
                   for e in entries):
                continue
            _, _, params, state = self.initial(family, chunk_runs, size)
            path = self.out / "checkpoints" / "study" / f"{family.name}-{j}" / "state.eqx"
            params, _ = load_tree(path, (params, state))
            for k, (i, e) in enumerate(zip(ids, entries)):
                pk = jax.tree_util.tree_map(lambda a: a[k], params)
                e["projected"] = {"fingerprint": e["fingerprint"], **self.projected_metrics(pk)}
            self.save()
            self.log(f"{family.name}-{j}: final models projected at test.")

    def recompute_normal_share(self, family: Family) -> None:
        """Runs recorded with the first normal-share instrument: the share recomputed at the end.

        That instrument added a rounding-level feasibility offset to the
        projection (see `make_normal_share`), which dominates small steps.
        Its values are dropped; the share of the step from each final model
        (on minibatch `StudyPreset.steps`, the step after the last) is
        recorded at the last checkpoint instead.
        """
        runs = [(dict(hp), s) for hp in family.grid for s in self.study.seeds]
        compiled = None
        for j, (chunk_runs, size) in enumerate(self.chunks(runs)):
            ids = [f"{family.config_id(hp)}/seed={s}" for hp, s in chunk_runs]
            entries = [self.results["runs"].get(i) for i in ids]
            if not all(e and e.get("status") == "done" for e in entries):
                continue
            if all(e.get("normal_share_version") == _NORMAL_SHARE_VERSION for e in entries):
                continue
            padded, hps, params, state = self.initial(family, chunk_runs, size)
            path = self.out / "checkpoints" / "study" / f"{family.name}-{j}" / "state.eqx"
            params, state = load_tree(path, (params, state))
            batch = self.batch([s for _, s in padded], self.study.steps)
            args = (params, state, hps, *batch)
            if compiled is None:
                step = make_study_step(family, self.problem, self.base, self._pool_device)
                compiled = jax.jit(step).lower(*_take(args, 0), self._pool_device).compile()
                share = jax.jit(make_normal_share(self.problem))
            for k, e in enumerate(entries):
                one = _take(args, k)
                p1, _, _ = compiled(*one, self._pool_device)
                dw = jax.tree_util.tree_map(lambda a, b: a - b, p1, one[0])
                value = float(share(one[0], dw, one[5]))
                for c in e["checkpoints"]:
                    c.get("train", {}).pop("normal_share", None)
                e["checkpoints"][-1]["train"]["normal_share"] = value
                e["normal_share_version"] = _NORMAL_SHARE_VERSION
                e["normal_share_note"] = ("recomputed after the run, for the step from the final "
                                          f"model on minibatch {self.study.steps}")
            self.save()
            self.log(f"{family.name}-{j}: normal share recomputed.")

    def project_start(self) -> None:
        """The unconstrained starting model with the projection layer at test."""
        u = self.results["unconstrained"]
        if u.get("projected", {}).get("fingerprint") != u.get("fingerprint"):
            u["projected"] = {"fingerprint": u.get("fingerprint"),
                              **self.projected_metrics(self.start)}
            self.save()

    def projected_metrics(self, pk: PyTree) -> dict[str, Any]:
        """Test and pool metrics of a model's predictions through the projection layer."""
        if not hasattr(self, "_predict1"):
            predict = jax.jit(self.problem.predict)
            self._predict1 = lambda p, x: predict(p, x)[None]
        rec: dict[str, Any] = {}
        for split in ("test", "pool"):
            joints = self.splits[split][1]
            pred = self.predictions(self._predict1, pk, split)[0]
            if not np.all(np.isfinite(pred)):
                rec[split] = split_metrics(pred, joints)
                continue
            y, layer = self.projected(pred)
            rec[split] = {**split_metrics(y, joints),
                          "max_abs_c_mm": float(np.max(np.asarray(pose_metrics.abs_constraints(y)))),
                          "layer": layer}
        return rec

    # -- one chunk of a family -------------------------------------------------
    def initial(self, family: Family, runs, size: int):
        """The padded runs, stacked hyperparameters, parameters and optimiser states of a chunk."""
        base = self.base
        padded = runs + [runs[-1]] * (size - len(runs))  # the same compiled shape for every chunk
        hps = {k: jnp.asarray([hp[k] for hp, _ in padded], jnp.float32) for k in padded[0][0]}
        states = [_build(family.kind, self.problem, hp, family.fixed, base=base,
                         pool=self._pool_device, seed=base.seed + s).init(self.start)
                  for hp, s in padded]
        return padded, hps, _stack([self.start] * size), _stack(states)

    def chunks(self, runs):
        """Balanced chunks of at most `StudyPreset.chunk` runs, all of one compiled shape
        (the last one padded by repeating its last run): ``[(runs, size), ...]``."""
        n_chunks = -(-len(runs) // self.study.chunk)
        size = -(-len(runs) // n_chunks)
        return [(runs[j * size:(j + 1) * size], size) for j in range(n_chunks)]

    def chunk(self, family: Family, runs: list[tuple[dict[str, float], int]], tag: str,
              size: int) -> None:
        study, base = self.study, self.base
        ids = [f"{family.config_id(hp)}/seed={s}" for hp, s in runs]
        fp = fingerprint({"base": base.base_dict(), "mined": base.mined, "steps": study.steps,
                          "eval_every": study.eval_every, "kind": family.kind,
                          "fixed": dict(family.fixed), "runs": ids,
                          "vmap": study.vmap})
        if all(self.results["runs"].get(i, {}).get("fingerprint") == fp
               and self.results["runs"][i].get("status") == "done" for i in ids):
            self.log(f"{tag}: finished earlier, skipped.")
            return
        padded, hps, params, state = self.initial(family, runs, size)
        seeds = [s for _, s in padded]
        pool_like = self._pool_device
        folder = self.out / "checkpoints" / "study" / tag
        folder.mkdir(parents=True, exist_ok=True)
        state_path, prog_path = folder / "state.eqx", folder / "progress.json"
        u = self.results["unconstrained"]
        prog = {"fingerprint": fp, "step": 0, "step_seconds": 0.0, "steps_timed": 0,
                "resumed_from_steps": [], "compile_seconds": [],
                "checkpoints": [[{"step": 0, "test": u["test"], "pool": u["pool"], "train": {}}]
                                for _ in runs]}
        old, (params, state) = harness.resume(prog_path, state_path, fp, (params, state))
        if old is not None:
            prog = old
            self.log(f"{tag}: resuming at step {prog['step']}.")

        step = make_study_step(family, self.problem, base, pool_like)
        share = make_normal_share(self.problem)
        args0 = (params, state, hps, *self.batch(seeds, prog["step"]), self._pool_device)
        t0 = time.perf_counter()
        if study.vmap:
            # One program for the whole chunk: the step vmapped over its runs.
            compiled = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, 0, 0, 0, 0, None))).lower(
                *args0).compile()
            run_step = compiled
            run_share = jax.jit(jax.vmap(share))
            predict_many = jax.jit(jax.vmap(self.problem.predict, in_axes=(0, None)))
        else:
            # One program for the family, called once per run: the hyperparameters
            # are traced arguments, so every configuration runs the same executable.
            single = jax.jit(step).lower(*_take(args0[:-1], 0), args0[-1]).compile()
            one_share, one_predict = jax.jit(share), jax.jit(self.problem.predict)

            def run_step(*args):
                outs = [single(*_take(args[:-1], k), args[-1]) for k in range(size)]
                return tuple(_stack(list(o)) for o in zip(*outs))

            def run_share(p, dw, x):
                return jnp.stack([one_share(*_take((p, dw, x), k)) for k in range(size)])

            def predict_many(p, x):
                return jnp.stack([one_predict(_take((p,), k)[0], x) for k in range(size)])
        prog["compile_seconds"].append(round(time.perf_counter() - t0, 2))

        def record(status: str) -> None:
            per_run = prog["step_seconds"] / max(prog["steps_timed"], 1) / size
            for k, (i, (hp, s)) in enumerate(zip(ids, runs)):
                self.results["runs"][i] = {
                    "family": family.name, "label": family.label, "kind": family.kind,
                    "config_id": family.config_id(hp), "hyper": dict(hp), "seed": s,
                    "fingerprint": fp, "status": status, "checkpoints": prog["checkpoints"][k],
                    "seconds_per_step": per_run, "vmapped_runs": size,
                    "compile_seconds": prog["compile_seconds"],
                    "resumed_from_steps": prog["resumed_from_steps"],
                    "normal_share_version": _NORMAL_SHARE_VERSION}
            self.save()

        window: list[dict[str, np.ndarray]] = []
        with harness.progress(study.steps, initial=prog["step"], desc=tag,
                              enabled=self.progress) as bar:
            for t in range(prog["step"], study.steps):
                images, joints, pool_images, pidx = self.batch(seeds, t)
                old_params = params
                t1 = time.perf_counter()
                params, state, stats = run_step(params, state, hps, images, joints, pool_images,
                                                pidx, self._pool_device)
                jax.block_until_ready((params, state, stats))
                prog["step_seconds"] += time.perf_counter() - t1
                prog["steps_timed"] += 1
                stats = {k: np.asarray(v) for k, v in jax.device_get(stats).items()}
                checkpoint_now = (t + 1) % study.eval_every == 0 or t + 1 == study.steps
                if checkpoint_now:
                    dw = jax.tree_util.tree_map(lambda a, b: a - b, params, old_params)
                    stats["normal_share"] = np.asarray(run_share(old_params, dw, pool_images))
                window.append(stats)
                bar.set_postfix({"loss": f"{float(np.nanmean(stats['loss'])):.3g}",
                                 "s/it": f"{prog['step_seconds'] / prog['steps_timed']:.3g}"},
                                refresh=False)
                bar.update(1)
                if not checkpoint_now:
                    continue
                through = family.kind == "adam-layer"
                test = self.evaluate(predict_many, params, "test", projected=through)
                pool = self.evaluate(predict_many, params, "pool", projected=through)
                for k in range(len(runs)):
                    train = {}
                    for key in sorted({key for w in window for key in w}):
                        vals = [float(w[key][k]) for w in window if key in w]
                        if vals:
                            train[key if key == "normal_share" else f"{key}_mean"] = (
                                float(np.mean(vals)) if key != "normal_share" else vals[-1])
                    if "linearized_residual" in window[0]:
                        train["linearized_residual_max"] = float(np.max(
                            [w["linearized_residual"][k] for w in window]))
                    prog["checkpoints"][k].append({"step": t + 1, "test": test[k], "pool": pool[k],
                                                   "train": train})
                window = []
                prog["step"] = t + 1
                save_tree(state_path, (params, state))
                write_json(prog_path, prog)
                record("running")
                self.saved += 1
                if self.stop_after is not None and self.saved >= self.stop_after:
                    from pose.train import Interrupted
                    raise Interrupted(f"stopped after {self.saved} checkpoints")
        record("done")
        last = [c[-1]["test"] for c in prog["checkpoints"]]
        ok = [m for m in last if m["mpjpe_mm"] is not None]
        self.log(f"{tag}: {len(runs)} runs, {len(ok)} finite; test MPJPE "
                 f"{min((m['mpjpe_mm'] for m in ok), default=float('nan')):.1f}-"
                 f"{max((m['mpjpe_mm'] for m in ok), default=float('nan')):.1f} mm; "
                 f"{prog['step_seconds'] / max(prog['steps_timed'], 1) / size:.3f} s/step per run")

    def family(self, family: Family) -> None:
        runs = [(dict(hp), s) for hp in family.grid for s in self.study.seeds]
        for j, (chunk_runs, size) in enumerate(self.chunks(runs)):
            self.chunk(family, chunk_runs, f"{family.name}-{j}", size)


def merge_runs(out: Path, other: Path, log: Callable[[str], None] = print) -> int:
    """Copy the finished runs of the study in `other` (and their checkpoints) into `out`."""
    import shutil
    theirs = read_json(other / "results.json")
    if theirs.get("schema") != SCHEMA:
        raise ValueError(f"{other} holds no pose study results.")
    path = out / "results.json"
    ours = read_json(path) if path.exists() else {"schema": SCHEMA}
    ours.setdefault("runs", {})
    copied = 0
    for rid, r in theirs.get("runs", {}).items():
        if r.get("status") == "done" and ours["runs"].get(rid, {}).get("status") != "done":
            ours["runs"][rid] = r
            copied += 1
    src = other / "checkpoints" / "study"

    def step_of(folder: Path) -> int:
        prog = folder / "progress.json"
        return read_json(prog).get("step", 0) if prog.exists() else -1

    for folder in (src.iterdir() if src.exists() else ()):
        dst = out / "checkpoints" / "study" / folder.name
        if step_of(folder) > step_of(dst):  # a chunk that got further there
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(folder, dst)
    if "unconstrained" not in ours and "unconstrained" in theirs:
        ours["unconstrained"] = theirs["unconstrained"]
    write_json(path, ours)
    log(f"merged {copied} finished runs from {other}.")
    return copied


def run_study(study: StudyPreset | str, out_dir: str | os.PathLike, *,
              data_dir: str | os.PathLike | None = None,
              unconstrained_from: str | os.PathLike | None = None,
              families: list[str] | None = None, progress: bool = True, figures: bool = True,
              stop_after_checkpoints: int | None = None, project: bool = True,
              merge: list[str | os.PathLike] = (),
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a pose study into `out_dir`; returns the results (``results.json``).

    Args:
      study: a `StudyPreset` or the name of one of `STUDY_PRESETS`.
      out_dir: folder of ``results.json``, the report and ``checkpoints/``.
      data_dir: where TFDS builds the data set (default ``out_dir/data``).
      unconstrained_from: an earlier pose run (or study) of the same base preset
        whose unconstrained model is reused.
      families: run only these families (default: all of the preset's).
      progress: tqdm progress bars.
      figures: write the report's figures (needs matplotlib).
      stop_after_checkpoints: stop, as if interrupted, after this many checkpoints.
      project: afterwards, evaluate every finished run's final model with the
        output-projection layer at test (`project`; results under ``"projected"``).
      merge: output folders of other runs of the same study (e.g. other
        families run in another process) whose finished runs and checkpoints
        are copied in first.
      log: where one-line messages go.
    """
    from pose.train import Interrupted
    study = get_study(study) if isinstance(study, str) else study
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for other in merge:
        merge_runs(out, Path(other), log)
    s = _Study(study, out, data_dir=None if data_dir is None else Path(data_dir),
               unconstrained_from=None if unconstrained_from is None else Path(unconstrained_from),
               progress=progress, stop_after_checkpoints=stop_after_checkpoints, log=log)
    chosen = [f for f in study.families if families is None or f.name in families]
    unknown = set(families or ()) - {f.name for f in study.families}
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; the preset has "
                         f"{[f.name for f in study.families]}.")
    t0 = time.perf_counter()
    try:
        for f in chosen:
            s.family(f)
        for f in chosen:
            s.recompute_normal_share(f)
        if project:
            s.project_start()
            for f in chosen:
                s.project_final(f)
    except Interrupted as e:
        log(f"{e}: rerun the same command to resume.")
        s.save()
        return s.results
    wanted = {f"{f.config_id(hp)}/seed={sd}" for f in study.families for hp in f.grid
              for sd in study.seeds}
    s.results["complete"] = wanted <= {k for k, v in s.results["runs"].items()
                                       if v.get("status") == "done"}
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    s.results["machine"]["loadavg_1_5_15_end"] = [round(x, 2) for x in load]
    s.results["wall_seconds_last_call"] = round(time.perf_counter() - t0, 2)
    s.save()
    from pose import study_report
    study_report.write_report(s.results, out, figures=figures)
    return s.results
