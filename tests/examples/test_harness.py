"""The experiments' shared plumbing (examples/harness): JSON, checkpoints, steps, solver names."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import harness
import kktopt


def _strict_load(text):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=reject)


def test_write_json_is_standard_json_with_null_for_non_finite(tmp_path):
    data = {"ok": 1.5, "nan": math.nan, "inf": -math.inf, "np": np.float32(np.nan),
            "arr": np.array([1.0, np.inf]), "nested": [{"x": (math.nan, 2)}], "status": "diverged"}
    path = tmp_path / "r.json"
    harness.write_json(path, data)
    back = _strict_load(path.read_text())
    assert back == {"ok": 1.5, "nan": None, "inf": None, "np": None, "arr": [1.0, None],
                    "nested": [{"x": [None, 2]}], "status": "diverged"}
    assert harness.read_json(path) == back
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_fingerprint_is_order_independent_and_sensitive():
    a = harness.fingerprint({"lr": 1e-3, "steps": 10})
    assert a == harness.fingerprint({"steps": 10, "lr": 1e-3})
    assert a != harness.fingerprint({"steps": 11, "lr": 1e-3})
    assert len(a) == 12


def test_checkpoint_round_trip(tmp_path):
    params = {"w": jnp.arange(3.0), "b": jnp.float32(2.0)}
    tx = optax.adam(1e-2)
    state = tx.init(params)
    _, state = tx.update(params, state, params)
    harness.save_tree(tmp_path / "s.eqx", (params, state))
    like = (jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params))
    p2, s2 = harness.load_tree(tmp_path / "s.eqx", like)
    for x, y in zip(jax.tree_util.tree_leaves((params, state)), jax.tree_util.tree_leaves((p2, s2))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_compile_step_matches_jit_and_accepts_jitted():
    def f(x, y):
        return jnp.sin(x) * y

    x, y = jnp.linspace(0, 1, 5), jnp.float32(3.0)
    for fn in (f, jax.jit(f)):
        compiled, seconds = harness.compile_step(fn, x, y)
        np.testing.assert_allclose(compiled(x, y), jnp.sin(x) * 3.0, rtol=1e-6)
        assert seconds >= 0
    with pytest.raises(TypeError):
        compiled(jnp.ones(6), y)  # compiled for one shape


def _cfn(w, batch):
    return batch @ w


def test_kkt_info_found_wherever_the_hard_transform_sits():
    w = jnp.ones(3)
    batch = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    chain = optax.chain(optax.sgd(0.1), kktopt.project_kkt(_cfn))
    injected = optax.inject_hyperparams(kktopt.scale_by_adam_kkt, static_args=("constraint_fn",))(
        constraint_fn=_cfn, learning_rate=0.1)
    for tx in (chain, injected):
        state = tx.init(w)
        assert isinstance(harness.kkt_info(state), kktopt.KKTInfo)
        _, state = tx.update(w, state, w, constraint_batch=batch)
        info = harness.kkt_info(state)
        assert int(info.num_active) == 2
        # The step meets the two linear constraints, so the reported residual is tiny.
        assert float(info.linearized_residual) < 1e-4
    assert harness.kkt_info(optax.adam(0.1).init(w)) is None


def test_solver_choice_defaults_and_spellings():
    full = harness.solver_choice("full")
    assert (full.method, full.jacobian) == ("minres_qlp", "matrix_free")
    schur = harness.solver_choice("schur", rcond=1e-3)
    assert (schur.method, schur.jacobian, schur.label()) == ("dense", "per_sample", "schur/dense/per_sample")
    solver = harness.solver_choice("full", "minres", maxiter=7, rtol=1e-5).build()
    assert isinstance(solver, kktopt.KKTSolver)
    assert (solver.system, solver.method, solver.jacobian) == ("full", "minres", "matrix_free")
    assert solver.maxiter == 7 and solver.rtol == 1e-5
    solver = schur.build()
    assert (solver.system, solver.method, solver.jacobian) == ("schur", "dense", "per_sample")
    assert solver.rcond == 1e-3
    with pytest.raises(ValueError, match="system='schur'"):
        harness.solver_choice("full", "cg")
    with pytest.raises(ValueError, match="jacobian"):
        harness.solver_choice("schur", jacobian="dense")
    with pytest.raises(ValueError, match="rcond"):
        harness.solver_choice("full", rcond=1e-3)
    with pytest.raises(ValueError, match="system"):
        harness.solver_choice("gmres")
    with pytest.warns(DeprecationWarning, match="system='full'"):
        assert harness.solver_choice("krylov").system == "full"
    with pytest.warns(DeprecationWarning, match="system='full'"):
        assert harness.solver_choice("minres-qlp").system == "full"


def test_progress_bar_counts_from_a_resumed_step(capsys):
    with harness.progress(4, desc="steps", initial=1) as bar:
        for _ in range(3):
            bar.update()
    assert (bar.n, bar.total) == (4, 4)
    assert "steps" in capsys.readouterr().err
    with harness.progress(4, desc="quiet", enabled=False) as bar:
        bar.update()
    assert "quiet" not in capsys.readouterr().err


def test_solve_record_and_summary_against_numpy():
    """What each hard step achieved, and its distribution, as the experiments record them."""
    cfn = lambda w, _: jnp.stack([w[0] + w[1] - 1.0, w[0] - w[1]])  # noqa: E731
    tx = optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn))
    w = jnp.array([0.3, -0.2])
    _, state = tx.update(jnp.ones(2), tx.init(w), w, constraint_batch=None)
    info = kktopt.get_kkt_info(state)
    rec = harness.solve_record(info)
    assert set(rec) >= set(harness.SOLVE_KEYS)
    assert float(rec["linearized_residual"]) == float(info.linearized_residual)
    assert int(rec["istop"]) == int(info.solver.istop)
    assert ("status" in rec) == (getattr(info, "status", None) is not None)
    # A KKTInfo with a status code (newer kktopt) adds it; one without leaves it out.
    with_status = type("Info", (), {"linearized_residual": 0.1, "violation_norm": 2.0, "status": 3,
                                    "solver": info.solver})()
    assert harness.solve_record(with_status)["status"] == 3
    without = type("Info", (), {"linearized_residual": 0.1, "violation_norm": 2.0, "solver": info.solver})()
    assert "status" not in harness.solve_record(without)

    rng = np.random.default_rng(0)
    res = rng.lognormal(-10, 2, 37)
    norms = rng.uniform(0.5, 2.0, 37)
    its = rng.integers(1, 50, 37)
    codes = rng.choice([4, 4, 4, 9, 6], 37)
    steps = [{"linearized_residual": a, "violation_norm": b, "iterations": c, "istop": d, "loss": 0.0}
             for a, b, c, d in zip(res, norms, its, codes)]
    s = harness.summarise_solves(steps)
    assert s == harness.summarise_solves({k: [x[k] for x in steps] for k in steps[0]})
    assert s["steps"] == 37
    assert s["linearized_residual_median"] == pytest.approx(np.median(res))
    assert s["linearized_residual_p90"] == pytest.approx(np.percentile(res, 90))
    assert s["linearized_residual_max"] == res.max()
    assert s["residual_norm_median"] == pytest.approx(np.median(res * norms))
    assert s["iterations_median"] == np.median(its) and s["iterations_max"] == its.max()
    assert s["istop_counts"] == {str(c): int(np.sum(codes == c)) for c in sorted(set(codes.tolist()))}
    success = set(kktopt.krylov.SUCCESS_CODES)
    assert s["success_fraction"] == pytest.approx(np.mean([c in success for c in codes]))
    assert harness.summarise_solves([]) == {}
    # A diverged run: non-finite statistics, written as null.
    bad = harness.summarise_solves({"linearized_residual": [1e-9, float("nan")], "iterations": [1, 2],
                                    "istop": [4, 4]})
    assert harness.to_json(bad)["linearized_residual_max"] is None


def test_resume_needs_matching_fingerprint_and_progress(tmp_path):
    prog, state = tmp_path / "progress.json", tmp_path / "state.eqx"
    like = {"w": jnp.zeros(3)}
    assert harness.resume(prog, state, "abc", like) == (None, like)  # nothing saved yet
    harness.save_tree(state, {"w": jnp.arange(3.0)})
    harness.write_json(prog, {"fingerprint": "abc", "step": 4, "resumed_from_steps": []})
    old, tree = harness.resume(prog, state, "abc", like)
    assert old["resumed_from_steps"] == [4] and tree["w"].tolist() == [0.0, 1.0, 2.0]
    assert harness.resume(prog, state, "other", like) == (None, like)  # other settings
    harness.write_json(prog, {"fingerprint": "abc", "step": 0})
    assert harness.resume(prog, state, "abc", like)[0] is None  # nothing to resume at step 0
