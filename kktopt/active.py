"""Which constraints are active at a step (paper Sec. 4.4).

The number of constraint values grows with the unlabeled pool, so each step
projects on a subset of its samples: all of them, a random minibatch (like
SGD), or the samples that violate the constraints most (hard constraint
mining, Eq. 9). A selector takes the pool batch passed to the transform and
returns the samples the step linearises; inequality constraints are handled
separately by masking (see ``inequality=`` of the transforms).

Selectors are small immutable objects with an ``init``/``select`` pair whose
state lives in the optax state (fixed shape, jit-able). Every selector needs
the batch's leaves to share a leading sample axis, and ``constraint_fn``'s
output to have that sample axis first.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

PyTree = Any

__all__ = [
    "AllSamples",
    "MinedSamples",
    "RandomSamples",
    "Selector",
    "all_samples",
    "batch_size",
    "mine_active_constraints",
    "mined_samples",
    "random_samples",
    "take_samples",
]


def batch_size(batch: PyTree) -> int:
    """The common leading (sample) dimension of a batch's leaves."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError(
            "selecting active samples needs a constraint batch with a leading sample axis; "
            "got a batch with no arrays."
        )
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [jnp.shape(leaf) for leaf in leaves]
        raise ValueError(
            "every leaf of the constraint batch must have the same leading sample axis to "
            f"select active samples; got shapes {shapes}."
        )
    return int(sizes.pop())


def take_samples(batch: PyTree, indices: jax.Array) -> PyTree:
    """Gather samples ``indices`` along the leading axis of every leaf."""
    return jax.tree_util.tree_map(lambda x: jnp.take(x, indices, axis=0), batch)


def mine_active_constraints(values: jax.Array, k: int) -> jax.Array:
    """Hard constraint mining (paper Eq. 9): the k samples that violate most.

    Scores each sample by the median of ``|C_j|`` over its constraints and
    returns the indices of the k highest scores (in decreasing order). Usable
    on its own, e.g. to pick the constraint minibatch in a data pipeline.

    Args:
      values: constraint values with the sample axis first, shape ``(B, ...)``.
      k: how many samples to keep, ``1 <= k <= B``.

    Returns:
      ``int32`` indices of shape ``(k,)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from kktopt.active import mine_active_constraints
      >>> c = jnp.array([[0.1, 0.2, 0.0], [3.0, -2.0, 1.0], [0.5, 0.5, -0.5]])
      >>> mine_active_constraints(c, 2).tolist()
      [1, 2]

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 9.
    """
    values = jnp.asarray(values)
    if values.ndim == 0:
        raise ValueError("mine_active_constraints needs values with a leading sample axis, got a scalar.")
    b = values.shape[0]
    if not isinstance(k, int) or not 1 <= k <= b:
        raise ValueError(f"k must be an integer in [1, {b}] (the number of samples), got {k!r}.")
    scores = jnp.median(jnp.abs(values.reshape(b, -1)), axis=1)
    _, indices = jax.lax.top_k(scores, k)
    return indices.astype(jnp.int32)


class Selector(eqx.Module):
    """Chooses the samples of the constraint batch that a step linearises.

    A transform calls, at every step, ``select`` (which samples), then
    linearises the constraints on them with the per-sample weights of
    ``sample_mask`` (None: all count), then ``observe`` with the constraint
    values it found there (before the step), so that stateful selectors can
    remember samples across steps (see :mod:`kktopt.memory`).
    """

    def init(self, params: PyTree) -> PyTree:
        """The selector's initial state (a pytree of arrays, possibly empty)."""
        return ()

    def select(
        self,
        constraint_fn: Callable[[PyTree, Any], jax.Array],
        params: PyTree,
        batch: PyTree,
        state: PyTree,
    ) -> tuple[PyTree, PyTree]:
        """Return ``(sub_batch, new_state)``."""
        raise NotImplementedError

    def sample_mask(self, state: PyTree) -> jax.Array | None:
        """1/0 weights of the samples of the last ``select`` (None: all active)."""
        return None

    def observe(self, state: PyTree, sub_batch: PyTree, values: jax.Array) -> PyTree:
        """Update the state with the constraint values of the selected samples."""
        return state


class AllSamples(Selector):
    """Every sample of the batch is active (the batch itself is the minibatch)."""

    def select(self, constraint_fn, params, batch, state):
        return batch, state


class RandomSamples(Selector):
    """A uniformly random subset of k samples, drawn without replacement.

    Attributes:
      k: subset size.
      seed: seed of the PRNG key kept in the state.
    """

    k: int = eqx.field(static=True)
    seed: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"RandomSamples.k must be a positive integer, got {self.k!r}.")

    def init(self, params):
        return jax.random.PRNGKey(self.seed)

    def select(self, constraint_fn, params, batch, state):
        b = batch_size(batch)
        if self.k > b:
            raise ValueError(f"RandomSamples(k={self.k}) needs at least {self.k} samples, the batch has {b}.")
        key, sub = jax.random.split(state)
        indices = jax.random.permutation(sub, b)[: self.k]
        return take_samples(batch, indices), key


class MinedSamples(Selector):
    """The k samples with the largest median |C| (hard constraint mining, Eq. 9).

    Costs one evaluation of the constraint function on the whole batch (no
    linearisation) before the k chosen samples are linearised.

    Attributes:
      k: number of samples kept.
    """

    k: int = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"MinedSamples.k must be a positive integer, got {self.k!r}.")

    def select(self, constraint_fn, params, batch, state):
        b = batch_size(batch)
        values = constraint_fn(params, batch)
        if jnp.ndim(values) == 0 or jnp.shape(values)[0] != b:
            raise ValueError(
                "mining needs constraint_fn(params, batch) to return values with the sample axis "
                f"first: the batch has {b} samples but the output has shape {jnp.shape(values)}."
            )
        indices = mine_active_constraints(jax.lax.stop_gradient(values), min(self.k, b))
        return take_samples(batch, indices), state


def all_samples() -> AllSamples:
    """Selector: every sample of the constraint batch is active."""
    return AllSamples()


def random_samples(k: int, seed: int = 0) -> RandomSamples:
    """Selector: k random samples of the constraint batch at each step."""
    return RandomSamples(k=k, seed=seed)


def mined_samples(k: int) -> MinedSamples:
    """Selector: the k samples with the largest median |C| (Eq. 9) at each step."""
    return MinedSamples(k=k)
