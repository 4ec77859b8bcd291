"""The full KKT system (*) by projected conjugate gradients (null-space method).

    min_dw  1/2 dw^T D dw + h^T dw   s.t.  A dw = -c

is solved in two parts (Gould, Hribar and Nocedal 2001):

1. the *normal step* ``dw_0 = -pinv(A) c``, the minimum-norm solution of the
   rows, which meets them to the accuracy of ``cond(A) eps``;
2. conjugate gradients on D restricted to the null space of A, started at
   ``dw_0``: every residual is projected with ``P = I - pinv(A) A`` (the
   projected gradient), and every search direction is projected once more,
   so that no iterate leaves the affine set ``A dw = -c`` by more than
   rounding.

For ``D = J^T J + eta I`` (Gauss-Newton, Eq. 6) with ``n_r`` residuals the
projected operator ``P D P`` has at most ``n_r + 1`` distinct eigenvalues on
the null space (``eta`` plus at most ``n_r`` shifted ones), so CG needs at
most ``n_r + 1`` iterations in exact arithmetic, independent of ``m``; the
MINRES iteration on the indefinite (*) needs up to ``2 m + n_r + 1``.

The projection uses the Gram matrix of the (scaled) Jacobian's rows
preconditioned by its own eigendecomposition (CholeskyQR2's idea; accurate to
about ``cond(A) eps``) when A is small enough to form (the per-sample
Jacobian, or m VJPs in batched passes; the limits of
:func:`~kktopt.kkt.auto_method`), otherwise LSMR on ``A`` for every
projection (matrix-free, much slower).

The preconditioner is diagonal: the variables are scaled by
``G^-1/2`` where ``G`` is the metric's diagonal (SGD, Adam) or its scalar
curvature estimate (Gauss-Newton: ``(eta + s) I``, :func:`~kktopt.kkt.gauss_newton_metric`),
so projections are with respect to the ``G`` inner product, as in Alg. II
of the reference with ``G`` as its preconditioner.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kktopt.kkt._linearize import Linearization
from kktopt.kkt._metric import Metric
from kktopt.kkt._schur import _gram, default_dense_rcond
from kktopt.kkt._solver import (
    AUTO_DENSE_MAX_FORMED_ENTRIES, AUTO_DENSE_MAX_FORMED_ROWS, AUTO_QR_MAX_ENTRIES, AUTO_QR_MAX_ROWS, KKTSolution,
    KKTSolver, register_method,
)
from kktopt.krylov import SolverInfo, Stop, lsmr
from kktopt.krylov.dense import symmetric_pinv
from kktopt._tree import pow2_scale

_HIGHEST = jax.lax.Precision.HIGHEST


def _mv(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


def projected_cg_iteration_limit(cfg: KKTSolver, metric: Metric, like, num_params: int, m: int) -> int:
    """The CG iteration limit: ``cfg.maxiter``, else from the distinct eigenvalues in the null space.

    With ``D = J^T J + eta I`` (``n_r`` residuals) the projected operator has
    at most ``n_r + 1`` distinct eigenvalues: the limit is
    ``min(2 (n_r + 1) + 20, N_p + 20)`` (the slack is room for rounding). With
    a diagonal metric, which the diagonal preconditioner makes the identity,
    ``min(default_maxiter(m), N_p + 20)``.
    """
    if cfg.maxiter is not None:
        return cfg.maxiter
    if metric.residual_map is not None:
        n_r = int(jax.eval_shape(metric.residual_map, like).size)
        return int(min(2 * (n_r + 1) + 20, num_params + 20))
    return int(min(cfg.iteration_limit(m), num_params + 20))


class _Rows(NamedTuple):
    """What the method needs of ``B = A G^-1/2`` (flat vectors of length N_p)."""

    min_norm: Callable[[jax.Array], jax.Array]  # rhs (m,) -> pinv(B) rhs (N_p,)
    project: Callable[[jax.Array], jax.Array]  # v -> v - pinv(B) B v
    multipliers: Callable[[jax.Array], jax.Array]  # v (N_p,) -> pinv(B^T) v (m,)
    matvec: Callable[[jax.Array], jax.Array]  # v -> B v
    rmatvec: Callable[[jax.Array], jax.Array]  # lam -> B^T lam
    finite: jax.Array
    anorm: jax.Array
    acond: jax.Array


def _gram_rows(cfg: KKTSolver, b: jax.Array) -> _Rows:
    """``B`` through the Gram matrix of its preconditioned rows (CholeskyQR2's idea), no QR.

    ``S = B B^T = V W V^T`` (W floored at ``4 eps ||S||``), ``P = W^-1/2 V^T``
    and ``C = P B``: C is orthonormal in every direction S resolves, so its
    Gram matrix ``C C^T`` is well conditioned and its pseudo-inverse accurate;
    ``pinv(B) = C^T pinv(C C^T) P`` and the projection onto the null space
    of B is ``v - C^T pinv(C C^T) C v``, accurate to about ``cond(B) eps``
    (the same construction as the dense Schur solve's correction round).
    Two Gram matrices summed over blocks of parameters: on XLA:CPU far
    cheaper than a Householder QR of ``B^T``. ``cfg.rcond`` (default
    ``4 eps``) is the relative eigenvalue floor of S and cut-off of ``C C^T``.
    """
    dtype = b.dtype
    finite = jnp.all(jnp.isfinite(b))
    b = jnp.where(finite, b, 0)
    s = _gram(b)
    s = 0.5 * (s + s.T)
    w, v = jnp.linalg.eigh(s)
    wmax = jnp.max(jnp.abs(w), initial=0)
    rcond = default_dense_rcond(dtype) if cfg.rcond is None else cfg.rcond
    floor = jnp.maximum(rcond * wmax, jnp.finfo(dtype).tiny)
    pre = jax.lax.rsqrt(jnp.maximum(w, floor))[:, None] * v.T  # P = W^-1/2 V^T
    cmat = _mv(pre, b)
    g2 = _gram(cmat)
    factor = symmetric_pinv(0.5 * (g2 + g2.T), rcond)

    def min_norm(rhs):
        return _mv(factor.apply(_mv(pre, rhs)), cmat)

    def project(v):
        return v - _mv(factor.apply(_mv(cmat, v)), cmat)

    def multipliers(v):
        return _mv(pre.T, factor.apply(_mv(cmat, v)))

    wmin = jnp.maximum(jnp.min(w), 0)
    acond = jnp.where(wmin > 0, jnp.sqrt(wmax / jnp.where(wmin > 0, wmin, 1)), jnp.inf).astype(dtype)
    return _Rows(min_norm, project, multipliers, lambda v: _mv(b, v), lambda lam: _mv(lam, b), finite,
                 jnp.sqrt(wmax), acond)


def _lsmr_rows(cfg: KKTSolver, bmat, bt, m: int, n: int, dtype) -> _Rows:
    rtol = jnp.asarray(jnp.finfo(dtype).eps, dtype) * 10
    like = jnp.zeros((n,), dtype)
    rlike = jnp.zeros((m,), dtype)
    maxiter = cfg.iteration_limit(m)

    def min_norm(rhs):
        return lsmr(bmat, bt, rhs, x_like=like, rtol=rtol, maxiter=maxiter)[0]

    def project(v):
        return v - min_norm(bmat(v))

    def multipliers(v):
        return lsmr(bt, bmat, v, x_like=rlike, rtol=rtol, maxiter=maxiter)[0]

    one = jnp.ones((), dtype)
    return _Rows(min_norm, project, multipliers, bmat, bt, jnp.asarray(True), one, one)


def _diagonal_scale(metric: Metric, like_flat: jax.Array, unravel) -> jax.Array:
    """``G^-1/2`` of the preconditioner, flat (a scalar for a scalar estimate)."""
    dinv = metric.inverse_diagonal if metric.inverse_diagonal is not None else metric.approx_inverse_diagonal
    dtype = like_flat.dtype
    if dinv is None:
        return jnp.ones((), dtype)
    if isinstance(dinv, (int, float)) or (hasattr(dinv, "ndim") and dinv.ndim == 0):
        s = jnp.asarray(dinv, dtype)
        return jnp.sqrt(jnp.where(jnp.isfinite(s) & (s > 0), s, 1))
    d = ravel_pytree(dinv)[0].astype(dtype)
    return jnp.sqrt(jnp.where(jnp.isfinite(d) & (d > 0), d, 1))


@register_method("full", "projected_cg")
def _projected_cg(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
    """Normal step from the minimum-norm correction of the rows, then CG in the null space of A.

    References:
      N. I. M. Gould, M. E. Hribar and J. Nocedal, "On the solution of
      equality constrained quadratic programming problems arising in
      optimization", SIAM J. Sci. Comput. 23(4):1376-1395, 2001, Alg. II
      (projected preconditioned CG) and Sec. 3.2 (residual update and
      iterative refinement of the projections).
    """
    like = step if step is not None else gradient
    flat_like, unravel = ravel_pytree(like)
    dtype = lin.c.dtype
    flat_like = flat_like.astype(dtype)
    n = flat_like.shape[0]
    m = lin.c.shape[0]
    sq = _diagonal_scale(metric, flat_like, unravel)

    def flat(tree):
        return ravel_pytree(tree)[0].astype(dtype)

    def tree(v):
        return unravel(v.astype(flat_like.dtype))

    # Rows of the scaled problem: B y = target, dw = sq * y (plus u in closest-step form).
    if step is not None:
        target = -(lin.c + lin.jvp(step))
        hs = jnp.zeros((n,), dtype)
    else:
        target = -lin.c
        hs = sq * flat(gradient)

    formed = lin.matrix is not None and m <= AUTO_DENSE_MAX_FORMED_ROWS and m * n <= AUTO_DENSE_MAX_FORMED_ENTRIES
    small = formed or (m <= AUTO_QR_MAX_ROWS and m * n <= AUTO_QR_MAX_ENTRIES)
    if small:
        a = lin.jacobian_matrix(like, cfg.vjp_batch)[0].astype(dtype)
        rows = _gram_rows(cfg, a * sq)
    else:
        rows = _lsmr_rows(cfg, lambda v: lin.jvp(tree(sq * v)), lambda lam: sq * flat(lin.vjp(lam)), m, n, dtype)

    def dmat(v):  # the scaled metric G^-1/2 D G^-1/2
        return sq * flat(metric.matvec(tree(sq * v)))

    # 1. Normal step: minimum-norm solution of B y = target, refined on the rows.
    finite_in = rows.finite & jnp.all(jnp.isfinite(target)) & jnp.all(jnp.isfinite(hs))
    target_ok = jnp.where(finite_in, target, 0)
    scale = pow2_scale(jnp.max(jnp.abs(target_ok), initial=0))
    ts = target_ok / scale
    y = rows.min_norm(ts)
    if small:
        for _ in range(max(cfg.refine, 1)):
            y = y + rows.min_norm(ts - rows.matvec(y))
    y = y * scale

    # 2. CG on the scaled metric in the null space of B.
    r = dmat(y) + jnp.where(finite_in, hs, 0)
    g = rows.project(r)
    gg = jnp.dot(g, g)
    tol = cfg.tolerance(dtype) * jnp.sqrt(gg)
    maxiter = projected_cg_iteration_limit(cfg, metric, like, n, m)

    def cond(carry):
        k, _, _, _, gg, stop = carry
        return (k < maxiter) & (stop == 0) & (jnp.sqrt(gg) > tol)

    def body(carry):
        k, y, g, p, gg, _ = carry
        q = dmat(p)
        pq = jnp.dot(p, q)
        ok = jnp.isfinite(pq) & (pq > 0)
        alpha = jnp.where(ok, gg / jnp.where(ok, pq, 1), 0)
        y_new = y + alpha * p
        # Residual update: r = g + alpha q, replaced by its projection (the next g).
        g_new = rows.project(g + alpha * q)
        gg_new = jnp.dot(g_new, g_new)
        beta = gg_new / jnp.where(gg > 0, gg, 1)
        p_new = rows.project(-g_new + beta * p)  # the one re-projection: p stays in null(B)
        finite = jnp.isfinite(gg_new)
        stop = jnp.where(~jnp.isfinite(pq) | ~finite, Stop.NONFINITE, jnp.where(ok, 0, Stop.INDEFINITE_A))
        good = ok & finite
        keep = lambda new, old: jnp.where(good, new, old)  # noqa: E731
        return (k + 1, keep(y_new, y), keep(g_new, g), keep(p_new, p), keep(gg_new, gg),
                stop.astype(jnp.int32))

    init = (jnp.zeros((), jnp.int32), y, g, -g, gg, jnp.zeros((), jnp.int32))
    k, y, _, _, gg, stop = jax.lax.while_loop(cond, body, init)
    converged = jnp.sqrt(gg) <= tol

    # The rows once more (rounding of the iterations), then the true projected gradient.
    if small:
        y = y + rows.min_norm(target_ok - rows.matvec(y))
    r = dmat(y) + jnp.where(finite_in, hs, 0)
    gnorm = jnp.linalg.norm(rows.project(r))
    lam = -rows.multipliers(r)
    # Contradictory rows: y is then the least-squares solution of B y = target,
    # B^T (target - B y) = 0 while the residual is not (reported as incompatible).
    res = target_ok - rows.matvec(y)
    res_norm = jnp.linalg.norm(res)
    rtol = cfg.tolerance(dtype)
    unmet = res_norm > cfg.constraint_tolerance(dtype) * jnp.linalg.norm(target_ok)
    least_squares = unmet & (jnp.linalg.norm(rows.rmatvec(res)) <= rtol * rows.anorm * res_norm)
    # relres: the projected gradient relative to its value at the normal step.
    g0 = jnp.linalg.norm(g)
    relres = jnp.where(g0 > 0, gnorm / jnp.where(g0 > 0, g0, 1), 0)
    istop = jnp.where(
        ~finite_in | ~jnp.isfinite(gnorm), Stop.NONFINITE,
        jnp.where(least_squares, Stop.LEAST_SQUARES_RTOL,
                  jnp.where(converged | (gnorm <= tol), Stop.SOLVED_RTOL,
                            jnp.where(stop != 0, stop, Stop.MAXITER))),
    ).astype(jnp.int32)
    izero = jnp.zeros((), jnp.int32)
    k = k.astype(jnp.int32)
    info = SolverInfo(
        istop=istop, iterations=k, minres_iterations=izero, qlp_iterations=izero, rnorm=gnorm,
        arnorm=gnorm, relres=relres.astype(dtype), relares=jnp.zeros((), dtype), anorm=rows.anorm.astype(dtype),
        acond=rows.acond, xnorm=jnp.linalg.norm(y).astype(dtype),
    )
    dw = sq * y
    if step is None:
        return KKTSolution(step=tree(dw), multipliers=lam.astype(dtype), info=info)
    return KKTSolution(step=tree(flat(step) + dw), multipliers=lam.astype(dtype), info=info,
                       step_rows_norm=jnp.linalg.norm(target + lin.c))
