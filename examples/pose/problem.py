"""The pose problem as functions of the network's parameters (paper Eq. 13-15).

`PoseProblem`: the network (an Equinox `PoseCNN` split with
``eqx.partition``), the loss of Eq. 14, its residuals for Gauss-Newton and
the constraint function of Eq. 15, ``cfn(params, images) =
bone_symmetry(model(images))`` of shape ``(B, 6)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from pose.constraints import bone_symmetry

__all__ = ["PoseProblem", "make_problem"]

PyTree = Any


class PoseProblem(NamedTuple):
    """The functions of the pose experiment, of ``params = eqx.partition(model)[0]``.

    Attributes:
      static: the non-array part of the model (``eqx.partition``'s second half).
      predict: ``(params, images (B, H, W, 3) uint8) -> joints (B, 17, 3)`` mm.
      loss: ``(params, (images, joints)) -> scalar``, Eq. 14: the squared
        distance between predicted and true joints summed over the 17 joints,
        averaged over the minibatch (mm^2).
      residuals: ``(params, (images, joints)) -> (B * 51,)`` with
        ``1/2 ||r||^2 = loss`` (for Gauss-Newton).
      constraints: ``(params, images) -> (B, 6)``, the bone-length
        differences of Eq. 15 (mm), sample axis first.
    """

    static: Any
    predict: Callable[[PyTree, jax.Array], jax.Array]
    loss: Callable[[PyTree, Any], jax.Array]
    residuals: Callable[[PyTree, Any], jax.Array]
    constraints: Callable[[PyTree, jax.Array], jax.Array]


def make_problem(model: eqx.Module) -> tuple[PyTree, PoseProblem]:
    """Split `model` into its trainable arrays and the `PoseProblem` functions.

    Returns:
      ``(params, problem)``.
    """
    params, static = eqx.partition(model, eqx.is_array)

    def predict(params, images):
        return jax.vmap(eqx.combine(params, static))(images)

    def loss(params, batch):
        images, joints = batch
        return jnp.mean(jnp.sum((predict(params, images) - joints) ** 2, axis=(-2, -1)))

    def residuals(params, batch):
        images, joints = batch
        scale = math.sqrt(2.0 / images.shape[0])
        return (scale * (predict(params, images) - joints)).reshape(-1)

    def constraints(params, images):
        return bone_symmetry(predict(params, images))

    return params, PoseProblem(static, predict, loss, residuals, constraints)
