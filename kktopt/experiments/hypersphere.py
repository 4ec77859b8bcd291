"""The hypersphere experiment of the paper (Sec. 6.2, Fig. 3 and Fig. 4).

A toy problem that isolates the diagnosis of the paper: many nearly identical
constraints, of which only a random subset is active at each step.

* Hard (Eq. 16): ``min 1/2 ||w - x0||^2  s.t.  ||w - c_i|| - r = 0``, i = 1..m.
* Soft (Eq. 17): ``min 1/2 ||w - x0||^2 + lam * sum_i (||w - c_i|| - r)^2``.

Defaults: d = 1e6, m = 200 centres, r = 10, lam = 100, 20 random active
constraints per step, 500 steps. Five methods, each written with the public
optax transforms exactly as a user would write them:

* ``soft``: ``optax.sgd(soft_lr)`` (no momentum) on the full soft objective
  (``kktopt.soft_constrained_loss``, all m constraints every step).
* ``hard``: ``optax.chain(optax.sgd(hard_lr), kktopt.project_kkt(...,
  active=kktopt.active.random_samples(20)))`` (paper Eq. 5), solved by the
  dense Schur complement (default) or MINRES-QLP (``solver="krylov"``).
* ``hard-fixed``: the same 20 constraints at every step (the first random
  draw of ``hard``), to test the paper's diagnosis: a fixed active set
  converges onto its intersection.
* ``hard-all``: all m constraints active at every step.
* ``hard-memory``: ``hard`` with ``memory=kktopt.memory.multiplier_memory(
  memory, centres)``: the constraints projected at earlier steps keep
  pulling the step with their accumulated Lagrange multipliers, so they are
  not forgotten when they leave the random active set (the paper's open
  problem, Sec. 7).

Interpretation of the centres (``centre_spread``). The paper draws
``c_i ~ N(0, 0.01 I)`` and calls the spheres nearly identical (the spread of
the centres, 0.1, is two orders of magnitude below the radius). Read per
coordinate in d = 1e6, that makes the centres about ``sqrt(2 * 0.01 * d)``
= 141 apart: no two spheres of radius 10 even intersect, the hard problem is
infeasible and every linearisation is well conditioned (the rows of A are
nearly orthogonal), the opposite of what the paper describes. The default
``"matched"`` reading keeps the geometry of the paper's d = 2 picture in any
dimension: per-coordinate variance ``0.01 * 2 / d``, so that
``E ||c_i - c_j||^2 = 0.04`` as for ``N(0, 0.01 I)`` in d = 2 (the two
readings coincide at d = 2). ``"literal"`` is the per-coordinate reading.

Everything a run produces goes to one folder: ``metrics.json`` (written after
every method, so an interrupted run resumes: methods already there are
skipped unless ``force=True``), ``fig3.png`` and ``fig4.png``.

References:
  Marquez-Neila, Salzmann and Fua (2017), Sec. 6.2, Eq. 5, 16, 17, Fig. 3, 4.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import kktopt
from kktopt.active import RandomSamples, take_samples

__all__ = [
    "METHODS",
    "Centres",
    "HypersphereConfig",
    "HypersphereProblem",
    "illustration_2d",
    "make_problem",
    "plot_fig3",
    "plot_fig4",
    "run",
    "run_method",
    "sphere_constraints",
]

METHODS: tuple[str, ...] = ("soft", "hard", "hard-fixed", "hard-all", "hard-memory")
"""The five methods, in the order they are run and plotted."""

_FLOOR = 1e-16  # |C| values below this (exact zeros included) are drawn at it on log axes

_COLOURS = {
    "soft": "tab:blue",
    "hard": "tab:red",
    "hard-fixed": "tab:green",
    "hard-all": "tab:purple",
    "hard-memory": "tab:orange",
}


# --------------------------------------------------------------------------
# Configuration and problem
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HypersphereConfig:
    """Settings of one run (the defaults are the paper's Fig. 4).

    Attributes:
      dim: dimension d of w.
      constraints: number m of spheres (centres).
      active: number of random active constraints per step of ``hard``, and
        the size of ``hard-fixed``'s fixed set.
      iters: optimisation steps per method.
      lam: soft penalty weight lambda of Eq. 17.
      seed: seeds the centres, x0 and the random active sets.
      radius: sphere radius r.
      centre_variance: the paper's 0.01.
      centre_spread: ``"matched"`` (per-coordinate variance
        ``centre_variance * 2 / dim``, the d = 2 geometry in any dimension) or
        ``"literal"`` (per-coordinate variance ``centre_variance``); see the
        module docstring.
      start_distance: ``||x0||``; x0 is uniform on that sphere around the
        origin (the mean of the centres), so it lies about
        ``start_distance - radius`` outside the spheres. Every method starts
        at w = x0, the unconstrained minimiser.
      soft_lr: SGD learning rate of ``soft``; default ``1 / (1 + 2 lam m)``,
        half the stability bound (see :meth:`default_soft_lr`).
      hard_lr: SGD learning rate before the projection (eta = 1 / hard_lr in
        Eq. 5); default 1.0 by the same rule as the soft one: half of SGD's
        stability bound 2 / L on the objective the SGD step sees, here
        R = 1/2 ||w - x0||^2 with L = 1 (the projection, not the step size,
        takes care of the constraints). ``hard_lr = soft_lr`` makes the hard
        steps almost pure projections.
      solver: ``"schur"`` (default: :class:`kktopt.SchurKKT`, dense
        minimum-norm Schur complement from the per-sample Jacobian,
        ``jacobian="per_sample"``) or ``"krylov"`` (:class:`kktopt.KrylovKKT`,
        MINRES-QLP on the full KKT system, matrix-free: the paper's choice).
        Both solve the same Eq. 5; see the README for the costs.
      rtol: the Krylov solver's relative tolerance (ignored by
        ``"schur"``); None: the library's default for the dtype (1e-4 in
        float32, 1e-8 in float64).
      dtype: ``"float64"`` (default) or ``"float32"`` (half the memory
        traffic, but |C| is resolved only to about 1e-6 at d = 1e6, the
        rounding of ``||w - c_i||^2`` summed over 1e6 coordinates, and the
        200 nearly dependent rows of ``hard-all`` are beyond its precision:
        ``A A^T`` has a condition number of about 2e6).
      memory: number of remembered samples of ``hard-memory``'s
        :func:`kktopt.memory.multiplier_memory` (default all m).
    """

    dim: int = 1_000_000
    constraints: int = 200
    active: int = 20
    iters: int = 500
    lam: float = 100.0
    seed: int = 0
    radius: float = 10.0
    centre_variance: float = 0.01
    centre_spread: Literal["matched", "literal"] = "matched"
    start_distance: float = 15.0
    soft_lr: float | None = None
    hard_lr: float = 1.0
    solver: Literal["krylov", "schur"] = "schur"
    rtol: float | None = None
    dtype: Literal["float64", "float32"] = "float64"
    memory: int = 200

    def __post_init__(self):
        for name in ("dim", "constraints", "active", "iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.active > self.constraints:
            raise ValueError(
                f"active ({self.active}) cannot exceed the number of constraints ({self.constraints})."
            )
        if self.centre_spread not in ("matched", "literal"):
            raise ValueError(f"centre_spread must be 'matched' or 'literal', got {self.centre_spread!r}.")
        if self.solver not in ("krylov", "schur"):
            raise ValueError(f"solver must be 'krylov' or 'schur', got {self.solver!r}.")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}.")
        for name in ("lam", "radius", "centre_variance", "start_distance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if self.soft_lr is not None and not self.soft_lr > 0:
            raise ValueError(f"soft_lr must be positive (or None for the default), got {self.soft_lr!r}.")
        if not self.hard_lr > 0:
            raise ValueError(f"hard_lr must be positive, got {self.hard_lr!r}.")
        if not isinstance(self.memory, int) or self.memory < 0:
            raise ValueError(f"memory must be an integer >= 0, got {self.memory!r}.")
        if self.rtol is not None and not 0 <= self.rtol < 1:
            raise ValueError(f"rtol must be in [0, 1), got {self.rtol!r}.")

    def default_soft_lr(self) -> float:
        """``1 / (1 + 2 lam m)``: half of SGD's stability bound on Eq. 17.

        Near the spheres every ``a_i = (w - c_i) / ||w - c_i||`` is almost the
        same unit vector, so the Hessian of the soft objective has the
        eigenvalue ``1 + 2 lam sum_i ||a_i||^2 = 1 + 2 lam m`` in that
        (radial) direction, and SGD is stable only for ``lr < 2 / (1 + 2 lam
        m)`` (= 5.0e-5 for lam = 100, m = 200). Half of it removes the radial
        error in about one step.
        """
        return 1.0 / (1.0 + 2.0 * self.lam * self.constraints)

    @property
    def resolved_soft_lr(self) -> float:
        return self.default_soft_lr() if self.soft_lr is None else float(self.soft_lr)

    @property
    def coordinate_variance(self) -> float:
        """The per-coordinate variance of the centres."""
        if self.centre_spread == "literal":
            return self.centre_variance
        return self.centre_variance * 2.0 / self.dim

    def to_dict(self) -> dict[str, Any]:
        """The settings, with the learning rates resolved (the ``config`` of metrics.json)."""
        out = dataclasses.asdict(self)
        out["soft_lr"] = self.resolved_soft_lr
        out["coordinate_variance"] = self.coordinate_variance
        return out


class Centres(NamedTuple):
    """The constraint batch: the sphere centres, sample axis first.

    Attributes:
      points: ``(m, d)`` centres c_i.
      sq_norms: ``(m,)`` their squared norms ``||c_i||^2``, kept so that
        evaluating the constraints reads the ``(m, d)`` array once.
    """

    points: jax.Array
    sq_norms: jax.Array

    @classmethod
    def from_points(cls, points: ArrayLike) -> "Centres":
        points = jnp.asarray(points)
        return cls(points, jnp.sum(points * points, axis=-1))


class HypersphereProblem(NamedTuple):
    """One draw of the problem.

    Attributes:
      x0: ``(d,)`` the target of the objective and the start point.
      centres: the :class:`Centres` (the constraint batch of every method).
      fixed: ``(active,)`` int32 indices of ``hard-fixed``'s constraints, the
        first random draw of ``hard``.
    """

    x0: jax.Array
    centres: Centres
    fixed: jax.Array


def sphere_constraints(w: ArrayLike, centres: Centres, radius: float = 10.0) -> jax.Array:
    """``C_i(w) = ||w - c_i|| - radius`` for every centre (paper Eq. 16).

    Written as ``sqrt(||w||^2 - 2 c_i . w + ||c_i||^2)`` so that it costs one
    matrix-vector product with the centres (and its JVP and VJP one each).

    Args:
      w: ``(d,)`` point.
      centres: :class:`Centres` with ``m`` centres.
      radius: sphere radius.

    Returns:
      ``(m,)`` constraint values (0 on the sphere, positive outside).

    Example:
      >>> import jax.numpy as jnp
      >>> from kktopt.experiments.hypersphere import Centres, sphere_constraints
      >>> c = Centres.from_points(jnp.array([[0.0, 0.0], [3.0, 0.0]]))
      >>> sphere_constraints(jnp.array([0.0, 4.0]), c, radius=4.0).tolist()
      [0.0, 1.0]
    """
    w = jnp.asarray(w)
    sq = jnp.dot(w, w) - 2.0 * (centres.points @ w) + centres.sq_norms
    return jnp.sqrt(jnp.maximum(sq, 0.0)) - jnp.asarray(radius, w.dtype)


def _selector(config: HypersphereConfig) -> RandomSamples:
    return kktopt.active.random_samples(config.active, seed=config.seed)


def _draw_indices(selector: RandomSamples, m: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The indices the selector picks with state ``key`` (exactly what project_kkt uses)."""
    return selector.select(None, None, jnp.arange(m, dtype=jnp.int32), key)


