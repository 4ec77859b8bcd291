"""The optimisers of the pose experiment and one training iteration for each.

Written with kktopt's public API as a user would:

* `make_optimizer`: Adam, Soft-SGD / Soft-Adam (plain optax on
  ``kktopt.soft_constrained_loss``), Hard-SGD (``optax.sgd`` then
  ``kktopt.project_kkt``), Hard-Adam (``kktopt.scale_by_adam_kkt``, the
  transform behind ``kktopt.hard_adam``), ``kktopt.gauss_newton_kkt`` and,
  outside the paper, Adam+Project (``optax.adam`` then
  ``kktopt.project_kkt``); the hard ones optionally with a
  ``kktopt.memory.multiplier_memory`` (``memory=``).
* `make_step`: one training iteration for each of them.

Learning rates and the damping are ``optax.inject_hyperparams``
hyperparameters (they live in the optimiser state) and lambda is an argument
of the step, so every configuration of a (method, constraint batch) family
runs the same compiled step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

import kktopt
from harness import kkt_info

from pose.problem import PoseProblem

__all__ = ["make_optimizer", "make_step"]

PyTree = Any


def make_optimizer(
    method: str,
    problem: PoseProblem,
    *,
    constraints: str = "random",
    lr: float | None = None,
    damping: float | None = None,
    eps: float = 1e-8,
    mined: int = 16,
    solver: kktopt.KrylovKKT | kktopt.SchurKKT | None = None,
    memory: kktopt.memory.MultiplierMemory | None = None,
    jacobian: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The optimiser of one method, with its hyperparameters injected into its state.

    Args:
      method: ``"adam"`` (unconstrained), ``"soft-sgd"``, ``"soft-adam"``,
        ``"hard-sgd"``, ``"hard-adam"`` or ``"gauss-newton"``.
      problem: from `make_problem`.
      constraints: ``"random"`` (the pool minibatch passed to the step is the
        active set) or ``"mined"`` (``kktopt.active.mined_samples(mined)`` of
        it, Eq. 9). Soft methods mine in `make_step` instead.
      lr: learning rate (all but Gauss-Newton).
      damping: Levenberg-Marquardt eta (Gauss-Newton).
      eps: Adam's epsilon in the Hard-Adam metric of Eq. 12 (optax's default
        1e-8 elsewhere; see `MethodSpec.eps`).
      mined: samples kept by mining.
      solver: the KKT solver (default ``kktopt.KrylovKKT()``, MINRES-QLP). A
        ``kktopt.SchurKKT`` is used with ``jacobian="per_sample"`` (a dense
        Jacobian of the active constraints; the constraints of Eq. 15 are
        per sample).
      memory: a ``kktopt.memory.multiplier_memory`` for the hard methods.
      jacobian: ``"matrix_free"`` or ``"per_sample"``; None: ``"per_sample"``
        with a ``kktopt.SchurKKT``, else ``"matrix_free"`` (see
        `harness.SolverChoice.build`, which returns both).
    """
    cfn = problem.constraints
    active = kktopt.active.mined_samples(mined) if constraints == "mined" else None
    solver = kktopt.KrylovKKT() if solver is None else solver
    if jacobian is None:
        jacobian = "per_sample" if isinstance(solver, kktopt.SchurKKT) else "matrix_free"
    hard = dict(active=active, solver=solver, memory=memory, jacobian=jacobian)
    if memory is not None and method not in ("hard-sgd", "hard-adam", "gauss-newton",
                                             "adam-project"):
        raise ValueError(f"memory applies to the hard methods, not {method!r}.")
    if method in ("adam", "soft-adam"):
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr)
    if method == "soft-sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
    if method == "hard-sgd":
        # Paper Eq. 5: the SGD step projected onto the linearised constraints.
        return optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=lr),
                           kktopt.project_kkt(cfn, **hard))
    if method == "adam-project":
        # Not in the paper: Adam's step, then the closest step (Euclidean) that
        # satisfies the linearised constraints.
        return optax.chain(optax.inject_hyperparams(optax.adam)(learning_rate=lr),
                           kktopt.project_kkt(cfn, **hard))
    if method == "hard-adam":
        # Paper Eq. 12; kktopt.hard_adam(lr, cfn, ...) is this transform, but its
        # **kwargs hide `active` and `solver` from inject_hyperparams' static_args.
        return optax.inject_hyperparams(
            kktopt.scale_by_adam_kkt,
            static_args=("constraint_fn", "active", "solver", "memory", "jacobian"))(
            constraint_fn=cfn, learning_rate=lr, eps=eps, **hard)
    if method == "gauss-newton":
        # Paper Eq. 6 with R = 1/2 ||r||^2 = the loss of Eq. 14.
        return optax.inject_hyperparams(
            kktopt.gauss_newton_kkt,
            static_args=("residual_fn", "constraint_fn", "active", "solver", "memory", "jacobian"))(
            residual_fn=problem.residuals, constraint_fn=cfn, damping=damping, **hard)
    raise ValueError(f"unknown method {method!r}.")


def make_step(method: str, problem: PoseProblem, tx: optax.GradientTransformationExtraArgs, *,
              constraints: str = "random", mined: int = 16) -> Callable:
    """One training iteration: ``step(params, opt_state, batch, pool_images, lam)``.

    Args:
      method: as in `make_optimizer`.
      problem: from `make_problem`.
      tx: the method's optimiser.
      constraints: ``"random"`` or ``"mined"`` (soft methods mine here, with
        ``kktopt.mine_active_constraints``).
      mined: samples kept by mining.

    Returns:
      ``step(params, opt_state, (images, joints), pool_images, lam) ->
      (params, opt_state, stats)``, to be jitted; ``lam`` is the soft
      penalty weight (ignored by other methods) and ``stats`` a dict of
      scalars (``loss``, and the KKT diagnostics of hard steps).
    """
    cfn = problem.constraints

    def step(params, opt_state, batch, pool_images, lam):
        stats = {}
        if method == "adam":
            loss, grads = jax.value_and_grad(problem.loss)(params, batch)
            updates, opt_state = tx.update(grads, opt_state, params)
        elif method in ("soft-sgd", "soft-adam"):
            if constraints == "mined":  # Eq. 9 on the pool minibatch, then penalise those.
                idx = kktopt.mine_active_constraints(cfn(params, pool_images), mined)
                pool_images = pool_images[idx]
            objective = kktopt.soft_constrained_loss(problem.loss, cfn, lam)  # Eq. 3
            loss, grads = jax.value_and_grad(objective)(params, batch, pool_images)
            updates, opt_state = tx.update(grads, opt_state, params)
        elif method in ("hard-sgd", "hard-adam", "adam-project"):
            loss, grads = jax.value_and_grad(problem.loss)(params, batch)
            updates, opt_state = tx.update(grads, opt_state, params, constraint_batch=pool_images)
        elif method == "gauss-newton":
            # A complete optimiser: it forms J^T r from the residuals itself.
            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            updates, opt_state = tx.update(zeros, opt_state, params, residual_batch=batch,
                                           constraint_batch=pool_images)
            loss = opt_state.inner_state.loss  # 1/2 ||r||^2 at params = the loss of Eq. 14
        else:
            raise ValueError(f"unknown method {method!r}.")
        stats["loss"] = loss
        info = kkt_info(opt_state)
        if info is not None:
            stats.update(
                iterations=info.solver.iterations, istop=info.solver.istop,
                num_active=info.num_active, violation_norm=info.violation_norm,
                linearized_residual=info.linearized_residual)
        return optax.apply_updates(params, updates), opt_state, stats

    return step
