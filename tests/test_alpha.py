"""The feedback gain ``alpha`` of every hard transform: ``A dw = -alpha c`` (dense numpy references)."""

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


def mlp(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]


def cfn(p, x):
    y = mlp(p, x)
    return jnp.stack([jnp.sum(y * y, -1) - 1.0, y[:, 0] * y[:, 1] - 0.1], -1)


def residual_fn(p, batch):
    x, t = batch
    return (mlp(p, x) - t).reshape(-1)


def setup(dtype):
    rng = np.random.default_rng(0)
    p = {
        "w1": jnp.asarray(rng.normal(size=(3, 6)) / np.sqrt(3), dtype),
        "b1": jnp.asarray(0.1 * rng.normal(size=6), dtype),
        "w2": jnp.asarray(rng.normal(size=(6, 2)) / np.sqrt(6), dtype),
    }
    g = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape), dtype), p)
    xc = jnp.asarray(rng.normal(size=(3, 3)), dtype)
    batch = (jnp.asarray(rng.normal(size=(4, 3)), dtype), jnp.asarray(rng.normal(size=(4, 2)), dtype))
    return p, g, xc, batch


def dense(p, xc):
    flat, unravel = ravel_pytree(p)
    a = np.asarray(jax.jacobian(lambda f: cfn(unravel(f), xc).reshape(-1))(flat), np.float64)
    c = np.asarray(cfn(p, xc), np.float64).reshape(-1)
    return a, c


TOL = {jnp.float64: 1e-9, jnp.float32: 2e-3}


def transforms(alpha, dtype):
    tight = KKTSolver(rtol=1e-12) if dtype == jnp.float64 else None
    full = KKTSolver(system="full", rtol=1e-12) if dtype == jnp.float64 else None
    return {
        "project_kkt": optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn, solver=tight, alpha=alpha)),
        "hard_sgd": kktopt.hard_sgd(0.1, cfn, solver=tight, alpha=alpha),
        "hard_adam": kktopt.hard_adam(0.1, cfn, solver=tight, alpha=alpha),
        "scale_by_adam_kkt": kktopt.scale_by_adam_kkt(cfn, 0.1, solver=tight, alpha=alpha),
        "gauss_newton_kkt": kktopt.gauss_newton_kkt(residual_fn, cfn, damping=1e-2, solver=full, alpha=alpha),
        "sqp_momentum": sqp_momentum(0.1, cfn, solver=tight, alpha=alpha),
        "sqp_adam": sqp_adam(0.1, cfn, solver=tight, alpha=alpha),
    }


def step(tx, p, g, xc, batch):
    return jax.jit(tx.update)(g, tx.init(p), p, constraint_batch=xc, residual_batch=batch)


CASES = [(n, jnp.float64) for n in sorted(transforms(0.5, jnp.float32))] + [
    (n, jnp.float32) for n in ("hard_sgd", "gauss_newton_kkt", "sqp_adam")
]


@pytest.mark.parametrize("name,dtype", CASES)
def test_half_gain_meets_half_the_violation(name, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        p, g, xc, batch = setup(dtype)
        a, c = dense(p, xc)
        u, state = step(transforms(0.5, dtype)[name], p, g, xc, batch)
        r = a @ np.asarray(ravel_pytree(u)[0], np.float64) + 0.5 * c
        assert np.linalg.norm(r) <= TOL[dtype] * np.linalg.norm(c)
        info = kktopt.get_kkt_info(state)
        np.testing.assert_allclose(float(info.violation_norm), np.linalg.norm(c), rtol=TOL[dtype])
        assert float(info.linearized_residual) <= 10 * TOL[dtype]


def test_half_gain_step_is_the_dense_closest_step(x64):
    p, g, xc, _ = setup(jnp.float64)
    a, c = dense(p, xc)
    u, _ = step(kktopt.hard_sgd(0.1, cfn, solver=KKTSolver(rtol=1e-12), alpha=0.5), p, g, xc, None)
    v = -0.1 * np.asarray(ravel_pytree(g)[0])
    ref = v - a.T @ np.linalg.pinv(a @ a.T) @ (a @ v + 0.5 * c)
    np.testing.assert_allclose(np.asarray(ravel_pytree(u)[0]), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["hard_sgd", "hard_adam", pytest.param("gauss_newton_kkt", marks=pytest.mark.slow), "sqp_adam"]
)
def test_alpha_one_is_bit_identical_to_the_default(name):
    p, g, xc, batch = setup(jnp.float32)
    default = {
        "hard_sgd": kktopt.hard_sgd(0.1, cfn),
        "hard_adam": kktopt.hard_adam(0.1, cfn),
        "gauss_newton_kkt": kktopt.gauss_newton_kkt(residual_fn, cfn, damping=1e-2),
        "sqp_adam": sqp_adam(0.1, cfn),
    }[name]
    u0, s0 = step(default, p, g, xc, batch)
    u1, s1 = step(transforms(1.0, jnp.float32)[name], p, g, xc, batch)
    for x, y in zip(jax.tree_util.tree_leaves((u0, s0)), jax.tree_util.tree_leaves((u1, s1))):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_traced_alpha_one_matches_the_default_under_jit():
    p, g, xc, _ = setup(jnp.float32)
    tx0 = kktopt.hard_adam(0.1, cfn, solver=KKTSolver(method="dense", jacobian="per_sample"))
    u0, _ = jax.jit(tx0.update)(g, tx0.init(p), p, constraint_batch=xc)
    tx1 = kktopt.hard_adam(0.1, cfn, solver=KKTSolver(method="dense", jacobian="per_sample"), alpha=jnp.float32(1))
    u1, _ = jax.jit(tx1.update)(g, tx1.init(p), p, constraint_batch=xc)
    np.testing.assert_allclose(ravel_pytree(u0)[0], ravel_pytree(u1)[0], rtol=1e-6, atol=1e-6)


def test_alpha_vmap_and_inject_hyperparams(x64):
    p, g, xc, _ = setup(jnp.float64)
    a, c = dense(p, xc)
    alphas = jnp.array([0.25, 0.5, 1.0])

    def one(alpha):
        tx = kktopt.hard_adam(0.1, cfn, solver=KKTSolver(rtol=1e-12), alpha=alpha)
        return tx.update(g, tx.init(p), p, constraint_batch=xc)[0]

    us = jax.jit(jax.vmap(one))(alphas)
    for k, alpha in enumerate(np.asarray(alphas)):
        u = np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda v: v[k], us))[0])
        np.testing.assert_allclose(a @ u, -alpha * c, rtol=1e-8, atol=1e-10)

    tx = optax.inject_hyperparams(scale_by_sqp_adam, static_args="constraint_fn")(
        cfn, learning_rate=0.1, alpha=0.5, solver=KKTSolver(rtol=1e-12))
    state = tx.init(p)
    state.hyperparams["alpha"] = jnp.asarray(0.25)
    u, _ = jax.jit(tx.update)(g, state, p, constraint_batch=xc)
    np.testing.assert_allclose(a @ np.asarray(ravel_pytree(u)[0]), -0.25 * c, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_alpha_out_of_range_is_an_error(bad):
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\]"):
        kktopt.hard_sgd(0.1, cfn, alpha=bad)
    with pytest.raises(ValueError, match="alpha"):
        sqp_momentum(0.1, cfn, alpha=bad)


def test_alpha_of_wrong_type_is_an_error():
    with pytest.raises(TypeError, match="alpha must be a number"):
        kktopt.project_kkt(cfn, alpha="half")
