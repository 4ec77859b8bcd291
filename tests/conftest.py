"""Shared test configuration.

Accuracy tests run in float64 through the ``x64`` fixture (a context manager,
so the rest of the suite keeps JAX's float32 defaults).

XLA's LLVM backend optimisation is off in the test run (see below).

Every test module ends by dropping JAX's compiled-function caches, so the
memory held by compiled executables stays that of one module instead of
growing with the whole suite.
"""

import gc
import os

# Tests compile with LLVM's backend optimisation off (XLA's HLO passes, fusion
# included, still run): the suite is dominated by compile time, and this
# takes about 16 % off its heaviest tests on 2 cores. Numerics are the same
# up to rounding (every tolerance is per dtype). KKTOPT_TESTS_OPTIMIZE=1 runs
# the suite with XLA's default optimisation, as users and benchmarks do.
if os.environ.get("KKTOPT_TESTS_OPTIMIZE") != "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_functions():
    yield
    jax.clear_caches()
    gc.collect()


# Parametrisations of a test kept out of the default run (the CI budget is 15
# minutes on 2 cores). Each property they check keeps a float32 and a float64
# case (or its cheapest solver) in the default run; `pytest -m slow` runs these.
SLOW_CASES = {
    "tests/test_kkt_numerics.py::test_gauss_newton_default_matches_dense_eq6[0.01-float64]",
    "tests/test_kkt_numerics.py::test_gauss_newton_default_matches_dense_eq6[1.0-float32]",
    "tests/test_kkt_numerics.py::test_no_silent_multiplier_cap[float64]",
    "tests/test_kkt_numerics.py::test_projected_cg_against_dense_references[dense-float64]",
    "tests/test_kkt_numerics.py::test_projected_cg_against_dense_references[per_sample-float32]",
    "tests/test_kkt_numerics.py::test_schur_methods_meet_rows_or_say_so[lsmr-float64]",
    "tests/test_kkt_numerics.py::test_schur_methods_meet_rows_or_say_so[cg-float64]",
    # The LSMR round of the default Krylov method (minres_qlp) stays in the default run.
    "tests/test_kkt_numerics.py::test_krylov_schur_rounds_meet_rows_past_squared_conditioning[cg]",
    "tests/test_kkt_numerics.py::test_contradictory_constraints_projected_cg[float64]",
    "tests/test_lsmr.py::test_lsmr_damped_matches_scipy[float64]",
    "tests/test_pipeline.py::test_aliases_equal_the_chain_of_building_blocks[float64]",
    "tests/test_transforms.py::test_no_active_constraint_is_exact_sgd_and_adam[krylov-qlp]",
    "tests/test_transforms.py::test_duplicated_and_dependent_constraints[krylov-qlp]",
    # float64 twins of transform-level properties whose float32 case stays in
    # the default run (the numerical core, tests/test_krylov.py, test_lsmr.py and
    # test_kkt_numerics.py, keeps both dtypes; each module below keeps at least
    # one float64 case).
    "tests/test_alpha.py::test_half_gain_meets_half_the_violation[hard_adam-float64]",
    "tests/test_alpha.py::test_half_gain_meets_half_the_violation[project_kkt-float64]",
    "tests/test_alpha.py::test_half_gain_meets_half_the_violation[scale_by_adam_kkt-float64]",
    "tests/test_alpha.py::test_half_gain_meets_half_the_violation[sqp_adam-float64]",
    "tests/test_alpha.py::test_half_gain_meets_half_the_violation[sqp_momentum-float64]",
    "tests/test_primal_dual.py::test_matches_numpy[dual_first-False-1.5-0.3-float64]",
    "tests/test_primal_dual.py::test_matches_numpy[simultaneous-True-0.5-0.0-float64]",
    "tests/test_sqp.py::test_sqp_momentum_matches_numpy[float64-0.5]",
    "tests/test_validation.py::test_nonfinite_constraint_values_give_a_nan_step_and_a_code[float64-inf]",
    "tests/test_validation.py::test_nonfinite_step_is_skipped_by_zero_nans[float64]",
    "tests/test_validation.py::test_nonfinite_incoming_step_is_reported[float64]",
    "tests/test_validation.py::test_nonfinite_gauss_newton_residual_is_reported[float64]",
    "tests/test_validation.py::test_nan_in_a_padding_row_does_not_leak[float64]",
    "tests/test_validation.py::test_python_and_numpy_constraint_outputs_work[float64]",
    "tests/test_validation.py::test_optax_masked_is_rejected_and_partitioning_freezes[float64]",
    "tests/test_validation.py::test_inequality_rounds_solve_the_linearised_qp[float64-2.0]",
    "tests/test_validation.py::test_one_round_is_todays_projection_onto_the_violated_rows[float64]",
    "tests/test_validation.py::test_inequality_rounds_dense_per_sample_vmap_and_limit[float64]",
    "tests/test_validation.py::test_exhausted_active_set_rounds_are_a_status_not_a_success[float64]",
    "tests/test_validation.py::test_inequality_rounds_in_gradient_form[float64]",
    "tests/test_validation.py::test_inequality_rounds_under_inject_hyperparams[float64]",
    # Further solver variants of a property that other variants check in the default run.
    "tests/test_krylov.py::test_kron_tridiag_callable",
    "tests/test_transforms.py::test_duplicated_and_dependent_constraints[schur-qlp]",
    "tests/test_transforms.py::test_hard_sgd_matches_dense_eq5[krylov-minres-matrix_free]",
    "tests/test_transforms.py::test_inject_hyperparams_and_vmap_over_learning_rates",
    "tests/examples/test_pose_experiment.py::test_schur_solver_with_multiplier_memory",
    # The heaviest single cases (10-25 s each on 2 cores under two workers).
    "tests/test_kkt_numerics.py::test_projected_cg_against_dense_references[per_sample-float64]",
    "tests/test_kkt_numerics.py::test_gauss_newton_default_matches_dense_eq6[1.0-float64]",
    "tests/test_kkt_numerics.py::test_schur_methods_meet_rows_or_say_so[lsmr-float32]",
    "tests/test_kkt_numerics.py::test_default_meets_target_and_matches_min_norm_step[16-float64]",
    "tests/test_kkt_numerics.py::test_default_meets_target_and_matches_min_norm_step[8-float32]",
    "tests/test_pipeline.py::test_selectors_record_the_samples_they_chose",
    "tests/test_pipeline.py::test_schur_minres_matches_dense",
    "tests/test_transforms.py::test_nearly_dependent_constraints_stay_finite",
    "tests/test_transforms.py::test_hard_sgd_matches_dense_eq5[krylov-noprecond-matrix_free]",
    # Covered in the default run by test_kkt_numerics.py (Gauss-Newton against a
    # dense Eq. 6 solve), test_krylov_benchmark_quick_runs (a benchmark smoke
    # test) and the box and linear-equality cases of test_outputs.py.
    "tests/test_transforms.py::test_gauss_newton_matches_dense_eq6",
    "tests/test_benchmarks_smoke.py::test_step_cost_quick_table_has_status_and_residual_columns",
    "tests/test_outputs.py::test_linear_equalities_plus_box",
    # Kept for the CI budget: the hard_adam case checks the same inject_hyperparams
    # path; the normal-share instrument is also exercised by the study's smoke tests.
    "tests/test_pipeline.py::test_aliases_inside_inject_hyperparams_and_vmap_over_learning_rate[hard_sgd]",
    "tests/examples/test_pose_study.py::test_normal_share_of_a_projected_and_of_a_feasibility_step",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        # The hypersphere experiment's end-to-end tests share one run of all
        # five methods (the module fixture ``first``, about a minute).
        shares_run = item.nodeid.startswith("tests/examples/test_hypersphere.py::") and "first" in getattr(
            item, "fixturenames", ())
        if item.nodeid in SLOW_CASES or shares_run:
            item.add_marker(pytest.mark.slow)
