"""Plain MINRES (Paige and Saunders 1975), for comparison with MINRES-QLP.

Reference:
  C. C. Paige and M. A. Saunders, "Solution of sparse indefinite systems of
  linear equations", SIAM J. Numer. Anal. 12(4):617-629, 1975.

MINRES minimises ||b - A x_k|| over the Krylov subspace with the QR
factorisation of the Lanczos tridiagonal. It solves symmetric indefinite and
compatible singular systems; on a singular *incompatible* system it returns a
least-squares solution that is generally not the minimum-length one (its
norm can be very large). That is the gap MINRES-QLP closes.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from kktopt import _tree
from kktopt.krylov import _common
from kktopt.krylov._info import SolverInfo, Stop

PyTree = Any

__all__ = ["minres"]


class _State(NamedTuple):
    x: PyTree
    w: PyTree  # d_k, the last MINRES direction
    wl: PyTree  # d_{k-1}
    lz: _common.Lanczos
    k: jax.Array
    istop: jax.Array
    cs: jax.Array
    sn: jax.Array
    dltan: jax.Array
    eplnn: jax.Array
    phi: jax.Array
    anorm: jax.Array
    gmax: jax.Array
    gmin: jax.Array
    xnorm: jax.Array
    rnorm: jax.Array
    relres: jax.Array
    relaresl: jax.Array
    arnorml: jax.Array


def _minres_loop(matvec: Callable, b, precond, y0, beta1, istop0, s: _common.Settings, dtype):
    eps = s.eps
    zero = jnp.zeros((), dtype)
    zeros = _tree.tree_zeros_like(b)
    init = _State(
        x=zeros, w=zeros, wl=zeros, lz=_common.lanczos_init(b, y0, beta1, precond),
        k=jnp.zeros((), jnp.int32), istop=istop0,
        cs=-jnp.ones((), dtype), sn=zero, dltan=zero, eplnn=zero, phi=beta1,
        anorm=zero, gmax=zero, gmin=jnp.full((), jnp.inf, dtype), xnorm=zero,
        rnorm=beta1, relres=jnp.where(beta1 > 0, 1, 0).astype(dtype), relaresl=zero, arnorml=zero,
    )

    def body(st: _State) -> _State:
        k = st.k + 1
        first = k == 1
        v, alfa, lz, m_indefinite, finite = _common.lanczos_step(matvec, precond, st.lz, first, eps)
        beta, betan = lz.beta, lz.betan
        pnorm = jnp.where(first, _common.hypot(alfa, betan), _common.hypot(beta, alfa, betan))
        anorm = jnp.maximum(st.anorm, pnorm)

        # Previous left reflection on column k, then the new one.
        dbar = st.dltan
        dlta = st.cs * dbar + st.sn * alfa
        gbar = st.sn * dbar - st.cs * alfa
        epln = st.eplnn
        eplnn = st.sn * betan
        dltan = -st.cs * betan
        cs, sn, gama = _common.sym_ortho(gbar, betan)
        # A zero pivot (T_k singular): plain MINRES cannot take this step. It
        # stops with SINGULAR and keeps x_{k-1}, a least-squares iterate that
        # in general still carries a null-space component.
        singular = gama <= eps * anorm
        gama = jnp.where(singular, 1, gama)
        tau = cs * st.phi
        phi = sn * st.phi

        w = _tree.tree_scale(1 / gama, _tree.tree_lincomb((1.0, v), (-epln, st.wl), (-dlta, st.w)))
        x = _tree.tree_axpy(tau, w, st.x)
        xnorm = _tree.tree_norm(x)

        gmax = jnp.maximum(st.gmax, gama)
        gmin = jnp.minimum(st.gmin, gama)
        acond = gmax / gmin
        rnorm = phi
        relres = rnorm / (anorm * xnorm + beta1)
        rootl = _common.hypot(gbar, dltan)
        arnorml = st.rnorm * rootl
        relaresl = _common.safe_div(rootl, anorm)
        istop = _common.stop_verdict(
            jnp.where(singular, Stop.SINGULAR, st.istop), k=k, relres=relres, relaresl=relaresl, rnorm=rnorm, xnorm=xnorm,
            anorm=anorm, acond=acond, betan=betan, beta1=beta1, settings=s,
        )
        new = _State(
            x=x, w=w, wl=st.w, lz=lz, k=k, istop=istop, cs=cs, sn=sn, dltan=dltan, eplnn=eplnn,
            phi=phi, anorm=anorm, gmax=gmax, gmin=gmin, xnorm=xnorm, rnorm=rnorm,
            relres=relres, relaresl=relaresl, arnorml=arnorml,
        )
        ok = finite & jnp.isfinite(xnorm) & ~m_indefinite & ~singular
        # A zero pivot with ||A r_{k-1}|| already negligible (A = 0, b in the
        # null space, or a singular exhausted subspace): x_{k-1} is a
        # least-squares solution, not a failure.
        singular_code = jnp.where(
            1 + relaresl <= 1,
            Stop.LEAST_SQUARES_EPS,
            jnp.where(relaresl <= s.rtol, Stop.LEAST_SQUARES_RTOL, Stop.SINGULAR),
        )
        bad_code = jnp.where(
            ~finite, Stop.NONFINITE, jnp.where(m_indefinite, Stop.INDEFINITE_M, singular_code)
        ).astype(jnp.int32)
        rejected = st._replace(
            k=k, istop=bad_code,
            relaresl=jnp.where(singular, relaresl, st.relaresl),
            arnorml=jnp.where(singular, arnorml, st.arnorml),
            anorm=jnp.where(singular, anorm, st.anorm),
            gmin=jnp.where(singular, 0, st.gmin).astype(dtype),
        )
        return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, rejected)

    st = jax.lax.while_loop(lambda st: st.istop == 0, body, init)
    info = SolverInfo(
        istop=st.istop, iterations=st.k, minres_iterations=st.k,
        qlp_iterations=jnp.zeros((), jnp.int32), rnorm=st.rnorm, arnorm=st.arnorml,
        relres=st.relres, relares=st.relaresl, anorm=st.anorm,
        acond=jnp.where(
            st.k > 0, jnp.where(st.gmin == 0, jnp.inf, st.gmax / st.gmin), 1
        ).astype(dtype),
        xnorm=st.xnorm,
    )
    return st.x, info


def minres(
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
    acondlim=None,
    check_symmetry: bool = True,
    check_residual: bool = True,
    throw: bool = False,
) -> tuple[PyTree, SolverInfo]:
    """Solve ``(A - shift I) x = b`` for symmetric ``A`` with plain MINRES.

    Same call shape, options and :class:`~kktopt.krylov.SolverInfo` as
    :func:`~kktopt.krylov.minres_qlp` (without ``trancond``/``rank_tol``).
    Prefer ``minres_qlp`` when ``A`` may be singular: on an incompatible
    singular system plain MINRES stops with a least-squares solution that
    carries a (possibly huge) null-space component.

    Example:
      >>> import jax.numpy as jnp
      >>> from kktopt.krylov import minres
      >>> x, info = minres(jnp.array([[2.0, 1.0], [1.0, -3.0]]), jnp.array([3.0, -2.0]))
      >>> [round(float(v), 4) for v in x]
      [1.0, 1.0]
    """
    return _common.run_solver(
        _minres_loop, "minres", A, b,
        shift=shift, preconditioner=preconditioner, x0=x0,
        check_symmetry=check_symmetry, check_residual=check_residual, throw=throw,
        rtol=rtol, atol=atol, maxiter=maxiter, maxxnorm=maxxnorm, acondlim=acondlim,
    )
