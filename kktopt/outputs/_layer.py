"""Equinox layers around `project_outputs`: a projection layer and a projected model."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kktopt.outputs._info import ProjectionInfo
from kktopt.outputs._project import project_outputs


class OutputProjection(eqx.Module):
    """Output layer that projects ONE sample onto its constraint set (`project_outputs`).

    Equinox convention: the layer maps one sample (shaped like the model's
    output for one input) and is batched with ``jax.vmap``; `batch` takes a
    batch directly and also returns the per-sample :class:`ProjectionInfo`.
    The weight is a fixed metric (no gradient flows into it); arrays held by
    `constraint_fn` / `inequality_fn` (e.g. an Equinox module with a learned
    right-hand side) are ordinary trainable leaves and get exact implicit
    gradients.

    Attributes:
      constraint_fn: equalities ``c(y) = 0`` of one sample, or None.
      inequality_fn: inequalities ``g(y) <= 0`` of one sample, or None.
      weight: optional positive diagonal weight, broadcastable to one sample.
      lower, upper: optional bounds ``lower <= y <= upper`` (scalars or one
        sample's shape; fixed, no gradient), handled by elimination.
      tol, atol, max_iter, max_backtracks, hessian: as in `project_outputs`.

    Example:
      >>> import jax, jax.numpy as jnp, kktopt
      >>> proj = kktopt.OutputProjection(lambda y: jnp.sum(y) - 1.0)    # sum to one
      >>> y = jax.vmap(proj)(jnp.array([[1.0, 2.0], [0.5, 0.5]]))
      >>> jnp.round(y, 6).tolist()                                    # to rounding
      [[0.0, 1.0], [0.5, 0.5]]
    """

    constraint_fn: Callable[[jax.Array], jax.Array] | None
    inequality_fn: Callable[[jax.Array], jax.Array] | None = None
    weight: jax.Array | None = None
    lower: jax.Array | float | None = None
    upper: jax.Array | float | None = None
    tol: float | None = eqx.field(static=True, default=None)
    atol: float = eqx.field(static=True, default=0.0)
    max_iter: int = eqx.field(static=True, default=50)
    max_backtracks: int = eqx.field(static=True, default=12)
    hessian: bool = eqx.field(static=True, default=False)

    def batch(self, y_hat: ArrayLike) -> tuple[jax.Array, ProjectionInfo]:
        """Projects a batch ``(batch, *sample_shape)``; returns ``(y, info)``."""
        weight = None if self.weight is None else jax.lax.stop_gradient(jnp.asarray(self.weight))
        return project_outputs(self.constraint_fn, y_hat, inequality_fn=self.inequality_fn,
                               weight=weight, lower=self.lower, upper=self.upper, tol=self.tol, atol=self.atol,
                               max_iter=self.max_iter, max_backtracks=self.max_backtracks,
                               hessian=self.hessian)

    def with_info(self, y_hat: ArrayLike) -> tuple[jax.Array, ProjectionInfo]:
        """Projects one sample; returns ``(y, info)`` with scalar info fields."""
        y, info = self.batch(jnp.asarray(y_hat)[None])
        return y[0], jax.tree_util.tree_map(lambda a: a[0], info)

    def __call__(self, y_hat: ArrayLike) -> jax.Array:
        """The projection of one sample (same shape as `y_hat`)."""
        return self.with_info(y_hat)[0]


class ProjectedModel(eqx.Module):
    """A model followed by an `OutputProjection`: ``x -> projection(model(x))``.

    Wraps a trained model post hoc (nothing retrained) or a model to be
    trained through the projection (the loss sees constrained outputs; the
    gradient is the implicit one of the KKT conditions). Like the model it
    wraps, it maps one input; batch it with ``jax.vmap``. The model's arrays
    are the trainable leaves (``eqx.partition(pm, eqx.is_array)``), so optax
    and the kktopt transforms apply to it unchanged.

    Args:
      model: a callable module mapping one input to one output sample.
      projection: an `OutputProjection`, or a constraint function from which
        one is built with ``projection_kwargs``.
      **projection_kwargs: passed to `OutputProjection` when `projection` is
        a function (``inequality_fn``, ``weight``, ``tol``, ...).

    Example:
      >>> import jax, jax.numpy as jnp, equinox as eqx, kktopt
      >>> net = eqx.nn.Linear(3, 2, key=jax.random.key(0))
      >>> pm = kktopt.ProjectedModel(net, lambda y: jnp.sum(y**2, keepdims=True) - 1.0)
      >>> y = jax.vmap(pm)(jnp.ones((4, 3)))
      >>> bool(jnp.allclose(jnp.sum(y**2, axis=1), 1.0, atol=1e-5))
      True
    """

    model: Any
    projection: OutputProjection

    def __init__(self, model: Any, projection: OutputProjection | Callable, **projection_kwargs):
        if not isinstance(projection, OutputProjection):
            projection = OutputProjection(projection, **projection_kwargs)
        elif projection_kwargs:
            raise ValueError("projection_kwargs are only used when projection is a constraint "
                             "function; set them on the OutputProjection instead.")
        self.model = model
        self.projection = projection

    def __call__(self, x: Any, *args, **kwargs) -> jax.Array:
        """``projection(model(x, *args, **kwargs))`` for one input."""
        return self.projection(self.model(x, *args, **kwargs))

    def with_info(self, x: Any, *args, **kwargs) -> tuple[jax.Array, ProjectionInfo]:
        """The projected output of one input and its :class:`ProjectionInfo`."""
        return self.projection.with_info(self.model(x, *args, **kwargs))
