"""The pose experiment runner (paper Sec. 5): presets, batches, optimisers, an end-to-end run.

The end-to-end test runs ``examples/run_pose.py --preset tiny`` in subprocesses:
the first call stops after a few checkpoints as if it had been interrupted,
the second resumes it, a third finds everything done. Most of its time is XLA
compiling the training steps (one per method; the hard ones hold a MINRES-QLP
loop over the linearised network, 15-25 s of CPU each), so the subprocesses
run with ``--xla_backend_optimization_level=0``, which cuts compilation by a
third on CPU without changing what is computed, and keep JAX's persistent
compilation cache in pytest's cache folder (``.pytest_cache``), so that later
runs of the suite skip compilation altogether.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import harness
import kktopt
import pose
from pose import model as pose_model
from pose.config import HARD_METHODS, MethodSpec
from pose.train import THRESHOLDS_MM, batch_indices

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------
# Presets and overrides
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(pose.PRESETS))
def test_presets_are_consistent(name):
    p = pose.PRESETS[name]
    assert pose_model.PRESETS[p.model].image_size == p.image_size
    assert p.pool_size >= p.train_size  # the pool C is the larger, unlabeled set
    assert p.batch_size <= p.train_size and p.mined <= p.batch_size
    methods = {s.method for s in p.methods}
    if name.startswith("small-"):
        # Variants run from the unconstrained model of `small` (--unconstrained-from).
        assert p.base_dict() == pose.PRESETS["small"].base_dict()
    else:
        assert methods >= {"soft-adam", "hard-sgd", "hard-adam", "gauss-newton"}, methods
    json.dumps(p.to_dict())  # recorded verbatim in results.json


def test_paper_preset_has_paper_sizes():
    p = pose.PRESETS["paper"]
    assert p.model == "paper" and p.image_size == 128 and p.batch_size == 128 and p.mined == 16
    model = eqx.filter_eval_shape(pose_model.make_model, "paper", jax.random.key(0))
    assert pose_model.num_params(model) == pose_model.PRESETS["paper"].num_params


def test_method_spec_validation_and_names():
    s = MethodSpec("hard-sgd", "mined", steps=10, eval_every=5, lr=1e-8)
    assert s.id == "hard-sgd_mined_lr1e-08" and s.family == "hard-sgd/mined"
    assert "Hard-SGD" in s.label and "mined" in s.label
    with pytest.raises(ValueError, match="needs lam"):
        MethodSpec("soft-adam", "random", steps=1, eval_every=1, lr=1e-3)
    with pytest.raises(ValueError, match="constraints"):
        MethodSpec("hard-sgd", "all", steps=1, eval_every=1, lr=1e-8)
    with pytest.raises(ValueError, match="method"):
        MethodSpec("hard-rmsprop", "mined", steps=1, eval_every=1, lr=1e-8)
    # Memory, KKT system and repeat seeds: part of the name; memory and system part of the family.
    m = MethodSpec("hard-sgd", "mined", 10, 5, lr=1e-8, memory=256, system="schur", seed=2)
    assert m.id == "hard-sgd_mined_lr1e-08_systemschur_mem256_seed2"
    assert m.family == "hard-sgd/mined/schur/mem256"
    assert MethodSpec("hard-sgd", "mined", 10, 5, lr=1e-8, memory=256, system="schur").family == (
        m.family)  # repeats share a compiled step
    # The earlier spelling solver="schur" still works, with a DeprecationWarning.
    with pytest.warns(DeprecationWarning, match="system='schur'"):
        old = MethodSpec("hard-sgd", "mined", 10, 5, lr=1e-8, memory=256, solver="schur", seed=2)
    assert old == m and old.id == m.id
    with pytest.raises(ValueError, match="hard methods only"):
        MethodSpec("soft-adam", "random", 1, 1, lr=1e-4, lam=1.0, memory=16)
    with pytest.raises(ValueError, match="needs system='full'"):
        MethodSpec("gauss-newton", "mined", 1, 1, damping=1e8, system="schur")
    with pytest.raises(ValueError, match="decay needs memory"):
        MethodSpec("hard-sgd", "mined", 1, 1, lr=1e-8, decay=0.9)


def test_overrides_replace_grids_and_select_methods():
    base = pose.PRESETS["small"]
    p = pose.with_overrides(base, methods=["hard-sgd", "soft-adam"],
                            lr={"hard-sgd": [1e-8, 2e-8]}, lam={"*": [0.5]})
    assert {s.method for s in p.methods} == {"hard-sgd", "soft-adam"}
    for family in {s.family for s in p.methods if s.method == "hard-sgd"}:
        assert sorted(s.lr for s in p.methods if s.family == family) == [1e-8, 2e-8]
    assert all(s.lam == 0.5 for s in p.methods if s.method == "soft-adam")
    assert len({s.id for s in p.methods}) == len(p.methods)
    with pytest.raises(ValueError, match="unknown method"):
        pose.with_overrides(base, lr={"hard-lbfgs": [1.0]})


def test_seeds_override_repeats_every_configuration():
    base = pose.PRESETS["tiny"]
    p = pose.with_overrides(base, methods=["hard-sgd"], seeds=[0, 1, 2])
    assert [s.seed for s in p.methods] == [0, 1, 2]
    assert len({s.id for s in p.methods}) == 3 and len({s.family for s in p.methods}) == 1


def test_batches_are_pure_epoch_permutations():
    n, b = 10, 3
    first = [batch_indices(n, b, t, seed=1, stream=2) for t in range(3)]  # one epoch
    flat = np.concatenate(first)
    assert len(set(flat.tolist())) == 9  # no repeats within an epoch
    again = [batch_indices(n, b, t, seed=1, stream=2) for t in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))  # resumable
    assert not np.array_equal(batch_indices(n, b, 0, 1, 2), batch_indices(n, b, 0, 1, 3))


# --------------------------------------------------------------------------
# The problem and the optimisers, as written for users
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_problem():
    model = pose_model.make_model("tiny", 0)
    params, problem = pose.make_problem(model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    joints = rng.normal(0, 300, (4, 17, 3)).astype(np.float32)
    return params, problem, images, joints


def test_problem_functions(tiny_problem):
    params, problem, images, joints = tiny_problem
    assert problem.constraints(params, images).shape == (4, 6)
    loss = problem.loss(params, (images, joints))
    r = problem.residuals(params, (images, joints))
    np.testing.assert_allclose(0.5 * jnp.sum(r * r), loss, rtol=1e-5)


@pytest.mark.parametrize("method", ["adam", "soft-sgd", "soft-adam", "hard-sgd", "hard-adam",
                                    "gauss-newton", "adam-project"])
def test_optimisers_inject_their_hyperparameters(tiny_problem, method):
    params, problem, _, _ = tiny_problem
    tx = pose.make_optimizer(method, problem, constraints="mined", lr=0.01, damping=3.0)
    state = tx.init(params)
    def injected_state(x):
        return hasattr(x, "hyperparams") and hasattr(x, "inner_state")

    injected = [s for s in jax.tree_util.tree_leaves(state, is_leaf=injected_state)
                if injected_state(s)]
    assert len(injected) == 1
    key = "damping" if method == "gauss-newton" else "learning_rate"
    assert float(injected[0].hyperparams[key]) == pytest.approx(3.0 if key == "damping" else 0.01)
    has_kkt = harness.kkt_info(state) is not None
    assert has_kkt == (method in HARD_METHODS)


def _memory_state(state):
    found = [x for x in jax.tree_util.tree_leaves(
        state, is_leaf=lambda x: isinstance(x, kktopt.memory.MultiplierMemoryState))
        if isinstance(x, kktopt.memory.MultiplierMemoryState)]
    assert len(found) == 1
    return found[0]


def test_schur_solver_with_multiplier_memory(tiny_problem):
    """The exact Schur solve meets the linearised constraints; the memory remembers pool samples.

    The memory stores indices into the constraint pool, so the step gets the
    same pool every time and the selector (mining within a random minibatch
    of it, as the runner does) records which pool samples it projected on.
    The remembered forces are checked against a VJP on those pool samples.
    """
    params, problem, images, joints = tiny_problem
    pool = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    method = "hard-sgd"
    memory = kktopt.memory.multiplier_memory(8, pool)
    active = pose.methods.memory_selector("mined", batch=4, mined=2, seed=3)
    tx = pose.make_optimizer(method, problem, constraints="mined", lr=1e-6, mined=2,
                             solver=kktopt.KKTSolver(system="schur", method="dense",
                                                     jacobian="per_sample"),
                             memory=memory, active=active)
    step = jax.jit(pose.make_step(method, problem, tx, constraints="mined", mined=2))
    state = tx.init(params)
    new_params, state, stats = step(params, state, (images, joints), pool, jnp.float32(0))
    assert int(stats["num_active"]) == 2 * 6
    assert float(stats["linearized_residual"]) < 1e-3
    chosen = np.asarray(state[1].active.indices)
    assert len(set(chosen.tolist())) == 2 and np.all((0 <= chosen) & (chosen < len(pool)))
    # The recorded pool indices are the samples the step projected on.
    c = problem.constraints(params, pool[chosen])
    np.testing.assert_allclose(float(stats["violation_norm"]), float(jnp.linalg.norm(c)), rtol=1e-5)
    mem = _memory_state(state)
    assert int(jnp.sum(mem.valid)) == 2
    assert set(np.asarray(mem.indices)[np.asarray(mem.valid)].tolist()) == set(chosen.tolist())
    assert float(jnp.max(jnp.abs(mem.multipliers))) > 0
    # The remembered forces are a VJP on those pool samples with their multipliers.
    cfn = problem.constraints
    keep = np.asarray(mem.valid)
    idx, lam = np.asarray(mem.indices)[keep], mem.multipliers[keep]

    @jax.jit
    def forces(p, mem, samples, lam):
        _, pullback = jax.vjp(lambda q: cfn(q, samples), p)
        return memory.force(cfn, p, mem, pool), pullback(lam)[0]

    got, expected = forces(new_params, mem, pool[idx], lam)
    for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4,
                                   atol=1e-6 * float(jnp.max(jnp.abs(e))) + 1e-30)
    # A second step applies the remembered forces and stays finite.
    new_params, state, stats = step(new_params, state, (images, joints), pool, jnp.float32(0))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new_params))


def test_memory_runs_get_one_fixed_pool():
    """With a memory the runner passes the whole pool, the same array, at every step."""
    from pose.run import _Run

    preset = pose.PRESETS["tiny"]
    r = _Run(preset, Path("unused"), {}, progress=False, stop_after_checkpoints=None, log=print)
    r.pool = np.arange(preset.pool_size * 2, dtype=np.uint8).reshape(preset.pool_size, 2)
    with_memory = MethodSpec("hard-sgd", "mined", 4, 2, lr=1e-8, memory=16, system="schur")
    first, later = r.constraint_pool(with_memory, 0), r.constraint_pool(with_memory, 5)
    assert first is later and first.shape == r.pool.shape
    np.testing.assert_array_equal(np.asarray(first), r.pool)
    plain = MethodSpec("hard-sgd", "mined", 4, 2, lr=1e-8)
    batch = r.constraint_pool(plain, 0)
    assert batch.shape == (preset.batch_size, 2)
    assert not np.array_equal(batch, r.constraint_pool(plain, 1))


def test_mined_from_random_mines_its_random_minibatch():
    """MinedFromRandom keeps the k most violating samples (Eq. 9) of a random minibatch of the pool."""
    pool = jnp.arange(20.0)[:, None]
    cfn = lambda w, x: (x * w - 3.0).reshape(-1, 1)  # noqa: E731 - sample i violates by |i w - 3|
    sel = pose.methods.memory_selector("mined", batch=6, mined=2, seed=5)
    state = sel.init(jnp.ones(1))
    for _ in range(3):
        sub, state = sel.select(cfn, jnp.ones(1), pool, state)
        chosen = np.asarray(sel.indices(state))
        np.testing.assert_array_equal(np.asarray(sub)[:, 0], chosen)
        # Independently: redraw the same random minibatch from the key and mine it.
        assert len(set(chosen.tolist())) == 2
    key = sel.init(None).key
    for _ in range(3):
        key, sub_key = jax.random.split(key)
        drawn = np.asarray(jax.random.permutation(sub_key, 20)[:6])
    scores = np.abs(drawn - 3.0)
    expected = drawn[np.argsort(-scores, kind="stable")[:2]]
    assert set(chosen.tolist()) == set(expected.tolist())
    random = pose.methods.memory_selector("random", batch=6, mined=2)
    assert isinstance(random, kktopt.active.RandomSamples) and random.k == 6


def test_pose_model_linearisation_has_no_convolution_in_the_krylov_loop(tiny_problem):
    """XLA's CPU convolutions are 10-70x slower inside while loops (jax#12868).

    `PoseCNN` differentiates its convolutions as matrix products with input
    patches, so the linearised network applied inside MINRES-QLP's loop has
    no convolution at all (checked on the lowered program; nothing compiled).
    """
    params, problem, images, _ = tiny_problem
    tx = pose.make_optimizer("hard-sgd", problem, constraints="random", lr=1e-8,
                             solver=kktopt.KKTSolver(system="full", maxiter=3))
    step = pose.make_step("hard-sgd", problem, tx)
    state = tx.init(params)
    hlo = jax.jit(step).lower(params, state, (images, np.zeros((4, 17, 3), np.float32)), images,
                              jnp.float32(0)).as_text()
    start = hlo.index("stablehlo.while")
    loop = hlo[start:]
    assert "stablehlo.convolution" in hlo[:start]  # the forward pass is a convolution
    assert "stablehlo.convolution" not in loop


# --------------------------------------------------------------------------
# End to end: tiny preset, interrupted, resumed, rerun
# --------------------------------------------------------------------------


def _run_cli(out: Path, cache: Path, *extra: str) -> str:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_pose.py"), "--preset", "tiny", "--out", str(out),
         "--no-progress", "--compilation-cache", str(cache), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _check_metrics(m):
    assert m["mpjpe_mm"] > 0 and m["median_abs_c_mm"] >= 0
    frac = np.asarray(m["fraction_met"])
    assert frac.shape == (len(THRESHOLDS_MM),)
    assert np.all((0 <= frac) & (frac <= 1)) and np.all(np.diff(frac) >= 0)


@pytest.mark.slow  # two CLI runs of the tiny preset: one to two minutes on 2 cores
def test_tiny_run_end_to_end_with_resume(tmp_path, request):
    preset = pose.PRESETS["tiny"]
    out = tmp_path / "run"
    cache = request.config.cache.mkdir("kktopt_pose_jax_cache") if getattr(request.config, "cache", None) else (
        tmp_path / "jax_cache")
    soft, hard_sgd = preset.methods[0], preset.methods[1]
    assert (soft.method, hard_sgd.method) == ("soft-adam", "hard-sgd")
    # Interrupt after the first checkpoint of Hard-SGD.
    stop = preset.pretrain_steps // preset.pretrain_eval_every + soft.steps // soft.eval_every + 1
    log1 = _run_cli(out, cache, "--stop-after-checkpoints", str(stop))
    assert "rerun the same command to resume" in log1
    first = json.loads((out / "results.json").read_text())
    assert first["complete"] is False
    assert first["unconstrained"]["status"] == "done"
    assert first["methods"][soft.id]["status"] == "done"
    partial = first["methods"][hard_sgd.id]
    assert partial["status"] == "running"
    assert [c["step"] for c in partial["checkpoints"]] == [0, hard_sgd.eval_every]
    assert not (out / "fig2a.png").exists()

    log2 = _run_cli(out, cache)
    assert "unconstrained model: finished earlier" in log2
    assert f"{soft.label}: finished earlier, skipped." in log2
    assert f"{hard_sgd.label}: resuming at step {hard_sgd.eval_every}." in log2
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is True and res["schema"] == pose.SCHEMA
    # Finished work was not redone: the entries are untouched.
    assert res["unconstrained"] == first["unconstrained"]
    assert res["methods"][soft.id] == first["methods"][soft.id]
    resumed = res["methods"][hard_sgd.id]
    assert resumed["resumed_from_steps"] == [hard_sgd.eval_every]
    assert resumed["steps_timed"] == hard_sgd.steps  # no step run twice

    # Schema: configuration, timing and metrics of every checkpoint.
    assert res["thresholds_mm"] == list(THRESHOLDS_MM)
    assert res["preset"]["name"] == "tiny" and res["data"]["train_size"] == preset.train_size
    _check_metrics(res["unconstrained"]["test"])
    _check_metrics(res["unconstrained"]["pool"])
    assert set(res["methods"]) == {s.id for s in preset.methods}
    for spec in preset.methods:
        entry = res["methods"][spec.id]
        assert entry["status"] == "done" and entry["config"]["method"] == spec.method
        assert entry["config"]["constraints"] == spec.constraints
        assert entry["seconds_per_iter"] > 0
        steps = [c["step"] for c in entry["checkpoints"]]
        assert steps == list(range(0, spec.steps + 1, spec.eval_every))
        for c in entry["checkpoints"]:
            _check_metrics(c["test"])
            _check_metrics(c["pool"])
        if spec.method.startswith(("hard", "gauss")):
            train = entry["checkpoints"][-1]["train"]
            assert train["iterations_mean"] >= 1 and train["num_active_mean"] == preset.mined * 6
    for name in ("fig2a.png", "fig2b.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    for label in ("Soft-Adam", "Hard-SGD", "Hard-Adam", "Gauss-Newton-KKT", "unconstrained"):
        assert label in table
    assert "MPJPE test (mm)" in log2 and "Hard-SGD" in log2

    # A third call finds everything done and only rewrites the report.
    log3 = _run_cli(out, cache, "--no-figures")
    for spec in preset.methods:
        assert f"{spec.label}: finished earlier, skipped." in log3
    assert json.loads((out / "results.json").read_text())["methods"] == res["methods"]

    # Repeats over minibatch seeds from the same unconstrained model (issue 6).
    out2 = tmp_path / "seeds"
    log4 = _run_cli(out2, cache, "--methods", "soft-adam", "--seeds", "0,1",
                    "--unconstrained-from", str(out), "--data-dir", str(out / "data"))
    assert "unconstrained model: reused from" in log4
    seeds = json.loads((out2 / "results.json").read_text())
    assert seeds["unconstrained"]["test"] == res["unconstrained"]["test"]
    runs = list(seeds["methods"].values())
    assert [r["config"]["seed"] for r in runs] == [0, 1]
    # Seed 0 repeats the run above exactly; seed 1 draws other minibatches.
    assert runs[0]["checkpoints"] == res["methods"][soft.id]["checkpoints"]
    assert runs[1]["checkpoints"][-1]["test"] != runs[0]["checkpoints"][-1]["test"]
    assert "± " in (out2 / "seeds.md").read_text() and (out2 / "pareto.png").exists()


# --------------------------------------------------------------------------
# Heavier checks
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_paper_preset_runs_a_couple_of_steps(tmp_path):
    """The paper preset (128x128, 46.6M parameters) builds and steps every method family."""
    paper = pose.PRESETS["paper"]
    seen, methods = set(), []
    for s in paper.methods:
        if s.family not in seen:
            seen.add(s.family)
            methods.append(dataclasses.replace(s, steps=2, eval_every=2))
    preset = dataclasses.replace(
        paper, train_size=128, pool_size=128, validation_size=128, test_size=128,
        pool_eval_size=128, pretrain_steps=2, pretrain_eval_every=2, maxiter_random=3,
        maxiter_mined=3, methods=tuple(methods))
    res = pose.run(preset, tmp_path, progress=False)
    assert res["complete"]
    assert res["model"]["num_params"] == pose_model.PRESETS["paper"].num_params
    for entry in res["methods"].values():
        assert [c["step"] for c in entry["checkpoints"]] == [0, 2]
        assert np.isfinite(entry["checkpoints"][-1]["test"]["mpjpe_mm"])


def test_table_median_residual_from_steps_or_from_old_checkpoint_medians():
    """The table's last column: the median over every hard step (schema 2 records them), or for
    results of schema 1, which kept one median per checkpoint interval, the median of those."""
    from pose import report

    new = {"checkpoints": [{}, {"train": {"solves": {"linearized_residual": [1e-4, 3e-4, 4e-4]}}},
                           {"train": {"solves": {"linearized_residual": [2e-4]}}}]}
    assert report._median_residual(new) == pytest.approx(2.5e-4)
    old = {"checkpoints": [{}, {"train": {"linearized_residual_median": 0.3}},
                           {"train": {"linearized_residual_median": 0.1}}, {"train": {"linearized_residual_median": 0.2}}]}
    assert report._median_residual(old) == pytest.approx(0.2)
    assert report._median_residual({"checkpoints": [{}, {"train": {"loss_mean": 1.0}}]}) is None
