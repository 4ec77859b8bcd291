"""Soft constraints (paper Eq. 3): the penalised loss for the Soft-SGD / Soft-Adam baselines."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


def constraint_penalty(
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    lam: float | jax.Array,
    *,
    inequality: bool = False,
) -> Callable[[PyTree, Any], jax.Array]:
    """The soft-constraint term ``sum_j lam_j sum_k C_jk(w)^2`` of Eq. 3 as a function.

    Args:
      constraint_fn: ``(params, constraint_batch) -> Array`` of values C_jk
        with the constraint index j last (e.g. shape ``(K, J)``).
      lam: the weight, a scalar or an array broadcastable to the constraint
        values (one weight per constraint j).
      inequality: penalise only violations of ``C <= 0`` (``max(C, 0)^2``).

    Returns:
      ``penalty(params, constraint_batch) -> scalar``.
    """

    def penalty(params, constraint_batch):
        c = constraint_fn(params, constraint_batch)
        if inequality:
            c = jnp.maximum(c, 0)
        return jnp.sum(jnp.asarray(lam, c.dtype) * c * c)

    return penalty


def soft_constrained_loss(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    lam: float | jax.Array,
    *,
    inequality: bool = False,
) -> Callable[[PyTree, Any, Any], jax.Array]:
    """The penalised objective of Eq. 3: ``R(w) + sum_j lam_j sum_k C_jk(w)^2``.

    Soft-SGD and Soft-Adam are then plain optax optimisers on this loss:

    >>> import jax, jax.numpy as jnp, optax, kktopt
    >>> loss = lambda w, batch: jnp.sum((w - batch) ** 2)
    >>> cfn = lambda w, _: jnp.sum(w, keepdims=True) - 1.0
    >>> soft = kktopt.soft_constrained_loss(loss, cfn, lam=10.0)
    >>> w = jnp.zeros(2); tx = optax.sgd(0.01); state = tx.init(w)
    >>> g = jax.grad(soft)(w, jnp.ones(2), None)
    >>> u, state = tx.update(g, state)

    ``lam`` may be a traced array, so one compiled training step can be
    ``jax.vmap``-ed over a grid of weights.

    Args:
      loss_fn: ``(params, batch) -> scalar`` risk R.
      constraint_fn: ``(params, constraint_batch) -> Array``.
      lam: penalty weight(s), see :func:`constraint_penalty`.
      inequality: penalise only violations of ``C <= 0``.

    Returns:
      ``loss(params, batch, constraint_batch) -> scalar``.

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 3.
    """
    penalty = constraint_penalty(constraint_fn, lam, inequality=inequality)

    def loss(params, batch, constraint_batch):
        return loss_fn(params, batch) + penalty(params, constraint_batch)

    return loss