def make_problem(config: HypersphereConfig) -> HypersphereProblem:
    """Draw the centres and x0 from ``config.seed`` (must run with the config's dtype enabled).

    ``c_i ~ N(0, s^2 I)`` with ``s^2 = config.coordinate_variance``;
    ``x0 = start_distance * z / ||z||``, ``z ~ N(0, I)``.
    """
    dtype = jnp.dtype(config.dtype)
    key_c, key_x = jax.random.split(jax.random.PRNGKey(config.seed))
    std = math.sqrt(config.coordinate_variance)
    points = std * jax.random.normal(key_c, (config.constraints, config.dim), dtype)
    z = jax.random.normal(key_x, (config.dim,), dtype)
    x0 = config.start_distance * z / jnp.linalg.norm(z)
    selector = _selector(config)
    fixed, _ = _draw_indices(selector, config.constraints, selector.init(x0))
    return HypersphereProblem(x0=x0, centres=Centres.from_points(points), fixed=fixed)


# --------------------------------------------------------------------------
# One jitted step per method
# --------------------------------------------------------------------------


def _objective(w, x0):
    """R(w) = 1/2 ||w - x0||^2 of Eq. 16 and 17."""
    return 0.5 * jnp.sum((w - x0) ** 2)


def _solver(config: HypersphereConfig):
    """The KKT solver and the matching ``jacobian=`` of project_kkt."""
    if config.solver == "schur":
        # Dense Schur complement from the per-sample Jacobian: one k x d
        # matrix per step (k active spheres), products with it are matmuls.
        return kktopt.SchurKKT(), "per_sample"
    return kktopt.KrylovKKT(rtol=config.rtol), "matrix_free"


