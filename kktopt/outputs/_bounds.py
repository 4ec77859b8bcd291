"""Bounds ``lower <= y <= upper`` by elimination, with optional equalities ``c(y) = 0``.

The per-sample solver behind ``project_outputs(..., lower=, upper=)`` when no
general inequalities are given. Every iterate lies in the box (a clip), so
bounds hold exactly; an active bound fixes its coordinate and only the free
coordinates enter the (small, m x m) equality systems, by masking so that
shapes stay fixed under ``vmap``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from kktopt.outputs._info import ProjectionInfo, ProjectionStatus

_RUNNING = -1
_ARMIJO = 1e-4


def clip_box(y_hat, lower, upper, batch, n):
    """Box alone: the projection is the clip, in any diagonal metric (exact, no iterations)."""
    y = jnp.where(y_hat < lower, lower, jnp.where(y_hat > upper, upper, y_hat))
    moved = jnp.any((y != y_hat).reshape(batch, n), axis=1)
    finite = jnp.all(jnp.isfinite(y_hat).reshape(batch, n), axis=1)
    at_bound = jnp.sum(((y == lower) | (y == upper)).reshape(batch, n), axis=1)
    dtype = y_hat.dtype
    zero = jnp.zeros(batch, dtype)
    info = ProjectionInfo(
        status=jnp.where(finite, ProjectionStatus.CONVERGED, ProjectionStatus.NONFINITE).astype(jnp.int32),
        iterations=moved.astype(jnp.int32), violation=zero, stationarity=zero,
        distance=jnp.zeros(batch, dtype), num_active=at_bound.astype(jnp.int32),
        multipliers=jnp.zeros((batch, 0), dtype))
    return y, info


_UNROLL = 12  # Cholesky of the m x m systems written out (vectorises over the batch) up to this m


def spd_step(g, r, cut, big):
    """``M^-1 r`` for a symmetric positive semi-definite ``g`` with its near-null part lifted.

    ``M = g`` where ``g`` is well conditioned; pivots (m <= 12: of a Cholesky
    factorisation written out, which vectorises over the batch; else
    eigenvalues) below ``cut`` are replaced by ``big``. ``M`` is positive
    definite, so ``r^T M^-1 r > 0`` for ``r != 0``.
    """
    m = g.shape[0]
    if m > _UNROLL:
        e, q = jnp.linalg.eigh(g)
        qr = q.T @ r
        return q @ (qr / jnp.where(e > cut, e, big))
    rows = [[None] * m for _ in range(m)]
    for j in range(m):
        d = g[j, j] - sum(rows[j][k] ** 2 for k in range(j))
        ljj = jnp.sqrt(jnp.where(d > cut, d, big))
        rows[j][j] = ljj
        for i in range(j + 1, m):
            rows[i][j] = jnp.where(d > cut, (g[i, j] - sum(rows[i][k] * rows[j][k] for k in range(j))) / ljj, 0.0)
    z = [None] * m
    for i in range(m):
        z[i] = (r[i] - sum(rows[i][k] * z[k] for k in range(i))) / rows[i][i]
    x = [None] * m
    for i in reversed(range(m)):
        x[i] = (z[i] - sum(rows[k][i] * x[k] for k in range(i + 1, m))) / rows[i][i]
    return jnp.stack(x)


def make_bound_solver(static, sample_shape, dtype, n, m, tol, atol, max_iter, max_backtracks,
                      inner_max):
    """Per-sample solve of min 1/2 ||y - y_hat||_W^2 s.t. c(y) = 0, lower <= y <= upper.

    Outer loop: Gauss-Newton on ``c`` (one iteration plus a check for linear
    ``c``). Each outer iteration solves the linearised problem
    ``min 1/2 ||y - y_hat||_W^2 s.t. J y = J y_k - c(y_k), lower <= y <= upper``
    exactly, through its concave dual in the m multipliers ``lambda``:
    ``y(lambda) = clip(y_hat - W^-1 J^T lambda)``, gradient ``J y(lambda) - b``,
    generalised Hessian ``-J_F W_F^-1 J_F^T`` on the free coordinates ``F``
    (semismooth Newton; its Newton system is the equality system restricted
    to the free coordinates, the primal-dual active-set step). Steps are
    damped by an Armijo search on the dual, and directions the free
    coordinates cannot reach get a gradient step 1/L, so the dual ascent
    converges globally; the dual is piecewise quadratic, and once the free set
    is right one Newton step is exact.
    """
    eps = float(jnp.finfo(dtype).eps)
    tiny = float(jnp.finfo(dtype).tiny)
    rcut = 10.0 * max(m, n, 1) * eps
    cg_rtol = 16 * eps
    cg_maxiter = n + 2

    def c_fn(params, y):
        eq = eqx.combine(params, static)
        return jnp.ravel(eq(y.reshape(sample_shape))).astype(dtype)

    def jacobian(params, y):
        f = lambda yy: c_fn(params, yy)
        return (jax.jacrev(f) if m < n else jax.jacfwd(f))(y)

    def row_scale(jac, y):
        return atol + tol * jnp.sum(jnp.abs(jac), axis=1) * jnp.max(jnp.abs(y), initial=0.0)

    def dual_solve(jac, b, yh, w, lo, hi, lam0, scale):
        """Semismooth Newton on the dual of the linearised box problem; returns (lam, y, ok, steps)."""
        winv = 1.0 / w
        lip = jnp.sum(jac * jac * winv[None, :])  # >= ||J W^-1 J^T||: Lipschitz constant of the dual gradient
        lip = jnp.maximum(lip, tiny)

        def primal(lam):
            t = yh - winv * (jac.T @ lam)
            y = jnp.where(t < lo, lo, jnp.where(t > hi, hi, t))
            free = (t > lo) & (t < hi)
            return y, free

        def theta(lam, y):
            return 0.5 * jnp.sum(w * (y - yh) ** 2) + lam @ (jac @ y - b)

        def cond(c):
            j, _, _, _, done = c
            return (j < inner_max) & ~done

        def body(c):
            j, lam, y, free, _ = c
            r = jac @ y - b
            jf = jac * (free * winv)[None, :]
            g = jf @ jac.T
            # Newton step where the free coordinates reach the rows; along directions they do
            # not reach (a pivot below the rank cut) a gradient step 1/L: an ascent direction always.
            step = spd_step(g, r, rcut * lip, lip)
            th0 = theta(lam, y)
            slope = r @ step
            slack = 16 * eps * (jnp.abs(th0) + 1.0)

            def ls_cond(s):
                k, _, _, _, ok = s
                return (~ok) & (k <= max_backtracks)

            def ls_body(s):
                k, _, _, _, _ = s
                alpha = jnp.asarray(0.5, dtype) ** k
                lt = lam + alpha * step
                yt, ft = primal(lt)
                ok = theta(lt, yt) >= th0 + _ARMIJO * alpha * slope - slack
                return k + 1, lt, yt, ft, ok

            _, lam_n, y_n, free_n, ok = jax.lax.while_loop(
                ls_cond, ls_body, (jnp.int32(0), lam, y, free, jnp.array(False)))
            lam_n = jnp.where(ok, lam_n, lam)
            y_n = jnp.where(ok, y_n, y)
            free_n = jnp.where(ok, free_n, free)
            done = jnp.all(jnp.abs(jac @ y_n - b) <= scale) | ~ok
            return j + 1, lam_n, y_n, free_n, done

        y0, f0 = primal(lam0)
        # At least one Newton step, even where the warm start already meets the rows to `scale`:
        # stopping there leaves lambda unchanged, and the outer iteration then creeps by the
        # rows' slack (linear convergence at a rate near 1, seen in float64 on a sphere in a box).
        steps, lam, y, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), lam0, y0, f0, jnp.array(False)))
        ok = jnp.all(jnp.abs(jac @ y - b) <= scale)
        return lam, y, ok, steps

    def forward(params, yh, w, lo, hi):
        sw = jnp.sqrt(w)

        def body(state):
            k, y, lam, rho, status, _ = state
            h = c_fn(params, y)
            jac = jacobian(params, y)
            finite = jnp.all(jnp.isfinite(h)) & jnp.all(jnp.isfinite(jac))
            jac = jnp.where(finite, jac, 0.0)
            h = jnp.where(finite, h, 0.0)
            scale = row_scale(jac, y)
            b = jac @ y - h
            lam_n, y_lin, inner_ok, _ = dual_solve(jac, b, yh, w, lo, hi, lam, scale)
            v = sw * (y - yh)
            vnorm = jnp.linalg.norm(v)
            force = tol * (vnorm + jnp.max(jnp.abs(sw * y), initial=0.0))
            d = y_lin - y
            stat_res = jnp.linalg.norm(sw * d)  # natural residual of the KKT conditions at y
            eq_ok = jnp.all(jnp.abs(h) <= scale)
            converged = finite & eq_ok & inner_ok & (stat_res <= force)
            stepping = finite & ~converged & (k < max_iter)
            rho = jnp.maximum(rho, 1.1 * jnp.linalg.norm(lam_n))
            hnorm = jnp.linalg.norm(h)
            phi0 = 0.5 * vnorm ** 2 + rho * hnorm
            slope = v @ (sw * d) - rho * hnorm
            slack = 16 * eps * (phi0 + jnp.max(jnp.abs(sw * y), initial=0.0) * (vnorm + stat_res))

            def ls_cond(s):
                j, _, ok = s
                return (~ok) & (j <= max_backtracks)

            def ls_body(s):
                j, _, _ = s
                alpha = jnp.asarray(0.5, dtype) ** j
                yt = y + alpha * d  # a convex combination of box points: stays in the box
                phi = 0.5 * jnp.sum((sw * (yt - yh)) ** 2) + rho * jnp.linalg.norm(c_fn(params, yt))
                ok = jnp.isfinite(phi) & (phi <= phi0 + _ARMIJO * alpha * jnp.minimum(slope, 0.0) + slack)
                return j + 1, yt, ok

            _, yt, ok = jax.lax.while_loop(ls_cond, ls_body, (jnp.int32(0), y, jnp.array(False)))
            y_new = jnp.where(stepping & ok, yt, y)
            # the exact linearised solution, when the full step is taken (bounds land exactly)
            y_new = jnp.where(stepping & ok & jnp.all(yt == y + d), y_lin, y_new)
            viol = jnp.max(jnp.abs(h), initial=0.0)
            status = jnp.select(
                [~finite, converged, stepping & ~ok, k >= max_iter],
                [ProjectionStatus.NONFINITE, ProjectionStatus.CONVERGED, ProjectionStatus.STALLED,
                 ProjectionStatus.MAX_ITER], _RUNNING).astype(jnp.int32)
            k = jnp.where(status == _RUNNING, k + 1, k)
            return k, y_new, jnp.where(finite, lam_n, lam), rho, status, (viol, stat_res, vnorm)

        nonfinite_input = ~jnp.all(jnp.isfinite(yh))
        y0 = jnp.where(yh < lo, lo, jnp.where(yh > hi, hi, yh))
        zero = jnp.zeros((), dtype)
        nan = jnp.full((), jnp.nan, dtype)
        init = (jnp.int32(0), jnp.where(nonfinite_input, yh, y0), jnp.zeros(m, dtype), zero,
                jnp.where(nonfinite_input, ProjectionStatus.NONFINITE, _RUNNING).astype(jnp.int32),
                (nan, nan, zero))
        k, y, lam, _, status, (viol, stat_res, dist) = jax.lax.while_loop(
            lambda s: s[4] == _RUNNING, body, init)
        fixed = (y == lo) | (y == hi)
        info = ProjectionInfo(status=status, iterations=k, violation=viol, stationarity=stat_res,
                              distance=dist, num_active=jnp.sum(fixed).astype(jnp.int32),
                              multipliers=lam)
        return y, info, fixed

    @jax.custom_vjp
    def solve(params, yh, w, lo, hi):
        y, info, _ = forward(params, yh, w, lo, hi)
        return y, info

    def solve_fwd(params, yh, w, lo, hi):
        y, info, fixed = forward(params, yh, w, lo, hi)
        return (y, info), (params, yh, w, y, info.multipliers, fixed)

    def solve_bwd(res, cotangents):
        params, yh, w, y, lam, fixed = res
        y_bar = cotangents[0]
        free = (~fixed).astype(dtype)
        jac = jacobian(params, y)
        winv_f = free / w
        gram = (jac * winv_f[None, :]) @ jac.T
        lip = jnp.maximum(jnp.sum(jac * jac * winv_f[None, :]), tiny)

        def precondition(r):
            """W_F^-1 r projected W^-1-orthogonally onto {d : d_fixed = 0, J_F d = 0}."""
            t = winv_f * r
            return t - winv_f * (jac.T @ spd_step(gram, jac @ t, rcut * lip, lip))

        def hvp(p):
            grad = jax.grad(lambda yy: lam @ c_fn(params, yy))
            return w * p + jax.jvp(grad, (y,), (p,))[1]

        # Adjoint KKT system on the free coordinates [[H_FF, J_F^T], [J_F, 0]] [u; s] = [y_bar_F; 0]
        # (u = 0 on fixed coordinates) by projected CG preconditioned with W (Gould, Hribar and
        # Nocedal 2001; Nocedal and Wright Alg. 16.2): exact in one step when H = W (linear c).
        g0 = precondition(-free * y_bar)
        r0 = free * w * g0
        rg0 = r0 @ g0

        def cond(c):
            k, _, _, _, _, rg, bad = c
            return (k < cg_maxiter) & (rg > (cg_rtol ** 2) * rg0) & ~bad

        def body(c):
            k, x, r, g, d, rg, _ = c
            hd = free * hvp(d)
            curv = d @ hd
            bad = ~(curv > 0)
            alpha = jnp.where(bad, 0.0, rg / jnp.where(bad, 1.0, curv))
            x = x + alpha * d
            r = r + alpha * hd
            g = precondition(r)
            r = free * w * g  # residual update: drop the part normal to the constraints (NW Sec. 16.3)
            rg_new = r @ g
            d = -g + (rg_new / jnp.maximum(rg, tiny)) * d
            return k + 1, x, r, g, d, jnp.where(bad, 0.0, rg_new), bad

        init = (jnp.int32(0), jnp.zeros_like(y_bar), r0, g0, -g0, rg0, jnp.array(False))
        u = jax.lax.while_loop(cond, body, init)[1]
        # s from J_F^T s = (y_bar - H u)_F, least squares in the W^-1 metric
        resid = free * (y_bar - hvp(u))
        s = spd_step(gram, jac @ (winv_f * resid), rcut * lip, lip)
        yh_bar = w * u
        w_bar = -u * (y - yh)

        def pulled(p):  # (d/dp) of lam^T J(p) u + s^T c(p, y), the parameters' part of the adjoint
            return jax.jvp(lambda yy: lam @ c_fn(p, yy), (y,), (u,))[1] + s @ c_fn(p, y)

        if jax.tree_util.tree_leaves(params):
            p_bar = jax.tree_util.tree_map(jnp.negative, jax.grad(pulled)(params))
        else:
            p_bar = params
        return p_bar, yh_bar, w_bar, jnp.zeros_like(y), jnp.zeros_like(y)

    solve.defvjp(solve_fwd, solve_bwd)
    return solve
