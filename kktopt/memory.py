"""Multiplier memory: remembered constraints keep pulling after they leave the active set.

Hard constraints lost to soft ones in Marquez-Neila et al. (2017, Sec. 6-7)
because every step projects onto a fresh random or mined subset of the
constraints and forgets the previous ones: a constraint met at one step is
broken by the next step's projection onto other constraints. A
:class:`MultiplierMemory` (``memory=`` of :func:`kktopt.project_kkt`,
:func:`kktopt.scale_by_adam_kkt` and :func:`kktopt.gauss_newton_kkt`) keeps
the Lagrange multipliers of the samples projected so far and applies their
forces at every later step.

The memory stores *indices into the constraint pool* (the
``constraint_batch`` passed to ``update``, the same pool at every step) and
one multiplier block per remembered sample: its state is O(size) numbers
whatever the size of a sample.

The working-set selector (violated samples stay active until satisfied)
lives with the other selectors in :mod:`kktopt.active`;
``kktopt.memory.working_set`` is the same function.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from kktopt._tree import BatchSpec, batch_size, first_occurrence, take_samples
from kktopt.active import WorkingSet as WorkingSet
from kktopt.active import WorkingSetState as WorkingSetState
from kktopt.active import working_set as working_set

PyTree = Any

__all__ = [
    "MultiplierMemory",
    "MultiplierMemoryState",
    "WorkingSet",
    "WorkingSetState",
    "multiplier_memory",
    "working_set",
]


class MultiplierMemoryState(NamedTuple):
    """State of :class:`MultiplierMemory` (fixed shapes).

    Attributes:
      indices: ``(size,)`` int32 pool indices of the remembered samples
        (empty slots hold 0, a real sample that is given multiplier 0).
      multipliers: ``(size, ...)`` their accumulated multipliers, shaped like
        one sample's constraint values.
      valid: ``(size,)`` bool, which slots hold a sample.
      age: ``(size,)`` int32, steps since each sample was last projected.
    """

    indices: jax.Array
    multipliers: jax.Array
    valid: jax.Array
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

    Samples are identified by their index in the pool, as recorded by the
    selector. When the memory is full, the samples with the smallest
    multipliers (the weakest pull) are dropped first. When the memory can
    hold the whole pool, the forces are one VJP over the pool (no gather);
    otherwise over the ``size`` remembered samples.

    Attributes:
      size: number of remembered samples.
      like: the pool's shapes and dtypes.
      decay: multipliers are multiplied by this every step (1: no decay).
    """

    size: int = eqx.field(static=True)
    like: BatchSpec = eqx.field(static=True)
    decay: float | jax.Array = 1.0

    def __check_init__(self):
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"multiplier_memory size must be an integer >= 0, got {self.size!r}.")

    def init(self, params, values_shape: tuple[int, ...]) -> MultiplierMemoryState:
        """The empty memory for constraints of shape ``values_shape`` per sample."""
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        return MultiplierMemoryState(
            indices=jnp.zeros((self.size,), jnp.int32),
            multipliers=jnp.zeros((self.size,) + tuple(values_shape), dtype),
            valid=jnp.zeros((self.size,), bool),
            age=jnp.zeros((self.size,), jnp.int32),
        )

    def _check_pool(self, pool) -> int:
        b = batch_size(pool)
        if b != self.like.size:
            raise ValueError(
                f"multiplier_memory was built for a pool of {self.like.size} samples (its like=) but the "
                f"constraint batch has {b}: the memory remembers pool indices, so pass the same pool "
                "at every step and choose the active samples with active=."
            )
        return b

    def force(self, constraint_fn, params, state: MultiplierMemoryState, pool) -> PyTree:
        """``A_mem^T lambda_mem`` at the current parameters (one VJP)."""
        if self.size == 0:
            return jax.tree_util.tree_map(jnp.zeros_like, params)
        b = self._check_pool(pool)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        lam = jnp.where(_expand(state.valid, state.multipliers), state.multipliers, 0).astype(dtype)
        if self.size >= b:
            # Every pool sample fits: scatter the multipliers over the pool.
            lam = jnp.zeros((b,) + lam.shape[1:], dtype).at[state.indices].add(lam)
            batch = pool
        else:
            batch = take_samples(pool, state.indices)
        _, pullback = jax.vjp(lambda p: constraint_fn(p, batch), params)
        (grad,) = pullback(lam)
        return grad

    def update(self, state: MultiplierMemoryState, indices, multipliers, sample_mask) -> MultiplierMemoryState:
        """Add this step's multipliers of the projected pool samples ``indices``."""
        if self.size == 0:
            return state
        k = multipliers.shape[0]
        indices = jnp.asarray(indices, jnp.int32)
        active = jnp.ones((k,), bool) if sample_mask is None else sample_mask > 0
        lam_old = state.multipliers * jnp.asarray(self.decay, state.multipliers.dtype)
        # Which remembered sample each new one is (if any).
        match = (indices[:, None] == state.indices[None, :]) & state.valid[None, :] & active[:, None]
        lam_old = lam_old + jnp.einsum("ki,k...->i...", match.astype(multipliers.dtype), multipliers)
        age_old = jnp.where(jnp.any(match, axis=0), 0, state.age + 1)
        # Candidates for the new memory: the old slots and the unmatched new samples.
        fresh = active & ~jnp.any(match, axis=1) & first_occurrence(indices, active)
        cand_valid = jnp.concatenate([state.valid, fresh])
        cand_lam = jnp.concatenate([lam_old, multipliers.astype(lam_old.dtype)])
        strength = jnp.sqrt(jnp.sum(jnp.square(cand_lam.reshape(cand_lam.shape[0], -1)), axis=1))
        _, order = jax.lax.top_k(jnp.where(cand_valid, strength, -jnp.inf), self.size)
        valid = jnp.take(cand_valid, order)
        return MultiplierMemoryState(
            indices=jnp.where(valid, jnp.take(jnp.concatenate([state.indices, indices]), order), 0),
            multipliers=jnp.take(cand_lam, order, axis=0),
            valid=valid,
            age=jnp.take(jnp.concatenate([age_old, jnp.zeros((k,), jnp.int32)]), order),
        )


def _expand(mask, like):
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def multiplier_memory(size: int, like: Any, *, decay: float = 1.0) -> MultiplierMemory:
    """Memory of ``size`` samples whose multipliers keep acting (see :class:`MultiplierMemory`).

    Pass it as ``memory=`` to :func:`kktopt.project_kkt`,
    :func:`kktopt.scale_by_adam_kkt` or :func:`kktopt.gauss_newton_kkt`; it
    composes with any ``active=`` selector (including
    :func:`kktopt.active.working_set`).

    Args:
      size: number of remembered samples.
      like: the constraint pool (sample axis first) passed as
        ``constraint_batch`` at every step, or arrays of its shapes and
        dtypes; only its shapes are used.
      decay: per-step decay of the stored multipliers.

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> centres = jnp.zeros((200, 3))
      >>> cfn = lambda w, c: jnp.linalg.norm(w - c, axis=-1) - 1.0
      >>> tx = optax.chain(optax.sgd(1.0), kktopt.project_kkt(
      ...     cfn, active=kktopt.active.random_samples(20),
      ...     memory=kktopt.memory.multiplier_memory(200, centres)))
    """
    return MultiplierMemory(size=size, like=BatchSpec(like), decay=decay)
