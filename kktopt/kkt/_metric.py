"""The metric D of the KKT system [[D, A^T], [A, 0]] (paper Eq. 5, 6 and 12).

Each hard transform is its metric: :func:`euclidean_metric` (Hard-SGD,
Eq. 5), :func:`adam_metric` (Hard-Adam, Eq. 12) and
:func:`gauss_newton_metric` (Gauss-Newton-KKT, Eq. 6, with its
preconditioner scale from :func:`gauss_newton_curvature_scale`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from kktopt import _tree

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
      residual_map: for ``D = J^T J + eta I``, ``v -> J v``; its output size
        bounds the number of distinct eigenvalues of D (the full-system
        iteration limit uses it). None otherwise.
      approx_inverse_diagonal: when ``approx_inverse`` is diagonal, its
        diagonal (a pytree shaped like the parameters, or a scalar), for
        the diagonal preconditioner of ``method="projected_cg"``; None
        otherwise.
    """

    matvec: Callable[[PyTree], PyTree]
    inverse: Callable[[PyTree], PyTree] | None
    approx_inverse: Callable[[PyTree], PyTree]
    name: str
    inverse_diagonal: PyTree | None = None
    residual_map: Callable[[PyTree], jax.Array] | None = None
    approx_inverse_diagonal: PyTree | None = None


def euclidean_metric() -> Metric:
    """D = I: the projection of Eq. 5 (Hard-SGD) in closest-step form.

    Eq. 5 has ``eta I = I / lr`` in the top-left block; in closest-step form
    (the step closest to the SGD step ``u = -lr g``) the scalar does not
    change the step, so D = I.
    """

    def identity(v):
        return v

    return Metric(
        matvec=identity, inverse=identity, approx_inverse=identity, name="euclidean",
        inverse_diagonal=1.0,
    )


def diagonal_metric(diag: PyTree) -> Metric:
    """D = diag(d) for a pytree ``d`` of positive entries."""

    def matvec(v):
        return jax.tree_util.tree_map(jnp.multiply, diag, v)

    def inverse(v):
        return jax.tree_util.tree_map(jnp.divide, v, diag)

    return Metric(
        matvec=matvec, inverse=inverse, approx_inverse=inverse, name="diagonal",
        inverse_diagonal=jax.tree_util.tree_map(lambda d: 1 / d, diag),
    )


def adam_metric(nu_hat: PyTree, eps, eps_root, like: PyTree) -> Metric:
    """Adam's metric of Eq. 12: ``D = diag(sqrt(nu_hat + eps_root) + eps)``.

    Eq. 12 writes ``D = (1 - b1^t) / lr * diag(sqrt(v_hat_t) + eps)``. The
    positive scalar ``(1 - b1^t) / lr`` does not change the step closest to
    Adam's step in the D-norm, so it is left out: the multipliers are those
    of this D (independent of the learning rate and of the bias correction
    of the first moment).

    Args:
      nu_hat: the bias-corrected second moment, shaped like the parameters.
      eps, eps_root: Adam's ``eps`` and ``eps_root`` (as in ``optax.adam``).
      like: the parameters; D takes their dtypes.

    Returns:
      A diagonal :class:`Metric`.

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 10-12; Kingma and Ba (2015).
    """
    diag = jax.tree_util.tree_map(lambda v, p: (jnp.sqrt(v + eps_root) + eps).astype(p.dtype), nu_hat, like)
    return diagonal_metric(diag)._replace(name="adam")


def gauss_newton_curvature_scale(residual_jvp: Callable[[PyTree], jax.Array], direction: PyTree) -> jax.Array:
    """The Rayleigh quotient ``||J v||^2 / ||v||^2`` of ``J^T J`` along ``direction``.

    The typical size of ``J^T J`` along the gradient ``v = J^T r``: the
    preconditioner of the Gauss-Newton KKT system uses
    ``(damping + scale) I`` for D. One JVP; 0 when ``v = 0``.
    """
    vnorm = _tree.tree_norm(direction)
    jv = residual_jvp(_tree.tree_scale(1 / jnp.where(vnorm > 0, vnorm, 1), direction))
    return jnp.sum(jv * jv)


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
      curvature_scale: an estimate of the typical size of J^T J (see
        :func:`gauss_newton_curvature_scale`); the preconditioner uses
        ``(damping + curvature_scale) I``.

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 6 and Algorithm 2.
    """

    def matvec(v):
        return _tree.tree_axpy(damping, v, residual_vjp(residual_jvp(v)))

    scale = damping + curvature_scale

    def approx_inverse(v):
        return _tree.tree_scale(1 / scale, v)

    return Metric(matvec=matvec, inverse=None, approx_inverse=approx_inverse, name="gauss-newton",
                  residual_map=residual_jvp, approx_inverse_diagonal=1 / scale)
