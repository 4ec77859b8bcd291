"""The blocked Gram matrix, the rows' rounding floor (constraints met to the last bit) and
``KKTSolver(reuse=...)``, each against a dense numpy reference, in float32 and float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kktopt
from kktopt.kkt import KKTStatus
from kktopt.kkt._schur import _GRAM_BLOCK, _gram

DTYPES = [jnp.float32, jnp.float64]
TOL = {jnp.float32: 1e-5, jnp.float64: 1e-12}


@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_gram_matches_numpy(dtype):
    """Two full column blocks and a tail, with and without column scaling."""
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(0)
        n = 2 * _GRAM_BLOCK + 37
        a, s = rng.normal(size=(5, n)), rng.uniform(0.1, 2.0, size=n)
        b = a * s
        cases = [((), a @ a.T), ((s,), b @ b.T)]
        for args, ref in cases:
            got = jax.jit(_gram)(*(jnp.asarray(x, dtype) for x in (a,) + args))
            np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=TOL[dtype] * 10,
                                       atol=TOL[dtype] * 10 * np.abs(ref).max())
        small = jnp.asarray(a[:, :100], dtype)  # fewer than two blocks: one product
        np.testing.assert_allclose(np.asarray(_gram(small), np.float64), a[:, :100] @ a[:, :100].T,
                                   rtol=TOL[dtype] * 10)


def _linear_rows(dtype, m=6, n=40, seed=1):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(m, n)), dtype)
    w0 = jnp.asarray(rng.normal(size=n), dtype)
    u = jnp.asarray(rng.normal(size=n), dtype)
    return x, w0, u


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["dense", "minres_qlp"])
def test_equalities_met_to_the_last_bit_still_project(dtype, method):
    """``c = 0`` exactly on active equality rows: the step is the tangent projection of u, and a success.

    Before, ``||c|| = 0`` read as "no active constraint" (status NO_ACTIVE,
    residual 0 whatever the step did) and the rounds ran to their limit
    against a target of 0. Now the rows are met when
    ``||A dw + c|| <= rtol ||c|| + 4 eps (||c|| + ||A u||)``.
    """
    with jax.enable_x64(dtype == jnp.float64):
        x, w0, u = _linear_rows(dtype)
        cfn = lambda w, xb: xb @ w - xb @ w0  # noqa: E731  (exactly 0 at w = w0)
        tx = kktopt.project_kkt(cfn, solver=kktopt.KKTSolver(method=method))
        dw, state = jax.jit(lambda: tx.update(u, tx.init(w0), w0, constraint_batch=x))()
        info = kktopt.get_kkt_info(state)
        assert float(info.violation_norm) == 0.0
        assert int(info.status) == KKTStatus.SOLVED, info.describe()
        assert int(info.refinements) <= 1
        a, u64 = np.asarray(x, np.float64), np.asarray(u, np.float64)
        ref = u64 - np.linalg.pinv(a) @ (a @ u64)  # the projection onto null(A)
        err = np.linalg.norm(np.asarray(dw, np.float64) - ref) / np.linalg.norm(ref)
        assert err <= (1e-4 if dtype == jnp.float32 else 1e-10), err
        assert np.linalg.norm(a @ np.asarray(dw, np.float64)) <= 100 * np.finfo(dtype).eps * np.linalg.norm(a @ u64)
        # As inequalities the same rows (C = 0 <= 0) are satisfied, hence inactive: dw is u exactly.
        ineq = kktopt.project_kkt(cfn, inequality=True)
        dw, state = ineq.update(u, ineq.init(w0), w0, constraint_batch=x)
        assert int(kktopt.get_kkt_info(state).status) == KKTStatus.NO_ACTIVE
        np.testing.assert_array_equal(np.asarray(dw), np.asarray(u))


def _spheres(dtype, d=60, m=8, seed=2):
    """m nearly identical spheres of radius 1 (the hypersphere experiment in small), x0 outside them."""
    rng = np.random.default_rng(seed)
    centres = jnp.asarray(0.05 * rng.normal(size=(m, d)) / np.sqrt(d), dtype)
    z = rng.normal(size=d)
    x0 = jnp.asarray(1.5 * z / np.linalg.norm(z), dtype)
    cfn = lambda w, c: jnp.sqrt(jnp.sum((w - c) ** 2, axis=-1)) - 1.0  # noqa: E731
    return centres, x0, cfn


def _trajectory(tx, w, x0, centres, steps):
    def body(carry, _):
        w, state = carry
        u, state = tx.update(w - x0, state, w, constraint_batch=centres)  # gradient of 1/2 ||w - x0||^2
        info = kktopt.get_kkt_info(state)
        age = state[1].kkt_cache.age if state[1].kkt_cache != () else jnp.zeros((), jnp.int32)
        return (w + u, state), (w + u, info.status, age)

    return jax.jit(lambda w: jax.lax.scan(body, (w, tx.init(w)), None, length=steps))(w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reuse_takes_the_same_steps_with_a_lagged_factor(dtype):
    """All rows active on a fixed pool: the steps of ``reuse=3`` equal those of a fresh factor per step.

    A step reuses the previous factor (its age grows by one, at most to 3)
    or forms a new one (age 0): at the first steps, where w moves far, the
    lagged rounds miss the rows and the step refactors; near the solution it
    reuses. Every step meets its rows (status SOLVED).
    """
    with jax.enable_x64(dtype == jnp.float64):
        centres, x0, cfn = _spheres(dtype)
        m, steps = centres.shape[0], 10

        def hard(solver):
            return optax.chain(optax.sgd(0.5), kktopt.project_kkt(cfn, solver=solver))

        (_, _), (w_ref, status_ref, _) = _trajectory(hard(kktopt.KKTSolver(method="dense")), x0, x0, centres, steps)
        reuse = kktopt.KKTSolver(method="dense", reuse=3, reuse_rows=m)
        (w_end, state), (ws, status, ages) = _trajectory(hard(reuse), x0, x0, centres, steps)
        assert np.all(np.asarray(status) == KKTStatus.SOLVED) and np.all(np.asarray(status_ref) == KKTStatus.SOLVED)
        ages = np.asarray(ages)
        assert ages[0] == 0 and ages.max() <= 3 and np.sum(ages > 0) >= 4, ages
        assert np.all((ages[1:] == 0) | (ages[1:] == ages[:-1] + 1)), ages
        scale = float(jnp.max(jnp.abs(w_ref)))
        np.testing.assert_allclose(np.asarray(ws), np.asarray(w_ref), atol=(2e-5 if dtype == jnp.float32 else 1e-10) * scale)
        assert float(jnp.max(jnp.abs(cfn(w_end, centres)))) <= (1e-5 if dtype == jnp.float32 else 1e-12)
        cache = state[1].kkt_cache
        np.testing.assert_array_equal(np.asarray(cache.rows), np.arange(m))


def test_reuse_refactors_when_the_rows_change_and_under_vmap(x64):
    """Random subsets: another draw is another set of rows, so every new set is factored afresh;
    ``jax.vmap`` over the learning rate runs both branches and gives the unbatched steps."""
    centres, x0, cfn = _spheres(jnp.float64, m=12)
    k = 3
    solver = kktopt.KKTSolver(method="dense", jacobian="per_sample", reuse=5, reuse_rows=k)
    tx = lambda lr: optax.chain(optax.sgd(lr), kktopt.project_kkt(  # noqa: E731
        cfn, active=kktopt.active.random_samples(k, seed=0), solver=solver))
    _, (_, status, ages) = _trajectory(tx(0.5), x0, x0, centres, 6)
    assert np.all(np.asarray(status) == KKTStatus.SOLVED)
    assert np.asarray(ages)[0] == 0 and np.all(np.asarray(ages) <= 5)

    def final(lr):
        (w, _), _ = _trajectory(tx(lr), x0, x0, centres, 4)
        return w

    batched = jax.vmap(final)(jnp.asarray([0.25, 0.5]))
    for i, lr in enumerate([0.25, 0.5]):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(final(lr)), rtol=1e-9, atol=1e-10)


def test_reuse_settings_are_checked():
    with pytest.raises(ValueError, match="reuse_rows"):
        kktopt.KKTSolver(method="dense", reuse=2)
    with pytest.raises(ValueError, match="method='dense'"):
        kktopt.KKTSolver(method="minres_qlp", reuse=2, reuse_rows=4)
    with pytest.raises(ValueError, match="non-negative integer"):
        kktopt.KKTSolver(reuse=-1)
    centres, x0, cfn = _spheres(jnp.float32)
    tx = kktopt.project_kkt(cfn, solver=kktopt.KKTSolver(method="dense", reuse=2, reuse_rows=5))
    with pytest.raises(ValueError, match="has 8 constraint rows"):
        tx.update(x0, tx.init(x0), x0, constraint_batch=centres)
    assert kktopt.project_kkt(cfn).init(x0).kkt_cache == ()
