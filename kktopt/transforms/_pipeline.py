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
from kktopt._tree import as_array_fn
from kktopt.krylov import Stop
from kktopt._status import mark_step
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
    inequality_rounds: int = 1


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
    inequality_rounds: int = 1,
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
        solver, active, bool(inequality), memory, bool(check_constraints), check_alpha(owner, alpha),
        check_rounds(owner, inequality_rounds, inequality),
    )


def check_rounds(owner: str, rounds, inequality) -> int:
    """``inequality_rounds``: an integer >= 1, above 1 only with ``inequality=True``.

    ``optax.inject_hyperparams`` turns it into a JAX integer; a concrete one
    is read back as a Python int, a traced one (inside ``jit``) is kept and
    bounds the rounds at run time.
    """
    if hasattr(rounds, "dtype") and jnp.ndim(rounds) == 0 and jnp.issubdtype(rounds.dtype, jnp.integer):
        try:
            rounds = int(rounds)
        except jax.errors.ConcretizationTypeError:
            return rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(
            f"{owner}: inequality_rounds must be a Python integer >= 1 (1: project onto the rows "
            f"violated before the step; k: up to k - 1 more active-set rounds), got {rounds!r}."
        )
    if rounds > 1 and not inequality:
        raise ValueError(
            f"{owner}: inequality_rounds={rounds} needs inequality=True (equality constraints "
            "have no active set to refine)."
        )
    return rounds


def _active_set_rounds(options: HardOptions, lin, metric, step, gradient, sol):
    """Rounds 2..k of ``inequality_rounds``: a primal-dual active-set method on one linearisation.

    For ``min ||dw - u||_D  s.t.  A dw <= -c`` (Eq. 5/6/12 with inequality
    rows), round 1 solves with the rows violated before the step as
    equalities. Each further round adds the inactive rows the step violates
    (``c_i + a_i dw`` above ``rtol * max|c|``) and drops the active rows with
    a negative multiplier (those the step would rather satisfy strictly),
    then solves again on the same linearisation: one JVP of every row and
    one KKT solve per round, no forward pass. The rounds stop early once the
    set no longer changes; the step then satisfies the KKT conditions of the
    linearised inequality QP (feasible rows, multipliers >= 0,
    complementarity). Returns ``(target, sol, settled)``.

    References:
      Hintermueller, Ito and Kunisch (2002), "The primal-dual active set
      strategy as a semismooth Newton method", SIAM J. Optim. 13(3).
      Nocedal and Wright (2006), Numerical Optimization, Sec. 16.5.
    """
    values = lin.values.reshape(-1)
    goal = values if _is_one(options.alpha) else jnp.asarray(options.alpha, values.dtype) * values
    scale = jnp.max(jnp.where(lin.rows > 0, jnp.abs(goal), 0), initial=0)
    tol = options.solver.tolerance(values.dtype) * scale

    def next_mask(mask, sol):
        after = goal + lin.full_jvp(sol.step)  # every linearised row after the step
        add = (mask == 0) & (lin.rows > 0) & (after > tol)
        drop = (mask > 0) & (sol.multipliers < 0)
        return jnp.where(add, 1, jnp.where(drop, 0, mask)).astype(mask.dtype)

    def cond(carry):
        k, mask, _, upcoming = carry
        return (k < options.inequality_rounds) & jnp.any(upcoming != mask)

    def body(carry):
        k, _, _, mask = carry
        new = options.solver.solve(_scaled(lin.restrict(mask), options.alpha), metric, step=step, gradient=gradient)
        return k + 1, mask, new, next_mask(mask, new)

    carry = (jnp.ones((), jnp.int32), lin.mask, sol, next_mask(lin.mask, sol))
    _, mask, sol, upcoming = jax.lax.while_loop(cond, body, carry)
    return _scaled(lin.restrict(mask), options.alpha), sol, jnp.all(upcoming == mask)


def _is_one(alpha) -> bool:
    return isinstance(alpha, (int, float)) and alpha == 1


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _with_status(info: KKTInfo, flag: jax.Array, code: int, residual=None) -> KKTInfo:
    """``info`` where ``flag`` holds: the hard step's stop code ``code`` on ``info.solver.istop``,
    the :class:`~kktopt.kkt.KKTStatus` it implies on ``info.status`` (see
    :func:`kktopt._status.mark_step`), and the residual replaced, if given."""
    status, istop = mark_step(info.status, info.solver.istop, flag, code)
    info = info._replace(solver=info.solver._replace(istop=istop), status=status)
    if residual is not None:
        res = info.linearized_residual
        info = info._replace(linearized_residual=jnp.where(flag, jnp.asarray(residual, res.dtype), res))
    return info


def _reject_masked_nodes(owner: str, params) -> None:
    def is_masked(x):
        return isinstance(x, optax.MaskedNode)

    if any(is_masked(x) for x in jax.tree_util.tree_leaves(params, is_leaf=is_masked)):
        raise ValueError(
            f"{owner} received parameters with optax.MaskedNode leaves: inside optax.masked or "
            "optax.multi_transform its constraint_fn cannot see the frozen parameters, so the "
            "constraints cannot be evaluated. Freeze parameters by splitting them instead: "
            "trainable, frozen = eqx.partition(params, mask) and a constraint_fn that closes over "
            "the frozen part, cfn = lambda p, x: constraint_fn(eqx.combine(p, frozen), x); "
            "train only `trainable` with the hard transform (see the kktopt.project_kkt docs)."
        )


