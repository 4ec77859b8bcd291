"""Evaluation metrics of the 3D pose experiment (paper Sec. 5, Fig. 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from pose.constraints import _check_joints, bone_symmetry

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Violation thresholds (mm) for `fraction_met`, spanning the x axis of Fig. 2b."""


def _float(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def per_joint_error(pred: ArrayLike, target: ArrayLike) -> jax.Array:
    """Euclidean distance between predicted and true joints.

    Args:
      pred: predicted poses ``(..., 17, 3)``, mm.
      target: true poses, same shape.

    Returns:
      Distances ``(..., 17)``, mm.
    """
    pred, target = _float(pred), _float(target)
    _check_joints(pred, "pred")
    _check_joints(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and "
                         f"{target.shape}.")
    return jnp.sqrt(jnp.sum((pred - target) ** 2, axis=-1))


def mpjpe(pred: ArrayLike, target: ArrayLike) -> jax.Array:
    """Prediction error: mean over samples of the mean per-joint distance (MPJPE).

    error = 1/N sum_i 1/17 sum_m ||y_im - y^_im||, the paper's prediction error
    (Sec. 5, "Prediction error"; the loss of Eq. 14 is its squared version).

    Args:
      pred: predicted poses ``(N, 17, 3)`` (or any ``(..., 17, 3)``), mm.
      target: true poses, same shape, mm.

    Returns:
      Scalar error in mm.

    Example:
      >>> import jax.numpy as jnp
      >>> from pose.metrics import mpjpe
      >>> target = jnp.broadcast_to(jnp.array([3.0, 4.0, 0.0]), (2, 17, 3))
      >>> float(mpjpe(jnp.zeros((2, 17, 3)), target))
      5.0
    """
    return jnp.mean(per_joint_error(pred, target))


def abs_constraints(pred: ArrayLike) -> jax.Array:
    """|C_jk| of every sample k and symmetry constraint j (Eq. 15), shape ``(..., 6)``, mm."""
    return jnp.abs(bone_symmetry(_float(pred)))


def median_abs_constraint(pred: ArrayLike) -> jax.Array:
    """Median constraint violation: median over samples and constraints of |C_jk|.

    The paper's second metric (Sec. 5, "Median constraint violation"; the
    x axis of Fig. 2a).

    Args:
      pred: predicted poses ``(N, 17, 3)``, mm.

    Returns:
      Scalar median of the 6 N values |C_jk|, mm.
    """
    return jnp.median(abs_constraints(pred))


def fraction_met(pred: ArrayLike, thresholds: ArrayLike = DEFAULT_THRESHOLDS) -> jax.Array:
    """Proportion of constraint values with |C_jk| <= threshold (Fig. 2b).

    Args:
      pred: predicted poses ``(N, 17, 3)``, mm.
      thresholds: thresholds (mm), any shape ``T``.

    Returns:
      Array of shape ``T``: for each threshold, the fraction of the 6 N values
      |C_jk| that are at most the threshold.
    """
    viol = abs_constraints(pred).reshape(-1)
    thresholds = _float(thresholds)
    met = viol[(None,) * thresholds.ndim] <= thresholds[..., None]
    return jnp.mean(met.astype(viol.dtype), axis=-1)
