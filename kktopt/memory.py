"""Memory strategies: keep constraints active across steps (the paper's open problem).

Hard constraints lost to soft ones in Marquez-Neila et al. (2017, Sec. 6-7)
because every step projects onto a fresh random or mined subset of the
constraints and forgets the previous ones: a constraint met at one step is
broken by the next step's projection onto other constraints. Classical
active-set methods succeed because constraints stay in the working set.
This module gives the stochastic hard transforms such a memory, as selectors
(``active=`` of :func:`kktopt.project_kkt`, :func:`kktopt.scale_by_adam_kkt`
and :func:`kktopt.gauss_newton_kkt`) whose state lives in the optax state
with a fixed shape.

:func:`working_set` keeps a bounded buffer of samples whose constraints were
violated when last seen. At step t the transform projects onto the union of
the newly chosen samples (random or mined, as before) and the buffer: the
KKT system of Eq. 5/6/12 with the rows of both,

    min_dw ||dw - u||_D   s.t.   A_new dw = -c_new,   A_mem dw = -c_mem,

re-linearised at the current parameters (no stale information). The buffer
is then refilled from the samples just seen, worst violation first, keeping
only those whose violation (median over the sample's constraints of |C|)
exceeds ``tol``: a sample leaves the working set once it is observed to be
satisfied. Cost per step: the constraints of ``size`` more samples in the
linearisation (one more forward/JVP/VJP row block), memory ``size`` inputs.

With ``size=0`` the selector is exactly its ``candidates`` selector.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from kktopt.active import AllSamples, Selector, batch_size

PyTree = Any

__all__ = [
    "MultiplierMemory",
    "MultiplierMemoryState",
    "WorkingSet",
    "WorkingSetState",
    "multiplier_memory",
    "working_set",
]


class WorkingSetState(NamedTuple):
    """State of :class:`WorkingSet` (fixed shapes).

    Attributes:
      buffer: ``size`` remembered samples (a batch pytree with leading axis
        ``size``).
      valid: ``(size,)`` bool, which buffer slots hold a sample.
      score: ``(size,)`` their violation when last seen.
      age: ``(size,)`` int32, steps each sample has spent in the buffer.
      active: ``(k + size,)`` 1/0 weights of the last selection (buffer slots
        that are empty are inactive).
      candidates: state of the candidate selector.
    """

    buffer: PyTree
    valid: jax.Array
    score: jax.Array
    age: jax.Array
    active: jax.Array
    candidates: PyTree


def _score(values: jax.Array) -> jax.Array:
    b = values.shape[0]
    return jnp.median(jnp.abs(values.reshape(b, -1)), axis=1)


def _fingerprints(batch: PyTree) -> jax.Array:
    """One uint32 per sample that identifies it: a hash of the sample's bits.

    Integer arithmetic wraps around and is associative, so the same sample
    gets the same fingerprint in any batch, whatever the reduction order.
    Used to find a sample again in a memory buffer.
    """
    total = jnp.zeros((batch_size(batch),), jnp.uint32)
    for i, leaf in enumerate(jax.tree_util.tree_leaves(batch)):
        flat = jnp.asarray(leaf).reshape(leaf.shape[0], -1)
        if jnp.issubdtype(flat.dtype, jnp.floating):
            flat = flat.astype(jnp.float32) + 0.0  # one bit pattern for 0.0 and -0.0
            bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
        else:
            bits = flat.astype(jnp.uint32)
        rng = np.random.default_rng(1234 + i)
        weights = jnp.asarray(rng.integers(1, 2**32, flat.shape[1], dtype=np.uint64) | 1, jnp.uint32)
        mixed = bits * weights
        mixed = mixed ^ (mixed >> 15)
        total = total * jnp.uint32(2654435761) + jnp.sum(mixed, axis=1, dtype=jnp.uint32)
    return total


def _first_occurrence(keys: jax.Array, valid: jax.Array) -> jax.Array:
    """valid & no earlier valid entry has the same key."""
    same = (keys[:, None] == keys[None, :]) & valid[None, :]
    earlier = jnp.tril(same, k=-1)
    return valid & ~jnp.any(earlier, axis=1)


class WorkingSet(Selector):
    """A bounded working set of violated samples that stay active until satisfied.

    Attributes:
      size: number of remembered samples (0 disables the memory).
      candidates: selector for the new samples of each step
        (e.g. ``kktopt.active.mined_samples(16)``); default all of the batch.
      tol: a sample is satisfied, and leaves the set, when the median of
        ``|C|`` over its constraints is at most ``tol``.
      max_age: a sample leaves after this many steps in the set even if still
        violated (0: never); lets infeasible or very hard samples rotate out.
      like: an example batch with the sample axis first (only shapes and
        dtypes are used) to size the buffer.
    """

    size: int = eqx.field(static=True)
    candidates: Selector
    tol: float | jax.Array
    max_age: int = eqx.field(static=True)
    like: Any = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"working_set size must be an integer >= 0, got {self.size!r}.")
        if not isinstance(self.candidates, Selector):
            raise TypeError(
                f"candidates must be a selector (e.g. kktopt.active.mined_samples(16)), got {type(self.candidates).__name__}."
            )

    def _num_candidates(self) -> int:
        k = getattr(self.candidates, "k", None)
        return k if isinstance(k, int) else batch_size(self.like.spec)

    def init(self, params):
        buffer = jax.tree_util.tree_map(
            lambda x: jnp.zeros((self.size,) + tuple(x.shape[1:]), x.dtype), self.like.spec
        )
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        return WorkingSetState(
            buffer=buffer,
            valid=jnp.zeros((self.size,), bool),
            score=jnp.zeros((self.size,), dtype),
            age=jnp.zeros((self.size,), jnp.int32),
            active=jnp.zeros((self._num_candidates() + self.size,), dtype),
            candidates=self.candidates.init(params),
        )

    def select(self, constraint_fn, params, batch, state: WorkingSetState):
        new, cand_state = self.candidates.select(constraint_fn, params, batch, state.candidates)
        k = batch_size(new)
        dtype = state.score.dtype
        cand_mask = self.candidates.sample_mask(cand_state)
        cand_mask = jnp.ones((k,), dtype) if cand_mask is None else cand_mask.astype(dtype)
        if k != self._num_candidates():
            raise ValueError(
                f"working_set expected {self._num_candidates()} new samples per step (from its "
                f"candidates selector or the example batch), got {k}."
            )
        if self.size == 0:
            return new, state._replace(active=cand_mask, candidates=cand_state)
        merged = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), new, state.buffer)
        active = jnp.concatenate([cand_mask, state.valid.astype(dtype)])
        return merged, state._replace(active=active, candidates=cand_state)

    def sample_mask(self, state: WorkingSetState):
        if self.size == 0 and self.candidates.sample_mask(state.candidates) is None:
            return None
        return state.active

    def observe(self, state: WorkingSetState, sub_batch, values):
        cand_state = self.candidates.observe(
            state.candidates,
            jax.tree_util.tree_map(lambda x: x[: values.shape[0] - self.size], sub_batch),
            values[: values.shape[0] - self.size],
        )
        if self.size == 0:
            return state._replace(candidates=cand_state)
        score = _score(values)
        k = values.shape[0] - self.size
        age = jnp.concatenate([jnp.zeros((k,), jnp.int32), state.age + 1])
        # A sample seen again among the new ones takes its fresh slot only once.
        keep = _first_occurrence(_fingerprints(sub_batch), state.active > 0)
        keep = keep & (score > self.tol)
        if self.max_age > 0:
            keep = keep & (age < self.max_age)
        # Worst violation first; empty, duplicate and satisfied samples sort last.
        priority = jnp.where(keep, score, -jnp.inf)
        _, order = jax.lax.top_k(priority, self.size)
        buffer = jax.tree_util.tree_map(lambda x: jnp.take(x, order, axis=0), sub_batch)
        return state._replace(
            buffer=buffer,
            valid=jnp.take(keep, order),
            score=jnp.where(jnp.take(keep, order), jnp.take(score, order), 0).astype(state.score.dtype),
            age=jnp.where(jnp.take(keep, order), jnp.take(age, order), 0),
            candidates=cand_state,
        )


def working_set(
    size: int,
    like: Any,
    *,
    candidates: Selector | None = None,
    tol: float = 0.0,
    max_age: int = 0,
) -> WorkingSet:
    """Selector: new samples plus a working set of ``size`` still-violated ones.

    Args:
      size: how many samples the working set holds.
      like: an example constraint batch (sample axis first); only its shapes
        and dtypes are used, to size the buffer in the optax state.
      candidates: the selector for each step's new samples (default: the
        whole batch passed to ``update``).
      tol: satisfaction threshold on the median |C| of a sample.
      max_age: evict samples after this many steps (0: never).

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> pool = jnp.zeros((128, 8))
      >>> active = kktopt.memory.working_set(32, pool, candidates=kktopt.active.mined_samples(16))
      >>> tx = optax.chain(optax.sgd(1e-2), kktopt.project_kkt(lambda p, x: x @ p, active=active))
    """
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), like)
    return WorkingSet(
        size=size,
        candidates=AllSamples() if candidates is None else candidates,
        tol=tol,
        max_age=max_age,
        like=_Spec(spec),
    )


class _Spec:
    """Hashable holder of a batch's shapes and dtypes (a static field)."""

    def __init__(self, spec):
        self.spec = spec
        leaves, self.treedef = jax.tree_util.tree_flatten(spec)
        self.key = (self.treedef, tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves))

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Spec) and self.key == other.key



