"""Augmented Lagrangian with per-sample multipliers for a constraint pool (primal-dual baseline).

The formulation, sign conventions and update orders are those of Cooper
(Gallego-Posada et al., ``cooper-org/cooper``): an ``IndexedMultiplier``
(one multiplier per constraint value of the pool), the
``AugmentedLagrangian`` formulation, gradient ascent or nuPI on the
multipliers, and simultaneous or dual-first alternating updates.
``benchmarks/vs_cooper.py`` runs both side by side.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kktopt import _tree
from kktopt.active import AllSamples, Selector
from kktopt.transforms._pipeline import MISSING

PyTree = Any

_ORDERS = ("simultaneous", "dual_first")


class AugmentedLagrangianState(NamedTuple):
    """State of :func:`augmented_lagrangian`.

    Attributes:
      count: number of updates so far (int32).
      multipliers: ``(pool_size, *constraint_shape)``, one Lagrange multiplier
        per constraint value of the pool, indexed by pool position.
      error: nuPI's smoothed error ``xi`` per multiplier (same shape).
      observed: bool, same shape: the multiplier has had a dual update.
      active: the selector's state (with the pool indices it chose).
      penalty_value: the augmented-Lagrangian term added to the loss at the
        last step, ``sum lam c + penalty / 2 sum c^2`` over its samples
        (inequality: ``sum (relu(lam + penalty c)^2 - lam^2) / (2 penalty)``).
      violation_norm: ``||c||`` over the last step's samples (inequality:
        ``||relu(c)||``).
      violation_max: ``max |c|`` over them (inequality: ``max relu(c)``).
    """

    count: jax.Array
    multipliers: jax.Array
    error: jax.Array
    observed: jax.Array
    active: PyTree
    penalty_value: jax.Array
    violation_norm: jax.Array
    violation_max: jax.Array


def _check_number(owner, name, value, low, high=math.inf, low_open=False, high_open=False):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return  # arrays and tracers (inject_hyperparams, vmap) are not checked
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{owner}: {name} must lie in {lo}{low}, {high}{hi}, got {value}.")


def augmented_lagrangian(
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    pool_size: int,
    constraint_shape: tuple[int, ...] = (),
    *,
    penalty: float | jax.Array = 1.0,
    dual_lr: float | jax.Array = 1.0,
    kp: float | jax.Array = 0.0,
    ki: float | jax.Array = 1.0,
    ema_nu: float | jax.Array = 0.0,
    order: str = "simultaneous",
    inequality: bool = False,
    active: Selector | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Augmented Lagrangian with one multiplier per pool sample: adds its gradient, updates the duals.

    The constraints ``c_i = C(w, x_i)`` of a pool of ``pool_size`` samples
    each have their own multipliers ``lam_i`` (shape ``constraint_shape``),
    kept in the optax state and updated only at the samples of the step.
    Chain it *before* any optax optimiser: it adds the gradient of the
    augmented-Lagrangian term to the incoming loss gradient,

        L(w, lam) = f(w) + sum_i lam_i . c_i + penalty / 2 sum_i ||c_i||^2,
        out = grad f + A^T (lam + penalty c),

    (the sums run over the step's samples; for inequalities ``C <= 0`` the
    term is ``sum_i (relu(lam_i + penalty c_i)^2 - lam_i^2) / (2 penalty)``,
    gradient ``A^T relu(lam + penalty c)``), and takes a dual step on the
    step's multipliers with the error ``e = c`` (the gradient of the dual
    Lagrangian ``lam . c``):

        lam <- lam + dual_lr (ki e + kp (xi_new - xi)),  xi_new = ema_nu xi + (1 - ema_nu) e,

    the nuPI controller; ``kp = 0, ki = 1`` (the default) is plain gradient
    ascent ``lam <- lam + dual_lr c``. A multiplier's first update has no
    proportional term (and ``xi`` starts at 0), as Cooper's ``nuPI`` does
    for indexed multipliers. Inequality multipliers are clipped at 0 after
    each dual step. ``dual_lr = penalty`` gives the classical method of
    multipliers.

    ``order="simultaneous"``: the primal gradient uses ``lam_t`` and the dual
    step ``c(w_t)`` (Cooper's ``SimultaneousOptimizer``);
    ``order="dual_first"``: the multipliers are updated first and the primal
    gradient uses ``lam_{t+1}`` (Cooper's ``AlternatingDualPrimalOptimizer``).

    Two ways to give the step's samples: ``constraint_batch`` the step's
    samples and ``constraint_indices`` their (distinct) pool positions, as a
    data loader yields them; or ``constraint_batch`` the whole pool and a
    selector ``active`` (e.g. ``kktopt.active.random_samples(k)``; default
    all samples) that picks them. Together with a hard projection, e.g.
    ``optax.chain(augmented_lagrangian(cfn, n, active=...), kktopt.hard_adam(...))``,
    the multipliers of the whole pool pull the step while the projection
    enforces the active samples exactly.

    Args:
      constraint_fn: ``(params, constraint_batch) -> Array`` of shape
        ``(num_samples, *constraint_shape)``, 0 when satisfied.
      pool_size: the number of samples of the pool (static; name it in
        ``static_args`` of ``optax.inject_hyperparams``).
      constraint_shape: the shape of one sample's constraint values.
      penalty: the penalty coefficient ``rho >= 0`` (multiplies ``c^2 / 2``).
      dual_lr: the dual step size ``>= 0``.
      kp, ki, ema_nu: nuPI's proportional and integral gains and the EMA
        coefficient of its error, ``0 <= ema_nu < 1``.
      order: ``"simultaneous"`` or ``"dual_first"``.
      inequality: treat the constraints as ``C <= 0``.
      active: a selector picking the step's samples from the pool passed as
        ``constraint_batch`` (ignored when ``constraint_indices`` is given).

    Returns:
      A ``GradientTransformationExtraArgs``; call ``tx.update(grads, state,
      params, constraint_batch=..., constraint_indices=...)`` with the
      gradient of the loss ``f`` alone.

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> cfn = lambda w, x: x * w[0] - 1.0                 # per-sample x_i w0 = 1
      >>> tx = optax.chain(kktopt.augmented_lagrangian(cfn, pool_size=4, penalty=2.0, dual_lr=0.5),
      ...                  optax.sgd(0.1))
      >>> w, pool = jnp.zeros(1), jnp.array([1.0, 2.0, 3.0, 4.0])
      >>> state = tx.init(w)
      >>> u, state = tx.update(jnp.zeros(1), state, w, constraint_batch=pool[:2],
      ...                      constraint_indices=jnp.array([0, 1]))
      >>> [float(v) for v in state[0].multipliers]           # lam_i - 0.5 at the two samples
      [-0.5, -0.5, 0.0, 0.0]
      >>> round(float(u[0]), 4)                              # -0.1 * (1 + 2) * 2 * (-1)
      0.6

    References:
      Hestenes (1969), Powell (1969): the method of multipliers; Nocedal and
      Wright (2006), Eq. 17.36 and 17.64-17.65. Sohrabi, Ramirez, Zhang,
      Lacoste-Julien and Gallego-Posada (2024), "On PI controllers for
      updating Lagrange multipliers in constrained optimization", ICML
      (nuPI). Gallego-Posada, Ramirez, Hashemizadeh and Lacoste-Julien (2025),
      Cooper: a library for constrained optimization in deep learning.
    """
    owner = "augmented_lagrangian"
    if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size <= 0:
        raise TypeError(
            f"{owner}: pool_size must be a positive Python int (the number of samples of the pool; "
            f"pass static_args=('constraint_fn', 'pool_size') to optax.inject_hyperparams), got {pool_size!r}."
        )
    constraint_shape = tuple(int(d) for d in constraint_shape)
    if order not in _ORDERS:
        raise ValueError(f"{owner}: order must be one of {_ORDERS}, got {order!r}.")
    if active is None:
        active = AllSamples()
    elif not isinstance(active, Selector):
        raise TypeError(f"{owner}: active must be a kktopt.active selector, got {type(active).__name__}.")
    _check_number(owner, "penalty", penalty, 0.0)
    _check_number(owner, "dual_lr", dual_lr, 0.0)
    _check_number(owner, "ema_nu", ema_nu, 0.0, 1.0, high_open=True)
    shape = (pool_size, *constraint_shape)

    def init_fn(params):
        dtype = _tree.params_dtype(params)
        zero = jnp.zeros((), dtype)
        return AugmentedLagrangianState(
            count=jnp.zeros((), jnp.int32),
            multipliers=jnp.zeros(shape, dtype),
            error=jnp.zeros(shape, dtype),
            observed=jnp.zeros(shape, bool),
            active=active.init(params),
            penalty_value=zero,
            violation_norm=zero,
            violation_max=zero,
        )

    def update_fn(updates, state, params=None, *, constraint_batch=MISSING, constraint_indices=None, **extra):
        del extra
        if params is None or constraint_batch is MISSING:
            raise ValueError(
                f"{owner} needs the parameters and the constraint inputs: call tx.update(grads, state, params, "
                "constraint_batch=x, constraint_indices=pool_positions_of_x) (or pass the whole pool as "
                "constraint_batch and pick samples with active=...)."
            )
        active_state = state.active
        if constraint_indices is None:
            n = _tree.batch_size(constraint_batch)
            if n != pool_size:
                raise ValueError(
                    f"{owner}: without constraint_indices, constraint_batch must be the whole pool of "
                    f"{pool_size} samples, got {n}; pass constraint_indices= with the pool positions of the samples."
                )
            batch, active_state = active.select(constraint_fn, params, constraint_batch, active_state)
            indices = active.indices(active_state)
            if indices is None:
                indices = jnp.arange(pool_size, dtype=jnp.int32)
            sample_mask = active.sample_mask(active_state)
        else:
            batch, sample_mask = constraint_batch, None
            indices = jnp.asarray(constraint_indices)
            if not jnp.issubdtype(indices.dtype, jnp.integer) or indices.ndim != 1:
                raise TypeError(
                    f"{owner}: constraint_indices must be a 1-D integer array of pool positions, "
                    f"got {indices.dtype} of shape {indices.shape}."
                )
        values, pullback = jax.vjp(lambda p: constraint_fn(p, batch), params)
        expected = (indices.shape[0], *constraint_shape)
        if values.shape != expected:
            raise ValueError(
                f"{owner}: constraint_fn returned shape {values.shape} for {indices.shape[0]} samples; expected "
                f"{expected} = (num_samples, *constraint_shape). Set constraint_shape= to one sample's shape."
            )
        dtype = state.multipliers.dtype
        c = values.astype(dtype)
        mask = jnp.ones(c.shape, dtype) if sample_mask is None else _expand(sample_mask, c).astype(dtype)
        rho = jnp.asarray(penalty, dtype)
        lam = state.multipliers[indices]

        def dual_step(lam):
            xi = state.error[indices]
            seen = state.observed[indices]
            one_minus_nu = 1 - jnp.asarray(ema_nu, dtype)
            xi_new = jnp.asarray(ema_nu, dtype) * xi + one_minus_nu * c
            proportional = jnp.where(seen, one_minus_nu * (c - xi), 0)
            new = lam + jnp.asarray(dual_lr, dtype) * (jnp.asarray(ki, dtype) * c + jnp.asarray(kp, dtype) * proportional)
            if inequality:
                new = jnp.maximum(new, 0)
            keep = mask > 0
            return jnp.where(keep, new, lam), jnp.where(keep, xi_new, xi), seen | keep

        new_lam, new_xi, new_seen = dual_step(lam)
        primal_lam = new_lam if order == "dual_first" else lam
        if inequality:
            weight = jnp.maximum(primal_lam + rho * c, 0)
            safe = jnp.where(rho > 0, rho, 1)
            term = jnp.where(rho > 0, (weight**2 - primal_lam**2) / (2 * safe), primal_lam * c)
            violation = jnp.maximum(c, 0)
        else:
            weight = primal_lam + rho * c
            term = primal_lam * c + 0.5 * rho * c * c
            violation = c
        (pull,) = pullback((mask * weight).astype(values.dtype))
        out = jax.tree_util.tree_map(lambda g, p: g + p.astype(g.dtype), updates, pull)
        violation = mask * violation
        new_state = AugmentedLagrangianState(
            count=optax.safe_increment(state.count),
            multipliers=state.multipliers.at[indices].set(new_lam),
            error=state.error.at[indices].set(new_xi),
            observed=state.observed.at[indices].set(new_seen),
            active=active_state,
            penalty_value=jnp.sum(mask * term),
            violation_norm=jnp.linalg.norm(violation.reshape(-1)),
            violation_max=jnp.max(jnp.abs(violation), initial=0),
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _expand(sample_mask, like):
    return jnp.broadcast_to(sample_mask.reshape(sample_mask.shape + (1,) * (like.ndim - 1)), like.shape)