def _centres_spec(config: HypersphereConfig) -> Centres:
    """Shapes and dtypes of the constraint batch (the ``like`` of the memory)."""
    dtype = jnp.dtype(config.dtype)
    return Centres(
        jax.ShapeDtypeStruct((config.constraints, config.dim), dtype),
        jax.ShapeDtypeStruct((config.constraints,), dtype),
    )


def _median_abs(x):
    return jnp.median(jnp.abs(x))


def _step_metrics(c, c_new, idx, u) -> dict[str, jax.Array]:
    """Per-step metrics from the constraint values before (c) and after (c_new) a step u."""
    return {
        "median_abs_c": _median_abs(c_new),
        "active_change": _median_abs(c_new[idx]) - _median_abs(c[idx]),
        "active_max_abs_c": jnp.max(jnp.abs(c_new[idx])),
        "step_norm": jnp.linalg.norm(u),
    }


# The step functions depend on the settings, not on iters or the data: cache
# them so a second run with the same settings reuses the compiled code.
def _step_key(config: HypersphereConfig) -> HypersphereConfig:
    return dataclasses.replace(config, iters=1)


@functools.lru_cache(maxsize=16)
def _soft_fns(config: HypersphereConfig):
    constraint_fn = functools.partial(sphere_constraints, radius=config.radius)
    loss = kktopt.soft_constrained_loss(_objective, constraint_fn, config.lam)
    tx = optax.sgd(config.resolved_soft_lr)
    selector = _selector(config)
    m = config.constraints

    def evaluate(w, x0, centres):
        # The constraint values at w come from the same forward pass as the
        # gradient (XLA merges the identical products).
        return constraint_fn(w, centres), jax.grad(loss)(w, x0, centres)

    @jax.jit
    def init(w, x0, centres):
        c, g = evaluate(w, x0, centres)
        return (w, tx.init(w), c, g, selector.init(w))

    @jax.jit
    def step(carry, x0, centres):
        w, opt_state, c, g, key = carry
        idx, key = _draw_indices(selector, m, key)
        u, opt_state = tx.update(g, opt_state, w)
        w = optax.apply_updates(w, u)
        c_new, g = evaluate(w, x0, centres)
        return (w, opt_state, c_new, g, key), _step_metrics(c, c_new, idx, u)

    return init, step


