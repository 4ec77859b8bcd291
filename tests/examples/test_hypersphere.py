"""The hypersphere experiment (paper Sec. 6.2) at d = 1000, 100 steps.

One run of all five methods (module fixture, MINRES-QLP as in the paper) is
checked for the metrics.json schema, hard-fixed's convergence, the
linearised constraints of every hard step, hard-memory's advantage,
reproducibility and the figures. The compiled steps are cached, so the later
runs cost little. The default dense Schur solver is checked against
MINRES-QLP on a smaller problem.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypersphere as hs
import kktopt
from hypersphere import config as hs_config
from hypersphere import methods as hs_methods
from hypersphere import problem as hs_problem
from kktopt.active import take_samples
from kktopt.krylov import SUCCESS_CODES

CFG = hs.HypersphereConfig(dim=1000, iters=100, system="full", rtol=1e-10, dtype="float64")
HARD = ("hard", "hard-fixed", "hard-all", "hard-memory")
TIMING = ("seconds_per_iter", "compile_seconds")


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("hypersphere")
    return out, hs.run(CFG, out, progress=False)


def _without_timing(result):
    return {
        "config": result["config"],
        "geometry": result["geometry"],
        "methods": {
            name: {k: v for k, v in m.items() if k not in TIMING} for name, m in result["methods"].items()
        },
    }


def test_metrics_schema(first):
    out, result = first
    data = json.loads((out / "metrics.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert list(data["methods"]) == list(hs.METHODS)
    cfg = data["config"]
    for key in ("dim", "constraints", "active", "iters", "lam", "seed", "soft_lr", "hard_lr", "system", "method",
                "jacobian", "rtol", "dtype", "memory"):
        assert key in cfg
    assert (cfg["system"], cfg["method"], cfg["jacobian"]) == ("full", "minres_qlp", "matrix_free")
    assert all(m["status"] == "done" for m in data["methods"].values())
    assert cfg["soft_lr"] == pytest.approx(1 / (1 + 2 * 100 * 200))
    n = CFG.iters
    for name, m in data["methods"].items():
        assert len(m["median_abs_c"]) == n + 1
        assert len(m["active_change"]) == n
        assert all(isinstance(v, float) for v in m["median_abs_c"] + m["active_change"])
        # Iteration 0 is the start point x0, ||x0|| = 15 from the (tiny) centres: |C| ~ 5.
        assert m["median_abs_c"][0] == pytest.approx(CFG.start_distance - CFG.radius, abs=1e-2)
        assert isinstance(m["seconds_per_iter"], float) and m["seconds_per_iter"] > 0
        frac = m["active_change_nonpositive_fraction"]
        assert frac == pytest.approx(np.mean(np.asarray(m["active_change"]) <= 0))
        solver = m["solver"]
        expected = 0 if name == "soft" else n
        assert len(solver["iterations"]) == len(solver["istop"]) == expected
        assert all(isinstance(v, int) for v in solver["iterations"] + solver["istop"])
        assert set(solver["istop"]) <= set(SUCCESS_CODES)
    # Every method starts from the same point.
    assert len({m["median_abs_c"][0] for m in data["methods"].values()}) == 1


def test_soft_is_stable(first):
    _, result = first
    c = np.asarray(result["methods"]["soft"]["median_abs_c"])
    assert np.all(np.isfinite(c))
    assert c[-1] < 1e-2 * c[0]
    assert np.all(np.diff(c[2:]) <= 1e-12)  # monotone once the radial error is gone (no oscillation)


def test_hard_fixed_converges_onto_its_constraints(first):
    _, result = first
    m = result["methods"]["hard-fixed"]
    assert max(m["active_max_abs_c"][-5:]) < 1e-6
    # Independently: rerun (cached compile) and evaluate its 20 constraints at the end.
    with jax.enable_x64(True):
        problem = hs.make_problem(CFG)
        again, w = hs.run_method("hard-fixed", CFG, problem, progress=False, return_final=True)
        c = hs.sphere_constraints(w, take_samples(problem.centres, problem.fixed), CFG.radius)
        assert float(jnp.max(jnp.abs(c))) < 1e-6
    assert again["median_abs_c"] == m["median_abs_c"]
    # The other constraints are not satisfied: median over all stays far above.
    assert m["median_abs_c"][-1] > 1e-4


def test_hard_random_satisfies_its_linearisation(first):
    """``hard`` meets its 20 linearised constraints to ~rtol * cond at every step (KKTInfo)."""
    _, result = first
    linres = np.asarray(result["methods"]["hard"]["solver"]["linearized_residual"])
    assert linres.shape == (CFG.iters,)
    assert np.all(linres < 1e-5)


@pytest.mark.parametrize("method", HARD)
def test_every_hard_step_meets_linearised_constraints_to_solver_tolerance(first, method):
    """Independent check of ||A dw + c|| for every step, A and c recomputed with jax.jvp.

    MINRES-QLP stops when its residual is below rtol (||K|| ||x|| + ||b||) in
    the norm of its preconditioner blockdiag(I, s^2 I), s^2 = r^T A A^T r /
    ||r||^2, r = c + A u (kktopt.KKTSolver(system="full")). In the constraint rows that is
    ||A dw + c|| <= rtol (s ||K|| ||x|| + ||r||): relative to ||c|| while the
    violation is large, and a floor of rtol s ||K|| ||x|| once it is small
    (||x|| includes the multipliers).
    """
    @jax.jit
    def check(w, dw, x0, active, pull):
        # The step before the projection: SGD, minus the remembered
        # constraints' forces for hard-memory (pull = 0 otherwise).
        u = -CFG.hard_lr * (w - x0) - pull
        c, lin = jax.linearize(lambda v: hs.sphere_constraints(v, active, CFG.radius), w)
        r = c + lin(u)
        s = jnp.linalg.norm(jax.linear_transpose(lin, w)(r)[0]) / jnp.linalg.norm(r)
        return jnp.linalg.norm(lin(dw) + c), jnp.linalg.norm(c), jnp.linalg.norm(r), s

    with jax.enable_x64(True):
        problem = hs.make_problem(CFG)
        init, step = hs_methods.hard_fns(hs_methods.step_key(CFG), method)
        # As run_method passes them (same signature: no recompilation).
        fixed_batch = take_samples(problem.centres, problem.fixed) if method == "hard-fixed" else None
        carry = init(problem.x0, problem.x0, problem.centres)
        memory = kktopt.memory.multiplier_memory(CFG.memory, hs_problem.centres_spec(CFG))
        cfn = functools.partial(hs.sphere_constraints, radius=CFG.radius)
        for _ in range(CFG.iters):
            w = carry[0]
            if method == "hard-memory":
                pull = memory.force(cfn, w, carry[1][1].memory, problem.centres)
            else:
                pull = jnp.zeros_like(w)
            carry, record = step(carry, problem.x0, problem.centres, fixed_batch, problem.fixed)
            if method in ("hard", "hard-memory"):
                idx = carry[1][1].active.indices  # the pool indices the selector chose at this step
            elif method == "hard-fixed":
                idx = problem.fixed
            else:
                idx = jnp.arange(CFG.constraints)
            np.testing.assert_array_equal(record["indices"], idx)
            active = take_samples(problem.centres, idx)
            residual, cnorm, rnorm, s = map(float, check(w, carry[0] - w, problem.x0, active, pull))
            info = carry[1][1].info
            bound = CFG.rtol * (s * float(info.solver.anorm) * float(info.solver.xnorm) + rnorm)
            assert int(info.solver.istop) in SUCCESS_CODES
            assert residual <= 10 * bound, (residual, bound)
            # The transform's own diagnostic agrees with the independent one.
            np.testing.assert_allclose(float(info.linearized_residual) * cnorm, residual, rtol=1e-3, atol=1e-12)


def test_hard_memory_remembers_constraints(first):
    """The multiplier memory keeps the projected constraints met: far below hard and soft."""
    _, result = first
    m = result["methods"]
    final = {name: m[name]["median_abs_c"][-1] for name in ("soft", "hard", "hard-memory")}
    # (It keeps falling: about 1e-7 after 300 steps.)
    assert final["hard-memory"] < 0.1 * final["soft"], final
    assert final["hard-memory"] < 1e-3 * final["hard"], final
    assert m["hard-memory"]["active_change_nonpositive_fraction"] > m["hard"]["active_change_nonpositive_fraction"]


def test_schur_and_krylov_take_the_same_steps():
    """The default dense Schur solver and MINRES-QLP solve the same Eq. 5 (small problem)."""
    cfg = hs.HypersphereConfig(dim=300, constraints=20, active=4, iters=8, system="full", rtol=1e-12,
                               memory=20, dtype="float64")
    schur = dataclasses.replace(cfg, system="schur")
    assert schur.solver_choice().label() == "schur/dense/per_sample"
    with jax.enable_x64(True):
        problem = hs.make_problem(cfg)
        # hard-memory: random active sets and the memory's forces both go through the solver.
        a = hs.run_method("hard-memory", cfg, problem, progress=False)
        b = hs.run_method("hard-memory", schur, problem, progress=False)
    np.testing.assert_allclose(b["median_abs_c"], a["median_abs_c"], rtol=1e-6, atol=1e-12)
    assert max(b["solver"]["linearized_residual"]) < 1e-8
    assert set(b["solver"]["istop"]) <= set(SUCCESS_CODES)


def test_reproducible_from_seed(first, tmp_path):
    _, result = first
    again = hs.run(CFG, tmp_path, progress=False, figures=False)
    assert _without_timing(again) == _without_timing(result)


def test_resume_skips_done_methods_and_rejects_other_settings(first, tmp_path):
    _, result = first
    part = hs.run(CFG, tmp_path, methods=["soft"], progress=False, figures=False)
    assert list(part["methods"]) == ["soft"]
    full = hs.run(CFG, tmp_path, methods=["soft", "hard"], progress=False, figures=False)
    assert full["methods"]["soft"] == part["methods"]["soft"]  # kept, timing included
    assert full["methods"]["hard"]["median_abs_c"] == result["methods"]["hard"]["median_abs_c"]
    other = dataclasses.replace(CFG, lam=10.0)
    with pytest.raises(ValueError, match="lam"):
        hs.run(other, tmp_path, progress=False, figures=False)


def test_figures_written(first):
    out, _ = first
    for name in ("fig3.png", "fig4.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert 10_000 < len(data) < 500_000


def test_illustration_2d_fixed_pair_converges():
    ill = hs.illustration_2d(0)
    # The first KKT step jumps far from both circles (nearly parallel linearisations) ...
    assert np.linalg.norm(ill.kkt_step - ill.w) > 5 * ill.radius
    # ... the fixed pair then converges onto an intersection point of its two circles ...
    assert ill.violations_fixed[-1, :2].max() < 1e-10
    # ... while a changing pair keeps all circles violated.
    assert np.median(ill.violations_changing[-3:]) > 1e-3


def test_config_validation():
    with pytest.raises(ValueError, match="active"):
        hs.HypersphereConfig(constraints=10, active=20)
    with pytest.raises(ValueError, match="centre_spread"):
        hs.HypersphereConfig(centre_spread="other")
    assert hs.HypersphereConfig(dim=2, centre_spread="matched").coordinate_variance == pytest.approx(0.01)
    assert hs.HypersphereConfig().coordinate_variance == pytest.approx(2e-8)
    with pytest.raises(ValueError, match="unknown methods"):
        hs.run(CFG, "/nonexistent-never-created", methods=["nope"])


def _load_cli():
    path = Path(__file__).resolve().parents[2] / "examples" / "hypersphere" / "cli.py"
    spec = importlib.util.spec_from_file_location("hypersphere_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_defaults_and_run(first, tmp_path, capsys):
    cli = _load_cli()
    a = cli.parse_args(["--out", "x"])
    assert (a.dim, a.constraints, a.active, a.iters, a.lam, a.seed) == (1_000_000, 200, 20, 500, 100.0, 0)
    assert a.methods == list(hs.METHODS) and a.system == "schur" and a.dtype == "float64" and a.memory == 200
    assert (a.method, a.jacobian) == (None, None)  # the system's defaults: dense, per_sample
    # The earlier spelling --solver krylov still means --system full.
    assert cli.parse_args(["--out", "x", "--solver", "krylov"]).system == "full"
    with pytest.raises(SystemExit):
        cli.main(["--out", "x", "--system", "full", "--method", "dense"])  # dense solves the Schur system only
    cli.main(["--dim", "1000", "--iters", "100", "--methods", "soft", "hard", "--system", "full", "--rtol", "1e-10",
              "--out", str(tmp_path), "--no-progress", "--no-figures"])
    data = json.loads((tmp_path / "metrics.json").read_text())
    _, result = first
    assert data["methods"]["hard"]["median_abs_c"] == result["methods"]["hard"]["median_abs_c"]
    assert "wall time" in capsys.readouterr().out


def test_solver_records_and_summary(first):
    """Every hard method records what each step achieved, and its distribution (issue 10)."""
    out, result = first
    for name in HARD:
        m = result["methods"][name]
        assert m["kkt_solver"] == "full/minres_qlp/matrix_free"
        res = np.asarray(m["solver"]["linearized_residual"])
        its = np.asarray(m["solver"]["iterations"])
        s = m["solver_summary"]
        assert s["steps"] == CFG.iters
        assert s["linearized_residual_median"] == pytest.approx(float(np.median(res)))
        assert s["linearized_residual_p90"] == pytest.approx(float(np.percentile(res, 90)))
        assert s["linearized_residual_max"] == pytest.approx(float(res.max()))
        assert s["iterations_max"] == int(its.max()) and s["iterations_median"] == float(np.median(its))
        codes = m["solver"]["istop"]
        assert s["istop_counts"] == {str(c): codes.count(c) for c in sorted(set(codes))}
        assert s["success_fraction"] == 1.0
        absolute = res * np.asarray(m["solver"]["violation_norm"])
        assert s["residual_norm_median"] == pytest.approx(float(np.median(absolute)))
    assert result["methods"]["soft"]["solver_summary"] == {}
    # hard meets its linearised constraints; the README table shows it.
    assert result["methods"]["hard"]["solver_summary"]["linearized_residual_median"] < 1e-6
    table = (out / "table.md").read_text()
    assert "median \\|\\|A dw + c\\|\\| / \\|\\|c\\|\\|" in table
    for name in hs.METHODS:
        assert f"`{name}`" in table


def test_step_metrics_match_a_direct_computation():
    """Fig. 4's metrics from the recorded values equal a loop over the steps."""
    from hypersphere.run import step_metrics

    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 9))
    indices = np.stack([rng.permutation(9)[:3] for _ in range(5)])
    got = step_metrics(values, indices)
    for t in range(5):
        before, after = np.abs(values[t, indices[t]]), np.abs(values[t + 1, indices[t]])
        assert got["active_change"][t] == pytest.approx(np.median(after) - np.median(before))
        assert got["active_max_abs_c"][t] == pytest.approx(after.max())
    assert got["median_abs_c"] == pytest.approx(list(np.median(np.abs(values), axis=1)))
    assert got["active_change_nonpositive_fraction"] == np.mean(np.asarray(got["active_change"]) <= 0)


