"""Preconditioned conjugate gradients, for comparison (paper Table 1).

Reference:
  M. R. Hestenes and E. Stiefel, "Methods of conjugate gradients for solving
  linear systems", J. Res. Nat. Bur. Standards 49(6):409-436, 1952.

CG needs a symmetric positive definite operator. The KKT matrices of the
paper are indefinite, so CG applies to them only through the positive
(semi)definite Schur complement A D^-1 A^T; on an indefinite operator it stops
with ``istop = 17`` at the first direction of non-positive curvature.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from kktopt import _tree
from kktopt.krylov import _common, _operator
from kktopt.krylov._info import SolverInfo, Stop

PyTree = Any

__all__ = ["cg"]


class _State(NamedTuple):
    x: PyTree
    r: PyTree
    z: PyTree  # M^-1 r
    p: PyTree
    rz: jax.Array  # r' M^-1 r
    k: jax.Array
    istop: jax.Array
    alpha: jax.Array  # last step length (for the Lanczos norm estimate)
    beta: jax.Array  # last beta
    offdiag: jax.Array  # last off-diagonal of the Lanczos tridiagonal
    anorm: jax.Array
    curv_max: jax.Array
    curv_min: jax.Array
    xnorm: jax.Array
    relres: jax.Array


def _cg_loop(matvec: Callable, b, precond, y0, beta1, istop0, s: _common.Settings, dtype):
    zero = jnp.zeros((), dtype)
    zeros = _tree.tree_zeros_like(b)
    init = _State(
        x=zeros, r=b, z=y0, p=y0, rz=beta1 * beta1, k=jnp.zeros((), jnp.int32), istop=istop0,
        alpha=zero, beta=zero, offdiag=zero, anorm=zero,
        curv_max=zero, curv_min=jnp.full((), jnp.inf, dtype), xnorm=zero,
        relres=jnp.where(beta1 > 0, 1, 0).astype(dtype),
    )

    def body(st: _State) -> _State:
        k = st.k + 1
        q = matvec(st.p)
        pq = _tree.tree_dot(st.p, q)
        pp = _tree.tree_dot(st.p, st.p)
        positive = pq > 0
        alpha = st.rz / jnp.where(positive, pq, 1)
        x = _tree.tree_axpy(alpha, st.p, st.x)
        r = _tree.tree_axpy(-alpha, q, st.r)
        z = r if precond is None else precond(r)
        rz = _tree.tree_dot(r, z)
        beta = rz / st.rz
        p = _tree.tree_lincomb((1.0, z), (beta, st.p))
        # The CG coefficients define the Lanczos tridiagonal: diagonal
        # 1/alpha_k + beta_{k-1}/alpha_{k-1}, off-diagonal sqrt(beta_k)/alpha_k.
        diag = 1 / alpha + jnp.where(k > 1, st.beta / jnp.where(k > 1, st.alpha, 1), 0)
        offdiag = jnp.sqrt(jnp.maximum(beta, 0)) / alpha
        anorm = jnp.maximum(st.anorm, _common.hypot(st.offdiag, diag, offdiag))
        curv = pq / pp
        curv_max = jnp.maximum(st.curv_max, curv)
        curv_min = jnp.minimum(st.curv_min, curv)
        xnorm = _tree.tree_norm(x)
        rnorm = jnp.sqrt(jnp.maximum(rz, 0))
        relres = rnorm / (anorm * xnorm + beta1)
        checks = [
            (1 + relres <= 1, Stop.SOLVED_EPS),
            (relres <= s.rtol, Stop.SOLVED_RTOL),
            (rnorm <= s.atol, Stop.SOLVED_ABSTOL),
            (k >= s.maxiter, Stop.MAXITER),
        ]
        istop = st.istop
        for fired, code in reversed(checks):
            istop = jnp.where(fired, code, istop)
        new = _State(
            x=x, r=r, z=z, p=p, rz=rz, k=k, istop=istop.astype(jnp.int32), alpha=alpha, beta=beta,
            offdiag=offdiag, anorm=anorm, curv_max=curv_max, curv_min=curv_min, xnorm=xnorm,
            relres=relres,
        )
        finite = jnp.isfinite(pq) & jnp.isfinite(rz) & jnp.isfinite(xnorm)
        m_indefinite = (rz < 0) if precond is not None else jnp.array(False)
        # A singular, incompatible system (b not in the range of A): the part
        # of r in the null space never shrinks, the search direction turns
        # into the null space, its curvature drops to rounding level and the
        # step length (and ||x||) explode while the recurred residual, no
        # longer the true one, can look converged. Either sign rejects the
        # step and stops with INCOMPATIBLE.
        zero_curv = (k > 1) & (curv <= 10 * s.eps * st.curv_max)
        blow_up = anorm * xnorm >= s.maxxnorm * beta1
        incompatible = positive & (zero_curv | blow_up)
        ok = positive & finite & ~m_indefinite & ~incompatible
        bad_code = jnp.where(
            ~finite,
            Stop.NONFINITE,
            jnp.where(
                ~positive,
                Stop.INDEFINITE_A,
                jnp.where(m_indefinite, Stop.INDEFINITE_M, Stop.INCOMPATIBLE),
            ),
        ).astype(jnp.int32)
        return jax.tree_util.tree_map(
            lambda n, o: jnp.where(ok, n, o), new, st._replace(k=k, istop=bad_code)
        )

    st = jax.lax.while_loop(lambda st: st.istop == 0, body, init)
    info = SolverInfo(
        istop=st.istop, iterations=st.k, minres_iterations=jnp.zeros((), jnp.int32),
        qlp_iterations=jnp.zeros((), jnp.int32), rnorm=jnp.sqrt(jnp.maximum(st.rz, 0)),
        arnorm=jnp.full((), -1, dtype), relres=st.relres, relares=jnp.full((), -1, dtype),
        anorm=st.anorm,
        acond=jnp.where(st.k > 0, st.curv_max / st.curv_min, 1).astype(dtype), xnorm=st.xnorm,
    )
    return st.x, info


def cg(
    A,
    b: PyTree,
    *,
    shift=0.0,
    preconditioner: Callable | None = None,
    x0: PyTree | None = None,
    rtol=None,
    atol=0.0,
    maxiter=None,
    maxxnorm=None,
    check_symmetry: bool = True,
    check_residual: bool = True,
    throw: bool = False,
) -> tuple[PyTree, SolverInfo]:
    """Solve ``(A - shift I) x = b`` for symmetric positive definite ``A`` by CG.

    Same call shape and :class:`~kktopt.krylov.SolverInfo` as
    :func:`~kktopt.krylov.minres_qlp`. Stops when
    ``||r||_{M^-1} <= rtol (||A|| ||x|| + ||b||_{M^-1})`` with ``||A||`` the
    Lanczos estimate recovered from the CG coefficients. CG does not estimate
    ``||A r||`` while iterating: ``arnorm`` and ``relares`` are -1 unless
    ``check_residual`` computes them at exit. ``acond`` is the ratio of the
    largest to the smallest Rayleigh quotient seen (a lower bound).

    On a singular system whose ``b`` is not in the range of ``A`` CG cannot
    converge: the step that turns into the null space has rounding-level
    curvature and a huge step length. CG stops before taking it, with
    ``istop = 18`` (:attr:`Stop.INCOMPATIBLE`) and the last iterate, when
    ``p'Ap <= 10 eps max_k(p_k'Ap_k / p_k'p_k) p'p`` or when the growth ratio
    ``||A|| ||x|| / ||b||`` reaches ``maxxnorm`` (default ``1/eps``; a
    solution of an SPD system never exceeds cond(A)). Use
    :func:`~kktopt.krylov.minres_qlp` for the minimum-length least-squares
    solution of such a system. ``maxiter = 0`` runs no iteration (istop 9).

    Example:
      >>> import jax.numpy as jnp
      >>> from kktopt.krylov import cg
      >>> x, info = cg(jnp.array([[4.0, 1.0], [1.0, 3.0]]), jnp.array([1.0, 2.0]))
      >>> [round(float(v), 4) for v in x]
      [0.0909, 0.6364]

    References:
      Hestenes and Stiefel (1952), Eqs. 3:1a-3:1f (the CG recurrences).
    """
    return _common.run_solver(
        _cg_loop, "cg", A, b,
        shift=shift, preconditioner=preconditioner, x0=x0,
        check_symmetry=check_symmetry, check_residual=check_residual, throw=throw,
        rtol=rtol, atol=atol, maxiter=maxiter,
        maxxnorm=(1.0 / _operator.dtype_eps(_operator._solve_dtype(b))) if maxxnorm is None else maxxnorm,
    )
