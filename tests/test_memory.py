"""Memory strategies (kktopt.memory): fixed-shape state, exact reduction at size 0, and memory that works."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kktopt
from kktopt.active import random_samples


def spheres(seed=0, d=60, m=30):
    """m nearly identical spheres of radius 10 in R^d that intersect (d > m)."""
    rng = np.random.default_rng(seed)
    centres = jnp.asarray(rng.normal(size=(m, d)) * np.sqrt(0.02 / d))
    x0 = rng.normal(size=d)
    x0 = jnp.asarray(x0 / np.linalg.norm(x0) * 15.0)
    return centres, x0


def cfn(w, c):
    return jnp.linalg.norm(w - c, axis=-1) - 10.0


def run(tx, centres, x0, steps):
    state = tx.init(x0)

    @jax.jit
    def step(w, state):
        u, state = tx.update(w - x0, state, w, constraint_batch=centres)
        return w + u, state

    w, history = x0, []
    for _ in range(steps):
        w, state = step(w, state)
        history.append(np.asarray(cfn(w, centres)))
    return w, state, np.stack(history)


def transforms(centres, k=6):
    return {
        "plain": optax.chain(optax.sgd(1.0), kktopt.project_kkt(cfn, active=random_samples(k, seed=3))),
        "working-set-0": optax.chain(
            optax.sgd(1.0),
            kktopt.project_kkt(
                cfn, active=kktopt.memory.working_set(0, centres, candidates=random_samples(k, seed=3))
            ),
        ),
        "multipliers-0": optax.chain(
            optax.sgd(1.0),
            kktopt.project_kkt(
                cfn, active=random_samples(k, seed=3), memory=kktopt.memory.multiplier_memory(0, centres)
            ),
        ),
    }


def test_memory_size_zero_is_exactly_the_plain_transform(x64):
    centres, x0 = spheres()
    results = {name: run(tx, centres, x0, 5)[0] for name, tx in transforms(centres).items()}
    np.testing.assert_array_equal(results["working-set-0"], results["plain"])
    np.testing.assert_array_equal(results["multipliers-0"], results["plain"])


def test_memory_state_has_a_fixed_shape_under_jit():
    centres, x0 = spheres()
    centres, x0 = centres.astype(jnp.float32), x0.astype(jnp.float32)
    for tx in (
        optax.chain(
            optax.sgd(1.0),
            kktopt.project_kkt(
                cfn,
                active=kktopt.memory.working_set(8, centres, candidates=random_samples(4)),
                memory=kktopt.memory.multiplier_memory(12, centres),
            ),
        ),
        kktopt.hard_adam(0.1, cfn, active=random_samples(4), memory=kktopt.memory.multiplier_memory(5, centres)),
    ):
        traces = []

        @jax.jit
        def update(state):
            traces.append(1)  # runs once per trace, not per call
            return tx.update(x0, state, x0, constraint_batch=centres)[1]

        state = tx.init(x0)
        for _ in range(3):
            new_state = update(state)
            assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
            for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
                assert a.shape == b.shape and a.dtype == b.dtype
            state = new_state
        assert len(traces) == 1  # a state of fixed shape never retraces the step


def test_kept_constraints_stay_satisfied_where_plain_steps_break_them(x64):
    # Every step projects onto 6 random spheres of 30. Plain hard steps break
    # the spheres they projected onto before; with a multiplier memory the
    # constraints met once stay met (and all 30 converge).
    centres, x0 = spheres(d=200)
    plain = transforms(centres)["plain"]
    memory = optax.chain(
        optax.sgd(1.0),
        kktopt.project_kkt(
            cfn, active=random_samples(6, seed=3), memory=kktopt.memory.multiplier_memory(30, centres)
        ),
    )
    _, _, hist_plain = run(plain, centres, x0, 200)
    _, state, hist_mem = run(memory, centres, x0, 200)
    final_plain = np.median(np.abs(hist_plain[-1]))
    final_mem = np.median(np.abs(hist_mem[-1]))
    assert final_mem < 1e-6 < final_plain
    # Over the last 50 steps every constraint stays satisfied with memory.
    assert np.max(np.abs(hist_mem[-50:])) < 1e-4
    assert np.max(np.abs(hist_plain[-50:])) > 1e-2
    mem_state = state[1].memory
    assert int(jnp.sum(mem_state.valid)) == 30


def test_working_set_keeps_violated_samples(x64):
    centres, x0 = spheres(m=12)
    ws = kktopt.memory.working_set(4, centres, candidates=random_samples(3, seed=1), tol=1e-9)
    tx = optax.chain(optax.sgd(1.0), kktopt.project_kkt(cfn, active=ws))
    state = tx.init(x0)
    _, state = tx.update(x0 * 0, state, x0, constraint_batch=centres)
    ws_state = state[1].active
    # At x0 every sphere is violated (|C| ~ 5), so the 3 projected samples enter the set.
    assert int(jnp.sum(ws_state.valid)) == 3
    # The set remembers the pool indices of exactly the samples this step projected on.
    picked = np.asarray(ws_state.members)[np.asarray(ws_state.valid)]
    chosen = np.asarray(ws_state.candidates.indices)
    assert sorted(picked.tolist()) == sorted(chosen.tolist())
    assert ws_state.active.shape == (3 + 4,)


def test_memory_argument_errors():
    centres, _ = spheres()
    with pytest.raises(TypeError, match="multiplier_memory"):
        kktopt.project_kkt(cfn, memory=kktopt.memory.working_set(3, centres))
    with pytest.raises(ValueError, match="size"):
        kktopt.memory.multiplier_memory(-1, centres)


# --------------------------------------------------------------------------
# Pool indices instead of sample copies; the numbers of the copy-based version.
# --------------------------------------------------------------------------

# Computed with the previous implementation (memory and working set that
# stored copies of the samples and found them again by fingerprint), 7 steps
# of sgd(0.5) + project_kkt from x0 on the spheres of small_spheres(): final
# constraint values, the pool index of each remembered sample (-1: empty),
# their multipliers and ages.
REFERENCE = {
    "memory 8, random 4": dict(
        c=[0.0774015762259, 0.0743999675968, 0.060804264702, 0.147370452966, 0.0741944030851, 0.0875727485971,
           0.138484144706, 0.0656398288068, 0.07404671369, 0.0741963519627, 0.0745695909373, 0.0543281119302],
        mem_idx=[3, 6, 5, 11, 8, 0, 2, 1],
        mem_lam=[-491.912228621, -470.783864536, 336.681113662, 182.161480601, 150.722089699, 146.301546533,
                 131.777952764, -65.5078376388],
        mem_age=[5, 6, 3, 1, 0, 3, 1, 0],
    ),
    "memory 12 (whole pool), mined 3, decay 0.9": dict(
        c=[-0.0125857260894, -0.0251000361226, -0.00571018063758, -0.0740660294639, 0.00749392127661,
           -0.0486335658164, -0.0676566454541, 0.00748504587773, -0.0191309835896, -0.066912416895,
           -0.00527988196986, 0.00749108168493],
        mem_idx=[7, 4, 3, 9, 11, 6, -1, -1, -1, -1, -1, -1],
        mem_lam=[99.2820958891, -73.305285334, -59.005954626, 45.6840599078, -23.8596522392, 13.2488906937,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        mem_age=[0, 0, 1, 1, 0, 1, 7, 7, 7, 7, 7, 7],
    ),
    "working set 3 (mined 2, max_age 3), memory 6": dict(
        c=[0.0316752982373, 0.0302229130478, 0.0304381059338, 0.0316788758985, 0.0258271697959, 0.028680343669,
           0.0316760025771, 0.031608436274, 0.0186633001801, -0.0164664527314, 0.0315511325705, -0.0151402533731],
        mem_idx=[3, 6, 11, 5, 7, 10],
        mem_lam=[-224.308370486, -204.070050864, 162.559677201, 110.838756696, 69.3190962926, 56.6018275877],
        mem_age=[0, 0, 4, 1, 0, 0],
        ws_idx=[10, 7, 6],
        ws_age=[0, 0, 1],
    ),
}


def small_spheres(seed=0, d=20, m=12):
    rng = np.random.default_rng(seed)
    centres = jnp.asarray(rng.normal(size=(m, d)) * np.sqrt(0.02 / d))
    x0 = rng.normal(size=d)
    return centres, jnp.asarray(x0 / np.linalg.norm(x0) * 15.0)


def reference_transform(name, centres):
    mm = kktopt.memory.multiplier_memory
    if name == "memory 8, random 4":
        return kktopt.hard_sgd(0.5, cfn, active=random_samples(4, seed=3), memory=mm(8, centres))
    if name == "memory 12 (whole pool), mined 3, decay 0.9":
        return kktopt.hard_sgd(0.5, cfn, active=kktopt.active.mined_samples(3), memory=mm(12, centres, decay=0.9))
    ws = kktopt.active.working_set(3, centres, candidates=kktopt.active.mined_samples(2), tol=1e-3, max_age=3)
    return kktopt.hard_sgd(0.5, cfn, active=ws, memory=mm(6, centres))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_index_memory_reproduces_the_copy_based_memory(x64, name):
    centres, x0 = small_spheres()
    ref = REFERENCE[name]
    w, state, _ = run(reference_transform(name, centres), centres, x0, 7)
    # Bit for bit where the memory gathers its samples; the whole-pool path
    # sums the forces in another order: rounding differences (3e-8 of the
    # radius 10 after 7 steps), amplified by the nearly parallel constraint rows.
    np.testing.assert_allclose(np.asarray(cfn(w, centres)), ref["c"], rtol=0, atol=1e-7)
    mem = state[1].memory
    np.testing.assert_array_equal(np.where(mem.valid, mem.indices, -1), ref["mem_idx"])
    np.testing.assert_allclose(np.asarray(mem.multipliers), ref["mem_lam"], rtol=1e-8, atol=1e-6)
    np.testing.assert_array_equal(mem.age, ref["mem_age"])
    if "ws_idx" in ref:
        ws = state[1].active
        np.testing.assert_array_equal(np.where(ws.valid, ws.members, -1), ref["ws_idx"])
        np.testing.assert_array_equal(ws.age, ref["ws_age"])


def test_memory_state_size_does_not_depend_on_the_sample_size():
    def state_bytes(d):
        centres = jnp.zeros((50, d), jnp.float32)
        tx = kktopt.hard_sgd(
            0.1, cfn, active=kktopt.active.working_set(8, centres, candidates=random_samples(4)),
            memory=kktopt.memory.multiplier_memory(16, centres),
        )
        state = jax.eval_shape(tx.init, jnp.zeros((d,), jnp.float32))
        mem, ws = state[1].memory, state[1].active
        return (sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(mem)),
                sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(ws)))

    small, large = state_bytes(10), state_bytes(100_000)
    assert small == large
    assert small[0] == 16 * (4 + 4 + 1 + 4)  # index, multiplier, valid, age per slot


def norm_output(w, x):
    """||x W|| = 1 per sample: the gradient of the norm is NaN where x = 0."""
    return jnp.linalg.norm(x @ w, axis=-1, keepdims=True) - 1.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_nan_on_the_first_step_from_empty_slots(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(3)
        pool = jnp.asarray(rng.normal(size=(10, 3)), dtype)
        w = jnp.asarray(rng.normal(size=(3, 2)), dtype)
        g = jnp.asarray(rng.normal(size=(3, 2)), dtype)
        # Empty buffer slots used to be evaluated at all-zero inputs: NaN.
        assert not np.isfinite(np.asarray(jax.grad(lambda v: norm_output(v, jnp.zeros((1, 3), dtype)).sum())(w))).all()
        for tx in (
            kktopt.hard_sgd(0.1, norm_output, active=random_samples(3), memory=kktopt.memory.multiplier_memory(5, pool)),
            kktopt.hard_sgd(0.1, norm_output, active=kktopt.active.working_set(4, pool, candidates=random_samples(3))),
            kktopt.hard_adam(0.1, norm_output, active=kktopt.active.working_set(4, pool, candidates=random_samples(2)),
                             memory=kktopt.memory.multiplier_memory(6, pool)),
        ):
            state = tx.init(w)
            update = jax.jit(lambda s, p, tx=tx: tx.update(g, s, p, constraint_batch=pool))
            p = w
            for _ in range(2):
                u, state = update(state, p)
                assert np.isfinite(np.asarray(u)).all()
                info = kktopt.get_kkt_info(state)
                assert np.isfinite([float(info.violation_norm), float(info.linearized_residual)]).all()
                if dtype == jnp.float64:  # (float32 accuracy of the default solve is its own matter)
                    assert float(info.linearized_residual) < 1e-7
                p = p + u


def test_memory_needs_the_same_pool():
    centres, x0 = spheres()
    tx = kktopt.hard_sgd(1.0, cfn, active=random_samples(3), memory=kktopt.memory.multiplier_memory(4, centres))
    with pytest.raises(ValueError, match="same pool"):
        tx.update(x0, tx.init(x0), x0, constraint_batch=centres[:10])
    ws = kktopt.hard_sgd(1.0, cfn, active=kktopt.active.working_set(2, centres, candidates=random_samples(3)))
    with pytest.raises(ValueError, match="same pool"):
        ws.update(x0, ws.init(x0), x0, constraint_batch=centres[:10])


def test_working_set_is_importable_from_memory():
    assert kktopt.memory.working_set is kktopt.active.working_set
    assert kktopt.memory.WorkingSet is kktopt.active.WorkingSet