@functools.lru_cache(maxsize=16)
def _hard_fns(config: HypersphereConfig, method: str):
    constraint_fn = functools.partial(sphere_constraints, radius=config.radius)
    m = config.constraints
    memory = None
    if method in ("hard", "hard-memory"):
        selector = _selector(config)
        active = selector
        if method == "hard-memory":
            # Every constraint projected so far keeps pulling with its
            # accumulated multiplier (kktopt.memory.MultiplierMemory).
            memory = kktopt.memory.multiplier_memory(config.memory, _centres_spec(config))
    else:
        selector = None
        active = kktopt.active.all_samples()
    solver, jacobian = _solver(config)
    tx = optax.chain(
        optax.sgd(config.hard_lr),
        kktopt.project_kkt(constraint_fn, active=active, solver=solver, jacobian=jacobian, memory=memory),
    )

    def batch_and_indices(opt_state, centres, fixed_batch, fixed):
        if method in ("hard", "hard-memory"):
            # The indices project_kkt is about to draw, from its own state.
            idx, _ = _draw_indices(selector, m, opt_state[1].active)
            return centres, idx
        if method == "hard-fixed":
            return fixed_batch, fixed
        return centres, jnp.arange(m)

    @jax.jit
    def init(w, x0, centres):
        return (w, tx.init(w), constraint_fn(w, centres))

    @jax.jit
    def step(carry, x0, centres, fixed_batch, fixed):
        w, opt_state, c = carry
        batch, idx = batch_and_indices(opt_state, centres, fixed_batch, fixed)
        g = jax.grad(_objective)(w, x0)
        u, opt_state = tx.update(g, opt_state, w, constraint_batch=batch)
        w = optax.apply_updates(w, u)
        c_new = constraint_fn(w, centres)
        info = opt_state[1].info
        metrics = _step_metrics(c, c_new, idx, u) | {
            "iterations": info.solver.iterations,
            "istop": info.solver.istop,
            "linearized_residual": info.linearized_residual,
            "active_violation_norm": info.violation_norm,
        }
        return (w, opt_state, c_new), metrics

    return init, step


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
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    key = _step_key(config)
    x0, centres, fixed = problem
    t0 = time.perf_counter()
    if method == "soft":
        init, step = _soft_fns(key)
        args = (x0, centres)
    else:
        init, step = _hard_fns(key, method)
        # hard-fixed's constraint batch: its 20 centres, gathered once.
        fixed_batch = take_samples(centres, fixed) if method == "hard-fixed" else None
        args = (x0, centres, fixed_batch, fixed)
    carry = init(x0, x0, centres)
    step_c = step.lower(carry, *args).compile()
    compile_seconds = time.perf_counter() - t0

    c0 = carry[2]
    per_step: dict[str, list] = {}
    t0 = time.perf_counter()
    with tqdm(total=config.iters, desc=f"{method:>10}", disable=not progress, leave=True) as bar:
        for _ in range(config.iters):
            carry, metrics = step_c(carry, *args)
            for name, value in jax.device_get(metrics).items():
                per_step.setdefault(name, []).append(value.item())
            bar.set_postfix_str(f"median|C|={per_step['median_abs_c'][-1]:.2e}", refresh=False)
            bar.update()
    seconds = time.perf_counter() - t0
    solver_keys = ("iterations", "istop", "linearized_residual", "active_violation_norm")
    out = {
        "median_abs_c": [float(_median_abs(c0))] + per_step["median_abs_c"],
        "active_change": per_step["active_change"],
        "active_change_nonpositive_fraction": float(np.mean(np.asarray(per_step["active_change"]) <= 0)),
        "active_max_abs_c": per_step["active_max_abs_c"],
        "step_norm": per_step["step_norm"],
        "seconds_per_iter": seconds / config.iters,
        "compile_seconds": compile_seconds,
        "solver": {k: per_step.get(k, []) for k in solver_keys},
    }
    if return_final:
        return out, carry[0]
    return out


