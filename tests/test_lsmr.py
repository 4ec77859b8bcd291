"""LSMR and the dense minimum-norm solve for rectangular A, against numpy pinv / lstsq and scipy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as sp_linalg

from kktopt.krylov import Stop, lsmr, min_norm_factor, min_norm_solve

DTYPES = [jnp.float64, jnp.float32]
# tolerance on the relative error of x against pinv(A) b, per dtype
XTOL = {jnp.float64: 1e-9, jnp.float32: 2e-4}
# pinv cut-off of the references: rounding A to float32 lifts its zero singular values to ~1e-6
REF_RCOND = {jnp.float64: 1e-10, jnp.float32: 1e-4}


def rel_err(x, ref):
    x = np.asarray(x, np.float64)
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300)


def wide_with_cond(m, n, cond, seed):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(m, m)))
    v, _ = np.linalg.qr(rng.normal(size=(n, m)))
    return (u * np.logspace(0, -np.log10(cond), m)) @ v.T


def problems(seed=0):
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(12, 4)) @ rng.normal(size=(4, 30))
    dup = rng.normal(size=(6, 25))
    return {
        "wide": (rng.normal(size=(12, 40)), rng.normal(size=12)),
        "rank_deficient": (low, rng.normal(size=12)),  # incompatible: b not in range
        "duplicated_rows": (np.vstack([dup, dup]), rng.normal(size=12)),  # incompatible
        "tall": (rng.normal(size=(30, 8)), rng.normal(size=30)),  # overdetermined LS
    }


def as_dtype(a, b, dtype):
    """The problem rounded to dtype, and its float64 copy (the reference sees the same numbers)."""
    aj, bj = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    return aj, bj, np.asarray(aj, np.float64), np.asarray(bj, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(problems()))
def test_lsmr_matches_pinv_and_scipy(x64, name, dtype):
    a, b = problems()[name]
    aj, bj, a64, b64 = as_dtype(a, b, dtype)
    ref = np.linalg.pinv(a64, rcond=REF_RCOND[dtype]) @ b64
    x, info = jax.jit(lambda a, b: lsmr(a, None, b))(aj, bj)
    assert x.dtype == dtype
    assert rel_err(x, ref) <= XTOL[dtype], (name, info.describe())
    np.testing.assert_allclose(np.linalg.lstsq(a64, b64, rcond=REF_RCOND[dtype])[0], ref, atol=1e-10)
    assert bool(info.success), info.describe()
    compatible = name == "wide"
    assert int(info.istop) in ((Stop.SOLVED_RTOL, Stop.SOLVED_EPS) if compatible else (Stop.LEAST_SQUARES_RTOL, Stop.LEAST_SQUARES_EPS))
    # scipy's LSMR on the same float64 problem agrees (float64 only: on the
    # float32-rounded rank-deficient matrix it resolves the ~1e-6 singular values)
    if dtype == jnp.float64:
        xs = sp_linalg.lsmr(a64, b64, atol=1e-12, btol=1e-12, maxiter=200)[0]
        assert rel_err(x, xs) <= XTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_lsmr_damped_matches_scipy(x64, dtype):
    a, b = problems()["rank_deficient"]
    aj, bj, a64, b64 = as_dtype(a, b, dtype)
    damp = 0.3
    ref = np.linalg.solve(a64.T @ a64 + damp**2 * np.eye(a64.shape[1]), a64.T @ b64)
    x, info = lsmr(aj, None, bj, damp=damp)
    assert rel_err(x, ref) <= XTOL[dtype], info.describe()
    xs = sp_linalg.lsmr(a64, b64, damp=damp, atol=1e-12, btol=1e-12)[0]
    assert rel_err(xs, ref) <= 1e-9
    assert bool(info.success)


def test_lsmr_float32_accuracy_of_cond_a_not_cond_a_squared(x64):
    # Wide A (32 x 500) with cond(A) = 700 in float32: LSMR works with A and
    # A^T only, and reaches a residual of cond(A) eps size; a float32 solve
    # through the normal matrix A A^T (cond 4.9e5) does not.
    a = wide_with_cond(32, 500, 700.0, seed=1)
    b = np.random.default_rng(2).normal(size=32)
    aj, bj, a64, b64 = as_dtype(a, b, jnp.float32)

    def res(x):
        return np.linalg.norm(a64 @ np.asarray(x, np.float64) - b64) / np.linalg.norm(b64)

    x, info = lsmr(aj, None, bj)
    assert res(x) <= 2e-5, info.describe()
    assert int(info.istop) == Stop.SOLVED_RTOL
    # The reported ||r|| is the float32 residual of the returned x. At 2e-6 it
    # is near what float32 can evaluate (b - A x cancels), so it must agree with
    # the float64 residual within a factor 2, not to a few digits.
    ratio = float(info.rnorm) / np.linalg.norm(b64) / res(x)
    assert 0.5 <= ratio <= 2.0, (float(info.rnorm), res(x))
    gram = jnp.matmul(aj, aj.T, precision=jax.lax.Precision.HIGHEST)
    x_normal = aj.T @ jnp.linalg.solve(gram, bj)
    assert res(x_normal) >= 20 * res(x)
    xd, infod = min_norm_solve(aj, bj)
    assert res(xd) <= 2e-5, infod.describe()
    np.testing.assert_allclose(float(infod.acond), 700.0, rtol=1e-2)


def test_lsmr_pytree_callable_vmap_and_jit(x64):
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.normal(size=(6, 9)))

    def matvec(t):  # x = {"w": (3, 2), "c": (3,)} -> (6,)
        return a @ jnp.concatenate([t["w"].reshape(-1), t["c"]])

    def rmatvec(y):
        z = a.T @ y
        return {"w": z[:6].reshape(3, 2), "c": z[6:]}

    like = {"w": jnp.zeros((3, 2)), "c": jnp.zeros(3)}
    bs = jnp.asarray(rng.normal(size=(4, 6)))
    ref = (np.linalg.pinv(np.asarray(a)) @ np.asarray(bs).T).T
    for rm in (rmatvec, None):  # None: A^T by jax.linear_transpose
        x, info = jax.jit(jax.vmap(lambda b: lsmr(matvec, rm, b, x_like=like)))(bs)
        flat = np.concatenate([np.asarray(x["w"]).reshape(4, -1), np.asarray(x["c"])], axis=1)
        np.testing.assert_allclose(flat, ref, rtol=1e-9, atol=1e-11)
        assert info.istop.shape == (4,) and bool(jnp.all(info.success))


def test_lsmr_warm_start_gives_min_norm_correction(x64):
    a, b = problems()["wide"]
    x0 = np.random.default_rng(4).normal(size=a.shape[1])
    x, info = lsmr(jnp.asarray(a), None, jnp.asarray(b), x0=jnp.asarray(x0))
    ref = x0 + np.linalg.pinv(a) @ (b - a @ x0)
    assert rel_err(x, ref) <= 1e-9 and bool(info.success)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lsmr_edge_cases(x64, dtype):
    a, b = problems()["wide"]
    aj, bj, _, _ = as_dtype(a, b, dtype)
    # One compiled solve for every case of the same shape (eager calls would
    # compile the while loop anew each time); maxiter is traced.
    jit_lsmr = jax.jit(lambda a, b, maxiter=None: lsmr(a, None, b, maxiter=maxiter))
    x, info = jit_lsmr(aj, jnp.zeros_like(bj))
    assert int(info.istop) == Stop.ZERO_RHS and not np.any(np.asarray(x))
    # b orthogonal to the range of A (here A = 0): x = 0 is the least-squares answer
    x, info = jit_lsmr(jnp.zeros_like(aj), bj)
    assert int(info.istop) == Stop.LEAST_SQUARES_EPS and not np.any(np.asarray(x))
    assert float(info.relres) == 1.0 and float(info.relares) == 0.0
    x, info = jit_lsmr(aj, bj, maxiter=0)
    assert int(info.istop) == Stop.MAXITER and int(info.iterations) == 0 and not np.any(np.asarray(x))
    x, info = lsmr(jnp.zeros((0, 3), dtype), None, jnp.zeros((0,), dtype))
    assert x.shape == (3,) and int(info.istop) == Stop.ZERO_RHS
    x, info = jit_lsmr(aj, bj.at[1].set(jnp.nan))
    assert int(info.istop) == Stop.NONFINITE and np.all(np.isfinite(np.asarray(x)))
    # scaling: the scaled solution, no over- or underflow
    ref, _ = jit_lsmr(aj, bj)
    big = 1e160 if dtype == jnp.float64 else 1e30
    for s in (big, 1 / big):
        xs, info = jit_lsmr(aj, bj * s)
        assert bool(info.success), (s, info.describe())
        np.testing.assert_allclose(np.asarray(xs, np.float64) / s, np.asarray(ref, np.float64), rtol=XTOL[dtype])
        assert np.isfinite(float(info.rnorm)) and np.isfinite(float(info.xnorm))


def test_lsmr_bad_input_and_throw(x64):
    with pytest.raises(ValueError, match="rmatvec"):
        lsmr(lambda x: x, None, jnp.ones(3))
    with pytest.raises(ValueError, match="length"):
        lsmr(jnp.ones((3, 4)), None, jnp.ones(5))
    with pytest.raises(ValueError, match="rmatvec must be None"):
        lsmr(jnp.ones((3, 4)), lambda y: y, jnp.ones(3))
    with pytest.raises(Exception, match="lsmr failed with istop 9: iteration limit"):
        x, _ = jax.jit(lambda b: lsmr(jnp.asarray(problems()["wide"][0]), None, b, maxiter=1, throw=True))(
            jnp.asarray(problems()["wide"][1])
        )
        jax.block_until_ready(x)


# --------------------------------------------------------------------------
# min_norm_solve / min_norm_factor
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(problems()))
def test_min_norm_solve_matches_pinv(x64, name, dtype):
    a, b = problems()[name]
    aj, bj, a64, b64 = as_dtype(a, b, dtype)
    ref = np.linalg.pinv(a64, rcond=REF_RCOND[dtype]) @ b64
    x, info = jax.jit(min_norm_solve)(aj, bj)
    assert x.dtype == dtype
    assert rel_err(x, ref) <= XTOL[dtype] / 10, info.describe()
    compatible = name == "wide"
    assert int(info.istop) == (Stop.SOLVED_RTOL if compatible else Stop.LEAST_SQUARES_RTOL), info.describe()
    sv = np.linalg.svd(a64, compute_uv=False)
    factor = min_norm_factor(aj)
    assert int(factor.rank) == int(np.sum(sv > 1e-6 * sv[0]))
    np.testing.assert_allclose(factor.singular_values, sv, rtol=1e-4 if dtype == jnp.float32 else 1e-10, atol=10 * sv[0] * float(jnp.finfo(dtype).eps))
    # the factor is reusable: pinv applied to another right-hand side
    b2 = np.random.default_rng(5).normal(size=a.shape[0])
    assert rel_err(factor.apply(jnp.asarray(b2, dtype)), np.linalg.pinv(a64, rcond=REF_RCOND[dtype]) @ b2) <= XTOL[dtype] / 10
    if name in ("rank_deficient", "duplicated_rows"):
        assert not np.isfinite(float(info.acond)) or float(info.acond) > 1e5


def test_min_norm_solve_float32_cutoff_keeps_real_directions(x64):
    # cond(A) = 2000: the eigenvalue ratio of A A^T is 2.5e-7, below the old
    # m * eps = 3.8e-6 cut-off on A A^T, but sigma / sigma_max = 5e-4 is far
    # above sqrt(max(m, n)) eps = 2.7e-6, so nothing is dropped.
    a = wide_with_cond(32, 500, 2000.0, seed=6)
    b = np.random.default_rng(7).normal(size=32)
    aj, bj, a64, b64 = as_dtype(a, b, jnp.float32)
    x, info = min_norm_solve(aj, bj)
    assert int(min_norm_factor(aj).rank) == 32
    assert np.linalg.norm(a64 @ np.asarray(x, np.float64) - b64) / np.linalg.norm(b64) <= 1e-4
    assert int(info.istop) in (Stop.SOLVED_RTOL, Stop.ACOND_LIMIT)


@pytest.mark.parametrize("dtype", DTYPES)
def test_min_norm_solve_bad_input(x64, dtype):
    a, b = problems()["wide"]
    aj, bj, _, _ = as_dtype(a, b, dtype)
    x, info = min_norm_solve(aj.at[0, 0].set(jnp.nan), bj)
    assert int(info.istop) == Stop.NONFINITE and not np.any(np.asarray(x))
    x, info = min_norm_solve(aj, bj.at[2].set(jnp.inf))
    assert int(info.istop) == Stop.NONFINITE and not np.any(np.asarray(x))
    x, info = min_norm_solve(aj, jnp.zeros_like(bj))
    assert int(info.istop) == Stop.ZERO_RHS
    big = 1e160 if dtype == jnp.float64 else 1e30
    x, info = min_norm_solve(aj, bj * big)
    ref, _ = min_norm_solve(aj, bj)
    np.testing.assert_allclose(np.asarray(x, np.float64) / big, np.asarray(ref, np.float64), rtol=1e-5)
    assert bool(info.success)
    x, info = min_norm_solve(jnp.zeros((0, 4), dtype), jnp.zeros((0,), dtype))
    assert x.shape == (4,) and int(info.istop) == Stop.ZERO_RHS
    with pytest.raises(ValueError, match="length"):
        min_norm_solve(aj, bj[:-1])
    xv, iv = jax.vmap(min_norm_solve, in_axes=(None, 0))(aj, jnp.stack([bj, 2 * bj]))
    np.testing.assert_allclose(xv[1], 2 * xv[0], rtol=1e-5)
