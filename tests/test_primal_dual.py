"""Augmented Lagrangian with per-sample multipliers against a numpy implementation of its documented update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import kktopt
from kktopt.active import random_samples
from kktopt.transforms import augmented_lagrangian
from test_alpha import cfn, setup

POOL = 6


def pool_inputs(dtype):
    return jnp.asarray(np.random.default_rng(3).normal(size=(POOL, 3)), dtype)


def jac(p, x):
    flat, unravel = ravel_pytree(p)
    a = np.asarray(jax.jacobian(lambda f: cfn(unravel(f), x).reshape(-1))(flat), np.float64)
    return a, np.asarray(cfn(p, x), np.float64)


def numpy_run(p, grads, pool, steps, rho, dual_lr, kp, ki, nu, order, inequality):
    lam, xi, seen = np.zeros((POOL, 2)), np.zeros((POOL, 2)), np.zeros((POOL, 2), bool)
    outs = []
    for g, idx in zip(grads, steps):
        a, c = jac(p, pool[idx])
        l0 = lam[idx]
        xi_new = nu * xi[idx] + (1 - nu) * c
        prop = np.where(seen[idx], (1 - nu) * (c - xi[idx]), 0)
        l1 = l0 + dual_lr * (ki * c + kp * prop)
        if inequality:
            l1 = np.maximum(l1, 0)
        lp = l1 if order == "dual_first" else l0
        w = np.maximum(lp + rho * c, 0) if inequality else lp + rho * c
        out = np.asarray(ravel_pytree(g)[0], np.float64) + a.T @ w.reshape(-1)
        lam[idx], xi[idx], seen[idx] = l1, xi_new, True
        outs.append(out)
        p = jax.tree_util.tree_map(lambda v, d: v - 0.05 * d, p, ravel_pytree(p)[1](jnp.asarray(out, ravel_pytree(p)[0].dtype)))
    return outs, lam


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize(
    "order,inequality,kp,nu", [("simultaneous", False, 0.0, 0.0), ("dual_first", False, 1.5, 0.3),
                               ("simultaneous", True, 0.5, 0.0)],
)
def test_matches_numpy(dtype, order, inequality, kp, nu):
    tol = 1e-10 if dtype == jnp.float64 else 1e-4
    with jax.enable_x64(dtype == jnp.float64):
        p, g, _, _ = setup(dtype)
        pool = pool_inputs(dtype)
        grads = [g, jax.tree_util.tree_map(lambda v: 0.5 * v, g), g]
        steps = [np.array([0, 2, 3]), np.array([2, 0, 1]), np.array([3, 1, 4])]  # overlapping samples
        hp = dict(penalty=0.7, dual_lr=0.4, kp=kp, ki=0.9, ema_nu=nu)
        tx = optax.chain(
            augmented_lagrangian(cfn, POOL, (2,), order=order, inequality=inequality, **hp), optax.sgd(0.05))
        update = jax.jit(tx.update)
        state, q, outs = tx.init(p), p, []
        for gk, idx in zip(grads, steps):
            u, state = update(gk, state, q, constraint_batch=pool[idx], constraint_indices=jnp.asarray(idx))
            outs.append(-np.asarray(ravel_pytree(u)[0], np.float64) / 0.05)
            q = optax.apply_updates(q, u)
        ref, lam = numpy_run(p, grads, pool, steps, hp["penalty"], hp["dual_lr"], kp, hp["ki"], nu, order, inequality)
        for o, r in zip(outs, ref):
            np.testing.assert_allclose(o, r, rtol=tol, atol=tol * np.abs(r).max())
        np.testing.assert_allclose(np.asarray(state[0].multipliers), lam, rtol=tol, atol=tol)
        assert np.all(np.asarray(state[0].multipliers)[5] == 0)  # never among the step's samples
        if inequality:
            assert np.all(np.asarray(state[0].multipliers) >= 0)


def test_selector_updates_only_chosen_samples_and_chains_with_projection(x64):
    p, g, _, _ = setup(jnp.float64)
    pool = pool_inputs(jnp.float64)
    al = augmented_lagrangian(cfn, POOL, (2,), active=random_samples(2, seed=1))
    tx = optax.chain(al, kktopt.hard_adam(0.01, cfn, solver=kktopt.KKTSolver(rtol=1e-12)))
    u, state = jax.jit(tx.update)(g, tx.init(p), p, constraint_batch=pool)
    chosen = np.asarray(state[0].active.indices)
    lam = np.asarray(state[0].multipliers)
    others = np.setdiff1d(np.arange(POOL), chosen)
    assert np.all(lam[others] == 0) and np.all(lam[chosen] != 0)
    np.testing.assert_allclose(lam[chosen], np.asarray(cfn(p, pool[chosen])), rtol=1e-12)
    a, c = jac(p, pool)  # the projection (all pool samples) still holds exactly
    np.testing.assert_allclose(a @ np.asarray(ravel_pytree(u)[0]), -c.reshape(-1), rtol=1e-8, atol=1e-10)


def test_vmap_over_dual_lr_and_inject_hyperparams(x64):
    p, g, _, _ = setup(jnp.float64)
    pool = pool_inputs(jnp.float64)
    idx = jnp.array([1, 4])
    c = np.asarray(cfn(p, pool[idx]))

    def one(dual_lr):
        tx = augmented_lagrangian(cfn, POOL, (2,), dual_lr=dual_lr)
        return tx.update(g, tx.init(p), p, constraint_batch=pool[idx], constraint_indices=idx)[1].multipliers

    lams = jax.jit(jax.vmap(one))(jnp.array([0.1, 1.0]))
    np.testing.assert_allclose(np.asarray(lams)[:, [1, 4]], np.stack([0.1 * c, c]), rtol=1e-12)
    tx = optax.inject_hyperparams(augmented_lagrangian, static_args=("constraint_fn", "pool_size"))(
        cfn, POOL, (2,), penalty=0.5, dual_lr=0.3)
    _, state = jax.jit(tx.update)(g, tx.init(p), p, constraint_batch=pool[idx], constraint_indices=idx)
    np.testing.assert_allclose(np.asarray(state.inner_state.multipliers)[[1, 4]], 0.3 * c, rtol=1e-12)


def test_bad_input_names_the_fix():
    p, g, _, _ = setup(jnp.float32)
    pool = pool_inputs(jnp.float32)
    with pytest.raises(TypeError, match="pool_size must be a positive Python int"):
        augmented_lagrangian(cfn, 0)
    with pytest.raises(ValueError, match="order must be one of"):
        augmented_lagrangian(cfn, POOL, (2,), order="alternating")
    with pytest.raises(ValueError, match="ema_nu"):
        augmented_lagrangian(cfn, POOL, (2,), ema_nu=1.0)
    tx = augmented_lagrangian(cfn, POOL, ())
    with pytest.raises(ValueError, match="Set constraint_shape"):
        tx.update(g, tx.init(p), p, constraint_batch=pool[:2], constraint_indices=jnp.array([0, 1]))
    tx = augmented_lagrangian(cfn, POOL, (2,))
    with pytest.raises(ValueError, match="whole pool"):
        tx.update(g, tx.init(p), p, constraint_batch=pool[:2])
    with pytest.raises(ValueError, match="constraint inputs"):
        tx.update(g, tx.init(p), p)