# --------------------------------------------------------------------------
# Geometry report
# --------------------------------------------------------------------------


def _geometry(config: HypersphereConfig, problem: HypersphereProblem) -> dict[str, float]:
    """Distances and conditioning at the start point, for the README's discussion."""
    x0, centres, fixed = problem
    pts = centres.points
    gram = np.asarray(pts @ pts.T, np.float64)
    sq = np.diag(gram)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0)
    iu = np.triu_indices(config.constraints, 1)
    dist = np.sqrt(dist2[iu])
    # A at x0: rows (x0 - c_i) / ||x0 - c_i||; A A^T from the Gram matrix.
    xc = np.asarray(pts @ x0, np.float64)
    xx = float(jnp.dot(x0, x0))
    diff = xx - xc[:, None] - xc[None, :] + gram
    norms = np.sqrt(np.diag(diff))
    aat = diff / norms[:, None] / norms[None, :]

    def cond(sub):
        ev = np.linalg.eigvalsh(sub)
        return float(np.sqrt(ev[-1] / max(ev[0], np.finfo(np.float64).tiny)))

    idx = np.asarray(fixed)
    return {
        "centre_distance_median": float(np.median(dist)),
        "centre_distance_min": float(dist.min()),
        "centre_distance_max": float(dist.max()),
        "pairs_intersecting_fraction": float(np.mean(dist < 2 * config.radius)),
        "x0_distance_median": float(np.median(norms)),
        "cond_A_active_at_x0": cond(aat[np.ix_(idx, idx)]),
        "cond_A_all_at_x0": cond(aat) if config.constraints <= config.dim else float("inf"),
    }


