"""Which constraints are active at a step (paper Sec. 4.4): the selectors.

The number of constraint values grows with the unlabeled pool, so each step
projects on a subset of its samples: all of them, a random minibatch (like
SGD), the samples that violate the constraints most (hard constraint mining,
Eq. 9), or new samples plus a working set of still-violated ones. The
``constraint_batch`` passed to a hard transform is the *pool*; a selector
picks the samples the step linearises and records their indices into the
pool in its state (``indices``), so a caller reads what was chosen from the
optax state instead of replaying random keys. Inequality constraints are
handled separately by masking (see ``inequality=`` of the transforms).

Selectors are small immutable objects whose state lives in the optax state
(fixed shape, jit-able). Every selector needs the batch's leaves to share a
leading sample axis, and ``constraint_fn``'s output to have that sample axis
first.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from kktopt._tree import BatchSpec, batch_size, first_occurrence, take_samples

PyTree = Any

__all__ = [
    "AllSamples",
    "MinedSamples",
    "MinedSamplesState",
    "RandomSamples",
    "RandomSamplesState",
    "Selector",
    "WorkingSet",
    "WorkingSetState",
    "all_samples",
    "batch_size",
    "mine_active_constraints",
    "mined_samples",
    "random_samples",
    "take_samples",
    "violation_score",
    "working_set",
]


def violation_score(values: jax.Array) -> jax.Array:
    """The violation of each sample (paper Eq. 9): the median over its constraints of ``|C|``.

    Args:
      values: constraint values with the sample axis first, shape ``(B, ...)``.

    Returns:
      ``(B,)`` scores.

    Example:
      >>> import jax.numpy as jnp
      >>> from kktopt.active import violation_score
      >>> violation_score(jnp.array([[0.1, -0.3, 0.2], [3.0, -2.0, 1.0]])).tolist()
      [0.2..., 2.0]

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 9.
    """
    values = jnp.asarray(values)
    if values.ndim == 0:
        raise ValueError("violation_score needs values with a leading sample axis, got a scalar.")
    per_sample = math.prod(values.shape[1:])
    return jnp.median(jnp.abs(values.reshape(values.shape[0], per_sample)), axis=1)


def _check_k(k: int, b: int, who: str) -> None:
    if b == 0:
        raise ValueError(
            f"{who}: the constraint batch is empty (0 samples; k >= 1 are needed and it has none "
            "to choose from): pass a non-empty pool (sample axis first) as constraint_batch, or skip the "
            "hard step for this batch."
        )
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= b:
        raise ValueError(f"{who}: k must be an integer in [1, {b}] (the number of samples), got {k!r}.")


def _check_pool(who: str, k: int, b: int) -> None:
    """A selector of k samples needs a pool of at least k: the same clear error for every selector."""
    if b == 0:
        raise ValueError(
            f"{who}(k={k}) got an empty constraint batch (0 samples): pass the unlabeled pool "
            f"(sample axis first, at least {k} samples) as constraint_batch, or skip the hard "
            "step for this batch."
        )
    if k > b:
        raise ValueError(
            f"{who}(k={k}) needs at least {k} samples, the batch has {b}: lower k to "
            f"at most {b}, pass a larger pool, or use active=kktopt.active.all_samples() to "
            "project on every sample of the batch."
        )


def mine_active_constraints(values: jax.Array, k: int) -> jax.Array:
    """Hard constraint mining (paper Eq. 9): the k samples that violate most.

    Scores each sample with :func:`violation_score` (the median of ``|C_j|``
    over its constraints) and returns the indices of the k highest scores (in
    decreasing order). Usable on its own, e.g. to pick the constraint
    minibatch in a data pipeline.

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
    scores = violation_score(values)
    _check_k(k, scores.shape[0], "mine_active_constraints")
    _, indices = jax.lax.top_k(scores, k)
    return indices.astype(jnp.int32)


