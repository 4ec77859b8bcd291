"""Bone-length symmetry constraints on predicted 3D poses (paper Eq. 15)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from pose.skeleton import NUM_JOINTS, SYMMETRY_CONSTRAINTS

_ABCD = np.asarray(SYMMETRY_CONSTRAINTS, dtype=np.int32)  # (6, 4)
# Bone vectors as a product: row 2j is y[a_j] - y[b_j], row 2j + 1 is y[c_j] - y[d_j].
# A product with a constant +-1 matrix gives the same values as indexing (each row
# has two nonzeros), and its derivatives are products too: indexing's transpose is
# a scatter, which made the Jacobian of this function 2.5x dearer on XLA:CPU.
_BONES = np.zeros((2 * len(_ABCD), NUM_JOINTS), np.float32)
for _j, (_a, _b, _c, _d) in enumerate(_ABCD):
    _BONES[2 * _j, _a] += 1.0
    _BONES[2 * _j, _b] -= 1.0
    _BONES[2 * _j + 1, _c] += 1.0
    _BONES[2 * _j + 1, _d] -= 1.0


def _check_joints(joints: jax.Array, name: str) -> None:
    if joints.ndim < 2 or joints.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(
            f"{name} must have shape (..., {NUM_JOINTS}, 3) (17 joints x 3 "
            f"coordinates), got {joints.shape}; reshape flat (..., 51) "
            f"predictions with .reshape(*batch, {NUM_JOINTS}, 3)."
        )


def safe_norm(x: ArrayLike, axis: int = -1) -> jax.Array:
    """Euclidean norm whose derivative is finite (zero) at the zero vector.

    ``jnp.linalg.norm`` has a NaN gradient at 0 (0/0). Here the square root is
    taken of the squared norm only where it is positive; elsewhere the value
    is 0 and so is the derivative, under JVP, VJP and linearisation alike.

    Args:
      x: array of vectors.
      axis: the axis holding the vector components.

    Returns:
      The norms, with `axis` removed; same floating dtype as `x`.
    """
    x = jnp.asarray(x)
    sq = jnp.sum(x * x, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)


def bone_symmetry(joints: ArrayLike) -> jax.Array:
    """The six left/right bone-length differences C_j of a pose (Eq. 15).

    C_j(y) = ||y[a_j] - y[b_j]|| - ||y[c_j] - y[d_j]||, with the joint
    quadruples (a_j, b_j, c_j, d_j) of Table 2
    (`pose.skeleton.SYMMETRY_CONSTRAINTS`). A pose with left/right
    symmetric bones has C = 0. The norm is `safe_norm`, so the function can be
    differentiated (JVP, VJP, ``jax.linearize``) even where a bone has zero
    length.

    Args:
      joints: poses of shape ``(..., 17, 3)`` (millimetres in this package),
        float32 or float64; any leading batch shape.

    Returns:
      Constraint values of shape ``(..., 6)``, in the units of `joints`.

    Raises:
      ValueError: if the last two dimensions are not ``(17, 3)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pose.constraints import bone_symmetry
      >>> bone_symmetry(jnp.zeros((4, 17, 3))).shape
      (4, 6)

    References:
      Márquez-Neila, Salzmann, Fua (2017), Eq. 15 and Table 2.
    """
    joints = jnp.asarray(joints)
    _check_joints(joints, "joints")
    if not jnp.issubdtype(joints.dtype, jnp.floating):
        joints = joints.astype(jnp.result_type(float))
    bones = jnp.einsum("kj,...jc->...kc", _BONES.astype(joints.dtype), joints,
                       precision=jax.lax.Precision.HIGHEST)
    bones = bones.reshape(joints.shape[:-2] + (len(_ABCD), 2, 3))  # (..., 6, 2, 3)
    lengths = safe_norm(bones, axis=-1)  # (..., 6, 2)
    return lengths[..., 0] - lengths[..., 1]
