"""Accuracy and honest status codes of the KKT step (float32 and float64), against dense numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import kktopt
from kktopt.kkt import KKTStatus

from _problems import sphere_sum_mlp as mlp

DTYPES = [jnp.float32, jnp.float64]
TARGET = {jnp.float32: 1e-3, jnp.float64: 1e-8}


def dense(fn, params, *args):
    """(value, Jacobian) over the flat parameters, in float64 numpy."""
    flat, unravel = ravel_pytree(params)
    g = lambda q: fn(unravel(q), *args).reshape(-1)  # noqa: E731
    return np.asarray(g(flat), np.float64), np.asarray(jax.jacobian(g)(flat), np.float64)


def flat64(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def rel_residual(cfn, params, xc, dw):
    c, a = dense(cfn, params, xc)
    return np.linalg.norm(c + a @ flat64(dw)) / np.linalg.norm(c)


def step(tx, params, grads, xc):
    u, state = jax.jit(lambda g, s, p: tx.update(g, s, p, constraint_batch=xc))(grads, tx.init(params), params)
    return u, kktopt.get_kkt_info(state)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [16, 8])
def test_default_meets_target_and_matches_min_norm_step(dtype, n):
    with jax.enable_x64(dtype == jnp.float64):
        params, xc, cfn, grads, _, _ = mlp(n, dtype)
        tx = optax.chain(optax.sgd(0.05), kktopt.project_kkt(cfn))
        dw, info = step(tx, params, grads, xc)
        res = rel_residual(cfn, params, xc, dw)
        assert res <= TARGET[dtype], res
        assert int(info.status) == KKTStatus.SOLVED and bool(info.success)
        np.testing.assert_allclose(float(info.linearized_residual), res, rtol=0.5, atol=TARGET[dtype] / 10)
        # Against the dense minimum-norm step u - pinv(A) (c + A u) (float64 numpy).
        c, a = dense(cfn, params, xc)
        u = -0.05 * flat64(grads)
        ref = u - np.linalg.lstsq(a, c + a @ u, rcond=None)[0]
        err = np.linalg.norm(flat64(dw) - ref) / np.linalg.norm(ref)
        assert err <= (2e-3 if dtype == jnp.float32 else 1e-8), err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["qr", "lsmr", "minres_qlp", "cg", "dense"])
def test_schur_methods_meet_rows_or_say_so(dtype, method):
    with jax.enable_x64(dtype == jnp.float64):
        params, xc, cfn, grads, _, _ = mlp(16, dtype)
        tx = optax.chain(optax.sgd(0.05), kktopt.project_kkt(cfn, solver=kktopt.KKTSolver(method=method)))
        dw, info = step(tx, params, grads, xc)
        res = rel_residual(cfn, params, xc, dw)
        tol = TARGET[dtype]
        # Success exactly when the rows are met (the reported residual agrees with float64).
        assert bool(info.success) == (float(info.linearized_residual) <= tol)
        if bool(info.success):
            assert res <= 2 * tol, res


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["cg", "auto", "minres_qlp", "qr"])
def test_contradictory_constraints_are_not_success(dtype, method):
    with jax.enable_x64(dtype == jnp.float64):
        w = jnp.asarray([0.3, -0.2], dtype)

        def cfn(p, _):  # y0 = 1 and y0 = 2 on one sample
            return jnp.stack([p[0] - 1.0, p[0] - 2.0])

        tx = kktopt.project_kkt(cfn, solver=kktopt.KKTSolver(method=method))
        _, info = step(tx, w, jnp.zeros(2, dtype), None)
        assert not bool(info.success)
        assert int(info.status) == KKTStatus.INCOMPATIBLE, info.describe()
        assert "contradictory" in kktopt.kkt.kkt_status_message(int(info.status))


@pytest.mark.parametrize("dtype", DTYPES)
def test_contradictory_constraints_projected_cg(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        w = jnp.asarray([0.3, -0.2], dtype)

        def cfn(p, _):  # y0 = 1 and y0 = 2 on one sample
            return jnp.stack([p[0] - 1.0, p[0] - 2.0])

        full = kktopt.KKTSolver(system="full", method="projected_cg")
        for tx in (kktopt.project_kkt(cfn, solver=full), kktopt.gauss_newton_kkt(lambda p, t: p - t, cfn, damping=1.0)):
            u, state = tx.update(jnp.zeros(2, dtype), tx.init(w), w, constraint_batch=None, residual_batch=w)
            info = kktopt.get_kkt_info(state)
            assert int(info.status) == KKTStatus.INCOMPATIBLE and not bool(info.success), info.describe()
            # The least-squares step: y0 = 1.5 (rows) and y1 unchanged.
            np.testing.assert_allclose(np.asarray(w + u, np.float64), [1.5, -0.2], atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_silent_multiplier_cap(dtype):
    """Large legitimate multipliers: Adam with gradients x1e5; SGD with constraints in units 1e-4."""
    with jax.enable_x64(dtype == jnp.float64):
        params, xc, cfn, grads, _, _ = mlp(16, dtype)
        for solver in (None, kktopt.KKTSolver(method="minres_qlp")):
            big = jax.tree_util.tree_map(lambda g: 1e5 * g, grads)
            dw, info = step(kktopt.hard_adam(1e-3, cfn, solver=solver), params, big, xc)
            assert int(info.status) == KKTStatus.SOLVED, info.describe()
            assert rel_residual(cfn, params, xc, dw) <= TARGET[dtype]
            small = lambda p, x: 1e-4 * cfn(p, x)  # noqa: E731
            tx = optax.chain(optax.sgd(0.05), kktopt.project_kkt(small, solver=solver))
            dw, info = step(tx, params, grads, xc)
            assert int(info.status) == KKTStatus.SOLVED, info.describe()
            assert rel_residual(small, params, xc, dw) <= TARGET[dtype]
        # A binding bound is reported, not passed off as success.
        bound = kktopt.KKTSolver(method="minres_qlp", maxxnorm=2.0, refine=0)
        tx = optax.chain(optax.sgd(0.05), kktopt.project_kkt(cfn, solver=bound))
        _, info = step(tx, params, grads, xc)
        assert int(info.status) == KKTStatus.MULTIPLIER_BOUND, info.describe()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_constraint_is_reported(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        w = jnp.ones(3, dtype)
        cfn = lambda p, _: jnp.stack([jnp.sum(p) - 1.0, jnp.nan * p[0]])  # noqa: E731
        _, info = step(kktopt.project_kkt(cfn), w, jnp.zeros(3, dtype), None)
        assert int(info.status) == KKTStatus.NONFINITE
        assert not np.isfinite(float(info.linearized_residual))


def test_status_vocabulary_in_one_place():
    for code in KKTStatus:
        assert kktopt.kkt.kkt_status_message(code) != f"unknown KKT status {int(code)}"
    assert set(kktopt.kkt.KKT_SUCCESS_CODES) == {KKTStatus.SOLVED, KKTStatus.NO_ACTIVE}
    with pytest.raises(ValueError, match="maxxnorm"):
        kktopt.KKTSolver(maxxnorm=0.5)
    with pytest.raises(ValueError, match="refine"):
        kktopt.KKTSolver(refine=-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vmap_over_learning_rate_and_jit(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params, xc, cfn, grads, _, _ = mlp(8, dtype)
        lin = kktopt.kkt.linearize_constraints(cfn, params, xc)
        metric = kktopt.kkt.euclidean_metric()

        def solve(lr):
            u = jax.tree_util.tree_map(lambda g: -lr * g, grads)
            sol = kktopt.KKTSolver().solve(lin, metric, step=u)
            return sol.step, sol.residual, sol.status

        lrs = jnp.asarray([0.01, 0.1, 1.0], dtype)
        steps, res, status = jax.jit(jax.vmap(solve))(lrs)
        assert np.all(np.asarray(status) == KKTStatus.SOLVED)
        for i in range(3):
            dw = jax.tree_util.tree_map(lambda s: s[i], steps)
            assert rel_residual(cfn, params, xc, dw) <= TARGET[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eta", [0.01, 1.0])
def test_gauss_newton_default_matches_dense_eq6(dtype, eta):
    with jax.enable_x64(dtype == jnp.float64):
        params, xc, cfn, _, residuals, batch = mlp(8, dtype)
        rv, jac = dense(residuals, params, batch)
        c, a = dense(cfn, params, xc)
        n, m = jac.shape[1], a.shape[0]
        kkt = np.block([[jac.T @ jac + eta * np.eye(n), a.T], [a, np.zeros((m, m))]])
        ref = np.linalg.solve(kkt, np.concatenate([-jac.T @ rv, -c]))[:n]
        lm = np.linalg.solve(jac.T @ jac + eta * np.eye(n), -jac.T @ rv)
        tx = kktopt.gauss_newton_kkt(residuals, cfn, damping=eta)
        dw, state = tx.update(None, tx.init(params), params, residual_batch=batch, constraint_batch=xc)
        info = kktopt.get_kkt_info(state)
        tol = 5e-3 if dtype == jnp.float32 else 1e-6
        err = np.linalg.norm(flat64(dw) - ref) / np.linalg.norm(ref)
        assert err <= tol, (err, info.describe())
        assert rel_residual(cfn, params, xc, dw) <= TARGET[dtype]
        assert int(info.status) == KKTStatus.SOLVED
        # The default is projected CG here, and its CG converged (not only the rows are met).
        lin = kktopt.kkt.linearize_constraints(cfn, params, xc)
        assert kktopt.KKTSolver(system="full").resolve(lin, kktopt.kkt.euclidean_metric()) == "projected_cg"
        assert int(info.solver.istop) == kktopt.krylov.Stop.SOLVED_RTOL, info.describe()
        # n_r + 1 distinct eigenvalues in the null space: far fewer iterations than n_r = 192.
        assert int(info.solver.iterations) <= 2 * (rv.size + 1) + 20
        # No constraint: the Levenberg-Marquardt step.
        none = lambda p, x: jnp.zeros((1,), dtype) * jnp.sum(p[0]["b"])  # noqa: E731
        tx = kktopt.gauss_newton_kkt(residuals, none, damping=eta)
        dw, state = tx.update(None, tx.init(params), params, residual_batch=batch, constraint_batch=None)
        err = np.linalg.norm(flat64(dw) - lm) / np.linalg.norm(lm)
        assert err <= tol, err


@pytest.mark.parametrize("dtype", DTYPES)
def test_gauss_newton_per_sample_past_256_rows(dtype):
    """``jacobian="per_sample"`` forms A anyway: projected CG (Gram-matrix rows) beyond 256 rows.

    300 linear constraints on 400 parameters (one per sample), a linear
    least-squares residual; the step against the dense Eq. 6 solve (float64
    numpy) and the rows met, where the matrix-free default would take
    MINRES-QLP on the full system.
    """
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(7)
        m, n, n_r = 300, 400, 50
        x = jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(n), dtype)
        jr = jnp.asarray(rng.normal(size=(n_r, n)) / np.sqrt(n), dtype)
        y = jnp.asarray(rng.normal(size=n_r), dtype)
        w = jnp.asarray(rng.normal(size=n), dtype)
        cfn = lambda p, xb: xb @ p - 1.0  # noqa: E731
        residuals = lambda p, _: jr @ p - y  # noqa: E731
        solver = kktopt.KKTSolver(system="full", jacobian="per_sample")
        lin = kktopt.kkt.linearize_constraints(cfn, w, x, jacobian="per_sample")
        assert solver.resolve(lin, kktopt.kkt.euclidean_metric()) == "projected_cg"
        tx = kktopt.gauss_newton_kkt(residuals, cfn, damping=0.1, solver=solver)
        dw, state = jax.jit(lambda p: tx.update(None, tx.init(p), p, residual_batch=None, constraint_batch=x))(w)
        info = kktopt.get_kkt_info(state)
        a, j64, w64 = np.asarray(x, np.float64), np.asarray(jr, np.float64), np.asarray(w, np.float64)
        c, rv = a @ w64 - 1.0, j64 @ w64 - np.asarray(y, np.float64)
        kkt = np.block([[j64.T @ j64 + 0.1 * np.eye(n), a.T], [a, np.zeros((m, m))]])
        ref = np.linalg.solve(kkt, np.concatenate([-j64.T @ rv, -c]))[:n]
        err = np.linalg.norm(np.asarray(dw, np.float64) - ref) / np.linalg.norm(ref)
        assert err <= (1e-3 if dtype == jnp.float32 else 1e-8), (err, info.describe())
        assert np.linalg.norm(c + a @ np.asarray(dw, np.float64)) / np.linalg.norm(c) <= TARGET[dtype]
        assert int(info.status) == KKTStatus.SOLVED, info.describe()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["dense", "per_sample", pytest.param("lsmr", marks=pytest.mark.slow)])
def test_projected_cg_against_dense_references(dtype, path, monkeypatch):
    """Closest-step form (SGD, Adam metric) and gradient form (Eq. 6, vmapped over eta), jit."""
    from kktopt.kkt import _projected as projected

    if path == "lsmr":  # the matrix-free projections, used when A is too large to factor
        monkeypatch.setattr(projected, "AUTO_DENSE_MAX_ROWS", 0)
    with jax.enable_x64(dtype == jnp.float64):
        params, xc, cfn, grads, residuals, batch = mlp(4, dtype)
        jacobian = "per_sample" if path == "per_sample" else "matrix_free"
        cfg = kktopt.KKTSolver(system="full", method="projected_cg", jacobian=jacobian)
        lin = kktopt.kkt.linearize_constraints(cfn, params, xc, jacobian=jacobian)
        c, a = dense(cfn, params, xc)
        tol = 1e-3 if dtype == jnp.float32 else 1e-7
        # SGD metric: the minimum-norm step; Adam-like diagonal metric: its D-weighted version.
        u = jax.tree_util.tree_map(lambda g: -0.05 * g, grads)
        d = jax.tree_util.tree_map(lambda g: 1.0 + 10 * jnp.abs(g), grads)
        for metric, dd in ((kktopt.kkt.euclidean_metric(), None), (kktopt.kkt.diagonal_metric(d), flat64(d))):
            sol = jax.jit(lambda s: cfg.solve(lin, metric, step=s))(u)
            dinv = np.ones(a.shape[1]) if dd is None else 1 / dd
            uf = flat64(u)
            ref = uf - dinv * (a.T @ np.linalg.solve((a * dinv) @ a.T, c + a @ uf))
            err = np.linalg.norm(flat64(sol.step) - ref) / np.linalg.norm(ref)
            assert err <= tol, (err, path)
            assert int(sol.status) == KKTStatus.SOLVED
        # Gauss-Newton metric, vmapped over the damping.
        rv, jac = dense(residuals, params, batch)
        r, rjvp = jax.linearize(lambda p: residuals(p, batch), params)
        rvjp = lambda y: jax.linear_transpose(rjvp, params)(y)[0]  # noqa: E731
        h = rvjp(r)

        def solve(eta):
            metric = kktopt.kkt.gauss_newton_metric(rjvp, rvjp, eta, kktopt.kkt.gauss_newton_curvature_scale(rjvp, h))
            sol = cfg.solve(lin, metric, gradient=h)
            return sol.step, sol.multipliers, sol.status

        etas = jnp.asarray([0.01, 1.0], dtype)
        steps, lams, status = jax.jit(jax.vmap(solve))(etas)
        n, m = jac.shape[1], a.shape[0]
        for i, eta in enumerate([0.01, 1.0]):
            kkt = np.block([[jac.T @ jac + eta * np.eye(n), a.T], [a, np.zeros((m, m))]])
            full = np.linalg.solve(kkt, np.concatenate([-jac.T @ rv, -c]))
            dw = flat64(jax.tree_util.tree_map(lambda s: s[i], steps))
            assert np.linalg.norm(dw - full[:n]) / np.linalg.norm(full[:n]) <= 10 * tol
            lam = np.asarray(lams[i], np.float64)
            assert np.linalg.norm(lam - full[n:]) / np.linalg.norm(full[n:]) <= (5e-2 if dtype == jnp.float32 else 1e-5)
            assert int(status[i]) == KKTStatus.SOLVED


def _rows_of_condition_5e3(seed):
    """24 linear constraints ``x_i . w = 1`` in R^300 with cond(x) = 5e3 (float32), and their float64 reference.

    Returns ``(x, w, g, cfn, a, c, ref)``: the rows, the point, a gradient,
    the constraint function (one constraint per row of x), the float64 rows
    and values, and the minimum-norm Hard-SGD step at lr 1e-3.
    """
    rng = np.random.default_rng(seed)
    m, n = 24, 300
    u_, _ = np.linalg.qr(rng.normal(size=(m, m)))
    v_, _ = np.linalg.qr(rng.normal(size=(n, m)))
    x = jnp.asarray((u_ * np.logspace(0, -np.log10(5e3), m)) @ v_.T, jnp.float32)
    w = jnp.asarray(rng.normal(size=n), jnp.float32)
    g = jnp.asarray(rng.normal(size=n), jnp.float32)
    cfn = lambda p, xb: xb @ p - 1.0  # noqa: E731
    a = np.asarray(x, np.float64)
    c = a @ np.asarray(w, np.float64) - 1.0
    u = -1e-3 * np.asarray(g, np.float64)
    return x, w, g, cfn, a, c, u - np.linalg.lstsq(a, c + a @ u, rcond=None)[0]


@pytest.mark.parametrize("jacobian", ["per_sample", "matrix_free"])
def test_dense_rounds_meet_rows_past_squared_conditioning(jacobian):
    """float32, cond(A) = 5e3: cond^2 eps > 1 defeats the Schur complement, cond eps does not.

    The first solve through ``A A^T`` misses the rows (shown with
    ``refine=0``); the correction rounds (the Gram matrix of the rows
    preconditioned by the Schur complement's eigendecomposition) meet them,
    and the step is the minimum-norm step of a float64 numpy reference.
    """
    x, w, g, cfn, a, c, ref = _rows_of_condition_5e3(seed=3)

    def run(solver):
        tx = optax.chain(optax.sgd(1e-3), kktopt.project_kkt(cfn, solver=solver))
        dw, info = step(tx, w, g, x)
        return np.asarray(dw, np.float64), info

    _, first = run(kktopt.KKTSolver(method="dense", jacobian=jacobian, refine=0))
    assert int(first.status) != KKTStatus.SOLVED and float(first.linearized_residual) > 1e-3
    dw, info = run(kktopt.KKTSolver(jacobian=jacobian))
    res = np.linalg.norm(c + a @ dw) / np.linalg.norm(c)
    assert int(info.status) == KKTStatus.SOLVED and int(info.refinements) >= 1, info.describe()
    assert res <= TARGET[jnp.float32], res
    np.testing.assert_allclose(float(info.linearized_residual), res, rtol=0.5, atol=1e-4)
    assert np.linalg.norm(dw - ref) / np.linalg.norm(ref) <= 1e-2
    # Adam's metric (a diagonal pytree) through the same rounds; rows checked in float64.
    dw, info = step(kktopt.hard_adam(1e-3, cfn, solver=kktopt.KKTSolver(jacobian=jacobian)), w, g, x)
    res = np.linalg.norm(c + a @ np.asarray(dw, np.float64)) / np.linalg.norm(c)
    assert int(info.status) == KKTStatus.SOLVED and res <= TARGET[jnp.float32], (res, info.describe())


@pytest.mark.parametrize("method", ["minres_qlp", "cg"])
def test_krylov_schur_rounds_meet_rows_past_squared_conditioning(method):
    """float32, cond(A) = 5e3: a Krylov solve on ``A A^T`` stalls, its LSMR round on ``A`` does not.

    The first solve alone (``refine=0``) misses the rows; with the rounds the
    step meets them and is the minimum-norm step of a float64 numpy
    reference, for SGD's metric and Adam's.
    """
    x, w, g, cfn, a, c, ref = _rows_of_condition_5e3(seed=4)

    def run(tx):
        dw, info = step(tx, w, g, x)
        return np.asarray(dw, np.float64), info

    sgd = lambda solver: optax.chain(optax.sgd(1e-3), kktopt.project_kkt(cfn, solver=solver))  # noqa: E731
    _, first = run(sgd(kktopt.KKTSolver(method=method, refine=0)))
    assert int(first.status) != KKTStatus.SOLVED and float(first.linearized_residual) > 1e-3
    dw, info = run(sgd(kktopt.KKTSolver(method=method)))
    res = np.linalg.norm(c + a @ dw) / np.linalg.norm(c)
    assert int(info.status) == KKTStatus.SOLVED and int(info.refinements) >= 1, info.describe()
    assert res <= TARGET[jnp.float32], res
    assert np.linalg.norm(dw - ref) / np.linalg.norm(ref) <= 1e-2
    dw, info = run(kktopt.hard_adam(1e-3, cfn, solver=kktopt.KKTSolver(method=method)))
    res = np.linalg.norm(c + a @ dw) / np.linalg.norm(c)
    assert int(info.status) == KKTStatus.SOLVED and res <= TARGET[jnp.float32], (res, info.describe())


def wild_minres_qlp(monkeypatch):
    """Replace MINRES-QLP on the Schur complement by one that returns a wild step with the
    condition-limit code; returns the solver module and the method's key."""
    from kktopt.kkt import _solver

    key = ("schur", "minres_qlp")
    honest = _solver._METHODS[key]

    def wild(cfg, lin, metric, step, gradient):
        sol = honest(cfg, lin, metric, step, gradient)
        far = jax.tree_util.tree_map(lambda s: s + 1e3 * jnp.cos(jnp.arange(s.size, dtype=s.dtype)).reshape(s.shape),
                                     sol.step)
        return sol._replace(step=far, info=sol.info._replace(istop=jnp.asarray(kktopt.krylov.Stop.ACOND_LIMIT, jnp.int32)))

    monkeypatch.setitem(_solver._METHODS, key, wild)
    return _solver, key


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.float64, marks=pytest.mark.slow)])
def test_failed_krylov_schur_solve_is_restarted_by_lsmr(dtype, monkeypatch):
    """A Krylov solve on the Schur complement that stops on a failure code is solved again.

    Its step can be so far off that no correction of its rows recovers in
    float32 (Hard-Adam at the default eps on the pose CNN: 0.11 of ``||c||``
    before, 5e-4 after; ``benchmarks/kkt_accuracy.py``). Here the method is
    replaced by one that returns a wild step with the condition-limit code:
    the first round solves the step again by LSMR and keeps it because it
    meets the rows better; without rounds (``refine=0``) the wild step is
    returned and reported. The result is the minimum-norm step of a numpy
    reference.
    """
    wild_minres_qlp(monkeypatch)
    with jax.enable_x64(dtype == jnp.float64):
        params, xc, cfn, grads, _, _ = mlp(16, dtype)

        def run(refine):
            tx = optax.chain(optax.sgd(0.05), kktopt.project_kkt(cfn, solver=kktopt.KKTSolver(method="minres_qlp",
                                                                                                refine=refine)))
            return step(tx, params, grads, xc)

        _, raw = run(0)
        assert int(raw.status) != KKTStatus.SOLVED and float(raw.linearized_residual) > 1.0, raw.describe()
        dw, info = run(3)
        assert int(info.status) == KKTStatus.SOLVED and int(info.refinements) >= 1, info.describe()
        c, a = dense(cfn, params, xc)
        u = -0.05 * flat64(grads)
        ref = u - np.linalg.lstsq(a, c + a @ u, rcond=None)[0]
        assert np.linalg.norm(flat64(dw) - ref) / np.linalg.norm(ref) <= (2e-3 if dtype == jnp.float32 else 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_falls_back_to_the_dense_schur_solve(dtype, monkeypatch):
    """``method="auto"`` beyond the matrix-free dense limit (300 rows) is MINRES-QLP on the Schur
    complement; where it and its rounds miss the rows and A fits a formed Jacobian's limits, the
    step is solved again by ``"dense"`` (A from VJPs, in passes of ``vjp_batch`` rows).

    MINRES-QLP is replaced by one that returns a wild step with the condition-limit code, and its
    LSMR restart and rounds are taken away: ``method="minres_qlp"`` then reports the miss, while
    ``"auto"`` returns the minimum-norm step of a numpy reference with a success code.
    """
    _solver, key = wild_minres_qlp(monkeypatch)
    monkeypatch.delitem(_solver._RESTARTS, key)
    monkeypatch.delitem(_solver._CORRECTIONS, key)
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(3)
        xc = jnp.asarray(rng.normal(size=(300, 400)) / 20, dtype)  # 300 linear rows on 400 parameters
        params = jnp.asarray(rng.normal(size=400), dtype)
        grads = jnp.asarray(rng.normal(size=400), dtype)
        cfn = lambda p, x: x @ p - 1.0  # noqa: E731
        lin = kktopt.kkt.linearize_constraints(cfn, params, xc)
        assert kktopt.KKTSolver().resolve(lin, kktopt.kkt.euclidean_metric()) == "minres_qlp"

        def run(solver):
            return step(optax.chain(optax.sgd(0.05), kktopt.project_kkt(cfn, solver=solver)), params, grads, xc)

        _, raw = run(kktopt.KKTSolver(method="minres_qlp"))
        assert int(raw.status) != KKTStatus.SOLVED and float(raw.linearized_residual) > 1.0, raw.describe()
        dw, info = run(kktopt.KKTSolver(vjp_batch=100))
        assert int(info.status) == KKTStatus.SOLVED, info.describe()
        c, a = dense(cfn, params, xc)
        u = -0.05 * flat64(grads)
        assert np.linalg.norm(c + a @ flat64(dw)) / np.linalg.norm(c) <= TARGET[dtype]
        ref = u - np.linalg.lstsq(a, c + a @ u, rcond=None)[0]
        assert np.linalg.norm(flat64(dw) - ref) / np.linalg.norm(ref) <= (1e-2 if dtype == jnp.float32 else 1e-7)