class Selector(eqx.Module):
    """Chooses the samples of the constraint pool that a step linearises.

    A transform calls, at every step, ``select`` (which samples), then
    linearises the constraints on them with the per-sample weights of
    ``sample_mask`` (None: all count), then ``observe`` with the constraint
    values it found there (before the step), so that stateful selectors can
    remember samples across steps. ``indices`` gives the pool indices of the
    last selection (None: the whole pool, in order).
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

    def indices(self, state: PyTree) -> jax.Array | None:
        """``int32`` pool indices of the samples of the last ``select`` (None: the whole pool in order)."""
        return None

    def observe(self, state: PyTree, sub_batch: PyTree, values: jax.Array) -> PyTree:
        """Update the state with the constraint values of the selected samples."""
        return state


class AllSamples(Selector):
    """Every sample of the batch is active (the batch itself is the minibatch)."""

    def select(self, constraint_fn, params, batch, state):
        return batch, state


class RandomSamplesState(NamedTuple):
    """State of :class:`RandomSamples`.

    Attributes:
      key: the PRNG key of the next draw.
      indices: ``(k,)`` int32 pool indices drawn at the last step (zeros
        before the first).
    """

    key: jax.Array
    indices: jax.Array


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
        return RandomSamplesState(key=jax.random.PRNGKey(self.seed), indices=jnp.zeros((self.k,), jnp.int32))

    def select(self, constraint_fn, params, batch, state):
        b = batch_size(batch)
        _check_pool("RandomSamples", self.k, b)
        key, sub = jax.random.split(state.key)
        indices = jax.random.permutation(sub, b)[: self.k].astype(jnp.int32)
        return take_samples(batch, indices), RandomSamplesState(key=key, indices=indices)

    def indices(self, state):
        return state.indices


class MinedSamplesState(NamedTuple):
    """State of :class:`MinedSamples`.

    Attributes:
      indices: ``(k,)`` int32 pool indices mined at the last step, worst
        first (zeros before the first).
    """

    indices: jax.Array


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

    def init(self, params):
        return MinedSamplesState(indices=jnp.zeros((self.k,), jnp.int32))

    def select(self, constraint_fn, params, batch, state):
        b = batch_size(batch)
        _check_pool("MinedSamples", self.k, b)
        values = constraint_fn(params, batch)
        if jnp.ndim(values) == 0 or jnp.shape(values)[0] != b:
            raise ValueError(
                "mining needs constraint_fn(params, batch) to return values with the sample axis "
                f"first: the batch has {b} samples but the output has shape {jnp.shape(values)}."
            )
        indices = mine_active_constraints(jax.lax.stop_gradient(values), self.k)
        return take_samples(batch, indices), MinedSamplesState(indices=indices)

    def indices(self, state):
        return state.indices


# --------------------------------------------------------------------------
# Working set: violated samples stay active until they are satisfied.
# --------------------------------------------------------------------------


class WorkingSetState(NamedTuple):
    """State of :class:`WorkingSet` (fixed shapes; samples are pool indices).

    Attributes:
      members: ``(size,)`` int32 pool indices of the remembered samples
        (empty slots hold 0, a real sample that is given weight 0).
      valid: ``(size,)`` bool, which slots hold a remembered sample.
      score: ``(size,)`` their violation (Eq. 9) when last seen.
      age: ``(size,)`` int32, steps each sample has spent in the set.
      active: ``(k + size,)`` 1/0 weights of the last selection (the
        candidates' weights, then the slots').
      indices: ``(k + size,)`` int32 pool indices of the last selection.
      candidates: state of the candidate selector.
    """

    members: jax.Array
    valid: jax.Array
    score: jax.Array
    age: jax.Array
    active: jax.Array
    indices: jax.Array
    candidates: PyTree


class WorkingSet(Selector):
    """A bounded working set of violated samples that stay active until satisfied.

    At step t the transform projects onto the union of the newly chosen
    samples (random or mined, as before) and the set: the KKT system of
    Eq. 5/6/12 with the rows of both,

        min_dw ||dw - u||_D   s.t.   A_new dw = -c_new,   A_mem dw = -c_mem,

    re-linearised at the current parameters (no stale information). The set
    is then refilled from the samples just seen, worst violation first,
    keeping only those whose violation (Eq. 9, :func:`violation_score`)
    exceeds ``tol``: a sample leaves the set once it is observed to be
    satisfied. Samples are remembered as indices into the pool, so the same
    pool must be passed as ``constraint_batch`` at every step. Cost per step:
    the constraints of ``size`` more samples in the linearisation. With
    ``size=0`` the selector is exactly its ``candidates`` selector.

    Attributes:
      size: number of remembered samples (0 disables the memory).
      candidates: selector for the new samples of each step
        (e.g. ``kktopt.active.mined_samples(16)``); default all of the pool.
      tol: a sample is satisfied, and leaves the set, when its score is at
        most ``tol``.
      max_age: a sample leaves after this many steps in the set even if still
        violated (0: never); lets infeasible or very hard samples rotate out.
      like: the pool's shapes and dtypes.
    """

    size: int = eqx.field(static=True)
    candidates: Selector
    tol: float | jax.Array
    max_age: int = eqx.field(static=True)
    like: BatchSpec = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"working_set size must be an integer >= 0, got {self.size!r}.")
        if not isinstance(self.candidates, Selector):
            raise TypeError(
                "candidates must be a selector (e.g. kktopt.active.mined_samples(16)), "
                f"got {type(self.candidates).__name__}."
            )

    def _num_candidates(self) -> int:
        k = getattr(self.candidates, "k", None)
        return k if isinstance(k, int) else self.like.size

    def init(self, params):
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        n = self._num_candidates() + self.size
        return WorkingSetState(
            members=jnp.zeros((self.size,), jnp.int32),
            valid=jnp.zeros((self.size,), bool),
            score=jnp.zeros((self.size,), dtype),
            age=jnp.zeros((self.size,), jnp.int32),
            active=jnp.zeros((n,), dtype),
            indices=jnp.zeros((n,), jnp.int32),
            candidates=self.candidates.init(params),
        )

    def select(self, constraint_fn, params, batch, state: WorkingSetState):
        b = batch_size(batch)
        if self.size > 0 and b != self.like.size:
            raise ValueError(
                f"working_set was built for a pool of {self.like.size} samples (its like=) but the "
                f"constraint batch has {b}: pass the same pool at every step."
            )
        new, cand_state = self.candidates.select(constraint_fn, params, batch, state.candidates)
        k = batch_size(new)
        if k != self._num_candidates():
            raise ValueError(
                f"working_set expected {self._num_candidates()} new samples per step (from its "
                f"candidates selector or the example batch), got {k}."
            )
        dtype = state.score.dtype
        cand_mask = self.candidates.sample_mask(cand_state)
        cand_mask = jnp.ones((k,), dtype) if cand_mask is None else cand_mask.astype(dtype)
        cand_idx = self.candidates.indices(cand_state)
        cand_idx = jnp.arange(k, dtype=jnp.int32) if cand_idx is None else cand_idx
        if self.size == 0:
            return new, state._replace(active=cand_mask, indices=cand_idx, candidates=cand_state)
        kept = take_samples(batch, state.members)
        merged = jax.tree_util.tree_map(lambda a, c: jnp.concatenate([a, c], axis=0), new, kept)
        return merged, state._replace(
            active=jnp.concatenate([cand_mask, state.valid.astype(dtype)]),
            indices=jnp.concatenate([cand_idx, state.members]),
            candidates=cand_state,
        )

    def sample_mask(self, state: WorkingSetState):
        if self.size == 0 and self.candidates.sample_mask(state.candidates) is None:
            return None
        return state.active

    def indices(self, state: WorkingSetState):
        return state.indices

    def observe(self, state: WorkingSetState, sub_batch, values):
        k = values.shape[0] - self.size
        cand_state = self.candidates.observe(
            state.candidates, jax.tree_util.tree_map(lambda x: x[:k], sub_batch), values[:k]
        )
        if self.size == 0:
            return state._replace(candidates=cand_state)
        score = violation_score(values)
        age = jnp.concatenate([jnp.zeros((k,), jnp.int32), state.age + 1])
        # A sample seen again among the new ones takes its fresh slot only once.
        keep = first_occurrence(state.indices, state.active > 0) & (score > self.tol)
        if self.max_age > 0:
            keep = keep & (age < self.max_age)
        # Worst violation first; empty, duplicate and satisfied samples sort last.
        _, order = jax.lax.top_k(jnp.where(keep, score, -jnp.inf), self.size)
        kept = jnp.take(keep, order)
        return state._replace(
            members=jnp.where(kept, jnp.take(state.indices, order), 0),
            valid=kept,
            score=jnp.where(kept, jnp.take(score, order), 0).astype(state.score.dtype),
            age=jnp.where(kept, jnp.take(age, order), 0),
            candidates=cand_state,
        )


def all_samples() -> AllSamples:
    """Selector: every sample of the constraint batch is active."""
    return AllSamples()


def random_samples(k: int, seed: int = 0) -> RandomSamples:
    """Selector: k random samples of the constraint pool at each step.

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> pool = jnp.linspace(-1.0, 1.0, 10)[:, None]
      >>> cfn = lambda w, x: x @ w - 1.0          # one constraint per sample
      >>> tx = optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn, active=kktopt.active.random_samples(3)))
      >>> w = jnp.ones(1)
      >>> u, state = tx.update(jnp.zeros(1), tx.init(w), w, constraint_batch=pool)
      >>> state[1].active.indices.shape          # the pool samples this step projected on
      (3,)
    """
    return RandomSamples(k=k, seed=seed)


def mined_samples(k: int) -> MinedSamples:
    """Selector: the k samples with the largest median |C| (Eq. 9) at each step."""
    return MinedSamples(k=k)


def working_set(
    size: int,
    like: Any,
    *,
    candidates: Selector | None = None,
    tol: float = 0.0,
    max_age: int = 0,
) -> WorkingSet:
    """Selector: new samples plus a working set of ``size`` still-violated ones (see :class:`WorkingSet`).

    Args:
      size: how many samples the working set holds.
      like: the constraint pool (sample axis first) passed as
        ``constraint_batch`` at every step, or arrays of its shapes and
        dtypes (e.g. ``jax.ShapeDtypeStruct``); only its shapes are used.
      candidates: the selector for each step's new samples (default: the
        whole pool).
      tol: satisfaction threshold on a sample's score (Eq. 9).
      max_age: evict samples after this many steps (0: never).

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> pool = jnp.zeros((128, 8))
      >>> active = kktopt.active.working_set(32, pool, candidates=kktopt.active.mined_samples(16))
      >>> tx = optax.chain(optax.sgd(1e-2), kktopt.project_kkt(lambda p, x: x @ p, active=active))
    """
    return WorkingSet(
        size=size,
        candidates=AllSamples() if candidates is None else candidates,
        tol=tol,
        max_age=max_age,
        like=BatchSpec(like),
    )
