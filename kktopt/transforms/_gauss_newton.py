"""``gauss_newton_kkt``: constrained Gauss-Newton / Levenberg-Marquardt (paper Eq. 6)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kktopt._tree import params_dtype
from kktopt.active import Selector
from kktopt.kkt import KKTSolver, gauss_newton_curvature_scale, gauss_newton_metric
from kktopt.memory import MultiplierMemory
from kktopt.transforms import _pipeline
from kktopt.transforms._info import KKTInfo

PyTree = Any


class GaussNewtonKKTState(NamedTuple):
    """State of :func:`gauss_newton_kkt`.

    Attributes:
      count: number of updates so far (int32).
      info: :class:`KKTInfo` of the last step.
      active: the selector's state (with the pool indices it chose).
      memory: the multiplier memory's state (empty without one).
      loss: ``1/2 ||r||^2`` at the parameters of the last step.
      kkt_cache: the solver's :class:`~kktopt.kkt.KKTCache` with
        ``KKTSolver(reuse=...)`` (else ``()``).
    """

    count: jax.Array
    info: KKTInfo
    active: PyTree
    memory: PyTree
    loss: jax.Array
    kkt_cache: PyTree = ()


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
    solver: KKTSolver | None = None,
    active: Selector | None = None,
    inequality: bool = False,
    inequality_rounds: int = 1,
    memory: MultiplierMemory | None = None,
    check_constraints: bool = True,
    jacobian: str | None = None,
    alpha: float | jax.Array = 1.0,
) -> optax.GradientTransformationExtraArgs:
    """Constrained Gauss-Newton / Levenberg-Marquardt step (paper Eq. 6).

    For a least-squares loss ``R(w) = 1/2 ||r(w)||^2`` with residual Jacobian
    ``J``, solves

        [ J^T J + eta I   A^T ] [ dw     ]   [ -J^T r ]
        [ A               0   ] [ Lambda ] = [ -c     ]

    every product with ``J^T J`` through a JVP and a VJP of the linearised
    residual map (the metric: :func:`kktopt.kkt.gauss_newton_metric`). The
    default solver (``method="auto"``) is projected conjugate gradients
    (``"projected_cg"``): the minimum-norm solution of the rows from the
    Gram matrix of ``A``'s preconditioned rows (CholeskyQR2's idea), then CG
    on ``J^T J + eta I`` in the null space of ``A``, which meets the rows to
    about ``cond(A) eps`` and needs at most ``n_r + 1`` iterations for
    ``n_r`` residuals in exact arithmetic; when ``A`` is too large to form
    (``m > 256`` rows or more than 32M entries; with
    ``KKTSolver(system="full", jacobian="per_sample")``, which forms it per
    sample, up to 4096 rows and 256M entries) it is MINRES-QLP on the full
    system, matrix-free (Algorithm 2), and beyond 256 rows projected CG
    again where that misses the rows and ``A`` fits those larger limits. With no
    active constraint the step is the Levenberg-Marquardt step
    ``-(J^T J + eta I)^-1 J^T r`` (to the solver's tolerance).

    This is a complete optimiser: it forms ``J^T r`` itself from
    ``residual_fn`` and ignores the incoming updates.

    Args:
      residual_fn: ``(params, residual_batch) -> Array`` of residuals (e.g.
        ``(prediction - target) / sqrt(N)`` for a mean squared error).
      constraint_fn: ``(params, constraint_batch) -> Array``.
      damping: eta > 0.
      solver: a :class:`kktopt.KKTSolver` with ``system="full"`` (default
        ``KKTSolver(system="full")``, ``method="auto"``: ``"projected_cg"``
        when ``A`` is small enough to factor, else ``"minres_qlp"``); the
        Schur complement would need ``(J^T J + eta I)^-1``.
      active, inequality, inequality_rounds, memory, jacobian, alpha: as in
        :func:`kktopt.project_kkt` (``alpha``: ``A dw = -alpha c``).
      check_constraints: as in :func:`kktopt.project_kkt`: the residual
        ``||A dw + c|| / ||c||`` is always measured for ``KKTInfo.status``;
        False only hides it (``linearized_residual = -1``). A NaN or Inf in
        the residuals gives a NaN step with ``KKTStatus.NONFINITE``.

    Returns:
      A ``GradientTransformationExtraArgs``; call ``tx.update(grads, state,
      params, residual_batch=..., constraint_batch=...)``.

    Example:
      >>> import jax.numpy as jnp, kktopt
      >>> residual_fn = lambda w, t: w - t                   # R = 1/2 ||w - t||^2
      >>> cfn = lambda w, _: jnp.sum(w, keepdims=True)       # sum(w) = 0
      >>> tx = kktopt.gauss_newton_kkt(residual_fn, cfn, damping=1e-6)
      >>> w = jnp.zeros(2)
      >>> u, _ = tx.update(None, tx.init(w), w, residual_batch=jnp.array([3.0, 1.0]), constraint_batch=None)
      >>> [round(float(v), 3) for v in w + u]
      [1.0, -1.0]

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 6 and Algorithm 2.
      N. I. M. Gould, M. E. Hribar and J. Nocedal, "On the solution of
      equality constrained quadratic programming problems arising in
      optimization", SIAM J. Sci. Comput. 23(4):1376-1395, 2001 (projected CG).
    """
    options = _pipeline.hard_options(
        "gauss_newton_kkt", solver=solver, active=active, inequality=inequality,
        inequality_rounds=inequality_rounds, memory=memory,
        check_constraints=check_constraints, jacobian=jacobian, default=KKTSolver(system="full"),
        systems=("full",), why="the Schur complement would need (J^T J + eta I)^-1", alpha=alpha,
    )
    if isinstance(damping, (int, float)) and damping <= 0:
        raise ValueError(f"damping must be > 0, got {damping}.")

    def problem(updates, state, params, extra_args):
        del updates  # a complete optimiser: J^T r comes from residual_fn
        residual_batch = extra_args.get("residual_batch", _pipeline.MISSING)
        if residual_batch is _pipeline.MISSING:
            raise ValueError(
                "gauss_newton_kkt needs the data of its residuals: call tx.update(grads, state, "
                "params, residual_batch=(x, y), constraint_batch=...)."
            )
        r, jvp, vjp = _linearize_residuals(residual_fn, params, residual_batch)
        h = vjp(r)
        metric = gauss_newton_metric(jvp, vjp, jnp.asarray(damping, r.dtype), gauss_newton_curvature_scale(jvp, h))
        return _pipeline.Problem(metric=metric, gradient=h, extras={"loss": 0.5 * jnp.sum(r * r)})

    return _pipeline.hard_transform(
        "gauss_newton_kkt", constraint_fn, options, state_type=GaussNewtonKKTState, problem=problem,
        init_extras=lambda params: {"loss": jnp.zeros((), params_dtype(params))},
        usage=", residual_batch=...",
    )