# --------------------------------------------------------------------------
# The run: metrics.json (resumable) and figures
# --------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _load_existing(path: Path, config_dict: dict, force: bool) -> dict:
    if not path.exists():
        return {}
    with open(path) as f:
        old = json.load(f)
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
      >>> from kktopt.experiments.hypersphere import HypersphereConfig, run
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
    done = _load_existing(path, config_dict, force)
    todo = [m for m in METHODS if m in methods and (force or m not in done)]
    with jax.enable_x64(config.dtype == "float64"):
        result = {"config": config_dict, "methods": dict(done)}
        if todo or not path.exists():
            problem = make_problem(config)
            result["geometry"] = _geometry(config, problem)
            for method in todo:
                result["methods"][method] = run_method(method, config, problem, progress=progress)
                result["methods"] = {k: result["methods"][k] for k in METHODS if k in result["methods"]}
                _write_json(path, result)
            _write_json(path, result)
        else:
            with open(path) as f:
                result = json.load(f)
    if figures:
        plot_fig4(result, out / "fig4.png")
        plot_fig3(out / "fig3.png", seed=config.seed)
    return result


# --------------------------------------------------------------------------
# Fig. 3: the d = 2 illustration
# --------------------------------------------------------------------------


class Illustration2D(NamedTuple):
    """Data of Fig. 3 (d = 2), all numpy.

    Attributes:
      centres: ``(k, 2)`` circle centres (radius ``radius``).
      radius: circle radius.
      x0: the objective's target and the start point.
      w: the point where the two linearisations are drawn.
      normals: ``(2, 2)`` unit normals a_i of the linearisations at w.
      offsets: ``(2,)`` constraint values C_i(w) (line i: a_i . (v - w) = -C_i).
      kkt_step: w after one hard step with circles 0 and 1 active.
      path_changing: ``(n + 1, 2)`` iterates with a random active pair.
      path_fixed: ``(n + 1, 2)`` iterates with circles 0 and 1 always active.
      violations_changing: ``(n + 1, k)`` |C_i| of every circle along
        ``path_changing``.
      violations_fixed: ``(n + 1, k)`` the same along ``path_fixed``.
    """

    centres: np.ndarray
    radius: float
    x0: np.ndarray
    w: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray
    kkt_step: np.ndarray
    path_changing: np.ndarray
    path_fixed: np.ndarray
    violations_changing: np.ndarray
    violations_fixed: np.ndarray


