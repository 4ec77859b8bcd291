"""The shared hard-step pipeline: solver configuration, aliases, selectors' records, KKTInfo lookup."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import kktopt
from kktopt import KKTSolver
from kktopt.active import mined_samples, random_samples


def init_params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(3, 16)) / np.sqrt(3), dtype),
            "v": jnp.asarray(rng.normal(size=(16, 2)) / 4, dtype)}


def net(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


def cfn(p, x):
    """Per sample: y0 = 0.5 and y1 + y0^2 = 0.1."""
    y = net(p, x)
    return jnp.stack([y[:, 0] - 0.5, y[:, 1] + y[:, 0] ** 2 - 0.1], axis=-1)


def problem(dtype=jnp.float32, n=4, seed=1):
    rng = np.random.default_rng(seed)
    pool = jnp.asarray(rng.normal(size=(n, 3)), dtype)
    params = init_params(dtype=dtype)
    grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), dtype), params)
    return params, grads, pool


def leaves_equal(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# --------------------------------------------------------------------------
# KKTSolver: one configuration, validated, one default.
# --------------------------------------------------------------------------


def test_kkt_solver_validation_errors():
    with pytest.raises(ValueError, match="system='full' has methods 'auto', 'minres', 'minres_qlp', 'projected_cg'; 'dense' needs system='schur'"):
        KKTSolver(system="full", method="dense")
    with pytest.raises(ValueError, match="'cg' needs system='schur'"):
        KKTSolver(system="full", method="cg")
    with pytest.raises(ValueError, match="system='schur' has methods 'auto', 'cg', 'dense', 'lsmr', 'minres', 'minres_qlp', 'qr'"):
        KKTSolver(method="lsqr-typo")
    with pytest.raises(ValueError, match="system must be one of"):
        KKTSolver(system="kkt")
    with pytest.raises(ValueError, match="jacobian must be 'matrix_free' or 'per_sample'"):
        KKTSolver(jacobian="dense")
    with pytest.raises(ValueError, match="rtol"):
        KKTSolver(rtol=1.5)
    with pytest.raises(ValueError, match="maxiter"):
        KKTSolver(maxiter=0)
    with pytest.raises(ValueError, match="maxiter"):
        KKTSolver(maxiter=2.5)
    with pytest.raises(ValueError, match="rcond"):
        KKTSolver(method="dense", rcond=-1.0)
    with pytest.raises(ValueError, match="precondition"):
        KKTSolver(system="full", precondition="yes")
    with pytest.raises(ValueError, match="vjp_batch must be a positive integer"):
        KKTSolver(vjp_batch=0)
    # Traced values pass validation (they are checked only as Python numbers).
    rt = jax.jit(lambda r: KKTSolver(rtol=r).tolerance(jnp.float32))(jnp.float32(1e-3))
    np.testing.assert_allclose(rt, 1e-3)
    assert kktopt.kkt.methods("full") == ("minres", "minres_qlp", "projected_cg")


def test_defaults_are_defined_once_and_per_dtype():
    s = KKTSolver()
    assert (s.system, s.method, s.jacobian, s.rtol, s.maxiter, s.precondition) == (
        "schur", "auto", "matrix_free", None, None, True)
    assert float(s.tolerance(jnp.float32)) == np.float32(1e-4)
    with jax.enable_x64(True):
        assert float(s.tolerance(jnp.float64)) == 1e-8
    assert s.iteration_limit(10) == kktopt.kkt.default_maxiter(10) == 60
    assert KKTSolver(maxiter=7).iteration_limit(10) == 7


def test_auto_method_by_size_and_jacobian_mode():
    auto = kktopt.kkt.auto_method
    assert auto("schur", 96, 144_411, True) == "dense"
    assert auto("schur", 768, 144_411, True) == "minres_qlp"  # A would have to be formed: 110M entries
    assert auto("schur", 768, 144_411, True, formed=True) == "dense"  # per-sample: A is there already
    assert auto("schur", 768, 10**6, True, formed=True) == "minres_qlp"  # its copies would not fit
    assert auto("schur", 96, 144_411, False, formed=True) == "minres_qlp"  # no diagonal metric
    assert auto("full", 96, 144_411, False) == "projected_cg"
    assert auto("full", 768, 144_411, False) == "minres_qlp"  # A would have to be formed by 768 VJPs
    assert auto("full", 768, 144_411, False, formed=True) == "projected_cg"  # per-sample: A is there
    assert auto("full", 768, 10**6, False, formed=True) == "minres_qlp"
    # resolve() sees the mode through the linearisation.
    params = {"w": jnp.ones((3, 2))}
    cfn = lambda p, x: x @ p["w"]  # noqa: E731
    batch = jnp.ones((300, 3))
    assert KKTSolver().resolve(kktopt.kkt.linearize_constraints(cfn, params, batch),
                               kktopt.kkt.euclidean_metric()) == "minres_qlp"  # m = 600 rows
    per_sample = kktopt.kkt.linearize_constraints(cfn, params, batch, jacobian="per_sample")
    assert KKTSolver(jacobian="per_sample").resolve(per_sample, kktopt.kkt.euclidean_metric()) == "dense"


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.float64, marks=pytest.mark.slow)])
def test_jacobian_formed_from_vjps_in_passes(dtype):
    """The matrix-free Jacobian, 4 or 7 rows per pass (40 rows: full passes and a remainder), against
    forward mode (``jax.jacfwd``, no VJP involved); the dense step with small passes equals the one-pass step."""
    with jax.enable_x64(dtype == jnp.float64):
        params, grads, pool = problem(dtype, n=20)
        lin = kktopt.kkt.linearize_constraints(cfn, params, pool)
        flat, unravel = ravel_pytree(params)
        forward = jax.jacfwd(lambda v: cfn(unravel(v), pool).reshape(-1))(flat)
        one_pass, _ = lin.jacobian_matrix(params, 64)
        np.testing.assert_allclose(one_pass, forward, rtol=1e-5 if dtype == jnp.float32 else 1e-12,
                                   atol=1e-6 if dtype == jnp.float32 else 1e-14)
        for per_pass in (4, 7):
            a = jax.jit(lambda: lin.jacobian_matrix(params, per_pass)[0])()  # noqa: B023
            assert a.shape == (40, flat.size)
            np.testing.assert_allclose(a, one_pass, rtol=1e-6, atol=1e-7)
        u = jax.tree_util.tree_map(lambda g: -0.1 * g, grads)
        metric = kktopt.kkt.diagonal_metric(jax.tree_util.tree_map(lambda g: 1 + jnp.abs(g), grads))
        small = KKTSolver(method="dense", vjp_batch=7).solve(lin, metric, step=u)
        whole = KKTSolver(method="dense").solve(lin, metric, step=u)
        np.testing.assert_allclose(ravel_pytree(small.step)[0], ravel_pytree(whole.step)[0],
                                   rtol=1e-5 if dtype == jnp.float32 else 1e-12)
        assert bool(small.info.success), small.info.describe()


def test_bare_solver_is_the_transforms_default():
    params, grads, pool = problem()
    for make in (
        lambda s: optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn, **s)),
        lambda s: kktopt.scale_by_adam_kkt(cfn, 0.1, **s),
    ):
        out = {}
        for key, kw in (("default", {}), ("bare", {"solver": KKTSolver()})):
            tx = make(kw)
            out[key] = jax.jit(lambda s, tx=tx: tx.update(grads, s, params, constraint_batch=pool))(tx.init(params))
        leaves_equal(out["default"], out["bare"])  # the steps and every diagnostic
        info = kktopt.get_kkt_info(out["bare"][1])
        assert int(info.status) == kktopt.KKTStatus.SOLVED, info.describe()


def test_gauss_newton_needs_the_full_system():
    with pytest.raises(ValueError, match=r"KKTSolver\(system='full', \.\.\.\), got system='schur'"):
        kktopt.gauss_newton_kkt(lambda p, b: p["v"].ravel(), cfn, damping=1.0, solver=KKTSolver())
    tx = kktopt.gauss_newton_kkt(lambda p, b: p["v"].ravel(), cfn, damping=1.0,
                                 solver=KKTSolver(system="full", method="minres"))
    params, grads, pool = problem()
    u, state = tx.update(None, tx.init(params), params, residual_batch=None, constraint_batch=pool)
    assert np.isfinite(np.asarray(ravel_pytree(u)[0])).all()


def test_schur_minres_matches_dense(x64):
    params, grads, pool = problem(jnp.float64)
    out = []
    for s in (KKTSolver(method="minres", rtol=1e-12, constraint_rtol=1e-12), KKTSolver(method="dense")):
        tx = kktopt.hard_sgd(0.1, cfn, solver=s)
        out.append(ravel_pytree(tx.update(grads, tx.init(params), params, constraint_batch=pool)[0])[0])
    np.testing.assert_allclose(out[0], out[1], rtol=1e-8, atol=1e-11)


# --------------------------------------------------------------------------
# The optax-style aliases.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_aliases_equal_the_chain_of_building_blocks(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params, grads, pool = problem(dtype)
        memory = kktopt.memory.multiplier_memory(6, pool)
        kw = dict(active=random_samples(3, seed=2), memory=memory, solver=KKTSolver(method="dense"))
        pairs = [
            (kktopt.hard_sgd(0.05, cfn, **kw), optax.chain(optax.sgd(0.05), kktopt.project_kkt(cfn, **kw))),
            (kktopt.hard_adam(0.05, cfn, 0.8, 0.99, 1e-6, **kw), kktopt.scale_by_adam_kkt(cfn, 0.05, 0.8, 0.99, 1e-6, **kw)),
        ]
        for alias, chain in pairs:
            sa, sc, p = alias.init(params), chain.init(params), params
            step_a = jax.jit(lambda s, p, tx=alias: tx.update(grads, s, p, constraint_batch=pool))
            step_c = jax.jit(lambda s, p, tx=chain: tx.update(grads, s, p, constraint_batch=pool))
            for _ in range(3):
                ua, sa = step_a(sa, p)
                uc, sc = step_c(sc, p)
                leaves_equal((ua, sa), (uc, sc))
                p = optax.apply_updates(p, ua)


def dense_step(params, grads, pool, lr):
    """Eq. 5 for SGD in closest-step form, with numpy: u + A^T pinv(A A^T) (-c - A u)."""
    flat, unravel = ravel_pytree(params)
    a = np.asarray(jax.jacobian(lambda f: cfn(unravel(f), pool).reshape(-1))(flat))
    c = np.asarray(cfn(params, pool)).reshape(-1)
    u = -lr * np.asarray(ravel_pytree(grads)[0])
    return u + np.linalg.pinv(a) @ (-c - a @ u), a, c


@pytest.mark.parametrize("alias", ["hard_sgd", "hard_adam"])
def test_aliases_inside_inject_hyperparams_and_vmap_over_learning_rate(x64, alias):
    params, grads, pool = problem(jnp.float64)
    factory = getattr(kktopt, alias)
    solver = KKTSolver(method="dense")

    def step(lr):
        tx = optax.inject_hyperparams(factory, static_args="constraint_fn")(
            learning_rate=lr, constraint_fn=cfn, solver=solver)
        return tx.update(grads, tx.init(params), params, constraint_batch=pool)

    lrs = jnp.asarray([1e-3, 1e-2, 1e-1])
    dws, states = jax.jit(jax.vmap(step))(lrs)
    assert states.hyperparams["learning_rate"].shape == (3,)
    info = kktopt.get_kkt_info(states)
    assert info.linearized_residual.shape == (3,)
    assert np.all(np.asarray(info.linearized_residual) < 1e-9)
    for i, lr in enumerate(np.asarray(lrs)):
        dw_i = np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda x: x[i], dws))[0])
        single = np.asarray(ravel_pytree(step(lr)[0])[0])
        np.testing.assert_allclose(dw_i, single, rtol=1e-10, atol=1e-13)
        if alias == "hard_sgd":
            ref, a, c = dense_step(params, grads, pool, lr)
            np.testing.assert_allclose(dw_i, ref, rtol=1e-8, atol=1e-11)
        else:  # Adam's first step with no bias: u = -lr sign(g); the constraints hold
            _, a, c = dense_step(params, grads, pool, lr)
            np.testing.assert_allclose(a @ dw_i, -c, atol=1e-9)


def test_hard_adam_hyperparameters_can_be_injected_too():
    params, grads, pool = problem()
    tx = optax.inject_hyperparams(kktopt.hard_adam, static_args="constraint_fn")(
        learning_rate=optax.linear_schedule(0.1, 0.01, 10), constraint_fn=cfn, b1=0.8, eps=1e-6)
    state = tx.init(params)
    u, state = jax.jit(lambda s: tx.update(grads, s, params, constraint_batch=pool))(state)
    assert set(state.hyperparams) >= {"learning_rate", "b1", "b2", "eps", "eps_root"}
    assert np.isfinite(np.asarray(ravel_pytree(u)[0])).all()


# --------------------------------------------------------------------------
# Selectors record their choice; KKTInfo lookup.
# --------------------------------------------------------------------------


def test_selectors_record_the_samples_they_chose(x64):
    params, grads, pool = problem(jnp.float64, n=7)
    for selector in (random_samples(4, seed=7), mined_samples(3)):
        tx = kktopt.hard_sgd(0.1, cfn, active=selector, solver=KKTSolver(method="dense"))
        update = jax.jit(tx.update)
        state = tx.init(params)
        p = params
        for _ in range(2):
            dw, state = update(grads, state, p, constraint_batch=pool)
            idx = np.asarray(state[1].active.indices)
            assert idx.dtype == np.int32 and len(set(idx.tolist())) == selector.k
            if isinstance(selector, kktopt.active.MinedSamples):
                scores = np.median(np.abs(np.asarray(cfn(p, pool))), axis=1)
                np.testing.assert_array_equal(idx, np.argsort(-scores)[: selector.k])
            # The step is the dense Eq. 5 step on exactly the recorded samples.
            ref, _, _ = dense_step(p, grads, pool[idx], 0.1)
            np.testing.assert_allclose(np.asarray(ravel_pytree(dw)[0]), ref, rtol=1e-8, atol=1e-11)
            p = optax.apply_updates(p, dw)
    ws = kktopt.active.working_set(3, pool, candidates=random_samples(2))
    tx = kktopt.hard_sgd(0.1, cfn, active=ws)
    state = tx.init(params)
    _, state = tx.update(grads, state, params, constraint_batch=pool)
    _, state = tx.update(grads, state, params, constraint_batch=pool)
    s = state[1].active
    np.testing.assert_array_equal(s.indices[:2], s.candidates.indices)
    np.testing.assert_array_equal(s.indices[2:], np.where(s.active[2:] > 0, s.indices[2:], 0))


def test_violation_score_is_eq9_and_drives_mining():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(9, 2, 3))
    ref = np.median(np.abs(values.reshape(9, -1)), axis=1)
    np.testing.assert_allclose(kktopt.active.violation_score(values), ref, rtol=1e-6)
    np.testing.assert_array_equal(kktopt.mine_active_constraints(values, 4), np.argsort(-ref)[:4])


def test_selector_size_errors():
    params, grads, pool = problem(n=3)
    for selector in (random_samples(4), mined_samples(4)):
        tx = kktopt.hard_sgd(0.1, cfn, active=selector)
        with pytest.raises(ValueError, match="needs at least 4 samples, the batch has 3"):
            tx.update(grads, tx.init(params), params, constraint_batch=pool)
    with pytest.raises(ValueError, match="has none"):
        kktopt.mine_active_constraints(jnp.zeros((0, 2)), 1)


def test_get_kkt_info_finds_infos_anywhere():
    params, grads, pool = problem()
    assert kktopt.get_kkt_info(optax.adam(0.1).init(params)) is None
    assert kktopt.get_kkt_infos(optax.adam(0.1).init(params)) == ()
    tx = optax.chain(
        optax.inject_hyperparams(kktopt.hard_sgd, static_args="constraint_fn")(learning_rate=0.1, constraint_fn=cfn),
        kktopt.project_kkt(lambda p, x: cfn(p, x)[:, :1]),
    )
    _, state = tx.update(grads, tx.init(params), params, constraint_batch=pool)
    infos = kktopt.get_kkt_infos(state)
    assert [int(i.num_active) for i in infos] == [8, 4]
    assert kktopt.get_kkt_info(state) is infos[0]