# --------------------------------------------------------------------------
# Multiplier memory: remembered constraints keep pulling through their
# Lagrange multipliers.
# --------------------------------------------------------------------------


class MultiplierMemoryState(NamedTuple):
    """State of :class:`MultiplierMemory` (fixed shapes).

    Attributes:
      buffer: ``size`` remembered samples (leading axis ``size``).
      multipliers: ``(size, ...)`` their accumulated multipliers, shaped like
        one sample's constraint values.
      valid: ``(size,)`` bool, which slots hold a sample.
      fingerprint: ``(size,)`` uint32 identifying each sample.
      age: ``(size,)`` int32, steps since each sample was last projected.
    """

    buffer: PyTree
    multipliers: jax.Array
    valid: jax.Array
    fingerprint: jax.Array
    age: jax.Array


class MultiplierMemory(eqx.Module):
    """Remembered samples whose Lagrange multipliers keep acting after they leave the active set.

    At step t the transform projects onto the active samples S_t only, but
    first adds to the unconstrained step the forces of the remembered
    constraints, with their multipliers lambda from earlier steps, at the
    current parameters:

        u' = u - D^-1 A_mem(w)^T lambda_mem                (one VJP over the memory)
        dw = argmin ||dw - u'||_D  s.t.  A_S dw = -c_S     (Eq. 5 / 12; Eq. 6 likewise)
        lambda_i <- lambda_i + Lambda_i  for i in S_t      (Lambda: this step's multipliers)

    A constraint met at an earlier step therefore keeps the pull that met it,
    instead of being forgotten. At a fixed point every projection leaves the
    step unchanged, so all remembered constraints hold and
    ``D u = A^T lambda``: the KKT conditions of the full problem, with
    ``lambda`` (divided by the learning rate for SGD) its multipliers. It is
    an incremental dual method in which each constraint's multiplier is
    refreshed whenever its sample is active again.

    Samples are identified by a fingerprint of their contents. When the
    buffer is full, the samples with the smallest multipliers (the weakest
    pull) are dropped first.

    Attributes:
      size: number of remembered samples.
      like: example constraint batch (shapes and dtypes only).
      decay: multipliers are multiplied by this every step (1: no decay).
    """

    size: int = eqx.field(static=True)
    like: Any = eqx.field(static=True)
    decay: float | jax.Array = 1.0

    def __check_init__(self):
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"multiplier_memory size must be an integer >= 0, got {self.size!r}.")

    def init(self, params, values_shape: tuple[int, ...]) -> MultiplierMemoryState:
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        buffer = jax.tree_util.tree_map(
            lambda x: jnp.zeros((self.size,) + tuple(x.shape[1:]), x.dtype), self.like.spec
        )
        return MultiplierMemoryState(
            buffer=buffer,
            multipliers=jnp.zeros((self.size,) + tuple(values_shape), dtype),
            valid=jnp.zeros((self.size,), bool),
            fingerprint=jnp.zeros((self.size,), jnp.uint32),
            age=jnp.zeros((self.size,), jnp.int32),
        )

    def force(self, constraint_fn, params, state: MultiplierMemoryState) -> PyTree:
        """``A_mem^T lambda_mem`` at the current parameters (one VJP over the buffer)."""
        if self.size == 0:
            return jax.tree_util.tree_map(jnp.zeros_like, params)
        lam = jnp.where(_expand(state.valid, state.multipliers), state.multipliers, 0)
        _, pullback = jax.vjp(lambda p: constraint_fn(p, state.buffer), params)
        (grad,) = pullback(lam.astype(jnp.result_type(*jax.tree_util.tree_leaves(params))))
        return grad

    def update(self, state: MultiplierMemoryState, sub_batch, multipliers, sample_mask) -> MultiplierMemoryState:
        """Add this step's multipliers of the projected samples ``sub_batch``."""
        if self.size == 0:
            return state
        k = multipliers.shape[0]
        active = jnp.ones((k,), bool) if sample_mask is None else sample_mask > 0
        fp_new = _fingerprints(sub_batch)
        lam_old = state.multipliers * jnp.asarray(self.decay, state.multipliers.dtype)
        # Which remembered sample each new one is (if any).
        match = (fp_new[:, None] == state.fingerprint[None, :]) & state.valid[None, :] & active[:, None]
        matched_new = jnp.any(match, axis=1)
        add = jnp.einsum("ki,k...->i...", match.astype(multipliers.dtype), multipliers)
        lam_old = lam_old + add
        age_old = jnp.where(jnp.any(match, axis=0), 0, state.age + 1)
        # Candidates for the new buffer: the old slots and the unmatched new samples.
        fresh = active & ~matched_new & _first_occurrence(fp_new, active)
        cand_valid = jnp.concatenate([state.valid, fresh])
        cand_lam = jnp.concatenate([lam_old, multipliers.astype(lam_old.dtype)])
        strength = jnp.sqrt(jnp.sum(jnp.square(cand_lam.reshape(cand_lam.shape[0], -1)), axis=1))
        priority = jnp.where(cand_valid, strength, -jnp.inf)
        _, order = jax.lax.top_k(priority, self.size)
        cand_batch = jax.tree_util.tree_map(
            lambda a, b: jnp.concatenate([a, b.astype(a.dtype)], axis=0), state.buffer, sub_batch
        )
        take = functools.partial(jnp.take, indices=order, axis=0)
        return MultiplierMemoryState(
            buffer=jax.tree_util.tree_map(take, cand_batch),
            multipliers=take(cand_lam),
            valid=take(cand_valid),
            fingerprint=take(jnp.concatenate([state.fingerprint, fp_new])),
            age=take(jnp.concatenate([age_old, jnp.zeros((k,), jnp.int32)])),
        )


def _expand(mask, like):
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def multiplier_memory(size: int, like: Any, *, decay: float = 1.0) -> MultiplierMemory:
    """Memory of ``size`` samples whose multipliers keep acting (see :class:`MultiplierMemory`).

    Pass it as ``memory=`` to :func:`kktopt.project_kkt`,
    :func:`kktopt.scale_by_adam_kkt` or :func:`kktopt.gauss_newton_kkt`; it
    composes with any ``active=`` selector (including :func:`working_set`).

    Args:
      size: number of remembered samples.
      like: example constraint batch with the sample axis first (shapes and
        dtypes only).
      decay: per-step decay of the stored multipliers.

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> centres = jnp.zeros((200, 3))
      >>> cfn = lambda w, c: jnp.linalg.norm(w - c, axis=-1) - 1.0
      >>> tx = optax.chain(optax.sgd(1.0), kktopt.project_kkt(
      ...     cfn, active=kktopt.active.random_samples(20),
      ...     memory=kktopt.memory.multiplier_memory(200, centres)))
    """
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), like)
    return MultiplierMemory(size=size, like=_Spec(spec), decay=decay)
