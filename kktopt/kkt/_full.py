"""The full KKT system (*), matrix-free with MINRES-QLP or MINRES (Algorithms 1 and 2).

Each iteration costs one JVP and one VJP of the linearised constraints (plus
one of each for the residual map in the Gauss-Newton case). Preconditioned
with ``blockdiag(P, s^2 I)``, P approximating D and s^2 the Rayleigh quotient
of the Schur complement ``A P^-1 A^T`` along the constraint residual
(:func:`multiplier_scale`), so the two blocks are on the same scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kktopt import _tree
from kktopt.kkt._linearize import Linearization
from kktopt.kkt._metric import Metric
from kktopt.kkt._solver import KKTSolution, KKTSolver, register_method
from kktopt.krylov import minres, minres_qlp


def multiplier_scale(lin: Linearization, metric: Metric, r: jax.Array) -> jax.Array:
    """s^2 = rhat^T A P^-1 A^T rhat for rhat = r / ||r||: one VJP (1 when it vanishes)."""
    rnorm = jnp.linalg.norm(r)
    rhat = r / jnp.where(rnorm > 0, rnorm, 1)
    g = lin.vjp(rhat)
    s2 = _tree.tree_dot(g, metric.approx_inverse(g))
    return jnp.where(s2 > 0, s2, 1).astype(r.dtype)


def full_iteration_limit(cfg: KKTSolver, m: int, metric: Metric, like) -> int:
    """The full-system iteration limit: ``cfg.maxiter``, else from the distinct eigenvalues of (*).

    With a diagonal (or scalar) metric, :func:`~kktopt.kkt.default_maxiter`.
    With ``D = J^T J + eta I`` (n_r residuals), D has at most ``n_r + 1``
    distinct eigenvalues and the KKT matrix at most ``2 m + n_r + 1``: the
    limit is twice that plus 20 (room for rounding), capped at twice the
    dimension ``N_p + m`` of the system.
    """
    if cfg.maxiter is not None:
        return cfg.maxiter
    if metric.residual_map is None:
        return cfg.iteration_limit(m)
    n_r = int(jax.eval_shape(metric.residual_map, like).size)
    n_p = sum(int(x.size) for x in jax.tree_util.tree_leaves(like))
    return int(min(2 * (2 * m + n_r + 1) + 20, 2 * (n_p + m)))


def _krylov_full(krylov):
    def solve(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
        m = lin.c.shape[0]
        dtype = lin.c.dtype
        if step is not None:
            # Closest-step form: unknowns (delta, Lambda), rhs (0, -(c + A u)).
            r = lin.c + lin.jvp(step)
            top = _tree.tree_zeros_like(step)
        else:
            r = lin.c
            top = _tree.tree_scale(-1, gradient)

        def matvec(z):
            dw, lam = z
            return (_tree.tree_lincomb((1.0, metric.matvec(dw)), (1.0, lin.vjp(lam))), lin.jvp(dw))

        precond = None
        if cfg.precondition:
            s2 = multiplier_scale(lin, metric, r)

            def precond(z):
                dw, lam = z
                return (metric.approx_inverse(dw), lam / s2)

        (dw, lam), info = krylov(
            matvec,
            (top, -r),
            preconditioner=precond,
            rtol=cfg.tolerance(dtype),
            maxiter=full_iteration_limit(cfg, m, metric, top),
            maxxnorm=cfg.growth_bound(dtype),
            check_symmetry=False,
            check_residual=False,
        )
        if step is None:
            return KKTSolution(step=dw, multipliers=lam, info=info)
        dw = _tree.tree_lincomb((1.0, step), (1.0, dw))
        return KKTSolution(step=dw, multipliers=lam, info=info, step_rows_norm=jnp.linalg.norm(r - lin.c))

    return solve


register_method("full", "minres_qlp")(_krylov_full(minres_qlp))
register_method("full", "minres")(_krylov_full(minres))
