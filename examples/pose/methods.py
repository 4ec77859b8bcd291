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
* `memory_selector`: the active samples of a hard method with a multiplier
  memory, which must choose them from one fixed pool (the memory stores
  pool indices).

Learning rates and the damping are ``optax.inject_hyperparams``
hyperparameters (they live in the optimiser state) and lambda is an argument
of the step, so every configuration of a (method, constraint batch) family
runs the same compiled step.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import kktopt
from harness import kkt_info, solve_record

from pose.problem import PoseProblem

__all__ = ["MinedFromRandom", "make_optimizer", "make_step", "memory_selector"]

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
    solver: kktopt.KKTSolver | None = None,
    memory: kktopt.memory.MultiplierMemory | None = None,
    active: kktopt.active.Selector | None = None,
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
      solver: the ``kktopt.KKTSolver`` (system, method and Jacobian); default
        MINRES-QLP on the full KKT system, matrix-free (the paper's
        Algorithm 1). ``harness.SolverChoice.build`` makes one from the
        experiment's names.
      memory: a ``kktopt.memory.multiplier_memory`` for the hard methods. It
        remembers samples by their index in the constraint pool, so the step
        must then receive the same pool at every step with the active samples
        chosen from it by ``active`` (see `memory_selector`).
      active: the selector of the active samples (default: from
        ``constraints``, over the minibatch passed to the step).
    """
    cfn = problem.constraints
    if active is None and constraints == "mined":
        active = kktopt.active.mined_samples(mined)
    solver = kktopt.KKTSolver(system="full", method="minres_qlp") if solver is None else solver
    hard = dict(active=active, solver=solver, memory=memory)
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
        # Paper Eq. 12 (constraint_fn is static: inject_hyperparams would take
        # a callable for a schedule).
        return optax.inject_hyperparams(
            kktopt.hard_adam, static_args=_static(kktopt.hard_adam, "constraint_fn"))(
            learning_rate=lr, constraint_fn=cfn, eps=eps, **hard)
    if method == "gauss-newton":
        # Paper Eq. 6 with R = 1/2 ||r||^2 = the loss of Eq. 14.
        return optax.inject_hyperparams(
            kktopt.gauss_newton_kkt,
            static_args=_static(kktopt.gauss_newton_kkt, "residual_fn", "constraint_fn"))(
            residual_fn=problem.residuals, constraint_fn=cfn, damping=damping, **hard)
    raise ValueError(f"unknown method {method!r}.")


# Integer settings that must stay Python integers (inject_hyperparams turns
# every numeric default into an array), where the installed kktopt has them.
_STATIC_SETTINGS = ("inequality_rounds",)


def _static(factory, *names: str) -> tuple[str, ...]:
    params = inspect.signature(factory).parameters
    return names + tuple(n for n in _STATIC_SETTINGS if n in params)


class MinedFromRandom(kktopt.active.Selector):
    """Hard constraint mining (Eq. 9) within a random minibatch of a fixed pool.

    The paper's mined batches are the ``k`` most violating samples of a
    random pool minibatch of ``batch``. With a multiplier memory the pool
    passed to the step must be the same at every step (the memory stores
    pool indices), so the random minibatch is drawn here, from the pool:
    ``batch`` samples uniformly without replacement, of which the ``k``
    with the largest median |C| are active. Costs one evaluation of the
    constraints on the minibatch (as mining the minibatch passed to the
    step does). The state records the pool indices chosen
    (``kktopt.active.MinedSamplesState`` semantics, plus the PRNG key).

    Attributes:
      batch: size of the random minibatch.
      k: samples kept by mining.
      seed: seed of the PRNG key kept in the state.
    """

    batch: int = eqx.field(static=True)
    k: int = eqx.field(static=True)
    seed: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if not 1 <= self.k <= self.batch:
            raise ValueError(f"MinedFromRandom needs 1 <= k <= batch, got k={self.k}, batch={self.batch}.")

    def init(self, params):
        return kktopt.active.RandomSamplesState(key=jax.random.PRNGKey(self.seed),
                                                indices=jnp.zeros((self.k,), jnp.int32))

    def select(self, constraint_fn, params, pool, state):
        n = kktopt.active.batch_size(pool)
        if self.batch > n:
            raise ValueError(f"MinedFromRandom(batch={self.batch}) needs a pool of at least "
                             f"{self.batch} samples, got {n}.")
        key, sub = jax.random.split(state.key)
        drawn = jax.random.permutation(sub, n)[: self.batch].astype(jnp.int32)
        values = constraint_fn(params, kktopt.active.take_samples(pool, drawn))
        best = kktopt.mine_active_constraints(jax.lax.stop_gradient(values), self.k)
        indices = drawn[best]
        return (kktopt.active.take_samples(pool, indices),
                kktopt.active.RandomSamplesState(key=key, indices=indices))

    def indices(self, state):
        return state.indices


def memory_selector(constraints: str, *, batch: int, mined: int, seed: int = 0
                    ) -> kktopt.active.Selector:
    """The active samples of a hard method with a multiplier memory, chosen from the whole pool.

    ``"random"``: ``kktopt.active.random_samples(batch)`` (all of a random
    minibatch active); ``"mined"``: `MinedFromRandom` (the ``mined`` most
    violating samples of such a minibatch, Eq. 9).
    """
    if constraints == "random":
        return kktopt.active.random_samples(batch, seed=seed)
    return MinedFromRandom(batch=batch, k=mined, seed=seed)


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
            stats.update(solve_record(info), num_active=info.num_active)
        return optax.apply_updates(params, updates), opt_state, stats

    return step
