"""``scale_by_adam_kkt``: constrained Adam, the projection in Adam's metric (Eq. 10-12)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax

from kktopt import _tree
from kktopt.active import Selector
from kktopt.kkt import KKTSolver, adam_metric
from kktopt.memory import MultiplierMemory
from kktopt.transforms import _pipeline
from kktopt.transforms._info import KKTInfo

PyTree = Any


class ScaleByAdamKKTState(NamedTuple):
    """State of :func:`scale_by_adam_kkt`.

    Attributes:
      count: number of updates so far (int32).
      info: :class:`KKTInfo` of the last step.
      active: the selector's state (with the pool indices it chose).
      memory: the multiplier memory's state (empty without one).
      adam: the state of the unconstrained ``optax.adam`` it wraps (moments
        and step count).
      kkt_cache: the solver's :class:`~kktopt.kkt.KKTCache` with
        ``KKTSolver(reuse=...)`` (else ``()``).
    """

    count: jax.Array
    info: KKTInfo
    active: PyTree
    memory: PyTree
    adam: PyTree
    kkt_cache: PyTree = ()


def scale_by_adam_kkt(
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    learning_rate: optax.ScalarOrSchedule,
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
    """Hard-Adam: Adam's step projected onto the linearised constraints in Adam's metric.

    Solves paper Eq. 12,

        [ D   A^T ] [ dw     ]   [ -m_t ]
        [ A   0   ] [ Lambda ] = [ -c   ],
        D = (1 - b1^t) / lr * diag(sqrt(v_hat_t) + eps),

    i.e. ``dw`` is the step closest to Adam's step ``u`` in the norm of D with
    ``A dw = -c`` (the metric: :func:`kktopt.kkt.adam_metric`). With no active
    constraint it returns exactly ``optax.adam(learning_rate, b1, b2, eps,
    eps_root)``'s update (the moments are computed by optax itself).
    Projecting before or after a plain Adam (in the Euclidean metric) is a
    different, worse-scaled method: the metric matters.

    Unlike ``optax.scale_by_adam`` this takes the learning rate: the step must
    meet ``A dw = -c`` after scaling, so the learning rate is part of the
    constraint. Its output is the final update (already negated and scaled);
    do not chain a learning-rate scaling after it. :func:`kktopt.hard_adam`
    is the same transform with optax's argument order.

    Args:
      constraint_fn: ``(params, constraint_batch) -> Array`` (see
        :func:`kktopt.project_kkt`).
      learning_rate: a float or an optax schedule.
      b1, b2, eps, eps_root: Adam's parameters, as in ``optax.adam``.
      solver, active, inequality, inequality_rounds, memory, jacobian, alpha:
        as in :func:`kktopt.project_kkt` (``alpha``: ``A dw = -alpha c``).
      check_constraints: as in :func:`kktopt.project_kkt`: the residual
        ``||A dw + c|| / ||c||`` is always measured for ``KKTInfo.status``;
        False only hides it (``linearized_residual = -1``).

    Returns:
      A ``GradientTransformationExtraArgs``; call
      ``tx.update(grads, state, params, constraint_batch=...)``.

    Example:
      >>> import jax.numpy as jnp, kktopt
      >>> cfn = lambda w, _: w[:1] - 1.0                     # w0 = 1
      >>> tx = kktopt.scale_by_adam_kkt(cfn, learning_rate=0.1)
      >>> w = jnp.zeros(2)
      >>> u, state = tx.update(jnp.ones(2), tx.init(w), w, constraint_batch=None)
      >>> [round(float(v), 4) for v in w + u]                # w1 takes Adam's step -lr
      [1.0, -0.1]

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 10-12. Kingma and Ba (2015).
    """
    options = _pipeline.hard_options(
        "scale_by_adam_kkt", solver=solver, active=active, inequality=inequality,
        inequality_rounds=inequality_rounds, memory=memory,
        check_constraints=check_constraints, jacobian=jacobian, alpha=alpha,
    )
    adam = optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        optax.scale_by_learning_rate(learning_rate),
    )

    def problem(updates, state, params, extra_args):
        step, adam_state = adam.update(updates, state.adam, params)
        moments = adam_state[0]
        nu_hat = optax.tree_utils.tree_bias_correction(moments.nu, b2, moments.count)
        return _pipeline.Problem(
            metric=adam_metric(nu_hat, eps, eps_root, params),
            step=_tree.cast_like(step, params),
            extras={"adam": adam_state},
        )

    return _pipeline.hard_transform(
        "scale_by_adam_kkt", constraint_fn, options, state_type=ScaleByAdamKKTState, problem=problem,
        init_extras=lambda params: {"adam": adam.init(params)},
    )