def illustration_2d(
    seed: int = 0, *, circles: int = 5, steps: int = 12, radius: float = 10.0, lr: float = 0.05
) -> Illustration2D:
    """Compute Fig. 3: nearly identical circles in d = 2 and hard steps on them.

    The centres are drawn from the paper's ``N(0, 0.01 I)``. Two circles of
    equal radius whose centres are ~0.2 apart intersect, but only at two
    points, far along the perpendicular bisector; at a point near the line
    through the centres their linearisations are nearly parallel and meet
    far away, so the KKT step of Eq. 5 jumps far from both. Three or more
    such circles have no common point (slightly incompatible). Both paths
    take hard steps with ``project_kkt`` (dense Schur solver, exact at d = 2)
    from the same start x0 toward the same objective ``1/2 ||w - x0||^2``;
    the active pair is the constraint batch: a pair drawn at each step by
    ``kktopt.active.random_samples(2)`` (changing) or circles 0 and 1
    (fixed).

    Args:
      seed: seeds the centres and the active pairs.
      circles: number of circles (>= 3 so the changing pair has a choice).
      steps: hard steps per path.
      radius: circle radius.
      lr: SGD learning rate before the projection.

    Returns:
      An :class:`Illustration2D`.
    """
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(seed)
        pts = 0.1 * jax.random.normal(key, (circles, 2), jnp.float64)
        centres = Centres.from_points(pts)
        cfn = functools.partial(sphere_constraints, radius=radius)
        # Start on the far side of the line through centres 0 and 1, where
        # their linearisations are nearly parallel.
        axis = (pts[1] - pts[0]) / jnp.linalg.norm(pts[1] - pts[0])
        normal = jnp.array([-axis[1], axis[0]])
        x0 = 0.5 * (pts[0] + pts[1]) + 10.6 * axis + 0.8 * normal
        pair = take_samples(centres, jnp.array([0, 1]))
        c, jvp = jax.linearize(lambda v: cfn(v, pair), x0)
        normals = jnp.stack([jvp(jnp.array([1.0, 0.0])), jvp(jnp.array([0.0, 1.0]))], axis=1)

        # One compiled step serves both paths: the active pair is passed as the
        # constraint batch (all of it active); the changing pair is drawn by
        # kktopt.active.random_samples(2), as in the d = 1e6 experiment.
        tx = optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=kktopt.SchurKKT()))

        @jax.jit
        def step(w, state, pair):
            u, state = tx.update(jax.grad(_objective)(w, x0), state, w, constraint_batch=pair)
            return w + u, state

        def path(draw):
            ws, state, key = [x0], tx.init(x0), selector.init(x0)
            for _ in range(steps):
                if draw:
                    idx, key = _draw_indices(selector, circles, key)
                    pair_t = take_samples(centres, idx)
                else:
                    pair_t = pair
                w, state = step(ws[-1], state, pair_t)
                ws.append(w)
            return np.asarray(jnp.stack(ws))

        selector = kktopt.active.random_samples(2, seed=seed)
        fixed = path(draw=False)
        changing = path(draw=True)
        violations = jax.vmap(lambda v: jnp.abs(cfn(v, centres)))
        return Illustration2D(
            centres=np.asarray(pts),
            radius=radius,
            x0=np.asarray(x0),
            w=np.asarray(x0),
            normals=np.asarray(normals),
            offsets=np.asarray(c),
            kkt_step=fixed[1],
            path_changing=changing,
            path_fixed=fixed,
            violations_changing=np.asarray(violations(jnp.asarray(changing))),
            violations_fixed=np.asarray(violations(jnp.asarray(fixed))),
        )


