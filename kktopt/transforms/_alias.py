"""One-line hard optimisers with optax's argument order (``learning_rate`` first).

Argument order across kktopt: building blocks take the problem's functions
first (``residual_fn``, ``constraint_fn``), then numbers; the one-line
optimisers here take ``learning_rate`` first, like ``optax.sgd`` and
``optax.adam``. Every argument is explicit (no ``**kwargs``), so the aliases
work inside ``optax.inject_hyperparams`` (name ``constraint_fn`` in
``static_args``: inject_hyperparams treats every callable as a schedule).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from kktopt.active import Selector
from kktopt.kkt import KKTSolver
from kktopt.memory import MultiplierMemory
from kktopt.transforms._adam import scale_by_adam_kkt
from kktopt.transforms._project import project_kkt

PyTree = Any


def hard_sgd(
    learning_rate: optax.ScalarOrSchedule,
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    *,
    solver: KKTSolver | None = None,
    active: Selector | None = None,
    inequality: bool = False,
    inequality_rounds: int = 1,
    memory: MultiplierMemory | None = None,
    check_constraints: bool = True,
    alpha: float | jax.Array = 1.0,
) -> optax.GradientTransformationExtraArgs:
    """Hard-SGD (paper Eq. 5): ``optax.chain(optax.sgd(learning_rate), kktopt.project_kkt(...))``.

    Args:
      learning_rate: a float or an optax schedule.
      constraint_fn: ``(params, constraint_batch) -> Array``.
      solver, active, inequality, inequality_rounds, memory, check_constraints, alpha: as in
        :func:`kktopt.project_kkt` (``alpha``: ``A dw = -alpha c``).

    Returns:
      A ``GradientTransformationExtraArgs``; call
      ``tx.update(grads, state, params, constraint_batch=...)``.

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> cfn = lambda w, _: jnp.sum(w, keepdims=True) - 1.0
      >>> tx = optax.inject_hyperparams(kktopt.hard_sgd, static_args="constraint_fn")(
      ...     learning_rate=0.1, constraint_fn=cfn)
      >>> w = jnp.zeros(3)
      >>> u, state = tx.update(jnp.array([1.0, 0.0, 0.0]), tx.init(w), w, constraint_batch=None)
      >>> [round(float(v), 4) for v in w + u]
      [0.2667, 0.3667, 0.3667]

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 5 and Algorithm 1.
    """
    return optax.chain(
        optax.sgd(learning_rate),
        project_kkt(
            constraint_fn, solver=solver, active=active, inequality=inequality,
            inequality_rounds=inequality_rounds, memory=memory,
            check_constraints=check_constraints, alpha=alpha,
        ),
    )


def hard_adam(
    learning_rate: optax.ScalarOrSchedule,
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    solver: KKTSolver | None = None,
    active: Selector | None = None,
    inequality: bool = False,
    inequality_rounds: int = 1,
    memory: MultiplierMemory | None = None,
    check_constraints: bool = True,
    jacobian: str | None = None,
    alpha: float | jax.Array = 1.0,
) -> optax.GradientTransformationExtraArgs:
    """Hard-Adam (paper Eq. 12): :func:`kktopt.scale_by_adam_kkt` with optax's argument order.

    Args:
      learning_rate: a float or an optax schedule.
      constraint_fn: ``(params, constraint_batch) -> Array``.
      b1, b2, eps, eps_root: Adam's parameters, as in ``optax.adam``.
      solver, active, inequality, inequality_rounds, memory, check_constraints, alpha: as in
        :func:`kktopt.project_kkt` (``alpha``: ``A dw = -alpha c``).
      jacobian: deprecated, use ``solver=kktopt.KKTSolver(jacobian=...)``.

    Returns:
      A ``GradientTransformationExtraArgs``; call
      ``tx.update(grads, state, params, constraint_batch=...)``.

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> cfn = lambda w, _: w[:1] - 1.0
      >>> tx = optax.inject_hyperparams(kktopt.hard_adam, static_args="constraint_fn")(
      ...     learning_rate=0.1, constraint_fn=cfn)
      >>> w = jnp.zeros(2)
      >>> u, state = tx.update(jnp.ones(2), tx.init(w), w, constraint_batch=None)
      >>> [round(float(v), 4) for v in w + u]
      [1.0, -0.1]

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 10-12. Kingma and Ba (2015).
    """
    return scale_by_adam_kkt(
        constraint_fn, learning_rate, b1, b2, eps, eps_root, solver=solver, active=active,
        inequality=inequality, inequality_rounds=inequality_rounds, memory=memory,
        check_constraints=check_constraints, jacobian=jacobian, alpha=alpha,
    )
