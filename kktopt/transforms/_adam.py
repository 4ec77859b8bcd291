"""``scale_by_adam_kkt``: constrained Adam, the projection in Adam's metric (Eq. 10-12)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kktopt.active import Selector
from kktopt.memory import MultiplierMemory
from kktopt.kkt import KrylovKKT, SchurKKT, diagonal_metric
from kktopt.transforms import _common
from kktopt.transforms._common import KKTInfo

PyTree = Any


class ScaleByAdamKKTState(NamedTuple):
    """State of :func:`scale_by_adam_kkt`.

    Attributes:
      count: number of updates so far (int32).
      adam: the state of the unconstrained ``optax.adam`` it wraps (moments
        and step count).
      info: :class:`KKTInfo` of the last step.
      active: the selector's state.
      memory: the multiplier memory's state (empty without one).
    """

    count: jax.Array
    adam: PyTree
    info: KKTInfo
    active: PyTree
    memory: PyTree = ()


def scale_by_adam_kkt(
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    solver: KrylovKKT | SchurKKT | None = None,
    active: Selector | None = None,
    inequality: bool = False,
    jacobian: str = "matrix_free",
    memory: MultiplierMemory | None = None,
    check_constraints: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Hard-Adam: Adam's step projected onto the linearised constraints in Adam's metric.

    Solves paper Eq. 12,

        [ D   A^T ] [ dw     ]   [ -m_t ]
        [ A   0   ] [ Lambda ] = [ -c   ],
        D = (1 - b1^t) / lr * diag(sqrt(v_hat_t) + eps),

    i.e. ``dw`` is the step closest to Adam's step ``u`` in the norm of D with
    ``A dw = -c``. With no active constraint it returns exactly
    ``optax.adam(learning_rate, b1, b2, eps, eps_root)``'s update (the moments
    are computed by optax itself). Projecting before or after a plain Adam
    (in the Euclidean metric) is a different, worse-scaled method: the
    metric matters.

    Unlike ``optax.scale_by_adam`` this takes the learning rate: the step must
    meet ``A dw = -c`` after scaling, so the learning rate is part of the
    constraint. Its output is the final update (already negated and scaled);
    do not chain a learning-rate scaling after it.

    Args:
      constraint_fn: ``(params, constraint_batch) -> Array`` (see
        :func:`project_kkt`).
      learning_rate: a float or an optax schedule.
      b1, b2, eps, eps_root: Adam's parameters, as in ``optax.adam``.
      solver, active, inequality, jacobian, memory, check_constraints: as in
        :func:`project_kkt`.

    Returns:
      A ``GradientTransformationExtraArgs``; call
      ``tx.update(grads, state, params, constraint_batch=...)``.

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 10-12. Kingma and Ba (2015).
    """
    solver = _common.check_solver(solver, _common.default_solver)
    selector = _common.check_selector(active)
    _common.check_jacobian(jacobian)
    _common.check_memory(memory)
    adam = optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        optax.scale_by_learning_rate(learning_rate),
    )

    def init_fn(params):
        return ScaleByAdamKKTState(
            count=jnp.zeros((), jnp.int32),
            adam=adam.init(params),
            info=KKTInfo.empty(_common.params_dtype(params)),
            active=selector.init(params),
            memory=_common.init_memory(memory, constraint_fn, params),
        )

    def update_fn(updates, state, params=None, *, constraint_batch=_common.MISSING, **extra_args):
        del extra_args
        _common.require(params, constraint_batch, "scale_by_adam_kkt")
        step, adam_state = adam.update(updates, state.adam, params)
        moments = adam_state[0]
        nu_hat = optax.tree_utils.tree_bias_correction(moments.nu, b2, moments.count)
        diag = jax.tree_util.tree_map(
            lambda v, p: (jnp.sqrt(v + eps_root) + eps).astype(p.dtype), nu_hat, params
        )
        dw, _, info, active_state, memory_state = _common.constrained_step(
            constraint_fn=constraint_fn,
            params=params,
            constraint_batch=constraint_batch,
            selector=selector,
            selector_state=state.active,
            inequality=inequality,
            solver=solver,
            metric=diagonal_metric(diag),
            step=_common.cast_like(step, params),
            check_constraints=check_constraints,
            jacobian=jacobian,
            memory=memory,
            memory_state=state.memory,
        )
        new_state = ScaleByAdamKKTState(
            count=optax.safe_increment(state.count), adam=adam_state, info=info, active=active_state, memory=memory_state
        )
        return _common.cast_like(dw, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def hard_adam(
    learning_rate: optax.ScalarOrSchedule,
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    **kwargs,
) -> optax.GradientTransformationExtraArgs:
    """The Hard-Adam optimiser of the paper in one line (see :func:`scale_by_adam_kkt`).

    Example:
      >>> import kktopt
      >>> tx = kktopt.hard_adam(1e-3, lambda params, batch: params["w"][:1])
    """
    return scale_by_adam_kkt(constraint_fn, learning_rate, b1, b2, eps, **kwargs)