def plot_fig3(path: str | os.PathLike, seed: int = 0) -> None:
    """Write Fig. 3 (d = 2 illustration, see :func:`illustration_2d`) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ill = illustration_2d(seed)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), dpi=80)
    theta = np.linspace(0, 2 * np.pi, 4000)

    def circles(ax, which, **kw):
        for i in which:
            c = ill.centres[i]
            ax.plot(c[0] + ill.radius * np.cos(theta), c[1] + ill.radius * np.sin(theta), **kw)

    def lines(ax, span):
        t = np.linspace(-span, span, 2)
        for i, ls in enumerate(("--", ":")):
            a = ill.normals[i]
            foot = ill.w - ill.offsets[i] * a  # a . (v - w) = -C_i
            tang = np.array([-a[1], a[0]])
            ax.plot(foot[0] + t * tang[0], foot[1] + t * tang[1], ls, color="k", lw=1,
                    label=f"linearisation of circle {i + 1} at w")

    # (a) one KKT step with circles 1 and 2 active.
    ax = axes[0]
    circles(ax, [0], color="tab:orange", lw=1, label="circle 1")
    circles(ax, [1], color="tab:cyan", lw=1, label="circle 2")
    span = 1.5 * np.linalg.norm(ill.kkt_step - ill.w) + 2
    lines(ax, span)
    ax.plot(*ill.w, "ko", ms=5, label="current w")
    ax.annotate("", xy=ill.kkt_step, xytext=ill.w, arrowprops=dict(arrowstyle="->", color="tab:red"))
    ax.plot(*ill.kkt_step, "o", color="tab:red", ms=5, label="w after the KKT step (Eq. 5)")
    mid = 0.5 * (ill.w + ill.kkt_step)
    half = 0.6 * np.abs(ill.kkt_step - ill.w).max() + 1.5
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_aspect("equal")
    ax.set_title(f"(a) two nearly identical circles (centres {np.linalg.norm(ill.centres[1] - ill.centres[0]):.2f} apart)",
                 fontsize=9)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.legend(fontsize=7, loc="best")

    # (b) paths.
    ax = axes[1]
    circles(ax, range(len(ill.centres)), color="0.6", lw=0.8)
    ax.plot([], [], color="0.6", lw=0.8, label=f"{len(ill.centres)} circles, r = {ill.radius:g}")
    pc, pf = ill.path_changing, ill.path_fixed
    ax.plot(pc[:, 0], pc[:, 1], "-o", color="tab:red", ms=3, lw=1, label="hard, random active pair")
    ax.plot(pf[:, 0], pf[:, 1], "-s", color="tab:green", ms=3, lw=1, label="hard, fixed pair (circles 1, 2)")
    ax.plot(*ill.x0, "k*", ms=9, label="start (x0)")
    allp = np.concatenate([pc, pf])
    lo, hi = allp.min(0), allp.max(0)
    pad = 0.15 * (hi - lo).max() + 0.5
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_title(f"(b) {len(pc) - 1} hard steps (Eq. 5, SGD lr 0.05)", fontsize=9)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.legend(fontsize=7, loc="best")

    # (c) violations along the paths.
    ax = axes[2]
    steps = np.arange(len(pc))
    floor = 1e-16
    ax.semilogy(steps, np.maximum(ill.violations_fixed[:, :2].max(1), floor), "-s", color="tab:green", ms=3,
                label="fixed pair: max |C| of circles 1, 2")
    ax.semilogy(steps, np.maximum(np.median(ill.violations_fixed, 1), floor), "--", color="tab:green",
                label=f"fixed pair: median |C| of all {len(ill.centres)}")
    ax.semilogy(steps, np.maximum(np.median(ill.violations_changing, 1), floor), "--", color="tab:red",
                label=f"random pair: median |C| of all {len(ill.centres)}")
    ax.set_xlabel("hard step")
    ax.set_ylabel("|C_i| = | ||w - c_i|| - r |")
    ax.set_title("(c) constraint violation along the paths", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, which="both")
    fig.suptitle("Fig. 3 (d = 2): hard steps on nearly identical circles", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------
# Fig. 4
# --------------------------------------------------------------------------


def _curves(result, extra):
    """(name, label, linestyle, metrics) of every method to draw, the main result first."""
    out = [(name, name, "-", result["methods"][name]) for name in METHODS if name in result["methods"]]
    for other in extra:
        for name in METHODS:
            if name in other["methods"]:
                label = f"{name} (separate {other['config']['iters']}-step run)"
                out.append((name, label, "--", other["methods"][name]))
    return out


def plot_fig4(result: dict[str, Any], path: str | os.PathLike, extra: Sequence[dict[str, Any]] = ()) -> None:
    """Write Fig. 4 from the content of metrics.json: (a) median |C|, (b) active change.

    ``extra``: contents of other metrics.json files (e.g. a shorter run of an
    expensive method) whose methods are drawn dashed; their settings must be
    those of ``result`` except ``iters``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    for other in extra:
        differ = sorted(k for k in cfg if k != "iters" and other["config"].get(k) != cfg[k])
        if differ:
            raise ValueError(f"extra results differ from the main run in {', '.join(differ)}.")
    curves = _curves(result, extra)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=80)
    ax = axes[0]
    for name, label, ls, m in curves:
        y = np.maximum(np.asarray(m["median_abs_c"]), _FLOOR)
        ax.plot(np.arange(len(y)), y, ls, color=_COLOURS[name], lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"median |C_i| over all {cfg['constraints']} constraints (floor {_FLOOR:g})")
    ax.set_title("(a) constraint violation", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")

    ax = axes[1]
    typical = []
    for name, label, ls, m in curves:
        if name == "soft":
            continue
        y = np.asarray(m["active_change"])
        if y.size > 1 and np.any(y[1:] != 0):
            typical.append(float(np.median(np.abs(y[1:][y[1:] != 0]))))
        ax.plot(np.arange(1, len(y) + 1), y, ls, color=_COLOURS[name], lw=0.8, label=label)
    ax.axhline(0, color="k", lw=0.6)
    # Linear up to a decade below the largest typical change (that of the
    # random active sets); rounding-level changes of the converged methods
    # then draw as 0.
    lin = max(_FLOOR, 10.0 ** (np.floor(np.log10(max(typical))) - 1)) if typical else 1.0
    ax.set_yscale("symlog", linthresh=lin, linscale=0.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("median |active C| after step − before")
    ax.set_title("(b) change of the active constraints (> 0: worse)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"Fig. 4: d = {cfg['dim']:g}, {cfg['constraints']} spheres (r = {cfg['radius']:g}), "
        f"{cfg['active']} random active, lambda = {cfg['lam']:g}, centres '{cfg['centre_spread']}'",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
