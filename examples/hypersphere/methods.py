"""The five methods of the hypersphere experiment: one training step each, and the compiled loop.

Every method is an optax chain of public kktopt transforms, as a user would
write it: ``soft`` is ``optax.sgd`` on ``kktopt.soft_constrained_loss``; the
hard ones are ``optax.chain(optax.sgd(hard_lr), kktopt.project_kkt(...))``
(Eq. 5) with random, fixed or all active constraints, and ``hard-memory``
adds ``kktopt.memory.multiplier_memory``.

Cost. At the defaults the centres are 1.6 GB (d = 1e6, m = 200, float64) and
every pass over them is memory-bound, so a step is as fast as the passes
over the centres it makes. The step functions make as few as the methods
need:

* each step records the values of all m constraints at the current point
  (for the median |C| of Fig. 4) with the same product ``centres @ w`` that
  the step itself computes where it evaluates the constraints on the whole
  pool (``soft``'s gradient, ``hard-memory``'s remembered forces,
  ``hard-all``'s linearisation): XLA merges the identical products, so the
  record is free there (one pass for ``hard`` and ``hard-fixed``, whose
  steps touch only their 20 centres);
* the metrics of a step that need the values after it (the change of the
  active constraints) are computed on the host from these records
  (`hypersphere.run`), not by another evaluation;
* the whole run is one compiled ``lax.scan`` per chunk of steps
  (`chunk_fn`): no host round-trip and no Python per step, and XLA
  allocates the step's temporaries (a 200 x 1e6 Jacobian for dense solves
  of ``hard-all``) once per chunk instead of once per step.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

import kktopt
from harness import kkt_info, solve_record

from hypersphere.config import EXTRA_METHODS, HypersphereConfig
from hypersphere.problem import centres_spec, objective, random_draw, selector, sphere_constraints

__all__ = ["chunk_fn", "hard_fns", "median_abs", "soft_fns", "step_key", "values_fn"]


def median_abs(x):
    return jnp.median(jnp.abs(x))


# The step functions depend on the settings, not on iters or the data: cache
# them so a second run with the same settings reuses the compiled code.
def step_key(config: HypersphereConfig) -> HypersphereConfig:
    return dataclasses.replace(config, iters=1)


def _record(values, indices, u) -> dict[str, jax.Array]:
    """What a step returns: the m constraint values before it, its active indices, ||dw||."""
    return {"values": values, "indices": indices.astype(jnp.int32), "step_norm": jnp.linalg.norm(u)}


@functools.lru_cache(maxsize=16)
def soft_fns(config: HypersphereConfig):
    """``(init, step)`` of ``soft``: ``step(carry, x0, centres, fixed_batch, fixed) -> (carry, record)``.

    The record's ``indices`` are the random draw ``hard`` makes at the same
    step (the same selector and seed), so that panel (b) of Fig. 4 compares
    the same constraints.
    """
    constraint_fn = functools.partial(sphere_constraints, radius=config.radius)
    loss = kktopt.soft_constrained_loss(objective, constraint_fn, config.lam)
    tx = optax.sgd(config.resolved_soft_lr)
    sel = selector(config)
    m = config.constraints

    @jax.jit
    def init(w, x0, centres):
        return (w, tx.init(w), sel.init(w))

    def step(carry, x0, centres, fixed_batch=None, fixed=None):
        w, opt_state, sel_state = carry
        # The constraint values come from the gradient's forward pass (XLA
        # merges the identical products with the centres).
        c = constraint_fn(w, centres)
        g = jax.grad(loss)(w, x0, centres)
        idx, sel_state = random_draw(sel, m, sel_state)
        u, opt_state = tx.update(g, opt_state, w)
        w = optax.apply_updates(w, u)
        return (w, opt_state, sel_state), _record(c, idx, u)

    return init, jax.jit(step)


@functools.lru_cache(maxsize=16)
def hard_fns(config: HypersphereConfig, method: str):
    """``(init, step)`` of a hard method; the step's record adds `harness.solve_record`'s diagnostics.

    ``step(carry, x0, centres, fixed_batch, fixed) -> (carry, record)`` with
    ``carry = (w, opt_state)``; ``fixed_batch`` (``hard-fixed``'s 20 centres,
    gathered once) and ``fixed`` (their indices) are None for the others.
    The pool passed as ``constraint_batch`` is the same at every step (all
    centres, or ``hard-fixed``'s 20), as the multiplier memory requires: it
    stores indices into it.
    """
    constraint_fn = functools.partial(sphere_constraints, radius=config.radius)
    m = config.constraints
    memory = None
    random_sets = method in ("hard", "hard-memory") + EXTRA_METHODS
    if random_sets:
        active = selector(config)
        if method == "hard-memory":
            # Every constraint projected so far keeps pulling with its
            # accumulated multiplier (kktopt.memory.MultiplierMemory).
            memory = kktopt.memory.multiplier_memory(config.memory, centres_spec(config))
    else:
        active = kktopt.active.all_samples()
    solver = None if method == "auglag" else config.solver_choice(method).build()
    if method == "sqp-momentum":
        tx = kktopt.sqp_momentum(config.hard_lr, constraint_fn, momentum=config.momentum,
                                 active=active, solver=solver)
    elif method == "auglag":
        # One multiplier per sphere (Cooper's IndexedMultiplier), the method of
        # multipliers (dual step = penalty) on hard's random sets, then SGD.
        rho = config.resolved_penalty
        tx = optax.chain(
            kktopt.augmented_lagrangian(constraint_fn, pool_size=m, penalty=rho, dual_lr=rho,
                                        active=active),
            optax.sgd(config.auglag_lr),
        )
    else:
        alpha = config.alpha if method == "hard-alpha" else 1.0
        tx = optax.chain(
            optax.sgd(config.hard_lr),
            kktopt.project_kkt(constraint_fn, active=active, solver=solver, memory=memory,
                               alpha=alpha),
        )

    @jax.jit
    def init(w, x0, centres):
        return (w, tx.init(w))

    def step(carry, x0, centres, fixed_batch=None, fixed=None):
        w, opt_state = carry
        c = constraint_fn(w, centres)  # merged with the step's own product where it has one
        g = jax.grad(objective)(w, x0)
        batch = fixed_batch if method == "hard-fixed" else centres
        u, opt_state = tx.update(g, opt_state, w, constraint_batch=batch)
        w = optax.apply_updates(w, u)
        if random_sets:
            idx = _drawn(opt_state)  # what the selector chose at this step
        elif method == "hard-fixed":
            idx = fixed
        else:
            idx = jnp.arange(m)
        info = kkt_info(opt_state)
        return (w, opt_state), _record(c, idx, u) | ({} if info is None else solve_record(info))

    return init, jax.jit(step)


def _drawn(opt_state):
    """The indices of the random set a transform's selector drew at this step."""
    found = optax.tree_utils.tree_get_all_with_path(
        opt_state, "active", filtering=lambda _, v: isinstance(v, kktopt.active.RandomSamplesState))
    return found[0][1].indices


def fns(config: HypersphereConfig, method: str):
    """``(init, step)`` of any method."""
    return soft_fns(config) if method == "soft" else hard_fns(config, method)


@functools.lru_cache(maxsize=32)
def chunk_fn(config: HypersphereConfig, method: str, length: int):
    """``length`` steps of `method` as one compiled ``lax.scan``: ``(carry, *args) -> (carry, records)``.

    The records are stacked along a leading axis of ``length`` and stay on
    the device until the chunk ends.
    """
    _, step = fns(config, method)

    @jax.jit
    def run(carry, x0, centres, fixed_batch, fixed):
        def body(carry, _):
            return step(carry, x0, centres, fixed_batch, fixed)

        return jax.lax.scan(body, carry, None, length=length)

    return run


@functools.lru_cache(maxsize=16)
def values_fn(config: HypersphereConfig):
    """All m constraint values at w (compiled): the record after the last step."""
    return jax.jit(functools.partial(sphere_constraints, radius=config.radius))
