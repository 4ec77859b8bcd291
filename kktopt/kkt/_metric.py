"""The metric D of the KKT system [[D, A^T], [A, 0]] (paper Eq. 5, 6 and 12)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from kktopt.krylov import _tree

PyTree = Any


class Metric(NamedTuple):
    """A symmetric positive definite metric D on parameter space.

    Attributes:
      matvec: ``v -> D v``.
      inverse: ``v -> D^-1 v`` when it is cheap (diagonal metrics), else None.
        The Schur-complement solvers need it.
      approx_inverse: ``v -> P^-1 v`` for an SPD approximation P of D, used to
        precondition the full KKT system (equals ``inverse`` when that exists).
      name: for messages.
      inverse_diagonal: for a diagonal D, its inverse diagonal as a pytree
        shaped like the parameters, or a scalar; None otherwise.
    """

    matvec: Callable[[PyTree], PyTree]
    inverse: Callable[[PyTree], PyTree] | None
    approx_inverse: Callable[[PyTree], PyTree]
    name: str
    inverse_diagonal: PyTree | None = None


def euclidean_metric() -> Metric:
    """D = I: the projection of Eq. 5 (Hard-SGD) in closest-step form."""

    def identity(v):
        return v

    return Metric(
        matvec=identity, inverse=identity, approx_inverse=identity, name="euclidean",
        inverse_diagonal=1.0,
    )


def diagonal_metric(diag: PyTree) -> Metric:
    """D = diag(d) for a pytree ``d`` of positive entries (the Adam metric of Eq. 12)."""

    def matvec(v):
        return jax.tree_util.tree_map(jnp.multiply, diag, v)

    def inverse(v):
        return jax.tree_util.tree_map(jnp.divide, v, diag)

    return Metric(
        matvec=matvec, inverse=inverse, approx_inverse=inverse, name="diagonal",
        inverse_diagonal=jax.tree_util.tree_map(lambda d: 1 / d, diag),
    )


def gauss_newton_metric(
    residual_jvp: Callable[[PyTree], PyTree],
    residual_vjp: Callable[[PyTree], PyTree],
    damping: jax.Array,
    curvature_scale: jax.Array,
) -> Metric:
    """D = J^T J + damping I (paper Eq. 6, products as in Algorithm 2).

    Args:
      residual_jvp: ``v -> J v`` of the linearised residual map.
      residual_vjp: ``y -> J^T y``.
      damping: the Levenberg-Marquardt damping eta > 0.
      curvature_scale: an estimate of the typical size of J^T J; the
        preconditioner uses ``(damping + curvature_scale) I``.
    """

    def matvec(v):
        return _tree.tree_axpy(damping, v, residual_vjp(residual_jvp(v)))

    scale = damping + curvature_scale

    def approx_inverse(v):
        return _tree.tree_scale(1 / scale, v)

    return Metric(matvec=matvec, inverse=None, approx_inverse=approx_inverse, name="gauss-newton")
