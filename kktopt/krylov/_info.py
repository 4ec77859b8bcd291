"""The result type shared by every kktopt solver, and its stop codes."""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Stop(enum.IntEnum):
    """Why a solve stopped (``SolverInfo.istop``).

    Codes 1-15 follow the numbering of the MINRES-QLP reference software of
    Choi and Saunders (ACM TOMS Algorithm 937), so logs can be compared with
    it; 16-18 are kktopt's own. Codes 1-8 are successes: ``x`` is a
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
}


def stop_message(istop: int) -> str:
    """Human-readable meaning of a stop code, with what to try when it is a failure."""
    return _MESSAGES.get(int(istop), f"unknown stop code {int(istop)}")


SUCCESS_CODES = (1, 2, 3, 4, 5, 6, 7, 8)


class SolverInfo(NamedTuple):
    """Diagnostics of one solve, returned by every kktopt solver.

    All fields are JAX scalars so that the info can live in an optax state
    and be batched by ``jax.vmap``.

    Attributes:
      istop: why the solve stopped, a :class:`Stop` code.
      iterations: iterations performed (operator applications inside the loop).
      minres_iterations: iterations run as plain MINRES steps.
      qlp_iterations: iterations run as MINRES-QLP steps (0 for other solvers).
      rnorm: ||b - A x|| (true value when the solver was asked to check its
        residual at exit, the recurred estimate otherwise).
      arnorm: ||A (b - A x)||, likewise.
      relres: rnorm / (anorm * xnorm + ||b||), the normwise backward error.
      relares: arnorm / (anorm * rnorm), small for a least-squares solution.
      anorm: estimate of ||A|| (Frobenius norm for the dense solver).
      acond: estimate of cond(A) = ||A|| / sigma_min over every direction the
        solve met, including the ones it dropped as numerically singular: a
        dropped pivot gives a value of order 1/rank_tol to 1/eps, or inf for
        an exactly zero one (A = 0, b in the null space). A value above
        about 0.1/eps means A is numerically singular; x then is the
        minimum-length solution on the retained directions.
      xnorm: ||x||.
    """

    istop: jax.Array
    iterations: jax.Array
    minres_iterations: jax.Array
    qlp_iterations: jax.Array
    rnorm: jax.Array
    arnorm: jax.Array
    relres: jax.Array
    relares: jax.Array
    anorm: jax.Array
    acond: jax.Array
    xnorm: jax.Array

    @property
    def success(self) -> jax.Array:
        """True where ``istop`` is one of the success codes 1-8."""
        return (self.istop >= 1) & (self.istop <= 8)

    def describe(self) -> str:
        """A one-line summary (call outside jit, on concrete values)."""
        istop = int(self.istop)
        return (
            f"istop={istop} ({stop_message(istop)}), iterations={int(self.iterations)}"
            f" (minres {int(self.minres_iterations)}, qlp {int(self.qlp_iterations)}),"
            f" relres={float(self.relres):.3e}, relares={float(self.relares):.3e},"
            f" anorm={float(self.anorm):.3e}, acond={float(self.acond):.3e},"
            f" xnorm={float(self.xnorm):.3e}"
        )

    @classmethod
    def empty(cls, dtype) -> "SolverInfo":
        """An all-zero info of the given float dtype (initial optax state)."""
        i = jnp.zeros((), jnp.int32)
        f = jnp.zeros((), dtype)
        return cls(i, i, i, i, f, f, f, f, f, f, f)
