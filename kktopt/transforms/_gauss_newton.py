"""``gauss_newton_kkt``: constrained Gauss-Newton / Levenberg-Marquardt (paper Eq. 6)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kktopt.active import Selector
from kktopt.memory import MultiplierMemory
from kktopt.kkt import KrylovKKT, gauss_newton_metric
from kktopt.krylov import _tree
from kktopt.transforms import _common
from kktopt.transforms._common import KKTInfo

PyTree = Any


class GaussNewtonKKTState(NamedTuple):
    """State of :func:`gauss_newton_kkt`.

    Attributes:
      count: number of updates so far (int32).
      info: :class:`KKTInfo` of the last step.
      loss: ``1/2 ||r||^2`` at the parameters of the last step.
      active: the selector's state.
      memory: the multiplier memory's state (empty without one).
    """

    count: jax.Array
    info: KKTInfo
    loss: jax.Array
    active: PyTree
    memory: PyTree = ()


def _linearize_residuals(residual_fn, params, residual_batch):
    out = jax.eval_shape(lambda p: residual_fn(p, residual_batch), params)
    if not isinstance(out, jax.ShapeDtypeStruct) or not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            "residual_fn(params, residual_batch) must return one floating-point array of "
            f"residuals r (the loss being 1/2 ||r||^2); it returned {out}."
        )

    def flat(p):
        return residual_fn(p, residual_batch).reshape(-1)

    r, jvp = jax.linearize(flat, params)
    transpose = jax.linear_transpose(jvp, params)

    def vjp(y):
        (out,) = transpose(y)
        return out

    return r, jvp, vjp


def gauss_newton_kkt(
    residual_fn: Callable[[PyTree, Any], jax.Array],
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    *,
    damping: float | jax.Array,
    solver: KrylovKKT | None = None,
    active: Selector | None = None,
    inequality: bool = False,
    jacobian: str = "matrix_free",
    memory: MultiplierMemory | None = None,
    check_constraints: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Constrained Gauss-Newton / Levenberg-Marquardt step (paper Eq. 6).

    For a least-squares loss ``R(w) = 1/2 ||r(w)||^2`` with residual Jacobian
    ``J``, solves

        [ J^T J + eta I   A^T ] [ dw     ]   [ -J^T r ]
        [ A               0   ] [ Lambda ] = [ -c     ]

    matrix-free with MINRES-QLP, every product through JVPs and VJPs of the
    linearised residual and constraint maps (Algorithm 2). With no active
    constraint the step is the Levenberg-Marquardt step
    ``-(J^T J + eta I)^-1 J^T r`` (to the solver's tolerance).

    This is a complete optimiser: it forms ``J^T r`` itself from
    ``residual_fn`` and ignores the incoming updates.

    Args:
      residual_fn: ``(params, residual_batch) -> Array`` of residuals (e.g.
        ``(prediction - target) / sqrt(N)`` for a mean squared error).
      constraint_fn: ``(params, constraint_batch) -> Array``.
      damping: eta > 0.
      solver: a :class:`kktopt.KrylovKKT` (the Schur-complement solver needs
        ``(J^T J + eta I)^-1`` and is not available here).
      active, inequality, jacobian, memory, check_constraints: as in :func:`project_kkt`.

    Returns:
      A ``GradientTransformationExtraArgs``; call ``tx.update(grads, state,
      params, residual_batch=..., constraint_batch=...)``.

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 6 and Algorithm 2.
    """
    solver = _common.check_solver(solver)
    if not isinstance(solver, KrylovKKT):
        raise TypeError(
            "gauss_newton_kkt needs solver=kktopt.KrylovKKT(...): the Schur complement "
            "would need (J^T J + eta I)^-1."
        )
    if isinstance(damping, (int, float)) and damping <= 0:
        raise ValueError(f"damping must be > 0, got {damping}.")
    selector = _common.check_selector(active)
    _common.check_jacobian(jacobian)
    _common.check_memory(memory)

    def init_fn(params):
        dtype = _common.params_dtype(params)
        return GaussNewtonKKTState(
            count=jnp.zeros((), jnp.int32),
            info=KKTInfo.empty(dtype),
            loss=jnp.zeros((), dtype),
            active=selector.init(params),
            memory=_common.init_memory(memory, constraint_fn, params),
        )

    def update_fn(
        updates,
        state,
        params=None,
        *,
        residual_batch=_common.MISSING,
        constraint_batch=_common.MISSING,
        **extra_args,
    ):
        del extra_args
        _common.require(params, constraint_batch, "gauss_newton_kkt", extra=", residual_batch=...")
        if residual_batch is _common.MISSING:
            raise ValueError(
                "gauss_newton_kkt needs the data of its residuals: call tx.update(grads, state, "
                "params, residual_batch=(x, y), constraint_batch=...)."
            )
        r, jvp, vjp = _linearize_residuals(residual_fn, params, residual_batch)
        h = vjp(r)
        # Rayleigh quotient of J^T J along the gradient: the preconditioner's scale.
        hnorm = _tree.tree_norm(h)
        jh = jvp(_tree.tree_scale(1 / jnp.where(hnorm > 0, hnorm, 1), h))
        metric = gauss_newton_metric(jvp, vjp, jnp.asarray(damping, r.dtype), jnp.sum(jh * jh))
        dw, _, info, active_state, memory_state = _common.constrained_step(
            constraint_fn=constraint_fn,
            params=params,
            constraint_batch=constraint_batch,
            selector=selector,
            selector_state=state.active,
            inequality=inequality,
            solver=solver,
            metric=metric,
            gradient=h,
            check_constraints=check_constraints,
            jacobian=jacobian,
            memory=memory,
            memory_state=state.memory,
        )
        new_state = GaussNewtonKKTState(
            count=optax.safe_increment(state.count),
            info=info,
            loss=0.5 * jnp.sum(r * r),
            active=active_state,
            memory=memory_state,
        )
        del updates  # a complete optimiser: J^T r comes from residual_fn
        return dw, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
