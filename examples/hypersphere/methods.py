"""The five methods of the hypersphere experiment: one compiled step each.

Every method is an optax chain of public kktopt transforms, as a user would
write it: ``soft`` is ``optax.sgd`` on ``kktopt.soft_constrained_loss``; the
hard ones are ``optax.chain(optax.sgd(hard_lr), kktopt.project_kkt(...))``
(Eq. 5) with random, fixed or all active constraints, and ``hard-memory``
adds ``kktopt.memory.multiplier_memory``. Each step also returns the
per-step metrics that ``metrics.json`` records.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

import kktopt
from harness import kkt_info

from hypersphere.config import HypersphereConfig
from hypersphere.problem import centres_spec, draw_indices, objective, selector, sphere_constraints

__all__ = ["hard_fns", "median_abs", "soft_fns", "step_key", "step_metrics"]


def median_abs(x):
    return jnp.median(jnp.abs(x))


def step_metrics(c, c_new, idx, u) -> dict[str, jax.Array]:
    """Per-step metrics from the constraint values before (c) and after (c_new) a step u."""
    return {
        "median_abs_c": median_abs(c_new),
        "active_change": median_abs(c_new[idx]) - median_abs(c[idx]),
        "active_max_abs_c": jnp.max(jnp.abs(c_new[idx])),
        "step_norm": jnp.linalg.norm(u),
    }


# The step functions depend on the settings, not on iters or the data: cache
# them so a second run with the same settings reuses the compiled code.
def step_key(config: HypersphereConfig) -> HypersphereConfig:
    return dataclasses.replace(config, iters=1)


@functools.lru_cache(maxsize=16)
def soft_fns(config: HypersphereConfig):
    constraint_fn = functools.partial(sphere_constraints, radius=config.radius)
    loss = kktopt.soft_constrained_loss(objective, constraint_fn, config.lam)
    tx = optax.sgd(config.resolved_soft_lr)
    sel = selector(config)
    m = config.constraints

    def evaluate(w, x0, centres):
        # The constraint values at w come from the same forward pass as the
        # gradient (XLA merges the identical products).
        return constraint_fn(w, centres), jax.grad(loss)(w, x0, centres)

    @jax.jit
    def init(w, x0, centres):
        c, g = evaluate(w, x0, centres)
        return (w, tx.init(w), c, g, sel.init(w))

    @jax.jit
    def step(carry, x0, centres):
        w, opt_state, c, g, key = carry
        idx, key = draw_indices(sel, m, key)
        u, opt_state = tx.update(g, opt_state, w)
        w = optax.apply_updates(w, u)
        c_new, g = evaluate(w, x0, centres)
        return (w, opt_state, c_new, g, key), step_metrics(c, c_new, idx, u)

    return init, step


@functools.lru_cache(maxsize=16)
def hard_fns(config: HypersphereConfig, method: str):
    constraint_fn = functools.partial(sphere_constraints, radius=config.radius)
    m = config.constraints
    memory = None
    if method in ("hard", "hard-memory"):
        sel = selector(config)
        active = sel
        if method == "hard-memory":
            # Every constraint projected so far keeps pulling with its
            # accumulated multiplier (kktopt.memory.MultiplierMemory).
            memory = kktopt.memory.multiplier_memory(config.memory, centres_spec(config))
    else:
        sel = None
        active = kktopt.active.all_samples()
    # schur/dense/per_sample by default: one k x d Jacobian per step, products are matmuls.
    solver, jacobian = config.solver_choice().build()
    tx = optax.chain(
        optax.sgd(config.hard_lr),
        kktopt.project_kkt(constraint_fn, active=active, solver=solver, jacobian=jacobian, memory=memory),
    )

    def batch_and_indices(opt_state, centres, fixed_batch, fixed):
        if method in ("hard", "hard-memory"):
            # The indices project_kkt is about to draw, from its own state.
            idx, _ = draw_indices(sel, m, opt_state[1].active)
            return centres, idx
        if method == "hard-fixed":
            return fixed_batch, fixed
        return centres, jnp.arange(m)

    @jax.jit
    def init(w, x0, centres):
        return (w, tx.init(w), constraint_fn(w, centres))

    @jax.jit
    def step(carry, x0, centres, fixed_batch, fixed):
        w, opt_state, c = carry
        batch, idx = batch_and_indices(opt_state, centres, fixed_batch, fixed)
        g = jax.grad(objective)(w, x0)
        u, opt_state = tx.update(g, opt_state, w, constraint_batch=batch)
        w = optax.apply_updates(w, u)
        c_new = constraint_fn(w, centres)
        info = kkt_info(opt_state)
        metrics = step_metrics(c, c_new, idx, u) | {
            "iterations": info.solver.iterations,
            "istop": info.solver.istop,
            "linearized_residual": info.linearized_residual,
            "active_violation_norm": info.violation_norm,
        }
        return (w, opt_state, c_new), metrics

    return init, step

