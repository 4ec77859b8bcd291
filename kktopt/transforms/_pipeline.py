"""The one hard-step pipeline behind every hard transform.

A hard transform is its signature, its docstring and its metric. At each
step the pipeline

1. lets the transform build its problem: the metric D and either the
   unconstrained step u (closest-step form: SGD, Adam) or the gradient h
   (Gauss-Newton), plus the transform's own state fields;
2. adds the forces of a multiplier memory, if any;
3. selects the active samples of the constraint pool;
4. linearises the constraints on them once;
5. solves the KKT system with the configured :class:`kktopt.KKTSolver`;
6. records :class:`KKTInfo` and updates the selector and the memory.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kktopt import _tree
from kktopt.active import AllSamples, Selector
from kktopt.kkt import KKTSolver, Metric, euclidean_metric, linearize_constraints
from kktopt.memory import MultiplierMemory
from kktopt.transforms._info import KKTInfo

PyTree = Any


class _Missing:
    def __repr__(self):
        return "<missing>"


MISSING = _Missing()


class Problem(NamedTuple):
    """What a hard transform contributes at one step.

    Attributes:
      metric: the metric D of the KKT system.
      step: the unconstrained step u (closest-step form), or None.
      gradient: the gradient-like vector h, when ``step`` is None.
      extras: the transform's own new state fields (e.g. Adam's moments).
      finish: for methods that need the null space of the active linearised
        constraints before they can form their step (projected momentum,
        :mod:`kktopt.transforms._sqp`): ``project -> Problem``, called after
        the linearisation with ``project(v) -> (P v, SolverInfo)``, the
        Euclidean projection onto ``{dw : A dw = 0}`` (same linearisation,
        same solver). The other fields are then ignored.
    """

    metric: Metric | None
    step: PyTree | None = None
    gradient: PyTree | None = None
    extras: dict = {}
    finish: Callable[[Callable[[PyTree], tuple[PyTree, Any]]], "Problem"] | None = None


class HardOptions(NamedTuple):
    """The checked settings shared by every hard transform."""

    solver: KKTSolver
    selector: Selector
    inequality: bool
    memory: MultiplierMemory | None
    check_constraints: bool
    alpha: Any = 1.0


def hard_options(
    owner: str,
    *,
    solver: KKTSolver | None,
    active: Selector | None,
    inequality: bool,
    memory: MultiplierMemory | None,
    check_constraints: bool,
    jacobian: str | None,
    default: KKTSolver = KKTSolver(),
    systems: tuple[str, ...] = ("schur", "full"),
    why: str = "",
    alpha: float | jax.Array = 1.0,
) -> HardOptions:
    """Check the shared keyword arguments of the transform ``owner``; raise a clear error on bad input."""
    if solver is None:
        solver = default
    elif not isinstance(solver, KKTSolver):
        raise TypeError(
            "solver must be a kktopt.KKTSolver(system=..., method=...), "
            f"got {type(solver).__name__} {solver!r}."
        )
    if jacobian is not None:
        warnings.warn(
            f"the jacobian= keyword of {owner} is deprecated: pass "
            f"solver=kktopt.KKTSolver(..., jacobian={jacobian!r}).",
            DeprecationWarning,
            stacklevel=3,
        )
        solver = dataclasses.replace(solver, jacobian=jacobian)
    if solver.system not in systems:
        raise ValueError(
            f"{owner} needs solver=kktopt.KKTSolver(system={systems[0]!r}, ...), got "
            f"system={solver.system!r}{': ' + why if why else ''}."
        )
    if active is None:
        active = AllSamples()
    elif not isinstance(active, Selector):
        raise TypeError(
            "active must be a selector such as kktopt.active.random_samples(k) or "
            f"kktopt.active.mined_samples(k), got {type(active).__name__}."
        )
    if memory is not None and not isinstance(memory, MultiplierMemory):
        raise TypeError(
            "memory must be kktopt.memory.multiplier_memory(...) (for a working set of samples "
            f"use active=kktopt.active.working_set(...)), got {type(memory).__name__}."
        )
    return HardOptions(
        solver, active, bool(inequality), memory, bool(check_constraints), check_alpha(owner, alpha)
    )


def check_alpha(owner: str, alpha):
    """The feedback gain of ``A dw = -alpha c``: a Python number must lie in (0, 1]; arrays pass (traced)."""
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) or hasattr(alpha, "dtype")):
        raise TypeError(f"{owner}: alpha must be a number in (0, 1] (or a JAX scalar), got {alpha!r}.")
    if isinstance(alpha, (int, float)) and not 0.0 < alpha <= 1.0:
        raise ValueError(
            f"{owner}: alpha must lie in (0, 1] (the share of the violation c each step removes: "
            f"A dw = -alpha c; 1 is the full Newton correction of Eq. 5), got {alpha}."
        )
    return alpha


def _with_pull(memory, constraint_fn, params, memory_state, pool, metric, step, gradient):
    if memory is not None:
        pull = memory.force(constraint_fn, params, memory_state, pool)
        if step is not None:
            step = _tree.tree_axpy(-1.0, metric.inverse(pull), step)
        else:
            gradient = _tree.tree_axpy(1.0, pull, gradient)
    return step, gradient


def _scaled(lin, alpha):
    """The linearisation with ``c`` replaced by ``alpha c`` (unchanged for the Python number 1)."""
    if isinstance(alpha, (int, float)) and alpha == 1:
        return lin
    return lin._replace(c=jnp.asarray(alpha, lin.c.dtype) * lin.c)


def _null_space_projector(options: HardOptions, lin):
    flat = lin._replace(c=jnp.zeros_like(lin.c))
    metric = euclidean_metric()

    def project(v):
        sol = options.solver.solve(flat, metric, step=v)
        return sol.step, sol.info

    return project


def _init_memory(memory, constraint_fn, params):
    if memory is None:
        return ()
    out = jax.eval_shape(constraint_fn, params, memory.like.spec)
    if len(out.shape) == 0:
        raise ValueError("a memory needs constraint_fn to return values with a leading sample axis.")
    return memory.init(params, tuple(out.shape[1:]))


def _require(owner: str, params, constraint_batch, usage: str) -> None:
    if params is None:
        raise ValueError(
            f"{owner} projects onto constraints linearised at the current parameters: call "
            f"tx.update(updates, state, params, constraint_batch=...{usage})."
        )
    if constraint_batch is MISSING:
        raise ValueError(
            f"{owner} needs the inputs of its constraints: call "
            f"tx.update(updates, state, params, constraint_batch=x_unlabeled{usage}) "
            "(pass constraint_batch=None if constraint_fn ignores it)."
        )


def hard_step(constraint_fn, params, pool, options: HardOptions, problem: Problem, active_state, memory_state):
    """Steps 2-6 of the pipeline. Returns ``(dw, multipliers, info, active_state, memory_state)``."""
    selector, memory = options.selector, options.memory
    if problem.finish is None:
        step, gradient = _with_pull(
            memory, constraint_fn, params, memory_state, pool, problem.metric, problem.step, problem.gradient
        )
    sub_batch, active_state = selector.select(constraint_fn, params, pool, active_state)
    lin = linearize_constraints(
        constraint_fn,
        params,
        sub_batch,
        inequality=options.inequality,
        jacobian=options.solver.jacobian,
        sample_mask=selector.sample_mask(active_state),
    )
    active_state = selector.observe(active_state, sub_batch, lin.values)
    if problem.finish is not None:
        problem = problem.finish(_null_space_projector(options, lin))
        step, gradient = _with_pull(
            memory, constraint_fn, params, memory_state, pool, problem.metric, problem.step, problem.gradient
        )
    target = _scaled(lin, options.alpha)  # A dw = -alpha c (feedback gain; Eq. 5 when alpha = 1)
    sol = options.solver.solve(target, problem.metric, step=step, gradient=gradient)
    info = KKTInfo.of(target, sol, options.check_constraints)
    if target is not lin:  # the violation itself, not the share of it this step removes
        info = info._replace(violation_norm=jnp.linalg.norm(lin.c), violation_max=jnp.max(jnp.abs(lin.c), initial=0))
    if memory is not None:
        indices = selector.indices(active_state)
        if indices is None:
            indices = jnp.arange(_tree.batch_size(pool), dtype=jnp.int32)
        memory_state = memory.update(
            memory_state, indices, sol.multipliers.reshape(lin.shape), selector.sample_mask(active_state)
        )
    return sol.step, sol.multipliers, info, active_state, memory_state


def hard_transform(
    owner: str,
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    options: HardOptions,
    *,
    state_type: type,
    problem: Callable[..., Problem],
    init_extras: Callable[[PyTree], dict] = lambda params: {},
    usage: str = "",
) -> optax.GradientTransformationExtraArgs:
    """Build the optax transform of a hard method from its problem.

    Args:
      owner: the public name, for messages.
      constraint_fn: ``(params, constraint_batch) -> Array``.
      options: from :func:`hard_options`.
      state_type: a NamedTuple with fields ``count, info, active, memory``
        and the transform's own fields.
      problem: ``(updates, state, params, extra_args) -> Problem``.
      init_extras: ``params -> dict`` of the transform's own initial fields.
      usage: extra keyword arguments of ``update``, for messages.

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update`` takes the keyword
      ``constraint_batch``. In closest-step form the output has the dtypes of
      the incoming updates; in gradient form those of the parameters.
    """

    def init_fn(params):
        return state_type(
            count=jnp.zeros((), jnp.int32),
            info=KKTInfo.empty(_tree.params_dtype(params)),
            active=options.selector.init(params),
            memory=_init_memory(options.memory, constraint_fn, params),
            **init_extras(params),
        )

    def update_fn(updates, state, params=None, *, constraint_batch=MISSING, **extra_args):
        _require(owner, params, constraint_batch, usage)
        prob = problem(updates, state, params, extra_args)
        if prob.finish is not None:
            finish = prob.finish

            def record(project):  # keep the Problem the step was solved with (for its extras)
                nonlocal prob
                prob = finish(project)
                return prob

            prob = prob._replace(finish=record)
        dw, _, info, active_state, memory_state = hard_step(
            constraint_fn, params, constraint_batch, options, prob, state.active, state.memory
        )
        new_state = state_type(
            count=optax.safe_increment(state.count),
            info=info,
            active=active_state,
            memory=memory_state,
            **prob.extras,
        )
        if prob.step is not None:
            dw = _tree.cast_like(dw, updates)
        return dw, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
