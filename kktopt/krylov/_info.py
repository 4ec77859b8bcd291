"""The result type shared by every kktopt solver (its stop codes live in :mod:`kktopt._status`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kktopt._status import SUCCESS_CODES, Stop, stop_message

__all__ = ["SUCCESS_CODES", "SolverInfo", "Stop", "stop_message"]


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
        """True where ``istop`` is one of the success codes 1-8 (:data:`SUCCESS_CODES`)."""
        return (self.istop >= min(SUCCESS_CODES)) & (self.istop <= max(SUCCESS_CODES))

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
