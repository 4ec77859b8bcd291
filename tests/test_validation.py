"""Input validation and honesty of the hard transforms: non-finite inputs, selector sizes,
array-like constraint outputs, non-float leaves, frozen parameters, and the inequality
active-set rounds against a dense QP reference."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kktopt
from kktopt.krylov import Stop, stop_message

DTYPES = ["float32", "float64"]
TOL = {"float32": 2e-4, "float64": 1e-8}


@pytest.fixture(params=DTYPES)
def dtype(request):
    with jax.enable_x64(request.param == "float64"):
        yield request.param


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(tree)])


# --------------------------------------------------------------------------
# Non-finite inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_constraint_values_give_a_nan_step_and_a_code(dtype, bad):
    w = jnp.ones(3, dtype)
    cfn = lambda p, _: jnp.stack([jnp.sum(p) - 1.0, p[0] * bad])  # noqa: E731
    for tx in (
        optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn)),
        kktopt.hard_adam(0.1, cfn),
    ):
        u, state = jax.jit(lambda g, s: tx.update(g, s, w, constraint_batch=None))(jnp.ones(3, dtype), tx.init(w))
        info = kktopt.get_kkt_info(state)
        assert np.isnan(flat(u)).all()
        assert int(info.solver.istop) == Stop.NONFINITE_INPUT
        assert int(info.status) == kktopt.kkt.KKTStatus.NONFINITE and not bool(info.success)
        assert not bool(info.solver.success)
        assert np.isnan(float(info.linearized_residual))
    assert "zero_nans" in stop_message(Stop.NONFINITE_INPUT)


def test_nonfinite_step_is_skipped_by_zero_nans(dtype):
    w = jnp.ones(3, dtype)
    cfn = lambda p, _: jnp.log(p[:1] - 2.0)  # noqa: E731  (log of a negative number)
    tx = optax.chain(kktopt.hard_sgd(0.1, cfn), optax.zero_nans())
    u, state = tx.update(jnp.ones(3, dtype), tx.init(w), w, constraint_batch=None)
    np.testing.assert_array_equal(np.asarray(optax.apply_updates(w, u)), np.asarray(w))
    assert bool(state[1].found_nan)


def test_nonfinite_incoming_step_is_reported(dtype):
    w = jnp.ones(3, dtype)
    tx = kktopt.project_kkt(lambda p, _: jnp.sum(p, keepdims=True) - 1.0)
    u, state = tx.update(jnp.array([1.0, np.nan, 0.0], dtype), tx.init(w), w, constraint_batch=None)
    assert np.isnan(flat(u)).all() and int(state.info.solver.istop) == Stop.NONFINITE_INPUT
    assert int(state.info.status) == kktopt.kkt.KKTStatus.NONFINITE


def test_nonfinite_gauss_newton_residual_is_reported(dtype):
    w = jnp.zeros(2, dtype)
    tx = kktopt.gauss_newton_kkt(lambda p, t: p - t, lambda p, _: jnp.sum(p, keepdims=True), damping=1.0)
    target = jnp.array([np.nan, 1.0], dtype)
    u, state = tx.update(None, tx.init(w), w, residual_batch=target, constraint_batch=None)
    assert np.isnan(flat(u)).all()
    assert int(state.info.solver.istop) == Stop.NONFINITE_INPUT
    assert int(state.info.status) == kktopt.kkt.KKTStatus.NONFINITE
    assert np.isnan(float(state.info.linearized_residual))
    # A finite residual still gives the constrained LM step: (1+eta) dw = -r - A^T lam, sum(dw) = 0.
    u, state = tx.update(None, tx.init(w), w, residual_batch=jnp.array([3.0, 1.0], dtype), constraint_batch=None)
    np.testing.assert_allclose(flat(u), [0.5, -0.5], rtol=TOL[dtype] * 10, atol=TOL[dtype])


def test_nan_in_a_padding_row_does_not_leak(dtype):
    w = jnp.ones((2, 1), dtype)
    pool = jnp.array([[1.0, 2.0], [np.nan, 0.0], [0.5, 0.5]], dtype)
    cfn = lambda p, x: x @ p - 1.0  # noqa: E731
    for jacobian in ("matrix_free", "per_sample"):
        lin = kktopt.kkt.linearize_constraints(
            cfn, w, pool, jacobian=jacobian, sample_mask=jnp.array([1.0, 0.0, 1.0], dtype)
        )
        assert bool(lin.finite)
        assert np.isfinite(np.asarray(lin.c)).all() and float(lin.c[1]) == 0.0
        assert np.isfinite(np.asarray(lin.jvp(jnp.ones((2, 1), dtype)))).all()
        full = kktopt.kkt.linearize_constraints(cfn, w, pool, jacobian=jacobian)
        assert not bool(full.finite)


# --------------------------------------------------------------------------
# Selector sizes
# --------------------------------------------------------------------------


def test_selectors_need_k_samples_and_name_an_empty_batch():
    w = jnp.ones(2)
    cfn = lambda p, x: x @ p - 1.0  # noqa: E731
    for make in (kktopt.active.mined_samples, kktopt.active.random_samples):
        tx = kktopt.project_kkt(cfn, active=make(4))
        with pytest.raises(ValueError, match=r"needs at least 4 samples, the batch has 3: lower k"):
            tx.update(jnp.zeros(2), tx.init(w), w, constraint_batch=jnp.ones((3, 2)))
        with pytest.raises(ValueError, match="empty constraint batch"):
            tx.update(jnp.zeros(2), tx.init(w), w, constraint_batch=jnp.ones((0, 2)))
    with pytest.raises(ValueError, match="the constraint batch is empty"):
        kktopt.mine_active_constraints(jnp.zeros((0, 2)), 1)


# --------------------------------------------------------------------------
# Array-like constraint outputs, non-float leaves, frozen parameters
# --------------------------------------------------------------------------


def test_python_and_numpy_constraint_outputs_work(dtype):
    w = jnp.ones(2, dtype)
    g = jnp.array([1.0, -2.0], dtype)
    for out in (0.0, 0, np.zeros(2, dtype)):
        tx = kktopt.project_kkt(lambda p, _, out=out: out)
        u, state = tx.update(g, tx.init(w), w, constraint_batch=None)
        assert u.dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(g))
        assert float(state.info.violation_norm) == 0.0
    lin = kktopt.kkt.linearize_constraints(lambda p, _: 2.5, w, None)
    assert lin.c.dtype == jnp.dtype(dtype) and float(lin.c[0]) == 2.5
    with pytest.raises(TypeError, match="one array of constraint values"):
        kktopt.kkt.linearize_constraints(lambda p, _: [p[0], p[1]], w, None)


def test_integer_leaves_and_float0_gradients_name_the_fix():
    params = {"w": jnp.ones(2), "n": jnp.array(3)}
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) * p["n"], allow_int=True)(params)
    cfn = lambda p, _: jnp.sum(p["w"], keepdims=True) - 1.0  # noqa: E731
    for tx in (kktopt.project_kkt(cfn), kktopt.hard_adam(0.1, cfn), kktopt.hard_sgd(0.1, cfn)):
        with pytest.raises(TypeError, match=r"eqx.partition\(model, eqx.is_inexact_array\)"):
            tx.init(params)
    tx = kktopt.project_kkt(cfn)
    state = tx.init({"w": params["w"]})
    with pytest.raises(TypeError, match="float0"):
        tx.update({"w": grads["w"], "n": grads["n"]}, state, {"w": params["w"]}, constraint_batch=None)


def test_optax_masked_is_rejected_and_partitioning_freezes(dtype):
    params = {"w": jnp.array([1.0, 2.0, -1.0], dtype), "b": jnp.array([0.5], dtype)}

    def constraint_fn(p, x):  # one constraint per sample: x . w + b = 1
        return x @ p["w"] + p["b"] - 1.0

    pool = jnp.array([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]], dtype)
    masked = optax.chain(optax.sgd(0.1), optax.masked(kktopt.project_kkt(constraint_fn), {"w": True, "b": False}))
    with pytest.raises(ValueError, match="MaskedNode.*eqx.partition"):
        masked.update(params, masked.init(params), params, constraint_batch=pool)

    trainable, frozen = eqx.partition(params, {"w": True, "b": False})
    cfn = lambda p, x: constraint_fn(eqx.combine(p, frozen), x)  # noqa: E731
    tx = kktopt.hard_sgd(0.1, cfn)
    g = {"w": jnp.array([1.0, -1.0, 2.0], dtype), "b": None}
    u, state = tx.update(g, tx.init(trainable), trainable, constraint_batch=pool)
    new = eqx.combine(optax.apply_updates(trainable, u), frozen)
    assert new["b"] is frozen["b"]
    a, c = np.asarray(pool, np.float64), np.asarray(constraint_fn(params, pool), np.float64)
    ref = -0.1 * np.asarray(g["w"], np.float64)
    ref = ref - np.linalg.pinv(a) @ (a @ ref + c)  # Eq. 5: closest step with A dw = -c
    np.testing.assert_allclose(np.asarray(u["w"], np.float64), ref, rtol=TOL[dtype] * 10, atol=TOL[dtype])
    np.testing.assert_allclose(a @ np.asarray(u["w"], np.float64), -c, atol=TOL[dtype] * 10)


# --------------------------------------------------------------------------
# Inequality active-set rounds
# --------------------------------------------------------------------------


def _qp_reference(a, c, u):
    """min ||dw - u||^2 s.t. a dw <= -c by enumerating active sets (small m)."""
    m = a.shape[0]
    best = None
    for k in range(m + 1):
        for rows in itertools.combinations(range(m), k):
            rows = list(rows)
            dw, lam = u.copy(), np.zeros(m)
            if rows:
                ar = a[rows]
                lam_r = np.linalg.solve(ar @ ar.T, ar @ u + c[rows])
                dw = u - ar.T @ lam_r
                lam[rows] = lam_r
            if np.all(a @ dw + c <= 1e-10) and np.all(lam >= -1e-10):
                if best is None or np.sum((dw - u) ** 2) < np.sum((best - u) ** 2) - 1e-14:
                    best = dw
    return best


def _inequality_problem(dtype, seed=3, n=10, m=7):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(m, n))
    x = rng.normal(size=(m, n))  # the pool: row i of the constraints is a_i . w + b_i
    b = rng.normal(size=m) * 0.5
    w = rng.normal(size=n) * 0.3
    g = rng.normal(size=n)
    cfn = lambda p, _: jnp.asarray(a, dtype) @ p + jnp.asarray(b, dtype)  # noqa: E731
    del x
    return a, b, jnp.asarray(w, dtype), jnp.asarray(g, dtype), cfn


@pytest.mark.parametrize("lr", [0.5, 2.0])
def test_inequality_rounds_solve_the_linearised_qp(dtype, lr):
    a, b, w, g, cfn = _inequality_problem(dtype)
    c = a @ np.asarray(w, np.float64) + b
    u = -lr * np.asarray(g, np.float64)
    ref = _qp_reference(a, c, u)
    once = np.linalg.norm(u)
    tx1 = kktopt.hard_sgd(lr, cfn, inequality=True)
    u1, _ = tx1.update(g, tx1.init(w), w, constraint_batch=None)
    after1 = a @ flat(u1) + c
    assert np.sum(after1 > 1e-3) > 0  # one round leaves linearised rows violated on this problem
    tx = kktopt.hard_sgd(lr, cfn, inequality=True, inequality_rounds=8)
    step = jax.jit(lambda gg, s: tx.update(gg, s, w, constraint_batch=None))
    du, state = step(g, tx.init(w))
    info = kktopt.get_kkt_info(state)
    assert bool(info.solver.success), info.solver.describe()
    np.testing.assert_allclose(flat(du), ref, rtol=0, atol=TOL[dtype] * 10 * max(1.0, once))
    assert np.all(a @ flat(du) + c <= TOL[dtype] * 10 * np.abs(c).max())


def test_one_round_is_todays_projection_onto_the_violated_rows(dtype):
    a, b, w, g, cfn = _inequality_problem(dtype)
    c = a @ np.asarray(w, np.float64) + b
    u = -0.5 * np.asarray(g, np.float64)
    v = c > 0
    ref = u - np.linalg.pinv(a[v]) @ (a[v] @ u + c[v])
    default = kktopt.hard_sgd(0.5, cfn, inequality=True)
    one = kktopt.hard_sgd(0.5, cfn, inequality=True, inequality_rounds=1)
    ud, sd = default.update(g, default.init(w), w, constraint_batch=None)
    u1, s1 = one.update(g, one.init(w), w, constraint_batch=None)
    np.testing.assert_array_equal(np.asarray(ud), np.asarray(u1))
    assert jax.tree_util.tree_structure(sd) == jax.tree_util.tree_structure(s1)
    np.testing.assert_allclose(flat(u1), ref, atol=TOL[dtype] * 10)


def test_inequality_rounds_dense_per_sample_vmap_and_limit(dtype):
    a, b, w, g, cfn = _inequality_problem(dtype)
    c = a @ np.asarray(w, np.float64) + b
    pool = jnp.asarray(np.concatenate([a, b[:, None]], axis=1), dtype)
    sample_cfn = lambda p, x: x[:, :-1] @ p + x[:, -1]  # noqa: E731  (separable over samples)
    solver = kktopt.KKTSolver(method="dense", jacobian="per_sample")
    tx = kktopt.project_kkt(sample_cfn, solver=solver, inequality=True, inequality_rounds=8)
    lrs = jnp.asarray([0.5, 2.0], dtype)
    us, states = jax.vmap(lambda lr: tx.update(-lr * g, tx.init(w), w, constraint_batch=pool))(lrs)
    for i, lr in enumerate([0.5, 2.0]):
        ref = _qp_reference(a, c, -lr * np.asarray(g, np.float64))
        np.testing.assert_allclose(np.asarray(us[i], np.float64), ref, atol=TOL[dtype] * 20 * max(1, lr))
    # Too few rounds on the lr = 2 problem: the set has not settled, and the code says so.
    short = kktopt.project_kkt(sample_cfn, solver=solver, inequality=True, inequality_rounds=2)
    u2, s2 = short.update(-2.0 * g, short.init(w), w, constraint_batch=pool)
    ref = _qp_reference(a, c, -2.0 * np.asarray(g, np.float64))
    if np.abs(flat(u2) - ref).max() > 1e-3:
        assert int(s2.info.solver.istop) == Stop.ACTIVE_SET_LIMIT
        assert int(s2.info.status) == kktopt.kkt.KKTStatus.ACTIVE_SET_LIMIT and not bool(s2.info.success)
        assert "inequality_rounds" in stop_message(Stop.ACTIVE_SET_LIMIT)
        assert "inequality_rounds" in kktopt.kkt.kkt_status_message(int(s2.info.status))
    else:  # settled within two rounds: a success, not the limit
        assert int(s2.info.status) != kktopt.kkt.KKTStatus.ACTIVE_SET_LIMIT


def test_exhausted_active_set_rounds_are_a_status_not_a_success(dtype):
    """u = (-3, -3), x1 >= -1 and x1 - x2 <= 1, both inactive at 0: round 2 adds row 1, round 3 row 2."""
    cfn = lambda p, _: jnp.stack([-p[0] - 1.0, p[0] - p[1] - 1.0])  # noqa: E731
    w = jnp.zeros(2, dtype)
    u = jnp.asarray([-3.0, -3.0], dtype)
    ref = _qp_reference(np.asarray([[-1.0, 0.0], [1.0, -1.0]]), np.asarray([-1.0, -1.0]), np.asarray(u, np.float64))
    np.testing.assert_allclose(ref, [-1.0, -2.0], atol=1e-9)
    for rounds, settled in ((2, False), (3, True), (4, True)):
        tx = kktopt.project_kkt(cfn, inequality=True, inequality_rounds=rounds)
        du, state = jax.jit(lambda g, s: tx.update(g, s, w, constraint_batch=None))(u, tx.init(w))
        info = state.info
        if settled:
            np.testing.assert_allclose(flat(du), ref, atol=TOL[dtype] * 10)
            assert bool(info.success) and int(info.status) != kktopt.kkt.KKTStatus.ACTIVE_SET_LIMIT
        else:
            np.testing.assert_allclose(flat(du), [-1.0, -3.0], atol=TOL[dtype] * 10)  # violates row 2
            assert int(info.status) == kktopt.kkt.KKTStatus.ACTIVE_SET_LIMIT and not bool(info.success)
            assert int(info.solver.istop) == Stop.ACTIVE_SET_LIMIT
            assert "inequality_rounds" in kktopt.kkt.kkt_status_message(int(info.status))


def test_inequality_rounds_in_gradient_form(dtype):
    a, b, w, g, cfn = _inequality_problem(dtype)
    t = np.asarray(w, np.float64) + np.asarray(g, np.float64) * 2.0
    eta = 1.0
    tx = kktopt.gauss_newton_kkt(
        lambda p, y: p - y, cfn, damping=eta, inequality=True, inequality_rounds=8,
        solver=kktopt.KKTSolver(system="full", rtol=1e-6 if dtype == "float32" else 1e-12, maxiter=400),
    )
    du, state = tx.update(None, tx.init(w), w, residual_batch=jnp.asarray(t, dtype), constraint_batch=None)
    c = a @ np.asarray(w, np.float64) + b
    u = -(np.asarray(w, np.float64) - t) / (1.0 + eta)  # D = (1 + eta) I: the LM step
    np.testing.assert_allclose(flat(du), _qp_reference(a, c, u), atol=TOL[dtype] * 50)


def test_inequality_rounds_are_checked():
    cfn = lambda p, _: p  # noqa: E731
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="inequality_rounds must be a Python integer"):
            kktopt.project_kkt(cfn, inequality=True, inequality_rounds=bad)
    with pytest.raises(ValueError, match="needs inequality=True"):
        kktopt.hard_sgd(0.1, cfn, inequality_rounds=3)


def test_inequality_rounds_under_inject_hyperparams(dtype):
    a, b, w, g, cfn = _inequality_problem(dtype)
    plain = kktopt.hard_sgd(2.0, cfn, inequality=True, inequality_rounds=8)
    u_ref, _ = plain.update(g, plain.init(w), w, constraint_batch=None)
    tx = optax.inject_hyperparams(kktopt.hard_sgd, static_args="constraint_fn")(
        learning_rate=2.0, constraint_fn=cfn, inequality=True, inequality_rounds=8
    )
    u, state = jax.jit(lambda gg, s: tx.update(gg, s, w, constraint_batch=None))(g, tx.init(w))
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_ref), rtol=0, atol=TOL[dtype] * 10)