def test_default_solvers_per_method():
    """With no solver method named, every hard method takes the measured choice (dense Schur here)."""
    cfg = hs.HypersphereConfig()
    expected = {name: "schur/dense/per_sample" for name in HARD}
    # hard-fixed and hard-all (the same rows at every step) also keep their factor.
    expected.update({m: "/".join(("schur",) + hs_config.AUTO_SOLVERS[("schur", m)]) + f"+reuse{cfg.reuse}"
                     for (system, m) in hs_config.AUTO_SOLVERS if system == "schur"})
    assert cfg.solvers() == expected
    named = hs.HypersphereConfig(method="minres_qlp", jacobian="matrix_free")
    assert set(named.solvers().values()) == {"schur/minres_qlp/matrix_free"}
    assert isinstance(cfg.solver_choice("hard-all").build(), kktopt.KKTSolver)
    assert cfg.to_dict()["solvers"] == cfg.solvers()


# --------------------------------------------------------------------------
# The methods beyond the paper (hard-alpha, sqp-momentum, auglag)
# --------------------------------------------------------------------------

_SMALL = hs.HypersphereConfig(dim=300, constraints=20, active=4, iters=1, system="schur",
                              memory=20, dtype="float64", alpha=0.4, penalty=3.0)


def _first_step_reference(cfg, problem):
    """w0 = x0 (the objective's minimiser, so its gradient is 0), the first random set, A and c there."""
    x0, centres = np.asarray(problem.x0), np.asarray(problem.centres.points)
    idx = np.asarray(problem.fixed)  # the first draw of the random sets
    diff = x0[None, :] - centres[idx]
    dist = np.linalg.norm(diff, axis=1)
    return x0, diff / dist[:, None], dist - cfg.radius


