"""``project_kkt``: the Eq. 5 projection as an optax transform (Hard-SGD)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kktopt.active import Selector
from kktopt.memory import MultiplierMemory
from kktopt.kkt import KrylovKKT, SchurKKT, euclidean_metric
from kktopt.transforms import _common
from kktopt.transforms._common import KKTInfo

PyTree = Any


class ProjectKKTState(NamedTuple):
    """State of :func:`project_kkt`.

    Attributes:
      count: number of updates so far (int32).
      info: :class:`KKTInfo` of the last step.
      active: the selector's state.
      memory: the multiplier memory's state (empty without one).
    """

    count: jax.Array
    info: KKTInfo
    active: PyTree
    memory: PyTree = ()


def project_kkt(
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    *,
    solver: KrylovKKT | SchurKKT | None = None,
    active: Selector | None = None,
    inequality: bool = False,
    jacobian: str = "matrix_free",
    memory: MultiplierMemory | None = None,
    check_constraints: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Project the incoming step onto the linearised constraints (paper Eq. 5).

    Given the step ``u`` produced by whatever comes before it in the chain,
    returns the step ``dw`` closest to ``u`` (Euclidean norm) with
    ``A dw = -c``, where ``c = C(w)`` and ``A = dC/dw`` at the current
    parameters. After ``optax.sgd(lr)`` this is exactly Eq. 5 with
    ``eta = 1 / lr``:

        [ eta I   A^T ] [ dw     ]   [ -g ]
        [ A       0   ] [ Lambda ] = [ -c ].

    If the constraints are rank-deficient or incompatible (duplicated or
    nearly dependent rows of A) the step is the minimum-norm least-squares
    one. With no active constraint the incoming step is returned unchanged.

    Args:
      constraint_fn: ``(params, constraint_batch) -> Array`` of constraint
        values (every entry one constraint ``C_jk``; equality means 0). With
        a selector, its output must have the sample axis first.
      solver: default ``kktopt.SchurKKT(method="minres_qlp")``: MINRES-QLP
        on the m x m Schur complement, matrix-free (the fastest in
        ``benchmarks/step_cost.py``); ``kktopt.KrylovKKT()``: MINRES-QLP on
        the full KKT system (the paper's Algorithm 1); ``kktopt.SchurKKT()``:
        dense Schur complement.
      active: which samples of ``constraint_batch`` are active at a step:
        ``kktopt.active.random_samples(k)``, ``kktopt.active.mined_samples(k)``
        (Eq. 9); default all of them.
      inequality: treat the constraints as ``C <= 0``; satisfied ones are
        inactive.
      jacobian: ``"matrix_free"`` (default; JVP/VJP of one linearisation) or
        ``"per_sample"``: form the dense Jacobian by per-sample reverse mode,
        for constraints separable over the batch's leading sample axis (each
        sample's constraints depend only on that sample, e.g. any function
        of the network's per-example output). Much cheaper with
        ``solver=kktopt.SchurKKT()`` when m is small; memory m x N_p.
      memory: ``kktopt.memory.multiplier_memory(...)``: remembered samples
        whose stored multipliers keep pulling the step after they leave the
        active set (see :mod:`kktopt.memory`).
      check_constraints: record ``||A dw + c|| / ||c||`` in the state (one
        extra JVP per step).

    Returns:
      A ``GradientTransformationExtraArgs``. Its ``update`` needs ``params``
      and the keyword ``constraint_batch``:
      ``tx.update(updates, state, params, constraint_batch=x_unlabeled)``.

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> cfn = lambda w, _: jnp.sum(w["x"], keepdims=True) - 1.0   # sum(x) = 1
      >>> tx = optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn))
      >>> params = {"x": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> u, state = tx.update({"x": jnp.array([1.0, 0.0, 0.0])}, state, params, constraint_batch=None)
      >>> [round(float(v), 4) for v in params["x"] + u["x"]]
      [0.2667, 0.3667, 0.3667]

    References:
      Marquez-Neila, Salzmann and Fua (2017), Eq. 5 and Algorithm 1.
    """
    solver = _common.check_solver(solver, _common.default_solver)
    selector = _common.check_selector(active)
    _common.check_jacobian(jacobian)
    _common.check_memory(memory)
    metric = euclidean_metric()

    def init_fn(params):
        return ProjectKKTState(
            count=jnp.zeros((), jnp.int32),
            info=KKTInfo.empty(_common.params_dtype(params)),
            active=selector.init(params),
            memory=_common.init_memory(memory, constraint_fn, params),
        )

    def update_fn(updates, state, params=None, *, constraint_batch=_common.MISSING, **extra_args):
        del extra_args
        _common.require(params, constraint_batch, "project_kkt")
        step = _common.cast_like(updates, params)
        dw, _, info, active_state, memory_state = _common.constrained_step(
            constraint_fn=constraint_fn,
            params=params,
            constraint_batch=constraint_batch,
            selector=selector,
            selector_state=state.active,
            inequality=inequality,
            solver=solver,
            metric=metric,
            step=step,
            check_constraints=check_constraints,
            jacobian=jacobian,
            memory=memory,
            memory_state=state.memory,
        )
        new_state = ProjectKKTState(
            count=optax.safe_increment(state.count), info=info, active=active_state, memory=memory_state
        )
        return _common.cast_like(dw, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