def _reject_inexact(owner: str, updates, params) -> None:
    for name, tree in (("params", params), ("updates", updates)):
        for leaf in jax.tree_util.tree_leaves(tree):
            dtype = jnp.result_type(leaf)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
                    f"{owner}: {name} contains a leaf of dtype {dtype} (integer or float0 leaves, "
                    "e.g. from jax.grad(..., allow_int=True)): the KKT step is defined on "
                    "floating-point parameters only. Split the model with "
                    "trainable, static = eqx.partition(model, eqx.is_inexact_array), train "
                    "`trainable` and close over `static` in constraint_fn."
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


def _row_ids(selector: Selector, active_state, m: int) -> jax.Array:
    """``(m,)`` int32: which constraint of the pool each row is (for ``KKTSolver(reuse=...)``)."""
    indices = selector.indices(active_state)
    if indices is None:  # the whole pool, in order
        return jnp.arange(m, dtype=jnp.int32)
    per = m // indices.shape[0]
    return (indices.astype(jnp.int32)[:, None] * per + jnp.arange(per, dtype=jnp.int32)).reshape(-1)


def hard_step(constraint_fn, params, pool, options: HardOptions, problem: Problem, active_state, memory_state,
              kkt_cache=()):
    """Steps 2-6 of the pipeline.

    Returns ``(dw, multipliers, info, active_state, memory_state, kkt_cache)``.
    """
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
    reuse = {}
    if options.solver.reuse:
        reuse = dict(cache=kkt_cache, row_ids=_row_ids(selector, active_state, lin.c.shape[0]))
    sol = options.solver.solve(target, problem.metric, step=step, gradient=gradient, **reuse)
    settled = None
    rounds = options.inequality_rounds
    if options.inequality and not (isinstance(rounds, int) and rounds == 1):
        target, sol, settled = _active_set_rounds(options, lin, problem.metric, step, gradient, sol)
    info = KKTInfo.of(target, sol, options.check_constraints)
    if settled is not None:
        info = _with_status(info, ~settled, Stop.ACTIVE_SET_LIMIT)
    # Non-finite inputs: a NaN step and a NaN residual with their own code, never a
    # step that reads as projected (padding rows of weight 0 do not count).
    finite = lin.finite & _all_finite(step if step is not None else gradient)
    info = _with_status(info, ~finite, Stop.NONFINITE_INPUT, residual=jnp.nan)
    sol = sol._replace(step=jax.tree_util.tree_map(lambda x: jnp.where(finite, x, jnp.nan), sol.step))
    memory_before = memory_state
    if target is not lin:  # the violation itself, not the share of it this step removes
        info = info._replace(violation_norm=jnp.linalg.norm(lin.c), violation_max=jnp.max(jnp.abs(lin.c), initial=0))
    if memory is not None:
        indices = selector.indices(active_state)
        if indices is None:
            indices = jnp.arange(_tree.batch_size(pool), dtype=jnp.int32)
        memory_state = memory.update(
            memory_state, indices, sol.multipliers.reshape(lin.shape), selector.sample_mask(active_state)
        )
        memory_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), memory_state, memory_before)
    if sol.cache is not None:  # a step on non-finite inputs keeps the old factor
        kkt_cache = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), sol.cache, kkt_cache)
    return sol.step, sol.multipliers, info, active_state, memory_state, kkt_cache


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
      state_type: a NamedTuple with fields ``count, info, active, memory``,
        the transform's own fields and ``kkt_cache`` (the solver's
        :class:`~kktopt.kkt.KKTCache` with ``reuse > 0``, else ``()``).
      problem: ``(updates, state, params, extra_args) -> Problem``.
      init_extras: ``params -> dict`` of the transform's own initial fields.
      usage: extra keyword arguments of ``update``, for messages.

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update`` takes the keyword
      ``constraint_batch``. In closest-step form the output has the dtypes of
      the incoming updates; in gradient form those of the parameters.
    """

    constraint_fn = as_array_fn(constraint_fn)

    def init_fn(params):
        _reject_masked_nodes(owner, params)
        _reject_inexact(owner, None, params)
        return state_type(
            count=jnp.zeros((), jnp.int32),
            info=KKTInfo.empty(_tree.params_dtype(params)),
            active=options.selector.init(params),
            memory=_init_memory(options.memory, constraint_fn, params),
            **init_extras(params),
            kkt_cache=options.solver.init_cache(_tree.params_dtype(params)),
        )

    def update_fn(updates, state, params=None, *, constraint_batch=MISSING, **extra_args):
        _require(owner, params, constraint_batch, usage)
        _reject_masked_nodes(owner, params)
        _reject_inexact(owner, updates, params)
        prob = problem(updates, state, params, extra_args)
        if prob.finish is not None:
            finish = prob.finish

            def record(project):  # keep the Problem the step was solved with (for its extras)
                nonlocal prob
                prob = finish(project)
                return prob

            prob = prob._replace(finish=record)
        dw, _, info, active_state, memory_state, kkt_cache = hard_step(
            constraint_fn, params, constraint_batch, options, prob, state.active, state.memory, state.kkt_cache
        )
        new_state = state_type(
            count=optax.safe_increment(state.count),
            info=info,
            active=active_state,
            memory=memory_state,
            **prob.extras,
            kkt_cache=kkt_cache,
        )
        if prob.step is not None:
            dw = _tree.cast_like(dw, updates)
        return dw, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
