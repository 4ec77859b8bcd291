"""Projected momentum (SQP-heavy-ball, SQP-Adam) against numpy implementations of the documented updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import kktopt
from kktopt import KKTSolver
from kktopt.transforms import scale_by_sqp_adam, sqp_adam, sqp_momentum
from test_alpha import cfn, dense, setup

TOL = {jnp.float64: 1e-8, jnp.float32: 5e-3}


def solver(dtype):
    return KKTSolver(rtol=1e-12) if dtype == jnp.float64 else None


def flat(t):
    return np.asarray(ravel_pytree(t)[0], np.float64)


def run(tx, p, grads, xc):
    """Two steps (the parameters move between them); returns the updates and the last state."""
    update = jax.jit(tx.update)
    state, out = tx.init(p), []
    for g in grads:
        u, state = update(g, state, p, constraint_batch=xc)
        out.append(u)
        p = optax.apply_updates(p, u)
    return out, state


def two_gradients(g):
    return [g, jax.tree_util.tree_map(lambda v: -0.5 * v + 0.3, g)]


def params_along(p, updates):
    ps = [p]
    for u in updates[:-1]:
        ps.append(optax.apply_updates(ps[-1], u))
    return ps


@pytest.mark.parametrize("dtype,alpha", [(jnp.float64, 1.0), (jnp.float64, 0.5), (jnp.float32, 0.5)])
def test_sqp_momentum_matches_numpy(dtype, alpha):
    with jax.enable_x64(dtype == jnp.float64):
        p, g, xc, _ = setup(dtype)
        grads = two_gradients(g)
        lr, beta = 0.1, 0.7
        us, state = run(sqp_momentum(lr, cfn, momentum=beta, alpha=alpha, solver=solver(dtype)), p, grads, xc)
        m = 0
        for pk, gk, uk in zip(params_along(p, us), grads, us):
            a, c = dense(pk, xc)
            inv = np.linalg.pinv(a @ a.T)
            proj = flat(gk) - a.T @ inv @ (a @ flat(gk))
            m = beta * m + proj
            v = -lr * m
            ref = v - a.T @ inv @ (a @ v + alpha * c)
            np.testing.assert_allclose(flat(uk), ref, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(ref).max())
        assert int(state.projection.iterations) >= 0 and int(state.count) == 2


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_sqp_adam_matches_numpy(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        p, g, xc, _ = setup(dtype)
        grads = two_gradients(g)
        lr, b1, b2, eps, alpha = 0.05, 0.9, 0.99, 1e-8, 0.5
        tx = sqp_adam(lr, cfn, b1, b2, eps, alpha=alpha, solver=solver(dtype))
        us, _ = run(tx, p, grads, xc)
        mu = nu = 0
        for t, (pk, gk, uk) in enumerate(zip(params_along(p, us), grads, us), start=1):
            a, c = dense(pk, xc)
            pg = flat(gk) - a.T @ np.linalg.pinv(a @ a.T) @ (a @ flat(gk))
            mu = b1 * mu + (1 - b1) * pg
            nu = b2 * nu + (1 - b2) * pg**2
            d = np.sqrt(nu / (1 - b2**t)) + eps
            v = -lr * (mu / (1 - b1**t)) / d
            ad = a / d
            ref = v - (ad.T @ np.linalg.pinv(ad @ a.T) @ (a @ v + alpha * c))
            np.testing.assert_allclose(flat(uk), ref, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(ref).max())
            np.testing.assert_allclose(a @ flat(uk), -alpha * c, atol=10 * TOL[dtype] * np.abs(c).max())


def test_zero_momentum_is_hard_sgd(x64):
    p, g, xc, _ = setup(jnp.float64)
    u0, _ = run(sqp_momentum(0.1, cfn, momentum=0.0, solver=KKTSolver(rtol=1e-12)), p, [g], xc)
    u1, _ = run(kktopt.hard_sgd(0.1, cfn, solver=KKTSolver(rtol=1e-12)), p, [g], xc)
    np.testing.assert_allclose(flat(u0[0]), flat(u1[0]), rtol=1e-9, atol=1e-12)


def test_no_active_constraint_is_optax_adam(x64):
    p, g, xc, _ = setup(jnp.float64)
    grads = two_gradients(g)
    inactive = lambda w, x: cfn(w, x) - 100.0  # noqa: E731  (satisfied inequalities)
    us, state = run(scale_by_sqp_adam(inactive, 0.1, inequality=True), p, grads, xc)
    adam = optax.adam(0.1)
    s = adam.init(p)
    for gk, uk in zip(grads, us):
        r, s = adam.update(gk, s, p)
        np.testing.assert_allclose(flat(uk), flat(r), rtol=1e-12, atol=1e-15)
    assert int(kktopt.get_kkt_info(state).num_active) == 0


def test_vmap_over_learning_rate_and_inject_hyperparams(x64):
    p, g, xc, _ = setup(jnp.float64)
    a, c = dense(p, xc)

    def one(lr):
        tx = sqp_adam(lr, cfn, solver=KKTSolver(rtol=1e-12))
        return tx.update(g, tx.init(p), p, constraint_batch=xc)[0]

    lrs = jnp.array([0.01, 0.1])
    us = jax.jit(jax.vmap(one))(lrs)
    single = flat(jax.jit(one)(lrs[1]))
    for k in range(2):
        u = flat(jax.tree_util.tree_map(lambda v: v[k], us))
        np.testing.assert_allclose(a @ u, -c, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(u, single, rtol=1e-9, atol=1e-12)
    tx = optax.inject_hyperparams(sqp_momentum, static_args="constraint_fn")(
        learning_rate=0.1, constraint_fn=cfn, momentum=0.5, alpha=0.5)
    u, state = jax.jit(tx.update)(g, tx.init(p), p, constraint_batch=xc)
    np.testing.assert_allclose(a @ flat(u), -0.5 * c, rtol=1e-5, atol=1e-7)
    assert kktopt.get_kkt_info(state) is not None
