"""MINRES-QLP for symmetric, possibly singular or indefinite systems, in one ``lax.while_loop``.

References:
  S.-C. T. Choi, C. C. Paige and M. A. Saunders, "MINRES-QLP: a Krylov
  subspace method for indefinite or singular symmetric systems", SIAM J. Sci.
  Comput. 33(4):1810-1836, 2011.
  S.-C. T. Choi and M. A. Saunders, "Algorithm 937: MINRES-QLP for symmetric
  and Hermitian linear equations and least-squares problems", ACM TOMS 40(2), 2014.
  S.-C. T. Choi, "Iterative methods for singular linear equations and
  least-squares problems", PhD thesis, Stanford University, 2006.

How it works, in the notation of the SIAM paper. Step k of the (preconditioned)
Lanczos process gives the tridiagonal T_{k+1,k}. Left reflections Q_k reduce it
to upper-triangular R_k (as MINRES does); right reflections P_k then bring R_k
to lower-triangular L_k = R_k P_k, so that T_k = Q_k' L_k P_k' is a
rank-revealing QLP decomposition. The iterate is x_k = W_k u_k with
W_k = V_k P_k and L_k u_k = t_k (t_k the rotated right-hand side); only the
last two entries of u_k change from one step to the next, and a diagonal
entry |gamma_k| that is numerically zero is dropped (u_k = 0), which is what
yields the minimum-length least-squares solution when A is singular.

While the condition estimate stays below ``trancond`` the cheaper MINRES
update x_k = x_{k-1} + tau_k d_k runs; the first time it reaches
``trancond`` (or a singular or over-long step is detected) the basis is
transferred and every later step is a QLP step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from kktopt import _tree
from kktopt.krylov import _common
from kktopt.krylov._info import SolverInfo, Stop

PyTree = Any

__all__ = ["minres_qlp"]


class _State(NamedTuple):
    # Vectors (pytrees shaped like b).
    x: PyTree
    xl2: PyTree  # the part of x that no later step changes
    lz: _common.Lanczos
    w: PyTree  # last three search directions (MINRES d's or QLP w's)
    wl: PyTree
    wl2: PyTree
    # Counters and flags.
    k: jax.Array
    qlp_iter: jax.Array
    istop: jax.Array
    # Left reflections.
    cs: jax.Array
    sn: jax.Array
    dltan: jax.Array  # dbar_{k+1}
    eplnn: jax.Array  # epsilon_{k+1}
    phi: jax.Array
    tau: jax.Array
    taul: jax.Array
    # Right reflections and the lower-triangular L.
    cr1: jax.Array
    sr1: jax.Array
    cr2: jax.Array
    sr2: jax.Array
    gama: jax.Array
    gamal: jax.Array
    gamal2: jax.Array
    eta: jax.Array
    etal: jax.Array
    vepln: jax.Array
    veplnl: jax.Array
    # Solution coefficients u of L u = t.
    u: jax.Array
    ul: jax.Array
    ul2: jax.Array
    ul3: jax.Array
    # Values kept for the MINRES -> QLP transfer.
    gamal_qlp: jax.Array
    vepln_qlp: jax.Array
    gama_qlp: jax.Array
    ul_qlp: jax.Array
    u_qlp: jax.Array
    # Norm and condition estimates.
    xnorm: jax.Array
    xl2norm: jax.Array
    anorm: jax.Array
    acond: jax.Array
    gmin: jax.Array
    gminl: jax.Array
    dropped: jax.Array  # whether u_k was dropped at the last step
    dropmin: jax.Array  # smallest |gamma| dropped so far (inf: none)
    rnorm: jax.Array
    relres: jax.Array
    relresl: jax.Array
    relaresl: jax.Array
    arnorml: jax.Array


def _initial_state(b, y, beta1, istop, dtype, precond) -> _State:
    zero = jnp.zeros((), dtype)
    one = jnp.ones((), dtype)
    zeros = _tree.tree_zeros_like(b)
    izero = jnp.zeros((), jnp.int32)
    return _State(
        x=zeros, xl2=zeros, lz=_common.lanczos_init(b, y, beta1, precond), w=zeros, wl=zeros, wl2=zeros,
        k=izero, qlp_iter=izero, istop=istop,
        cs=-one, sn=zero, dltan=zero, eplnn=zero, phi=beta1, tau=zero, taul=zero,
        cr1=-one, sr1=zero, cr2=-one, sr2=zero,
        gama=zero, gamal=zero, gamal2=zero, eta=zero, etal=zero, vepln=zero, veplnl=zero,
        u=zero, ul=zero, ul2=zero, ul3=zero,
        gamal_qlp=zero, vepln_qlp=zero, gama_qlp=zero, ul_qlp=zero, u_qlp=zero,
        xnorm=zero, xl2norm=zero, anorm=zero, acond=one, gmin=zero, gminl=zero, dropped=jnp.array(False),
        dropmin=jnp.full((), jnp.inf, dtype), rnorm=beta1, relres=jnp.where(beta1 > 0, one, zero), relresl=zero, relaresl=zero,
        arnorml=zero,
    )


_safe_div = _common.safe_div
_hypot = _common.hypot


def _minres_qlp_loop(
    matvec: Callable,
    b: PyTree,
    precond: Callable | None,
    y0: PyTree,
    beta1: jax.Array,
    istop0: jax.Array,
    settings: _common.Settings,
    dtype,
):
    eps = settings.eps
    s = settings

    def cond(st: _State):
        return st.istop == 0

    def body(st: _State) -> _State:
        k = st.k + 1
        first = k == 1

        # --- Lanczos step: v_k, alpha_k, beta_{k+1} --------------------------
        v, alfa, lz, m_indefinite, lanczos_finite = _common.lanczos_step(
            matvec, precond, st.lz, first, eps
        )
        beta, betan = lz.beta, lz.betan
        pnorm = jnp.where(first, _hypot(alfa, betan), _hypot(beta, alfa, betan))

        # --- Previous left reflection Q_{k-1} on column k, then Q_k ----------
        dbar = st.dltan
        dlta = st.cs * dbar + st.sn * alfa
        gbar = st.sn * dbar - st.cs * alfa
        epln = st.eplnn
        eplnn = st.sn * betan
        dltan = -st.cs * betan
        dlta_qlp = dlta
        gamal2, gamal = st.gamal, st.gama
        cs, sn, gama = _common.sym_ortho(gbar, betan)
        # gbar = beta_{k+1} = 0 (A = 0, b in the null space of A, or an
        # exhausted subspace on which T_k is singular): the new column is zero,
        # so it removes nothing from the residual. Take Q_k = [0 1; 1 0] rather
        # than sym_ortho's identity, which would move all of phi into tau and
        # report a zero residual for a step that never changes x.
        zero_col = gama == 0
        cs = jnp.where(zero_col, 0, cs)
        sn = jnp.where(zero_col, 1, sn)
        gama_tmp = gama
        taul2, taul = st.taul, st.tau
        tau = cs * st.phi
        phi = sn * st.phi

        # --- Previous right reflection P_{k-2,k} (k > 2) ---------------------
        # (For k <= 2 every quantity it touches is still zero.)
        after2 = k > 2
        veplnl2, etal2, etal = st.veplnl, st.etal, st.eta
        veplnl = jnp.where(after2, st.cr2 * st.vepln + st.sr2 * dlta, st.veplnl)
        dlta = jnp.where(after2, st.sr2 * st.vepln - st.cr2 * dlta, dlta)
        eta = jnp.where(after2, st.sr2 * gama, st.eta)
        gama = jnp.where(after2, -st.cr2 * gama, gama)

        # --- Current right reflection P_{k-1,k} (k > 1) ----------------------
        after1 = k > 1
        cr1_n, sr1_n, gamal_n = _common.sym_ortho(gamal, dlta)
        cr1 = jnp.where(after1, cr1_n, st.cr1)
        sr1 = jnp.where(after1, sr1_n, st.sr1)
        gamal = jnp.where(after1, gamal_n, gamal)
        vepln = jnp.where(after1, sr1 * gama, st.vepln)
        gama = jnp.where(after1, -cr1 * gama, gama)

        # --- Solution coefficients: the last entries of u in L u = t --------
        ul4, ul3 = st.ul3, st.ul2
        ul2 = jnp.where(after2, _safe_div(taul2 - etal2 * ul4 - veplnl2 * ul3, gamal2), st.ul2)
        ul = jnp.where(after1, _safe_div(taul - etal * ul3 - veplnl * ul2, gamal), st.ul)
        xnorm_tmp = _hypot(st.xl2norm, ul2, ul)
        # A numerically zero diagonal entry of L is dropped (u_k = 0): this is
        # what gives the minimum-length solution of a singular system. Zero
        # means |gamma_k| <= eps ||A||, or, once the problem looks like an
        # incompatible least-squares problem (r_{k-1} is closer to a
        # least-squares residual than to zero), |gamma_k| <= rank_tol ||A||.
        anorm_guess = jnp.maximum(st.anorm, pnorm)
        # ||A r_{k-1}|| / (||A|| ||r_{k-1}||) against r_{k-1}'s relative residual.
        rootl = _hypot(gbar, dltan)
        like_ls = _safe_div(rootl, anorm_guess) < st.relres
        singular = jnp.abs(gama) <= eps * anorm_guess
        rank_drop = singular | (like_ls & (jnp.abs(gama) <= s.rank_tol * anorm_guess))
        u = _safe_div(tau - eta * ul2 - vepln * ul, gama)
        too_long = ~rank_drop & like_ls & (_hypot(xnorm_tmp, u) * anorm_guess > s.maxxnorm * beta1)
        istop = jnp.where(too_long, Stop.XNORM_LIMIT, st.istop).astype(jnp.int32)
        u = jnp.where(rank_drop | too_long, 0, u)
        xl2norm = _hypot(st.xl2norm, ul2)
        xnorm = _hypot(xl2norm, ul, u)

        # --- Update x: MINRES step or QLP step --------------------------------
        minres_step = (st.acond < s.trancond) & (istop == 0) & (st.qlp_iter == 0) & ~rank_drop

        def minres_update(_):
            wl2, wl = st.wl, st.w
            d = _tree.tree_lincomb((1.0, v), (-epln, wl2), (-dlta_qlp, wl))
            w = jax.tree_util.tree_map(
                lambda d_, old: jnp.where(gama_tmp > eps * anorm_guess, d_ / gama_tmp, old), d, st.w
            )
            fits = xnorm * anorm_guess < s.maxxnorm * beta1
            x = _tree.tree_where(fits, _tree.tree_axpy(tau, w, st.x), st.x)
            return x, st.xl2, w, wl, wl2, jnp.where(fits, istop, Stop.XNORM_LIMIT).astype(jnp.int32)

        def qlp_update(_):
            w, wl, xl2 = st.w, st.wl, st.xl2

            # On the first QLP step, rebuild the QLP directions w_{k-2}, w_{k-1}
            # from the MINRES directions and split off xl2, the part of x that
            # later steps leave alone. (w_{k-3} is not needed: the update below
            # overwrites it.)
            def transfer(_):
                wl_t = jax.lax.cond(
                    k > 2,
                    lambda _: _tree.tree_lincomb((st.gamal_qlp, wl), (st.vepln_qlp, w)),
                    lambda _: wl,
                    None,
                )
                w_t = _tree.tree_scale(st.gama_qlp, w)
                xl2_t = _tree.tree_lincomb((1.0, st.x), (-st.ul_qlp, wl_t), (-st.u_qlp, w_t))
                return (
                    _tree.tree_where(after1, w_t, w),
                    _tree.tree_where(after1, wl_t, wl),
                    _tree.tree_where(after1, xl2_t, _tree.tree_zeros_like(xl2)),
                )

            w, wl, xl2 = jax.lax.cond(
                st.qlp_iter == 0, transfer, lambda _: (w, wl, xl2), None
            )
            # Apply P_{k-2,k} and P_{k-1,k} to [w_{k-2}, w_{k-1}, v_k]; for
            # k <= 2 the missing reflection P_{k-2,k} acts as diag(-1, 1) on
            # (w_{k-2}, v_k), which reproduces the k = 1, 2 special cases.
            cr2 = jnp.where(after2, st.cr2, -1)
            sr2 = jnp.where(after2, st.sr2, 0)
            tmp = _tree.tree_lincomb((sr2, wl), (-cr2, v))
            wl2_new = _tree.tree_lincomb((cr2, wl), (sr2, v))
            wl_new = _tree.tree_lincomb((cr1, w), (sr1, tmp))
            w_new = _tree.tree_lincomb((sr1, w), (-cr1, tmp))
            xl2 = _tree.tree_axpy(ul2, wl2_new, xl2)
            x = _tree.tree_lincomb((1.0, xl2), (ul, wl_new), (u, w_new))
            return x, xl2, w_new, wl_new, wl2_new, istop

        x, xl2, w, wl, wl2, istop = jax.lax.cond(minres_step, minres_update, qlp_update, None)
        qlp_iter = st.qlp_iter + jnp.where(minres_step, 0, 1).astype(jnp.int32)

        # --- Next right reflection P_{k-1,k+1}; values for a later transfer ---
        gamal_tmp = gamal
        cr2, sr2, gamal = _common.sym_ortho(gamal_tmp, eplnn)

        # --- Norm, condition and residual estimates ---------------------------
        abs_gama = jnp.abs(gama)
        anorm = jnp.maximum(jnp.maximum(st.anorm, pnorm), jnp.maximum(gamal, abs_gama))
        gminl2 = st.gminl
        # The condition estimate covers the directions kept in x, not the dropped ones.
        kept_gama = jnp.where(rank_drop, jnp.inf, abs_gama)
        kept_gamal = jnp.where(st.dropped, jnp.inf, gamal)
        gmin = jnp.where(first, kept_gama, jnp.minimum(jnp.minimum(gminl2, kept_gamal), kept_gama))
        gminl = jnp.where(first, kept_gama, st.gmin)
        acond = jnp.where(jnp.isinf(gmin), 1, jnp.where(gmin == 0, jnp.inf, _safe_div(anorm, gmin)))
        dropmin = jnp.where(rank_drop, jnp.minimum(st.dropmin, abs_gama), st.dropmin)
        rnorml = st.rnorm
        relresl = st.relres
        rnorm = jnp.where(istop != Stop.SINGULAR, phi, st.rnorm)
        relres = rnorm / (anorm * xnorm + beta1)
        arnorml = rnorml * rootl
        relaresl = _safe_div(rootl, anorm)

        # --- Stopping tests (first match wins, as in the reference software) -
        # A dropped direction in a least-squares-like problem means the Krylov
        # subspace has captured the null space of A that b reaches: x_k is the
        # minimum-length least-squares solution to working precision. Further
        # steps only work on rounding noise (Lanczos "ghosts") and, measured
        # here, degrade x; so the solve stops (LEAST_SQUARES_EPS unless the
        # rtol test already holds).
        ls_stagnated = rank_drop & like_ls
        istop = _common.stop_verdict(
            jnp.where(singular & ~like_ls, Stop.SINGULAR, istop), k=k, relres=relres, relaresl=relaresl, rnorm=rnorm, xnorm=xnorm,
            anorm=anorm, acond=acond, betan=betan, beta1=beta1, settings=s,
            ls_stagnated=ls_stagnated,
        )

        new = _State(
            x=x, xl2=xl2, lz=lz, w=w, wl=wl, wl2=wl2,
            k=k, qlp_iter=qlp_iter, istop=istop,
            cs=cs, sn=sn, dltan=dltan, eplnn=eplnn, phi=phi, tau=tau, taul=taul,
            cr1=cr1, sr1=sr1, cr2=cr2, sr2=sr2,
            gama=gama, gamal=gamal, gamal2=gamal2, eta=eta, etal=etal, vepln=vepln, veplnl=veplnl,
            u=u, ul=ul, ul2=ul2, ul3=ul3,
            gamal_qlp=gamal_tmp, vepln_qlp=vepln, gama_qlp=gama, ul_qlp=ul, u_qlp=u,
            xnorm=xnorm, xl2norm=xl2norm, anorm=anorm, acond=acond, gmin=gmin, gminl=gminl, dropped=rank_drop,
            dropmin=dropmin, rnorm=rnorm, relres=relres, relresl=relresl, relaresl=relaresl, arnorml=arnorml,
        )
        # Breakdown: NaN/Inf from the operator, or an indefinite preconditioner.
        # Stop and keep the last good iterate.
        finite = lanczos_finite & jnp.isfinite(xnorm)
        bad = ~finite | m_indefinite
        bad_code = jnp.where(finite, Stop.INDEFINITE_M, Stop.NONFINITE).astype(jnp.int32)
        return jax.tree_util.tree_map(
            lambda n, o: jnp.where(bad, o, n), new, st._replace(k=k, istop=bad_code)
        )

    state = jax.lax.while_loop(cond, body, _initial_state(b, y0, beta1, istop0, dtype, precond))
    info = SolverInfo(
        istop=state.istop,
        iterations=state.k,
        minres_iterations=state.k - state.qlp_iter,
        qlp_iterations=state.qlp_iter,
        rnorm=state.rnorm,
        arnorm=state.arnorml,
        relres=state.relres,
        relares=jnp.where(state.k > 0, state.relaresl, 0).astype(dtype),
        anorm=state.anorm,
        # The reported condition includes the dropped pivots (the stopping
        # tests and the MINRES -> QLP switch use the retained part only).
        acond=jnp.where(
            jnp.isinf(state.dropmin),
            state.acond,
            jnp.where(
                state.dropmin > 0,
                jnp.maximum(state.acond, _safe_div(state.anorm, state.dropmin)),
                jnp.inf,
            ),
        ).astype(dtype),
        xnorm=state.xnorm,
    )
    return state.x, info


def minres_qlp(
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
    trancond=None,
    acondlim=None,
    rank_tol=None,
    check_symmetry: bool = True,
    check_residual: bool = True,
    throw: bool = False,
) -> tuple[PyTree, SolverInfo]:
    """Solve ``(A - shift I) x = b``, or return the minimum-length least-squares solution.

    MINRES-QLP (Choi, Paige and Saunders 2011) for symmetric ``A`` that may be
    indefinite and singular. On a singular incompatible system it returns the
    pseudo-inverse solution ``pinv(A - shift I) @ b`` (to ``rtol``), where
    plain MINRES returns a least-squares solution of large norm.

    Args:
      A: a square symmetric 2-D array, or a callable ``v -> A v`` on pytrees
        shaped like ``b``.
      b: the right-hand side, an array or a pytree of arrays (one float dtype).
      shift: solve with ``A - shift * I``.
      preconditioner: a callable ``v -> M^-1 v`` for a symmetric positive
        definite ``M``; the solver then works with ``C^-1 (A - shift I) C^-T``
        where ``M = C C^T`` and returns the solution of the original system.
      x0: a starting guess; the solver then computes the minimum-length
        correction ``x - x0``.
      rtol: stop when ``||r|| <= rtol (||A|| ||x|| + ||b||)`` (a solution) or
        ``||A r|| <= rtol ||A|| ||r||`` (a least-squares solution). Default
        1e-10 in float64, 1e-5 in float32.
      atol: also stop when ``||r|| <= atol``.
      maxiter: iteration limit (default ``4 n``); 0 runs no iteration (istop 9,
        x = x0).
      maxxnorm: upper bound on the growth ratio ``||A|| ||x|| / ||b||`` (default
        1e7 in float64, 1e4 in float32, the reference software's bounds on
        ``||x||`` for ``||A|| = ||b|| = 1``). The ratio does not change when A or
        b are rescaled, and a solution never exceeds cond(A), so the bound
        binds only on an incompatible (near-)singular system whose iterates
        grow; ``jnp.inf`` turns it off. Hitting it stops with istop 13.
      trancond: MINRES steps run while the condition estimate is below this,
        QLP steps afterwards: 1 gives QLP steps throughout, ``acondlim`` plain
        MINRES steps throughout. Default 1e7 (float64), 1e4 (float32).
      acondlim: stop when the condition estimate reaches this (default 1e15 in
        float64, 1e6 in float32).
      rank_tol: once the problem looks like an incompatible least-squares
        problem (||A r|| / (||A|| ||r||) below the relative residual), a new
        diagonal entry of L with |gamma_k| <= rank_tol ||A|| counts as zero
        and its direction is dropped; this is what returns the
        minimum-length solution in floating point, where the Lanczos process
        leaves the last diagonal of a singular T_k well above eps ||A||.
        Default max(rtol, eps^(2/3)). (Entries below eps ||A|| are always dropped.)
      check_symmetry: check that ``A`` (and ``M^-1``) are symmetric before
        iterating (a dense test for matrices; two extra operator applications
        for callables). A failure stops with ``istop`` 10 (or 11) and ``x = 0``.
      check_residual: at exit, replace the recurred ``rnorm``, ``arnorm``,
        ``relres``, ``relares`` and ``xnorm`` by true values (two extra
        operator applications; the norms are then of the unpreconditioned
        residual).
      throw: raise (via ``equinox.branched_error_if``, also under jit) when the
        solve does not end with a success code 1-8; the error names the code
        that occurred and its message.

    Returns:
      ``(x, info)``: the solution shaped like ``b`` and a
      :class:`~kktopt.krylov.SolverInfo`. ``info.acond`` includes the pivots
      dropped as numerically zero (1/eps-sized or inf on a singular system).
      ``b`` is scaled by a power of two near ``max |b_i|`` before iterating,
      so any finite ``b`` (1e160 or 1e-160 in float64) is solved without
      over- or underflow. ``A = 0`` or ``b`` in the null space of ``A`` ends
      with istop 7 and ``x = 0`` (the minimum-length least-squares solution,
      relres 1, relares 0); ``n = 0`` returns an empty ``x`` with istop 3. The solve is differentiable with
      respect to ``b`` and to arrays the operator closes over through implicit
      rules (``lax.custom_linear_solve``); the gradient with respect to the
      operator is exact where ``A`` is nonsingular.

    Example:
      >>> import jax.numpy as jnp
      >>> from kktopt.krylov import minres_qlp
      >>> A = jnp.diag(jnp.array([-1.0, 0.0, 2.0]))
      >>> x, info = minres_qlp(A, jnp.array([1.0, 1.0, 1.0]))
      >>> [round(float(v), 4) + 0.0 for v in x]
      [-1.0, 0.0, 0.5]
    """
    return _common.run_solver(
        _minres_qlp_loop, "minres_qlp", A, b,
        shift=shift, preconditioner=preconditioner, x0=x0,
        check_symmetry=check_symmetry, check_residual=check_residual, throw=throw,
        rtol=rtol, atol=atol, maxiter=maxiter, maxxnorm=maxxnorm, trancond=trancond,
        acondlim=acondlim, rank_tol=rank_tol,
    )
