"""The m x m Schur complement system, dense or with a Krylov method.

    (A D^-1 A^T) Lambda = c + A u,   dw = u - D^-1 A^T Lambda.

Needs a metric with a cheap inverse (SGD and Adam; not Gauss-Newton).
``"dense"`` forms the matrix (one product of the per-sample Jacobian, or m
VJPs and m JVPs in one ``jax.vmap`` pass) and applies its pseudo-inverse
(eigendecomposition: exact minimum-norm for any rank); ``"minres_qlp"``,
``"minres"`` and ``"cg"`` solve it matrix-free, one VJP and one JVP per
iteration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kktopt import _tree
from kktopt.kkt._linearize import Linearization
from kktopt.kkt._metric import Metric
from kktopt.kkt._solver import KKTSolution, KKTSolver, register_method
from kktopt.krylov import Stop, cg, dense_solve, minres, minres_qlp
from kktopt.krylov.dense import dense_info, symmetric_pinv

_HIGHEST = jax.lax.Precision.HIGHEST


def _unconstrained_step(lin: Linearization, metric: Metric, step, gradient):
    if metric.inverse is None:
        raise ValueError(
            f"the Schur complement needs a metric with a cheap inverse; the {metric.name} metric has "
            "none. Use solver=kktopt.KKTSolver(system='full') instead."
        )
    return metric.inverse(_tree.tree_scale(-1, gradient)) if step is None else step


def _finish(metric: Metric, lin: Linearization, step, lam, info) -> KKTSolution:
    delta = metric.inverse(lin.vjp(lam))
    return KKTSolution(step=_tree.tree_lincomb((1.0, step), (-1.0, delta)), multipliers=lam, info=info)


def _krylov_schur(krylov):
    def solve(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
        step = _unconstrained_step(lin, metric, step, gradient)
        r = lin.c + lin.jvp(step)

        def schur(lam):
            return lin.jvp(metric.inverse(lin.vjp(lam)))

        lam, info = krylov(
            schur,
            r,
            rtol=cfg.tolerance(r.dtype),
            maxiter=cfg.iteration_limit(r.shape[0]),
            check_symmetry=False,
            check_residual=False,
        )
        return _finish(metric, lin, step, lam, info)

    return solve


register_method("schur", "minres_qlp")(_krylov_schur(minres_qlp))
register_method("schur", "minres")(_krylov_schur(minres))
register_method("schur", "cg")(_krylov_schur(cg))


@register_method("schur", "dense")
def _dense(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
    step = _unconstrained_step(lin, metric, step, gradient)
    if lin.matrix is not None and metric.inverse_diagonal is not None:
        return _dense_from_matrix(cfg, lin, metric, step)
    r = lin.c + lin.jvp(step)

    def schur(lam):
        return lin.jvp(metric.inverse(lin.vjp(lam)))

    lam, info = dense_solve(schur, r, rtol=cfg.tolerance(r.dtype), rcond=cfg.rcond, check_symmetry=False)
    return _finish(metric, lin, step, lam, info)


def _dense_from_matrix(cfg: KKTSolver, lin: Linearization, metric: Metric, step) -> KKTSolution:
    a = lin.matrix
    dtype = a.dtype
    dinv = metric.inverse_diagonal
    if isinstance(dinv, (int, float)):
        dinv = jnp.full((a.shape[1],), dinv, dtype)
    else:
        dinv = ravel_pytree(dinv)[0].astype(dtype)
    u = ravel_pytree(step)[0]
    r = lin.c + jnp.matmul(a, u, precision=_HIGHEST)
    ad = a * dinv
    schur = jnp.matmul(ad, a.T, precision=_HIGHEST)
    schur = 0.5 * (schur + schur.T)
    rcond = a.shape[0] * jnp.finfo(dtype).eps if cfg.rcond is None else cfg.rcond
    factor = symmetric_pinv(schur, rcond)
    lam = factor.apply(r)
    # One step of iterative refinement on the constraint rows, reusing the
    # factorisation: in float32 it recovers the digits that the
    # cancellation between c and A u costs when the step is large.
    lam = lam + factor.apply(r - jnp.matmul(schur, lam, precision=_HIGHEST))
    delta = jnp.matmul(lam, ad, precision=_HIGHEST)
    finite = jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(r))
    istop = jnp.where(finite, 0, Stop.NONFINITE).astype(jnp.int32)
    lam = jnp.where(finite, lam, 0)
    delta = jnp.where(finite, delta, 0)
    info = dense_info(schur, r, lam, factor, cfg.tolerance(dtype), istop)
    dw = _tree.tree_lincomb((1.0, step), (-1.0, lin.unravel(delta)))
    return KKTSolution(step=dw, multipliers=lam, info=info)