@pytest.mark.parametrize("method", ["hard-alpha", "auglag",
                                    pytest.param("sqp-momentum", marks=pytest.mark.slow)])
def test_extra_methods_first_step_matches_numpy(method):
    with jax.enable_x64(True):
        problem = hs.make_problem(_SMALL)
        _, w1 = hs.run_method(method, _SMALL, problem, progress=False, return_final=True)
    x0, a, c = _first_step_reference(_SMALL, problem)
    if method == "auglag":
        # lambda = 0 at the start: the pull is A^T (0 + rho c), then SGD.
        expected = x0 - _SMALL.auglag_lr * (a.T @ (_SMALL.resolved_penalty * c))
    else:
        gain = _SMALL.alpha if method == "hard-alpha" else 1.0
        expected = x0 - gain * a.T @ np.linalg.solve(a @ a.T, c)
    np.testing.assert_allclose(np.asarray(w1), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # four 20-step runs
def test_extra_methods_run_and_record():
    cfg = dataclasses.replace(_SMALL, iters=20)
    with jax.enable_x64(True):
        problem = hs.make_problem(cfg)
        runs = {m: hs.run_method(m, cfg, problem, progress=False) for m in hs_config.EXTRA_METHODS}
    for name, r in runs.items():
        assert r["status"] == "done" and len(r["median_abs_c"]) == cfg.iters + 1
        if name == "auglag":
            assert r["kkt_solver"] is None and r["solver_summary"] == {}
        else:
            assert max(r["solver"]["linearized_residual"]) < 1e-8
    # A gain below 1 meets a fraction alpha of the linearised violation per step: slower.
    hard = None
    with jax.enable_x64(True):
        hard = hs.run_method("hard", cfg, problem, progress=False)
    assert runs["hard-alpha"]["median_abs_c"][1] > hard["median_abs_c"][1]


def test_extra_settings_validation():
    for kw, match in (({"alpha": 0.0}, "alpha"), ({"alpha": 1.5}, "alpha"),
                      ({"momentum": 1.0}, "momentum"), ({"penalty": -1.0}, "penalty")):
        with pytest.raises(ValueError, match=match):
            hs.HypersphereConfig(**kw)
    assert hs.HypersphereConfig(lam=5.0).resolved_penalty == 10.0
    assert "hard-alpha" not in hs_config.METHODS and "hard-alpha" in hs_config.ALL_METHODS
