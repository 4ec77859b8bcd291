"""Diagnostics of a hard step (:class:`KKTInfo`) and how to find them in an optax state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kktopt.kkt import KKTSolution, Linearization
from kktopt.krylov import SolverInfo
from kktopt._status import KKTStatus, kkt_status_message, kkt_success

PyTree = Any


class KKTInfo(NamedTuple):
    """Diagnostics of the last hard step, kept in the optax state for logging.

    Attributes:
      solver: the inner solve's :class:`~kktopt.krylov.SolverInfo` (stop
        code, iterations, residuals, condition estimate).
      num_active: number of active constraint values.
      violation_norm: ``||c||`` over the active constraints, before the step.
      violation_max: ``max |c|`` over the active constraints, before the step.
      linearized_residual: ``||A dw + c|| / ||c||`` after the solve, how well
        the step meets the linearised constraints (relative to the rows'
        rounding floor ``4 eps (||c|| + ||A u||)`` instead when ``||c||`` is
        below it, e.g. active equalities met to the last bit, ``c = 0``; 0
        when none is active; -1 when the transform was built with
        ``check_constraints=False``; NaN when the constraint values or the
        step are not finite).
      status: the :class:`~kktopt.krylov.KKTStatus` of the step (int32): a
        success (0 ``SOLVED``, 1 ``NO_ACTIVE``) only when
        ``||A dw + c|| <= constraint_rtol ||c|| + 4 eps (||c|| + ||A u||)``
        (see :func:`kktopt.kkt.row_floor`); otherwise a failure code,
        explained by :func:`kktopt.kkt_status_message`. ``NO_ACTIVE`` means
        no row is active (all inequalities satisfied, or no sample).
      refinements: correction rounds run on the constraint rows (int32).
    """

    solver: SolverInfo
    num_active: jax.Array
    violation_norm: jax.Array
    violation_max: jax.Array
    linearized_residual: jax.Array
    status: jax.Array = None
    refinements: jax.Array = None

    @classmethod
    def empty(cls, dtype) -> "KKTInfo":
        f = jnp.zeros((), dtype)
        i = jnp.zeros((), jnp.int32)
        return cls(SolverInfo.empty(dtype), i, f, f, f, jnp.array(int(KKTStatus.NO_ACTIVE), jnp.int32), i)

    @property
    def success(self) -> jax.Array:
        """True where ``status`` is a success code (the step meets its linearised constraints)."""
        return kkt_success(self.status)

    def describe(self) -> str:
        """A one-line summary (call outside jit, on concrete values)."""
        code = int(self.status)
        return (
            f"status={code} ({kkt_status_message(code)}); ||A dw + c|| / ||c|| = "
            f"{float(self.linearized_residual):.3e} on {int(self.num_active)} active rows "
            f"(||c|| = {float(self.violation_norm):.3e}) after {int(self.refinements)} refinement round(s); "
            f"inner solver: {self.solver.describe()}"
        )

    @classmethod
    def of(cls, lin: Linearization, sol: KKTSolution, check_constraints: bool) -> "KKTInfo":
        """The diagnostics of the solve ``sol`` of the linearisation ``lin``."""
        c = lin.c
        cnorm = jnp.linalg.norm(c)
        if sol.residual is not None:
            lin_res = sol.residual
        else:
            res = jnp.linalg.norm(lin.jvp(sol.step) + c)
            lin_res = jnp.where(cnorm == 0, 0, res / jnp.where(cnorm == 0, 1, cnorm))
        status = sol.status
        if status is None:
            status = jnp.array(int(KKTStatus.UNCHECKED), jnp.int32)
        if not check_constraints:
            lin_res = jnp.full((), -1, c.dtype)
        refinements = jnp.zeros((), jnp.int32) if sol.refinements is None else sol.refinements
        return cls(
            solver=sol.info,
            num_active=lin.num_active,
            violation_norm=cnorm,
            violation_max=jnp.max(jnp.abs(c), initial=0),
            linearized_residual=jnp.asarray(lin_res).astype(c.dtype),
            status=status,
            refinements=refinements,
        )


def _infos(opt_state: PyTree) -> list[KKTInfo]:
    def is_info(x):
        return isinstance(x, KKTInfo)

    return [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_info) if is_info(x)]


def get_kkt_info(opt_state: PyTree) -> KKTInfo | None:
    """The :class:`KKTInfo` of the first hard transform in an optax state, or None.

    Looks through any nesting (``optax.chain``, ``optax.inject_hyperparams``,
    ``optax.masked``, ...), in the order of the state's leaves. Under
    ``jax.vmap`` the fields carry the batch axes.

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> cfn = lambda w, _: jnp.sum(w, keepdims=True) - 1.0
      >>> tx = optax.inject_hyperparams(kktopt.hard_sgd, static_args="constraint_fn")(
      ...     learning_rate=0.1, constraint_fn=cfn)
      >>> w = jnp.zeros(3)
      >>> u, state = tx.update(jnp.ones(3), tx.init(w), w, constraint_batch=None)
      >>> info = kktopt.get_kkt_info(state)
      >>> int(info.num_active), float(info.violation_norm)
      (1, 1.0)
    """
    found = _infos(opt_state)
    return found[0] if found else None


def get_kkt_infos(opt_state: PyTree) -> tuple[KKTInfo, ...]:
    """Every :class:`KKTInfo` in an optax state, in the order of its leaves (see :func:`get_kkt_info`)."""
    return tuple(_infos(opt_state))
