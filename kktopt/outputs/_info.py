"""Per-sample status codes and diagnostics of :func:`kktopt.project_outputs`."""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ProjectionStatus(enum.IntEnum):
    """Why the projection of one sample stopped (``ProjectionInfo.status``)."""

    CONVERGED = 0
    """A KKT point of the projection problem to tolerance (see `project_outputs`)."""
    MAX_ITER = 1
    """The iteration limit was reached before the KKT conditions held."""
    INFEASIBLE = 2
    """The constraints cannot be met from here: y is a stationary point of the
    least-squares violation (rank-deficient and incompatible linearisation)."""
    NONFINITE = 3
    """NaN or Inf in y_hat, or in the constraint values or Jacobian."""
    STALLED = 4
    """The line search could not decrease the merit function (accuracy limit
    of the dtype, or a nonsmooth point such as a norm at zero)."""


_MESSAGES = {
    ProjectionStatus.CONVERGED: "converged: constraints met, first-order (KKT) conditions hold to tol",
    ProjectionStatus.MAX_ITER: "iteration limit reached before convergence: raise max_iter or loosen tol",
    ProjectionStatus.INFEASIBLE: (
        "the constraints cannot be met from this point (their linearisation is rank-deficient and "
        "incompatible); y is a least-squares point of the violation: check the constraints, or that "
        "they are differentiable there"),
    ProjectionStatus.NONFINITE: (
        "NaN or Inf in y_hat or in the constraint values/Jacobian; y is y_hat (or the last finite "
        "iterate): check the model output, and use a norm with a finite derivative at 0"),
    ProjectionStatus.STALLED: (
        "no further decrease of the merit function: the tolerance is below what this dtype "
        "resolves (loosen tol or use float64), or the constraints are not differentiable here"),
}


def status_message(status: int) -> str:
    """Human-readable meaning of a :class:`ProjectionStatus` code, with what to try."""
    try:
        return _MESSAGES[ProjectionStatus(int(status))]
    except ValueError:
        return f"unknown status {int(status)}"


class ProjectionInfo(NamedTuple):
    """Diagnostics of :func:`kktopt.project_outputs`, one entry per sample.

    Every field has the batch axis of ``y_hat`` first.

    Attributes:
      status: a :class:`ProjectionStatus` code (int32).
      iterations: Gauss-Newton iterations taken (0 for an input that already
        satisfies the KKT conditions, which is returned unchanged).
      violation: largest constraint violation, ``max(|c(y)|, g(y)_+)``, in the
        units of the constraint values.
      stationarity: ``||P_T W^{1/2} (y - y_hat)||``, the part of the weighted
        correction tangent to the active constraints (0 at a KKT point).
      distance: ``||y - y_hat||_W``.
      num_active: number of inequalities in the final working set.
      multipliers: Lagrange multipliers ``(lambda, mu)`` flattened and
        concatenated (equalities first): ``W (y - y_hat) = -J_c^T lambda -
        J_g^T mu`` with ``mu >= 0`` and ``mu = 0`` off the working set.
    """

    status: jax.Array
    iterations: jax.Array
    violation: jax.Array
    stationarity: jax.Array
    distance: jax.Array
    num_active: jax.Array
    multipliers: jax.Array

    @property
    def converged(self) -> jax.Array:
        """True where ``status`` is ``CONVERGED``."""
        return self.status == ProjectionStatus.CONVERGED

    def counts(self) -> dict[str, int]:
        """Number of samples per status name (call outside jit)."""
        status = np.asarray(self.status).ravel()
        return {s.name: int(np.sum(status == s)) for s in ProjectionStatus if np.any(status == s)}

    def describe(self) -> str:
        """A one-line summary over the batch (call outside jit, on concrete values)."""
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        worst = int(np.max(np.asarray(self.status))) if np.size(self.status) else 0
        text = (f"{counts}; iterations <= {int(jnp.max(self.iterations))}, "
                f"max violation {float(jnp.max(self.violation)):.3e}")
        if worst:
            failing = [s for s in ProjectionStatus if s and np.any(np.asarray(self.status) == s)]
            text += "; " + "; ".join(f"{s.name}: {status_message(s)}" for s in failing)
        return text
