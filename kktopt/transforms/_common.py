"""State, diagnostics and the shared projection step of the hard transforms."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from kktopt.active import AllSamples, Selector
from kktopt.kkt import KrylovKKT, SchurKKT, linearize_constraints
from kktopt.kkt._linearize import Linearization
from kktopt.kkt._metric import Metric
from kktopt.kkt._solve import KKTSolution
from kktopt.krylov._info import SolverInfo
from kktopt.krylov._tree import tree_axpy as _tree_axpy

PyTree = Any


class _Missing:
    def __repr__(self):
        return "<missing>"


MISSING = _Missing()


class KKTInfo(NamedTuple):
    """Diagnostics of the last hard step, kept in the optax state for logging.

    Attributes:
      solver: the inner solve's :class:`~kktopt.krylov.SolverInfo` (stop
        code, iterations, residuals, condition estimate).
      num_active: number of active constraint values.
      violation_norm: ``||c||`` over the active constraints, before the step.
      violation_max: ``max |c|`` over the active constraints, before the step.
      linearized_residual: ``||A dw + c|| / ||c||`` after the solve, how well
        the step meets the linearised constraints (0 when none is active;
        -1 when the transform was built with ``check_constraints=False``).
    """

    solver: SolverInfo
    num_active: jax.Array
    violation_norm: jax.Array
    violation_max: jax.Array
    linearized_residual: jax.Array

    @classmethod
    def empty(cls, dtype) -> "KKTInfo":
        f = jnp.zeros((), dtype)
        return cls(SolverInfo.empty(dtype), jnp.zeros((), jnp.int32), f, f, f)


def params_dtype(params: PyTree):
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params has no arrays.")
    return jnp.result_type(*leaves)


def require(params, constraint_batch, name: str, extra: str = "") -> None:
    if params is None:
        raise ValueError(
            f"{name} projects onto constraints linearised at the current parameters: call "
            f"tx.update(grads, state, params, constraint_batch=...{extra})."
        )
    if constraint_batch is MISSING:
        raise ValueError(
            f"{name} needs the inputs of its constraints: call "
            f"tx.update(grads, state, params, constraint_batch=x_unlabeled{extra}) "
            "(pass constraint_batch=None if constraint_fn ignores it)."
        )


def default_solver() -> SchurKKT:
    """The default solver of the SGD and Adam transforms: MINRES-QLP on the Schur complement.

    For these metrics D^-1 is cheap, so eliminating dw leaves the m x m
    system (A D^-1 A^T) Lambda = c + A u, solved matrix-free (one VJP and one
    JVP per iteration) with Krylov vectors of length m instead of N_p + m.
    ``benchmarks/step_cost.py`` measured it 1.8x (CNN) to 9x (1M-parameter
    MLP) faster per step than MINRES-QLP on the full KKT system, which it
    solves exactly (minimum-norm multipliers when A is rank-deficient).
    """
    return SchurKKT(method="minres_qlp")


def check_solver(solver, default: Callable[[], Any] = KrylovKKT) -> Any:
    if solver is None:
        return default()
    if not isinstance(solver, (KrylovKKT, SchurKKT)):
        raise TypeError(
            f"solver must be a kktopt.KrylovKKT or kktopt.SchurKKT, got {type(solver).__name__}."
        )
    return solver


def check_memory(memory):
    from kktopt.memory import MultiplierMemory

    if memory is not None and not isinstance(memory, MultiplierMemory):
        raise TypeError(
            "memory must be kktopt.memory.multiplier_memory(...) (for a working set of samples "
            f"use active=kktopt.memory.working_set(...)), got {type(memory).__name__}."
        )
    return memory


def init_memory(memory, constraint_fn, params):
    if memory is None:
        return ()
    out = jax.eval_shape(constraint_fn, params, memory.like.spec)
    if len(out.shape) == 0:
        raise ValueError("a memory needs constraint_fn to return values with a leading sample axis.")
    return memory.init(params, tuple(out.shape[1:]))


def check_jacobian(jacobian: str) -> str:
    if jacobian not in ("matrix_free", "per_sample"):
        raise ValueError(f"jacobian must be 'matrix_free' or 'per_sample', got {jacobian!r}.")
    return jacobian


def check_selector(active) -> Selector:
    if active is None:
        return AllSamples()
    if not isinstance(active, Selector):
        raise TypeError(
            "active must be a selector such as kktopt.active.random_samples(k) or "
            f"kktopt.active.mined_samples(k), got {type(active).__name__}."
        )
    return active


def make_info(lin: Linearization, sol: KKTSolution, check_constraints: bool) -> KKTInfo:
    c = lin.c
    cnorm = jnp.linalg.norm(c)
    if check_constraints:
        res = jnp.linalg.norm(lin.jvp(sol.step) + c)
        lin_res = jnp.where(cnorm > 0, res / jnp.where(cnorm > 0, cnorm, 1), 0)
    else:
        lin_res = jnp.full((), -1, c.dtype)
    return KKTInfo(
        solver=sol.info,
        num_active=lin.num_active,
        violation_norm=cnorm,
        violation_max=jnp.max(jnp.abs(c), initial=0),
        linearized_residual=lin_res.astype(c.dtype),
    )


def constrained_step(
    *,
    constraint_fn: Callable,
    params: PyTree,
    constraint_batch: Any,
    selector: Selector,
    selector_state: PyTree,
    inequality: bool,
    solver,
    metric: Metric,
    step: PyTree | None = None,
    gradient: PyTree | None = None,
    check_constraints: bool,
    jacobian: str = "matrix_free",
    memory=None,
    memory_state=(),
):
    """Select the active samples, linearise once, solve the KKT system.

    With a multiplier memory, the remembered constraints' forces are added to
    the step (closest-step form) or to the gradient (Gauss-Newton form)
    first, and this step's multipliers are stored afterwards.

    Returns ``(dw, multipliers, info, new_selector_state, new_memory_state)``.
    """
    if memory is not None:
        pull = memory.force(constraint_fn, params, memory_state)
        if step is not None:
            step = _tree_axpy(-1.0, metric.inverse(pull), step)
        else:
            gradient = _tree_axpy(1.0, pull, gradient)
    sub_batch, selector_state = selector.select(constraint_fn, params, constraint_batch, selector_state)
    lin = linearize_constraints(
        constraint_fn,
        params,
        sub_batch,
        inequality=inequality,
        jacobian=jacobian,
        sample_mask=selector.sample_mask(selector_state),
    )
    selector_state = selector.observe(selector_state, sub_batch, lin.values)
    sol = solver.solve(lin, metric, step=step, gradient=gradient)
    info = make_info(lin, sol, check_constraints)
    if memory is not None:
        memory_state = memory.update(
            memory_state,
            sub_batch,
            sol.multipliers.reshape(lin.shape),
            selector.sample_mask(selector_state),
        )
    return sol.step, sol.multipliers, info, selector_state, memory_state


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x, y: x.astype(y.dtype), tree, like)

