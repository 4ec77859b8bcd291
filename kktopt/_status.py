"""Stop codes of the solvers and status codes of the KKT step, in one place.

:class:`Stop` is why a Krylov or dense solve stopped (``SolverInfo.istop``);
:class:`KKTStatus` is what a hard step reports (``KKTInfo.status``). Which
codes count as success, their messages, and how a solver's stop maps to a
step's status are defined here and nowhere else.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp


class Stop(enum.IntEnum):
    """Why a solve stopped (``SolverInfo.istop``).

    Codes 1-15 follow the numbering of the MINRES-QLP reference software of
    Choi and Saunders (ACM TOMS Algorithm 937), so logs can be compared with
    it; 16-20 are kktopt's own. Codes 1-8 are successes: ``x`` is a
    solution or a least-squares solution to the requested tolerance.
    """

    LANCZOS_EXHAUSTED = 1
    """beta_{k+1} < eps: the Krylov subspace is exhausted (rare)."""
    EIGENVECTOR = 2
    """||A|| ||x|| eps >= ||b||: b (and x) is numerically an eigenvector."""
    ZERO_RHS = 3
    """b = 0 (or the system is empty, n = 0), so x = 0 exactly; no iteration was run."""
    SOLVED_RTOL = 4
    """relres <= rtol: x solves the (possibly singular) system A x = b."""
    SOLVED_EPS = 5
    """relres at machine precision: as accurate as this dtype allows."""
    LEAST_SQUARES_RTOL = 6
    """relares <= rtol: x is a least-squares solution (A is singular, b is not in its range)."""
    LEAST_SQUARES_EPS = 7
    """relares at machine precision: least-squares solution, as accurate as the dtype allows."""
    SOLVED_ABSTOL = 8
    """||r|| <= atol."""
    MAXITER = 9
    """The iteration limit was reached before convergence."""
    NONSYMMETRIC_A = 10
    """The operator does not appear to be symmetric."""
    NONSYMMETRIC_M = 11
    """The preconditioner does not appear to be symmetric."""
    INDEFINITE_M = 12
    """The preconditioner does not appear to be positive definite."""
    XNORM_LIMIT = 13
    """||A|| ||x|| / ||b|| reached maxxnorm (a growth bound, invariant to the scaling of A and b)."""
    ACOND_LIMIT = 14
    """The condition estimate reached acondlim (or 0.1/eps)."""
    SINGULAR = 15
    """|gamma_k| < eps: the system is singular and no converged least-squares solution was found yet."""
    NONFINITE = 16
    """NaN or Inf in b, in the operator's output or in the preconditioner's output."""
    INDEFINITE_A = 17
    """CG only: a direction of non-positive curvature; A is not positive definite."""
    INCOMPATIBLE = 18
    """CG only: numerically zero curvature, or ||x|| growing past maxxnorm, before the
    residual converged: A is singular and b does not lie in its range."""
    NONFINITE_INPUT = 19
    """A hard step's inputs are not finite: NaN or Inf in the constraint values, in the
    incoming step, or in the gradient (for Gauss-Newton: in the residuals). The step is NaN."""
    ACTIVE_SET_LIMIT = 20
    """``inequality_rounds`` active-set rounds ran out before the active set settled: some
    linearised inequality may still be violated (or a multiplier negative)."""


_MESSAGES = {
    0: "no stop condition recorded",
    Stop.LANCZOS_EXHAUSTED: "the Krylov subspace is exhausted (beta_{k+1} < eps); x is the final Lanczos iterate",
    Stop.EIGENVECTOR: "b is numerically an eigenvector of A; x = b / alpha_1",
    Stop.ZERO_RHS: "b = 0 (or n = 0), so the exact solution is x = 0",
    Stop.SOLVED_RTOL: "a solution of A x = b to the requested rtol",
    Stop.SOLVED_EPS: "a solution of A x = b to machine precision",
    Stop.LEAST_SQUARES_RTOL: "a minimum-length least-squares solution (A singular, b not in its range), to rtol",
    Stop.LEAST_SQUARES_EPS: "a minimum-length least-squares solution to machine precision",
    Stop.SOLVED_ABSTOL: "||r|| <= atol",
    Stop.MAXITER: "iteration limit reached before convergence: raise maxiter, loosen rtol or add a preconditioner",
    Stop.NONSYMMETRIC_A: "the operator does not appear symmetric: MINRES-type solvers need A = A^T; use a GMRES-type solver or symmetrise the operator",
    Stop.NONSYMMETRIC_M: "the preconditioner does not appear symmetric: it must apply M^-1 for a symmetric positive definite M",
    Stop.INDEFINITE_M: "the preconditioner is not positive definite (v' M^-1 v <= 0): it must apply M^-1 for a symmetric positive definite M",
    Stop.XNORM_LIMIT: "||A|| ||x|| / ||b|| reached maxxnorm: the system is probably singular and incompatible; raise maxxnorm if a solution this large relative to ||b|| / ||A|| is expected",
    Stop.ACOND_LIMIT: "the condition estimate reached acondlim: A is very ill-conditioned; x is the last iterate before the limit",
    Stop.SINGULAR: "|gamma_k| < eps: A is singular and no converged least-squares solution was found yet: raise maxiter",
    Stop.NONFINITE: "NaN or Inf in b or in the output of the operator or preconditioner; x is the last finite iterate",
    Stop.INDEFINITE_A: "CG met a direction of non-positive curvature: A is not positive definite; use minres_qlp",
    Stop.INCOMPATIBLE: "CG broke down on a singular, incompatible system (numerically zero curvature p'Ap, or ||x|| past maxxnorm, while the residual had not converged): b is not in the range of A; x is the last iterate before the breakdown; use minres_qlp (minimum-length least-squares solution) or lsmr",
    Stop.NONFINITE_INPUT: "NaN or Inf in the inputs of the hard step (constraint_fn's values, the incoming updates, or the residuals/gradient), before any solve: the step is NaN so that it cannot pass for a projected one; check constraint_fn and the data at these parameters (a norm or sqrt at 0, a log of a non-positive value, a diverged run), lower the learning rate, or chain optax.zero_nans() after the hard transform to skip such steps",
    Stop.ACTIVE_SET_LIMIT: "the inequality active-set rounds ran out before the active set settled: some linearised inequality may still be violated; raise inequality_rounds",
}


def stop_message(istop: int) -> str:
    """Human-readable meaning of a stop code, with what to try when it is a failure."""
    return _MESSAGES.get(int(istop), f"unknown stop code {int(istop)}")


SUCCESS_CODES = (1, 2, 3, 4, 5, 6, 7, 8)


class KKTStatus(enum.IntEnum):
    """Whether a KKT step meets its linearised constraint rows (``KKTInfo.status``).

    The verdict on the step itself, measured after the solve (and its
    refinement rounds) on the true rows ``r = c + A dw``: success means
    ``||r|| <= tol ||c||`` (plus the rows' rounding floor, which decides only
    for ``c`` near rounding level: :func:`kktopt.kkt.row_floor`), ``tol``
    the constraint tolerance of the :class:`kktopt.KKTSolver`. The inner solver's :class:`Stop` code only says
    why its iteration ended; a failure is classified by it.
    """

    SOLVED = 0
    """``||A dw + c|| <= tol ||c|| + 4 eps (||c|| + ||A u||)``: the step meets the linearised
    constraints (to ``tol``, or to the rounding floor of its own data when ``c`` is below it)."""
    NO_ACTIVE = 1
    """No active constraint row (inequalities all satisfied, no sample): the step is the unconstrained one."""
    NOT_CONVERGED = 2
    """The inner solver reached its iteration limit before the rows were met."""
    INCOMPATIBLE = 3
    """The linearised constraints are contradictory or rank-deficient with ``c`` outside the range of A."""
    MULTIPLIER_BOUND = 4
    """The inner solver stopped at its growth bound ``maxxnorm`` before the rows were met."""
    ACCURACY_LIMIT = 5
    """The rows were not met and refinement stopped making progress (conditioning at the dtype's limit)."""
    NONFINITE = 6
    """NaN or Inf in the constraint values, the Jacobian products or the step."""
    UNCHECKED = 7
    """The residual was not measured (``check_constraints=False``); nothing is claimed."""
    ACTIVE_SET_LIMIT = 8
    """``inequality_rounds`` ran out before the active set settled: the step meets the rows of
    its last active set, but a linearised inequality outside it may be violated (or a
    multiplier of an active row negative)."""


_KKT_MESSAGES = {
    KKTStatus.SOLVED: "the step meets the linearised constraints: ||A dw + c|| <= tol ||c|| (+ the rows' rounding floor)",
    KKTStatus.NO_ACTIVE: "no active constraint: the step is the unconstrained one",
    KKTStatus.NOT_CONVERGED: (
        "the inner solver reached its iteration limit before the linearised constraint rows were met: "
        "raise KKTSolver(maxiter=..., refine=...), or use method='qr' (dense, per-sample Jacobian) for small m"
    ),
    KKTStatus.INCOMPATIBLE: (
        "the linearised constraints are contradictory or redundant with c outside the range of A (or, in "
        "float32, numerically so: A in the metric is rank-deficient to working precision): the step is the "
        "minimum-norm least-squares one and cannot meet them; remove contradictory or duplicated "
        "constraints, or see the accuracy-limit remedies (float64, a better-conditioned metric)"
    ),
    KKTStatus.MULTIPLIER_BOUND: (
        "the inner solver stopped at its growth bound ||A|| ||x|| / ||b|| >= maxxnorm before the rows were "
        "met (very large multipliers, or an incompatible system): raise KKTSolver(maxxnorm=...) (None: no bound)"
    ),
    KKTStatus.ACCURACY_LIMIT: (
        "the linearised constraint rows were not met and refinement stopped making progress: A (in the "
        "metric) is too ill-conditioned for this dtype and method; the default's correction rounds already "
        "work at cond(A), not cond(A)^2 (for a method of your choice use 'dense', 'qr' or 'lsmr'); use "
        "float64, a better-conditioned metric (hard_adam / scale_by_adam_kkt: a larger eps, in the units "
        "of the gradient, bounds how far Adam's metric stretches parameters the loss leaves untouched), "
        "more KKTSolver(refine=...) rounds, or a looser KKTSolver(constraint_rtol=...)"
    ),
    KKTStatus.NONFINITE: (
        "NaN or Inf in the constraint values, the Jacobian products or the step: check constraint_fn at the "
        "current parameters (e.g. a norm at 0) and the learning rate"
    ),
    KKTStatus.UNCHECKED: "the linearised residual was not measured (check_constraints=False); nothing is claimed",
    KKTStatus.ACTIVE_SET_LIMIT: (
        "the inequality active-set rounds ran out before the active set settled: the step meets the rows "
        "of its last active set, but some linearised inequality may still be violated (or a multiplier "
        "negative): raise inequality_rounds"
    ),
}

KKT_SUCCESS_CODES = (KKTStatus.SOLVED, KKTStatus.NO_ACTIVE)

# A KKT Schur complement A D^-1 A^T is positive semidefinite by construction, so
# CG's non-positive curvature (17) there means a singular one, like 15 and 18.
_INCOMPATIBLE_STOPS = (
    Stop.LEAST_SQUARES_RTOL, Stop.LEAST_SQUARES_EPS, Stop.SINGULAR, Stop.INDEFINITE_A, Stop.INCOMPATIBLE,
)


def kkt_status_message(code: int) -> str:
    """Human-readable meaning of a :class:`KKTStatus` code, with what to try when it is a failure."""
    return _KKT_MESSAGES.get(int(code), f"unknown KKT status {int(code)}")


def kkt_success(code) -> jax.Array:
    """True where a :class:`KKTStatus` code is a success (``SOLVED`` or ``NO_ACTIVE``)."""
    code = jnp.asarray(code)
    return (code == KKTStatus.SOLVED) | (code == KKTStatus.NO_ACTIVE)


# The hard step's own stop codes (set after the solve, on ``SolverInfo.istop``) and the
# KKTStatus each one gives the step. NONFINITE_INPUT overrides any status (the step is
# NaN); ACTIVE_SET_LIMIT replaces only a success (a failure of the rows keeps its code).
_STEP_STOPS = {
    Stop.NONFINITE_INPUT: (KKTStatus.NONFINITE, True),
    Stop.ACTIVE_SET_LIMIT: (KKTStatus.ACTIVE_SET_LIMIT, False),
}


def mark_step(status, istop, flag, code: int):
    """``(status, istop)`` of a step where ``flag`` holds and the hard step stopped with ``code``.

    ``code`` is one of the hard step's own :class:`Stop` codes
    (``NONFINITE_INPUT``, ``ACTIVE_SET_LIMIT``): ``istop`` becomes ``code``
    and ``status`` the :class:`KKTStatus` it implies (jit-able).
    """
    kkt_code, overrides = _STEP_STOPS[Stop(code)]
    status = jnp.asarray(status)
    istop = jnp.asarray(istop)
    replace = flag if overrides else flag & kkt_success(status)
    new_status = jnp.where(replace, jnp.asarray(kkt_code, status.dtype), status)
    new_istop = jnp.where(flag, jnp.asarray(code, istop.dtype), istop)
    return new_status, new_istop


def kkt_status(met, active, finite, istop) -> jax.Array:
    """The :class:`KKTStatus` of a step (jit-able).

    Args:
      met: ``||A dw + c|| <= tol ||c||`` (plus the rows' rounding floor) on the true rows.
      active: some constraint row is active.
      finite: the constraint values, the residual and the step are finite.
      istop: the inner solver's :class:`Stop` code of its last solve.
    """
    istop = jnp.asarray(istop)
    incompatible = jnp.zeros((), bool)
    for code in _INCOMPATIBLE_STOPS:
        incompatible = incompatible | (istop == code)
    failure = jnp.where(
        istop == Stop.MAXITER,
        KKTStatus.NOT_CONVERGED,
        jnp.where(
            istop == Stop.XNORM_LIMIT,
            KKTStatus.MULTIPLIER_BOUND,
            jnp.where(incompatible, KKTStatus.INCOMPATIBLE, KKTStatus.ACCURACY_LIMIT),
        ),
    )
    out = jnp.where(
        ~finite,
        KKTStatus.NONFINITE,
        jnp.where(~active, KKTStatus.NO_ACTIVE, jnp.where(met, KKTStatus.SOLVED, failure)),
    )
    return out.astype(jnp.int32)
