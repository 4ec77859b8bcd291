"""``project_kkt``: the Eq. 5 projection as an optax transform (Hard-SGD)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax

from kktopt import _tree
from kktopt.active import Selector
from kktopt.kkt import KKTSolver, euclidean_metric
from kktopt.memory import MultiplierMemory
from kktopt.transforms import _pipeline
from kktopt.transforms._info import KKTInfo

PyTree = Any


class ProjectKKTState(NamedTuple):
    """State of :func:`project_kkt`.

    Attributes:
      count: number of updates so far (int32).
      info: :class:`KKTInfo` of the last step.
      active: the selector's state (with the pool indices it chose).
      memory: the multiplier memory's state (empty without one).
      kkt_cache: the solver's :class:`~kktopt.kkt.KKTCache` with
        ``KKTSolver(reuse=...)`` (else ``()``).
    """

    count: jax.Array
    info: KKTInfo
    active: PyTree
    memory: PyTree = ()
    kkt_cache: PyTree = ()


def project_kkt(
    constraint_fn: Callable[[PyTree, Any], jax.Array],
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
    """Project the incoming step onto the linearised constraints (paper Eq. 5).

    Given the step ``u`` produced by whatever comes before it in the chain,
    returns the step ``dw`` closest to ``u`` (Euclidean norm) with
    ``A dw = -c``, where ``c = C(w)`` and ``A = dC/dw`` at the current
    parameters. After ``optax.sgd(lr)`` this is exactly Eq. 5 with
    ``eta = 1 / lr`` (see :func:`kktopt.hard_sgd`):

        [ eta I   A^T ] [ dw     ]   [ -g ]
        [ A       0   ] [ Lambda ] = [ -c ].

    If the constraints are rank-deficient or incompatible (duplicated or
    nearly dependent rows of A) the step is the minimum-norm least-squares
    one. With no active constraint the incoming step is returned unchanged.

    Non-finite inputs (NaN or Inf in the constraint values or the incoming
    step) give a NaN step, a NaN ``linearized_residual``, the status
    ``KKTStatus.NONFINITE`` and the inner stop code ``Stop.NONFINITE_INPUT``
    (19), never a step that reads as projected;
    ``optax.chain(tx, optax.zero_nans())`` skips such steps (a zero update).

    Freezing parameters: ``optax.masked`` and ``optax.multi_transform`` hide
    the frozen leaves from ``constraint_fn`` (it would see
    ``optax.MaskedNode``; that is rejected with an error). Split the
    parameters instead, ``trainable, frozen = eqx.partition(params, mask)``,
    give the transform ``trainable`` and close over the rest:
    ``lambda p, x: constraint_fn(eqx.combine(p, frozen), x)``. Integer
    leaves (and float0 gradients) are rejected the same way: partition with
    ``eqx.is_inexact_array``.

    Args:
      constraint_fn: ``(params, constraint_batch) -> Array`` of constraint
        values (every entry one constraint ``C_jk``; equality means 0). With
        a selector, its output must have the sample axis first.
      solver: a :class:`kktopt.KKTSolver`; default ``KKTSolver()``
        (``method="auto"``: the dense Schur complement ``"dense"`` with
        correction rounds on the true rows for ``m <= 256`` rows and at most
        32M Jacobian entries, else MINRES-QLP on the m x m Schur complement
        with LSMR rounds, and beyond 256 rows the dense solve where those
        miss the rows and A fits (4096 rows, 256M entries); see :func:`kktopt.kkt.auto_method` and
        ``benchmarks/kkt_accuracy.py``). ``KKTSolver(system="full")`` is the
        paper's Algorithm 1; ``KKTSolver(method="dense",
        jacobian="per_sample")`` forms the Jacobian per sample, cheap when
        the constraints are separable over samples; ``KKTSolver(reuse=k,
        reuse_rows=m)`` keeps the factorisation across steps whose rows are
        the same (a fixed constraint set).
      active: which samples of the pool ``constraint_batch`` are active at a
        step: ``kktopt.active.random_samples(k)``,
        ``kktopt.active.mined_samples(k)`` (Eq. 9),
        ``kktopt.active.working_set(...)``; default all of them.
      inequality: treat the constraints as ``C <= 0``. The step is projected
        onto the rows violated before the step (``C > 0``) as equalities;
        rows satisfied before the step are inactive and the step may
        violate them (at large learning rates many of them) unless
        ``inequality_rounds > 1``.
      inequality_rounds: a static integer >= 1 (with ``inequality=True``).
        1: one solve on the rows violated before the step (Sec. 4.4).
        k > 1: up to k - 1 more primal-dual active-set rounds on the same
        linearisation (no new forward pass; one JVP and one KKT solve
        each): rows the step violates join, rows with a negative
        multiplier leave, until the step solves the linearised inequality
        QP ``min ||dw - u||_D s.t. A dw <= -c``. If the set has not settled
        after k rounds the status is ``KKTStatus.ACTIVE_SET_LIMIT`` (not a
        success; the inner stop code ``Stop.ACTIVE_SET_LIMIT``, 20).
      memory: ``kktopt.memory.multiplier_memory(...)``: remembered pool
        samples whose stored multipliers keep pulling the step after they
        leave the active set (see :mod:`kktopt.memory`).
      check_constraints: record ``||A dw + c|| / ||c||`` as
        ``KKTInfo.linearized_residual``. The residual is always measured (one
        JVP per step, on the true rows) to decide ``KKTInfo.status`` and the
        refinement rounds; ``check_constraints=False`` only hides it
        (``linearized_residual = -1``) and saves nothing.
      jacobian: deprecated, use ``solver=kktopt.KKTSolver(jacobian=...)``.
      alpha: the feedback gain: the step meets ``A dw = -alpha c``, removing
        the share ``alpha`` in (0, 1] of the linearised violation (1, the
        default, is Eq. 5's full correction). A float or a JAX scalar, so it
        can be swept with ``optax.inject_hyperparams`` and ``jax.vmap``.

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
      Marquez-Neila, Salzmann and Fua (2017), Eq. 5 and Algorithm 1. The gain
      ``alpha``: Lu et al. (2026), AdamFLIP (arXiv 2605.08408), residuals that
      contract at a set rate; Roy, Kraemer and Hauberg (2025), null-space
      optimisers (arXiv 2510.19634), a damped pull ``gamma c``.
    """
    options = _pipeline.hard_options(
        "project_kkt", solver=solver, active=active, inequality=inequality,
        inequality_rounds=inequality_rounds, memory=memory,
        check_constraints=check_constraints, jacobian=jacobian, alpha=alpha,
    )
    metric = euclidean_metric()

    def problem(updates, state, params, extra_args):
        return _pipeline.Problem(metric=metric, step=_tree.cast_like(updates, params))

    return _pipeline.hard_transform(
        "project_kkt", constraint_fn, options, state_type=ProjectKKTState, problem=problem
    )
