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
    picked = np.asarray(ws_state.buffer)[np.asarray(ws_state.valid)]
    for row in picked:
        assert np.min(np.linalg.norm(np.asarray(centres) - row, axis=1)) == 0.0
    assert ws_state.active.shape == (3 + 4,)


def test_memory_argument_errors():
    centres, _ = spheres()
    with pytest.raises(TypeError, match="multiplier_memory"):
        kktopt.project_kkt(cfn, memory=kktopt.memory.working_set(3, centres))
    with pytest.raises(ValueError, match="size"):
        kktopt.memory.multiplier_memory(-1, centres)
