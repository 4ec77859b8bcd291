"""Hard-constraint transforms against dense float64 KKT solves (DESIGN invariants 2-7)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import kktopt
from kktopt import KKTSolver
from kktopt.active import mined_samples, random_samples

SOLVERS = {
    "krylov-qlp": KKTSolver(system="full", rtol=1e-12),
    "krylov-minres": KKTSolver(system="full", method="minres", rtol=1e-12),
    "krylov-noprecond": KKTSolver(system="full", rtol=1e-12, precondition=False),
    "schur-dense": KKTSolver(method="dense"),
    "schur-qlp": KKTSolver(method="minres_qlp", rtol=1e-12),
    "schur-minres": KKTSolver(method="minres", rtol=1e-12),
    "schur-cg": KKTSolver(method="cg", rtol=1e-12),
}


def solver_for(name, jacobian="matrix_free"):
    return dataclasses.replace(SOLVERS[name], jacobian=jacobian)


# --------------------------------------------------------------------------
# A small MLP with nonlinear output constraints.
# --------------------------------------------------------------------------


def init_mlp(seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(rng.normal(size=(3, 8)) / np.sqrt(3), dtype),
        "b1": jnp.asarray(rng.normal(size=8) * 0.1, dtype),
        "w2": jnp.asarray(rng.normal(size=(8, 2)) / np.sqrt(8), dtype),
        "b2": jnp.asarray(rng.normal(size=2) * 0.1, dtype),
    }


def mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def constraint_fn(params, x):
    """Two nonlinear constraints per sample: ||y||^2 = 1 and y0 * y1 = 0.1."""
    y = mlp(params, x)
    return jnp.stack([jnp.sum(y * y, axis=-1) - 1.0, y[:, 0] * y[:, 1] - 0.1], axis=-1)


def loss_fn(params, batch):
    x, t = batch
    return 0.5 * jnp.mean(jnp.sum((mlp(params, x) - t) ** 2, axis=-1))


def data(seed=1, n=5, m=3, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 3)), dtype)
    t = jnp.asarray(rng.normal(size=(n, 2)), dtype)
    xc = jnp.asarray(rng.normal(size=(m, 3)), dtype)
    return (x, t), xc


def dense_system(params, xc, cfn=constraint_fn):
    flat, unravel = ravel_pytree(params)
    a = np.asarray(jax.jacobian(lambda f: cfn(unravel(f), xc).reshape(-1))(flat))
    c = np.asarray(cfn(params, xc)).reshape(-1)
    return a, c, unravel


def kkt_solve(d, a, h, c):
    """Minimum-norm solution of [[D, A^T], [A, 0]] [dw; lam] = [-h; -c] (numpy)."""
    n, m = d.shape[0], a.shape[0]
    k = np.block([[d, a.T], [a, np.zeros((m, m))]])
    sol = np.linalg.pinv(k, rcond=1e-12) @ np.concatenate([-h, -c])
    return sol[:n]


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


# --------------------------------------------------------------------------
# Invariants 2 and 4: the steps are the dense KKT solutions.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,jacobian",
    [(n, "matrix_free") for n in sorted(SOLVERS)] + [("schur-dense", "per_sample"), ("krylov-qlp", "per_sample")],
)
def test_hard_sgd_matches_dense_eq5(x64, name, jacobian):
    params = init_mlp()
    batch, xc = data()
    lr = 0.05
    grads = jax.grad(loss_fn)(params, batch)
    tx = optax.chain(optax.sgd(lr), kktopt.project_kkt(constraint_fn, solver=solver_for(name, jacobian)))
    state = tx.init(params)
    dw, state = jax.jit(lambda g, s, p, x: tx.update(g, s, p, constraint_batch=x))(grads, state, params, xc)
    a, c, _ = dense_system(params, xc)
    n = a.shape[1]
    ref = kkt_solve(np.eye(n) / lr, a, flat(grads), c)
    np.testing.assert_allclose(flat(dw), ref, rtol=1e-8, atol=1e-11)
    # Invariant 2: the linearised constraints hold.
    np.testing.assert_allclose(a @ flat(dw), -c, atol=1e-9)
    info = state[1].info
    assert int(info.num_active) == c.size
    assert float(info.linearized_residual) < 1e-8
    np.testing.assert_allclose(float(info.violation_norm), np.linalg.norm(c), rtol=1e-12)


@pytest.mark.parametrize(
    "name,jacobian",
    [("krylov-qlp", "matrix_free"), ("schur-dense", "matrix_free"), ("schur-qlp", "matrix_free"), ("schur-dense", "per_sample")],
)
def test_hard_adam_matches_dense_eq12(x64, name, jacobian):
    params = init_mlp(2)
    batch, xc = data(3)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    tx = kktopt.scale_by_adam_kkt(constraint_fn, lr, b1, b2, eps, solver=solver_for(name, jacobian))
    ref_adam = optax.adam(lr, b1, b2, eps)
    state, rstate = tx.init(params), ref_adam.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, constraint_batch=xc))
    p = params
    for t in range(1, 4):
        grads = jax.grad(loss_fn)(p, batch)
        dw, state = update(grads, state, p)
        # Dense Eq. 12 with the moments optax itself keeps.
        _, rstate = ref_adam.update(grads, rstate, p)
        mu, nu = flat(rstate[0].mu), flat(rstate[0].nu)
        v_hat = nu / (1 - b2**t)
        d = np.diag((1 - b1**t) / lr * (np.sqrt(v_hat) + eps))
        a, c, unravel = dense_system(p, xc)
        ref = kkt_solve(d, a, mu, c)
        np.testing.assert_allclose(flat(dw), ref, rtol=1e-7, atol=1e-11)
        np.testing.assert_allclose(a @ flat(dw), -c, atol=1e-9)
        p = optax.apply_updates(p, dw)


def test_gauss_newton_matches_dense_eq6(x64):
    params = init_mlp(4)
    batch, xc = data(5)
    x, t = batch
    eta = 0.3

    def residual_fn(p, b):
        return (mlp(p, b[0]) - b[1]).reshape(-1) / np.sqrt(b[0].shape[0])

    tx = kktopt.gauss_newton_kkt(residual_fn, constraint_fn, damping=eta, solver=KKTSolver(system="full", rtol=1e-12))
    state = tx.init(params)
    dw, state = tx.update(None, state, params, residual_batch=batch, constraint_batch=xc)
    fl, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jacobian(lambda f: residual_fn(unravel(f), batch))(fl))
    r = np.asarray(residual_fn(params, batch))
    a, c, _ = dense_system(params, xc)
    ref = kkt_solve(jac.T @ jac + eta * np.eye(fl.size), a, jac.T @ r, c)
    np.testing.assert_allclose(flat(dw), ref, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(float(state.loss), 0.5 * r @ r, rtol=1e-12)


# --------------------------------------------------------------------------
# Invariant 3: no active constraint gives exactly the unconstrained step.
# --------------------------------------------------------------------------


def satisfied_inequality(params, x):
    # -1 - ||y||^2 <= 0 always holds.
    y = mlp(params, x)
    return -1.0 - jnp.sum(y * y, axis=-1)


@pytest.mark.parametrize("name", ["krylov-qlp", "schur-dense"])
def test_no_active_constraint_is_exact_sgd_and_adam(name):
    params = init_mlp(dtype=jnp.float32)
    batch, xc = data(dtype=jnp.float32)
    grads = jax.grad(loss_fn)(params, batch)
    solver = SOLVERS[name]
    hard = optax.chain(optax.sgd(0.1), kktopt.project_kkt(satisfied_inequality, inequality=True, solver=solver))
    # Eager on both sides: the same primitives in the same order, bit for bit.
    dw, state = hard.update(grads, hard.init(params), params, constraint_batch=xc)
    ref, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params), params)
    for u, v in zip(jax.tree_util.tree_leaves(dw), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(u, v)
    assert int(state[1].info.num_active) == 0

    hadam = kktopt.scale_by_adam_kkt(satisfied_inequality, 1e-2, inequality=True, solver=solver)
    adam = optax.adam(1e-2)
    hs, s = hadam.init(params), adam.init(params)
    def hupdate(g, s, p):
        return hadam.update(g, s, p, constraint_batch=xc)

    p = params
    for _ in range(3):
        g = jax.grad(loss_fn)(p, batch)
        du, hs = hupdate(g, hs, p)
        dv, s = adam.update(g, s, p)
        for u, v in zip(jax.tree_util.tree_leaves(du), jax.tree_util.tree_leaves(dv)):
            np.testing.assert_array_equal(u, v)
        p = optax.apply_updates(p, du)


def test_no_active_constraint_gives_levenberg_marquardt_step(x64):
    params = init_mlp(6)
    batch, xc = data(7)
    eta = 0.5

    def residual_fn(p, b):
        return (mlp(p, b[0]) - b[1]).reshape(-1)

    tx = kktopt.gauss_newton_kkt(
        residual_fn, satisfied_inequality, damping=eta, inequality=True, solver=KKTSolver(system="full", rtol=1e-13)
    )
    dw, _ = tx.update(None, tx.init(params), params, residual_batch=batch, constraint_batch=xc)
    fl, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jacobian(lambda f: residual_fn(unravel(f), batch))(fl))
    r = np.asarray(residual_fn(params, batch))
    ref = -np.linalg.solve(jac.T @ jac + eta * np.eye(fl.size), jac.T @ r)
    np.testing.assert_allclose(flat(dw), ref, rtol=1e-9, atol=1e-12)


def test_inequality_projects_only_violated(x64):
    params = init_mlp(8)
    _, xc = data(9, m=6)

    def ineq(p, x):  # ||y||^2 <= 0.2 per sample
        y = mlp(p, x)
        return jnp.sum(y * y, axis=-1) - 0.2

    c = np.asarray(ineq(params, xc))
    assert (c > 0).any() and (c <= 0).any()
    g = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx = optax.chain(optax.sgd(0.1), kktopt.project_kkt(ineq, inequality=True, solver=KKTSolver(method="dense")))
    dw, state = tx.update(g, tx.init(params), params, constraint_batch=xc)
    a, _, _ = dense_system(params, xc, ineq)
    active = c > 0
    ref = -np.linalg.pinv(a[active]) @ c[active]
    np.testing.assert_allclose(flat(dw), ref, rtol=1e-9, atol=1e-12)
    assert int(state[1].info.num_active) == active.sum()


# --------------------------------------------------------------------------
# Invariant 5: rank-deficient constraints give a finite minimum-norm step.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["krylov-qlp", "schur-dense", "schur-qlp"])
def test_duplicated_and_dependent_constraints(x64, name):
    params = init_mlp(10)
    _, xc = data(11, m=2)

    def duplicated(p, x):
        c = constraint_fn(p, x)
        # the same constraints twice, and once more with an incompatible offset
        return jnp.concatenate([c, c, c + 0.05], axis=-1)

    g = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx = optax.chain(optax.sgd(1.0), kktopt.project_kkt(duplicated, solver=SOLVERS[name]))
    dw, _ = tx.update(g, tx.init(params), params, constraint_batch=xc)
    a, c, _ = dense_system(params, xc, duplicated)
    ref = -np.linalg.pinv(a, rcond=1e-10) @ c  # minimum-norm least-squares correction
    assert np.all(np.isfinite(flat(dw)))
    np.testing.assert_allclose(flat(dw), ref, rtol=1e-6, atol=1e-9)


def test_nearly_dependent_constraints_stay_finite(x64):
    params = init_mlp(12)
    _, xc = data(13, m=2)
    eps = 1e-9

    def nearly(p, x):
        c = constraint_fn(p, x)
        return jnp.concatenate([c, (1 + eps) * c + eps], axis=-1)

    g = jax.grad(loss_fn)(params, data(13)[0])
    for solver in (KKTSolver(system="full"), KKTSolver(method="dense")):
        tx = optax.chain(optax.sgd(0.1), kktopt.project_kkt(nearly, solver=solver))
        dw, state = tx.update(g, tx.init(params), params, constraint_batch=xc)
        assert np.all(np.isfinite(flat(dw)))
        assert np.linalg.norm(flat(dw)) < 10.0


# --------------------------------------------------------------------------
# Active subsets.
# --------------------------------------------------------------------------


def test_mine_active_constraints_against_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 6))
    idx = kktopt.mine_active_constraints(jnp.asarray(values), 5)
    ref = np.argsort(-np.median(np.abs(values), axis=1))[:5]
    np.testing.assert_array_equal(np.asarray(idx), ref)
    np.testing.assert_array_equal(jax.jit(kktopt.mine_active_constraints, static_argnums=1)(values, 5), ref)
    with pytest.raises(ValueError, match="k must be"):
        kktopt.mine_active_constraints(values, 21)


def test_mined_selector_projects_on_the_worst_samples(x64):
    params = init_mlp(14)
    _, pool = data(15, m=12)
    g = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx = optax.chain(optax.sgd(1.0), kktopt.project_kkt(constraint_fn, active=mined_samples(4), solver=KKTSolver(method="dense")))
    dw, state = tx.update(g, tx.init(params), params, constraint_batch=pool)
    worst = np.argsort(-np.median(np.abs(np.asarray(constraint_fn(params, pool))), axis=1))[:4]
    a, c, _ = dense_system(params, pool[worst])
    np.testing.assert_allclose(flat(dw), -np.linalg.pinv(a) @ c, rtol=1e-9, atol=1e-12)
    assert int(state[1].info.num_active) == 8


def test_random_selector_is_reproducible_and_advances(x64):
    params = init_mlp(16)
    _, pool = data(17, m=10)
    g = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx = optax.chain(optax.sgd(1.0), kktopt.project_kkt(constraint_fn, active=random_samples(3, seed=5)))
    update = jax.jit(lambda s: tx.update(g, s, params, constraint_batch=pool))  # one compile
    s1 = tx.init(params)
    d1, s2 = update(s1)
    d1b, _ = update(tx.init(params))
    d2, _ = update(s2)
    np.testing.assert_array_equal(flat(d1), flat(d1b))
    assert not np.allclose(flat(d1), flat(d2))


# --------------------------------------------------------------------------
# Invariant 6: jit, chain, inject_hyperparams, vmap over hyperparameters.
# --------------------------------------------------------------------------


def test_inject_hyperparams_and_vmap_over_learning_rates(x64):
    params = init_mlp()
    batch, xc = data()

    def step(lr, params):
        tx = optax.inject_hyperparams(kktopt.scale_by_adam_kkt, static_args=("constraint_fn", "solver"))(
            constraint_fn=constraint_fn, learning_rate=lr, solver=KKTSolver(system="full", rtol=1e-12)
        )
        state = tx.init(params)
        grads = jax.grad(loss_fn)(params, batch)
        dw, state = tx.update(grads, state, params, constraint_batch=xc)
        return dw, state

    lrs = jnp.asarray([1e-3, 1e-2, 1e-1])
    dws, states = jax.jit(jax.vmap(step, in_axes=(0, None)))(lrs, params)
    a, c, _ = dense_system(params, xc)
    for i, lr in enumerate(np.asarray(lrs)):
        ref, _ = jax.jit(step)(lr, params)
        dw_i = flat(jax.tree_util.tree_map(lambda x: x[i], dws))
        np.testing.assert_allclose(dw_i, flat(ref), rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(a @ dw_i, -c, atol=1e-8)
    assert states.hyperparams["learning_rate"].shape == (3,)


def test_inject_hyperparams_project_kkt_chain():
    params = init_mlp(dtype=jnp.float32)
    batch, xc = data(dtype=jnp.float32)
    tx = optax.chain(
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
        kktopt.project_kkt(constraint_fn),
    )
    state = tx.init(params)
    grads = jax.grad(loss_fn)(params, batch)
    dw, state = jax.jit(lambda g, s, p: tx.update(g, s, p, constraint_batch=xc))(grads, state, params)
    a, c, _ = dense_system(params, xc)
    np.testing.assert_allclose(a @ flat(dw), -c, atol=1e-4)


def test_state_structure_and_dtypes_are_stable():
    params = init_mlp(dtype=jnp.float32)
    batch, xc = data(dtype=jnp.float32)

    def residual_fn(p, b):
        return (mlp(p, b[0]) - b[1]).reshape(-1)

    transforms = {
        "project": optax.chain(optax.sgd(0.1), kktopt.project_kkt(constraint_fn, active=random_samples(2))),
        "adam": kktopt.hard_adam(1e-2, constraint_fn, active=mined_samples(2)),
        "gn": kktopt.gauss_newton_kkt(residual_fn, constraint_fn, damping=1.0),
    }
    for name, tx in transforms.items():
        state = tx.init(params)
        grads = jax.grad(loss_fn)(params, batch)

        def update(s):
            return tx.update(grads, s, params, constraint_batch=xc, residual_batch=batch)[1]

        # As optax's own test: the updated state must fit the init state's slot in lax.cond.
        new_state = jax.lax.cond(True, update, lambda s: s, state)
        assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state), name
        for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
            assert a.dtype == b.dtype and a.shape == b.shape, name


def test_soft_constrained_loss():
    params = init_mlp(dtype=jnp.float32)
    batch, xc = data(dtype=jnp.float32)
    lam = 3.0
    soft = kktopt.soft_constrained_loss(loss_fn, constraint_fn, lam)
    c = np.asarray(constraint_fn(params, xc))
    np.testing.assert_allclose(soft(params, batch, xc), loss_fn(params, batch) + lam * np.sum(c**2), rtol=1e-6)
    # per-constraint weights, and vmap over lambda
    soft_j = kktopt.soft_constrained_loss(loss_fn, constraint_fn, jnp.asarray([1.0, 0.0]))
    np.testing.assert_allclose(soft_j(params, batch, xc), loss_fn(params, batch) + np.sum(c[:, 0] ** 2), rtol=1e-6)
    lams = jnp.asarray([0.0, 1.0, 10.0])
    vals = jax.vmap(lambda l: kktopt.soft_constrained_loss(loss_fn, constraint_fn, l)(params, batch, xc))(lams)
    np.testing.assert_allclose(vals, loss_fn(params, batch) + np.asarray(lams) * np.sum(c**2), rtol=1e-6)


# --------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------


def test_clear_errors():
    params = init_mlp(dtype=jnp.float32)
    batch, xc = data(dtype=jnp.float32)
    g = jax.grad(loss_fn)(params, batch)
    tx = kktopt.project_kkt(constraint_fn)
    state = tx.init(params)
    with pytest.raises(ValueError, match="constraint_batch"):
        tx.update(g, state, params)
    with pytest.raises(ValueError, match="params"):
        tx.update(g, state, None, constraint_batch=xc)
    bad = kktopt.project_kkt(lambda p, x: (constraint_fn(p, x), constraint_fn(p, x)))
    with pytest.raises(TypeError, match="one array"):
        bad.update(g, bad.init(params), params, constraint_batch=xc)
    bad = kktopt.project_kkt(lambda p, x: (constraint_fn(p, x) > 0).astype(jnp.int32))
    with pytest.raises(TypeError, match="floating"):
        bad.update(g, bad.init(params), params, constraint_batch=xc)
    with pytest.raises(TypeError, match="solver"):
        kktopt.project_kkt(constraint_fn, solver="minres")
    with pytest.raises(TypeError, match="selector"):
        kktopt.project_kkt(constraint_fn, active=4)
    with pytest.raises(ValueError, match="needs at least"):
        tx = kktopt.project_kkt(constraint_fn, active=random_samples(10))
        tx.update(g, tx.init(params), params, constraint_batch=xc)
    with pytest.raises(ValueError, match="Schur"):
        kktopt.gauss_newton_kkt(lambda p, b: p["b2"], constraint_fn, damping=1.0, solver=KKTSolver(method="dense"))
    with pytest.raises(ValueError, match="jacobian"):
        kktopt.project_kkt(constraint_fn, solver=KKTSolver(jacobian="dense"))
    bad = kktopt.project_kkt(lambda p, x: constraint_fn(p, x).T, solver=KKTSolver(jacobian="per_sample"))
    with pytest.raises(ValueError, match="sample axis"):
        bad.update(g, bad.init(params), params, constraint_batch=xc)
    with pytest.raises(ValueError, match="damping"):
        kktopt.gauss_newton_kkt(lambda p, b: p["b2"], constraint_fn, damping=0.0)


# --------------------------------------------------------------------------
# Invariant 7: a sharded constraint batch gives the single-device step.
# --------------------------------------------------------------------------

SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax, kktopt
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(3, 16))), "w2": jnp.asarray(rng.normal(size=(16, 2)))}
    def cfn(p, x):
        y = jnp.tanh(x @ p["w1"]) @ p["w2"]
        return jnp.stack([jnp.sum(y * y, -1) - 1.0, y[:, 0] - y[:, 1]], -1)
    x = jnp.asarray(rng.normal(size=(8, 3)))
    xb = jnp.asarray(rng.normal(size=(16, 3)))
    def loss(p, xb):
        return jnp.sum(jnp.tanh(xb @ p["w1"]) @ p["w2"])
    def step(p, xb, x, solver):
        tx = optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn, solver=solver))
        g = jax.grad(loss)(p, xb)
        return tx.update(g, tx.init(p), p, constraint_batch=x)[0]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shard = NamedSharding(mesh, P("data"))
    # Sums are reduced in another order across devices, so the two agree to
    # the accuracy of the solve: rounding-level for the dense Schur solver,
    # the Krylov tolerance (relative to the preconditioned system) otherwise.
    for solver, tol in ((kktopt.KKTSolver(system="full", rtol=1e-12), 1e-8), (kktopt.KKTSolver(method="dense"), 1e-12)):
        f = jax.jit(step, static_argnums=3)
        single = f(params, xb, x, solver)
        sharded = f(params, jax.device_put(xb, shard), jax.device_put(x, shard), solver)
        for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(sharded)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)
    print("SHARDING-OK")
    """
)


def test_sharded_constraint_batch_matches_single_device(tmp_path):
    script = tmp_path / "sharding.py"
    script.write_text(SHARDING_SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDING-OK" in out.stdout
