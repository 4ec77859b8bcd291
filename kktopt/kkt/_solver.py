"""One configuration for every KKT solve: :class:`KKTSolver`.

Every hard transform needs the solution of

    [ D   A^T ] [ dw     ]   [ -h ]
    [ A   0   ] [ Lambda ] = [ -c ]                                    (*)

with D the metric (I, Adam's, or J^T J + eta I), A = dC/dw, c the active
constraint values and h the gradient-like vector (paper Eq. 5, 6, 12).
When the unconstrained step u = -D^-1 h is known (SGD, Adam), kktopt solves
(*) in closest-step form: dw = u + delta, where delta is the smallest
correction (in the D-norm) with A delta = -(c + A u). The matrix then does
not carry the learning rate, and the right-hand side vanishes exactly when
no constraint is active, so the step is then exactly the unconstrained one.

A :class:`KKTSolver` names the system to solve (``"full"``: (*) itself;
``"schur"``: the m x m Schur complement ``A D^-1 A^T``), the method, the
Jacobian mode and the tolerances. The solve functions live one file per
system (``_full.py``, ``_schur.py``) and are found through a table keyed by
``(system, method)``; a new method is one function registered with
:func:`register_method`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from kktopt.kkt._linearize import Linearization
from kktopt.kkt._metric import Metric
from kktopt import _tree
from kktopt.krylov import SUCCESS_CODES, SolverInfo, Stop
from kktopt.krylov.dense import PinvFactor
from kktopt._status import KKTStatus, kkt_status, kkt_success

PyTree = Any

SYSTEMS = ("schur", "full")
JACOBIANS = ("matrix_free", "per_sample")


class KKTSolution(NamedTuple):
    """Result of one KKT solve.

    Attributes:
      step: the constrained step dw (shaped like the parameters).
      multipliers: Lambda of (*) in the metric D, shape ``(m,)``.
      info: the inner solver's :class:`~kktopt.krylov.SolverInfo` (of the last
        solve; ``iterations`` summed over the refinement rounds).
      residual: ``||A dw + c|| / ||c||`` on the true rows after the solve and
        its refinement rounds (0 when ``c = 0``), set by :meth:`KKTSolver.solve`.
      status: the :class:`~kktopt.krylov.KKTStatus` of the step (int32).
      refinements: the number of refinement rounds run (int32).
      factor: a method's factorisation, handed to its correction rounds
        (internal: always None in what :meth:`KKTSolver.solve` returns).
      step_rows_norm: ``||A u||``, the rows of the unconstrained step u
        (closest-step form), which a method that forms ``c + A u`` reports
        so that :meth:`KKTSolver.solve` need not apply A to u again (for
        :func:`row_floor`); None where it did not.
      cache: the :class:`KKTCache` to keep for the next step (a solver with
        ``reuse > 0`` given a cache; else None).
    """

    step: PyTree
    multipliers: jax.Array
    info: SolverInfo
    residual: jax.Array | None = None
    status: jax.Array | None = None
    refinements: jax.Array | None = None
    factor: Any = None
    step_rows_norm: jax.Array | None = None
    cache: Any = None


class KKTCache(NamedTuple):
    """The factorisation a :class:`KKTSolver` with ``reuse > 0`` keeps from step to step (optax state).

    Attributes:
      schur: ``(m, m)`` the Schur complement ``A D^-1 A^T`` it was formed from.
      pinv: its eigendecomposition (:class:`kktopt.krylov.dense.PinvFactor`).
      rows: ``(m,)`` int32, which constraint each row was: the pool index of
        its sample, -1 for an inactive row. A step reuses the factor only
        for the same rows.
      age: steps since it was formed (int32); -1 before the first.
    """

    schur: jax.Array
    pinv: PinvFactor
    rows: jax.Array
    age: jax.Array


SolveFn = Callable[["KKTSolver", Linearization, Metric, "PyTree | None", "PyTree | None"], KKTSolution]

_METHODS: dict[tuple[str, str], SolveFn] = {}
_CORRECTIONS: dict[tuple[str, str], SolveFn] = {}
_LAGGED: dict[tuple[str, str], Callable] = {}
_RESTARTS: dict[tuple[str, str], Callable] = {}
# The solver stops that are solutions of the system, not least-squares ones.
_SOLVED_STOPS = tuple(c for c in SUCCESS_CODES if c not in (Stop.LEAST_SQUARES_RTOL, Stop.LEAST_SQUARES_EPS))


def register_method(system: str, method: str, *, correction: bool = False,
                    lagged: bool = False, restart: bool = False) -> Callable[[SolveFn], SolveFn]:
    """Register ``fn(solver, lin, metric, step, gradient) -> KKTSolution`` for ``(system, method)``.

    ``step`` is the unconstrained step u (closest-step form) or None, in
    which case ``gradient`` h is given. The function reads its settings from
    the :class:`KKTSolver` fields. With ``correction=True`` ``fn`` is instead
    the method's correction round (called with a zero step on the rows that
    the first solve left, ``lin.c = c + A dw``, and ``factor=`` the first
    solve's ``KKTSolution.factor`` when it set one); without one, the rounds
    call the method itself. With ``lagged=True`` ``fn(solver, lin, metric,
    step, cache) -> (KKTSolution, correction)`` solves with a
    :class:`KKTCache` from an earlier step (``KKTSolver(reuse=...)``); the
    method's factor then needs ``schur`` and ``pinv`` attributes. With
    ``restart=True`` ``fn(solver, lin, metric, step) -> KKTSolution | None``
    solves the whole step again (closest-step form) as the first correction
    round when the method's own solve stopped on a failure code or a
    least-squares verdict (not the growth bound ``maxxnorm``, which the
    caller set; not non-finite input).
    """
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}.")

    def add(fn: SolveFn) -> SolveFn:
        table = _RESTARTS if restart else _LAGGED if lagged else _CORRECTIONS if correction else _METHODS
        table[(system, method)] = fn
        return fn

    return add


def methods(system: str) -> tuple[str, ...]:
    """The methods registered for ``system``."""
    return tuple(sorted(m for s, m in _METHODS if s == system))


def default_rtol(dtype) -> float:
    """The default solve tolerance: 1e-4 in float32, 1e-8 in float64.

    A training step needs the linearised constraints met far below the error
    of the linearisation itself, not to machine precision.
    """
    return 1e-4 if jnp.finfo(dtype).eps > 1e-10 else 1e-8


def default_maxiter(m: int) -> int:
    """The default Krylov iteration limit for m constraint rows: ``4 m + 20``.

    With D = I (or a preconditioned diagonal D) the full KKT matrix has at
    most 2m + 1 distinct eigenvalues and the Schur complement at most m, so
    MINRES needs at most 2m + 1 steps in exact arithmetic; the rest is room
    for rounding.
    """
    return 4 * m + 20


def default_constraint_rtol(dtype) -> float:
    """The default constraint tolerance of a step: 1e-3 in float32, 1e-8 in float64.

    A step succeeds (``KKTStatus.SOLVED``) when ``||A dw + c|| <= tol ||c||``
    on the true linearised rows. In float32 a solve that does not square
    ``cond(A)`` reaches about ``cond(A) eps``; 1e-3 leaves room for
    ``cond(A)`` up to about 1e4 and is far below the error of the
    linearisation itself.
    """
    return 1e-3 if jnp.finfo(dtype).eps > 1e-10 else 1e-8


ROW_FLOOR_ULPS = 4
"""How many ulps of the step's data ``||c|| + ||A u||`` the rows may miss by and still be met (`row_floor`)."""


def row_floor(cnorm: jax.Array, step_rows_norm: jax.Array | None) -> jax.Array:
    """The rounding floor of the linearised rows: ``4 eps (||c|| + ||A u||)``.

    The rows ``c + A dw`` of a step are computed from ``c`` and the
    unconstrained step's rows ``A u`` (closest-step form), each known only to
    about ``eps`` of its size in the working dtype: rounding the exact step
    to that dtype already leaves a residual of that order. A residual below
    this floor is met to the precision of the step's own data, whatever
    ``||c||`` is; this matters when ``c`` is at or below rounding level (a
    constraint satisfied to the last bit, ``c = 0``, while the incoming step
    still has rows ``A u`` to remove), where a tolerance relative to ``||c||``
    alone could never be met. In gradient form (no u) the floor is
    ``4 eps ||c||``.
    """
    dtype = cnorm.dtype
    scale = cnorm if step_rows_norm is None else cnorm + step_rows_norm.astype(dtype)
    return ROW_FLOOR_ULPS * jnp.finfo(dtype).eps * scale


# Dense minimum-norm path ("qr") when the Jacobian is small enough to form:
# at most this many rows, and at most this many entries of the m x N_p matrix.
AUTO_QR_MAX_ROWS = 256
AUTO_QR_MAX_ENTRIES = 2**25
# With the Jacobian already formed (``jacobian="per_sample"``) the dense
# Schur complement is one m^2 N_p matmul (compute-bound), about the time of
# m / 20 Krylov iterations (each reads A twice, memory-bound) on XLA:CPU;
# float32 Krylov solves need far more. Its copies of A (the metric's scaling,
# a correction round's preconditioned rows) bound the size.
AUTO_DENSE_MAX_FORMED_ROWS = 4096
AUTO_DENSE_MAX_FORMED_ENTRIES = 2**28


def auto_method(system: str, m: int, num_params: int, diagonal_metric: bool, formed: bool = False) -> str:
    """The method ``method="auto"`` resolves to, from static sizes only.

    ``system="schur"`` with a diagonal metric: ``"dense"`` (the m x m Schur
    complement ``A D^-1 A^T`` and its eigendecomposition; its correction
    rounds reach about ``cond(A) eps`` on the true constraint rows) when
    ``m <= AUTO_QR_MAX_ROWS`` and ``m N_p <= AUTO_QR_MAX_ENTRIES`` (32M
    entries, 128 MB in float32), else ``"minres_qlp"`` on the Schur complement,
    whose correction rounds are LSMR on ``A D^-1/2``. ``"qr"`` (a Householder
    QR of the N_p x m Jacobian, also about ``cond(A) eps``) costs more on
    XLA:CPU. With ``formed`` (the Jacobian is already there, ``jacobian="per_sample"``)
    the Schur system uses ``"dense"`` up to ``AUTO_DENSE_MAX_FORMED_ROWS`` rows
    and ``AUTO_DENSE_MAX_FORMED_ENTRIES`` (256M) entries. ``system="full"``:
    ``"projected_cg"`` when the Jacobian is small enough to form and factor
    (the same limits: the matrix-free ones, or the larger ones when it is
    formed anyway), else ``"minres_qlp"``.
    """
    small = m <= AUTO_QR_MAX_ROWS and m * num_params <= AUTO_QR_MAX_ENTRIES
    formed_small = formed and m <= AUTO_DENSE_MAX_FORMED_ROWS and m * num_params <= AUTO_DENSE_MAX_FORMED_ENTRIES
    if system == "full":
        return "projected_cg" if (small or formed_small) and (system, "projected_cg") in _METHODS else "minres_qlp"
    if not diagonal_metric:
        return "minres_qlp"
    # "dense" rather than "qr": on the pose CNN (m = 96, N_p = 144k, float32)
    # a Householder QR of the 144k x 96 Jacobian took 3.5 s on XLA:CPU against
    # 0.19 s for the Gram matrix and its eigendecomposition, and the
    # correction rounds recover the accuracy the Gram matrix loses
    # (benchmarks/step_cost.py, benchmarks/kkt_accuracy.py).
    return "dense" if small or formed_small else "minres_qlp"


class KKTSolver(eqx.Module):
    """How the hard transforms solve the KKT system of the linearised constraints.

    ``KKTSolver()`` is the default of :func:`kktopt.project_kkt`,
    :func:`kktopt.scale_by_adam_kkt` and the aliases: ``method="auto"`` on the
    Schur (range-space) system, which picks, from the static sizes, the dense
    Schur complement ``"dense"`` with row refinement for ``m <= 256`` rows and
    at most 32M Jacobian entries (with ``jacobian="per_sample"``, which forms
    the Jacobian anyway: up to 4096 rows and 256M entries), else MINRES-QLP
    on the Schur complement (:func:`auto_method`; chosen with ``benchmarks/kkt_accuracy.py`` and
    ``benchmarks/step_cost.py``). Where ``"auto"``'s MINRES-QLP on more than
    256 rows and its rounds miss the rows (status not converged,
    incompatible or accuracy limit) and A fits the formed limits (4096
    rows, 256M entries), the step
    is solved again by the dense method of the system (``"dense"``, or
    ``"projected_cg"`` on the full one; in place of the LSMR restart),
    A formed by VJPs in passes of ``vjp_batch`` rows, and the better step
    is kept: a well-conditioned
    problem keeps the cheap Krylov solve, a hard one still gets its rows
    (the pose CNN with 128 samples, Hard-Adam at its default eps). An
    explicit ``method`` never falls back. :func:`kktopt.gauss_newton_kkt` needs
    ``system="full"`` (its metric has no cheap inverse).

    Every solve ends with a check of the true linearised rows
    ``r = c + A dw`` (one JVP): the rows are met when
    ``||r|| <= constraint_rtol ||c|| + 4 eps (||c|| + ||A u||)``, the second
    term the rounding floor of the step's own data (:func:`row_floor`; it
    decides only when ``||c||`` is near rounding level, e.g. constraints
    satisfied to the last bit). While they are not, up to ``refine``
    correction rounds add the minimum-norm (in the metric) correction of
    ``r``, computed by the same method. The step's
    :class:`~kktopt.krylov.KKTStatus` is a success only when the rows are met.

    Methods, accuracy vs cost vs memory (float32, ``kappa = cond(A D^-1/2)``):

    * ``"qr"`` (``system="schur"``): forms ``A`` (the per-sample Jacobian, or
      m VJPs of the linearisation in one batched pass), a Householder QR of
      ``(A D^-1/2)^T`` and an SVD of the m x m factor; reaches about
      ``kappa eps``; refinement rounds cost one matmul with ``A``. Memory
      ``m N_p``; time ``O(m^2 N_p)`` plus forming ``A``. Best for small m.
    * ``"lsmr"`` (``system="schur"``): LSMR on ``A D^-1/2``, matrix-free
      (one JVP and one VJP per iteration), reaches about ``kappa eps``; the
      multipliers cost a second, m-dimensional solve. Memory O(N_p + m^2).
    * ``"minres_qlp"``, ``"minres"``, ``"cg"`` (``system="schur"``): Krylov on
      the m x m Schur complement ``A D^-1 A^T``, matrix-free, the cheapest per
      iteration; the conditioning is ``kappa^2``, so in float32 the first
      solve stalls once ``kappa^2 eps`` nears 1. Their correction rounds are
      LSMR on ``A D^-1/2`` (conditioning ``kappa``, one JVP and one VJP per
      iteration), which run only when the first solve misses the rows:
      Adam's metric at its default eps is the usual case.
    * ``"dense"`` (``system="schur"``): forms ``A`` (per-sample, or m VJPs in
      one batched pass), the Schur complement ``A D^-1 A^T`` and its
      eigendecomposition pseudo-inverse. Its correction rounds (only when the
      first solve misses the rows) precondition the rows with that
      eigendecomposition and solve through their second Gram matrix
      (CholeskyQR2's idea), so they reach about ``kappa eps`` where the first
      solve reached ``kappa^2 eps``; each costs two more products with ``A``.
      Memory ``m N_p``. The default for small m.
    * ``"minres_qlp"``, ``"minres"`` (``system="full"``): the paper's
      Algorithms 1 and 2 on the full KKT matrix, matrix-free.
    * ``"projected_cg"`` (``system="full"``): the null-space method of Gould,
      Hribar and Nocedal (2001): a particular solution of the rows from the
      Gram matrix of ``A``'s rows preconditioned by its eigendecomposition
      (CholeskyQR2's idea, about ``cond(A) eps``), then CG on ``D`` in the
      null space of ``A`` (each projection two matmuls with the
      preconditioned rows), so every iterate meets the rows to rounding.
      Memory ``m N_p``. The Gauss-Newton default for small m, and with
      ``jacobian="per_sample"`` up to 4096 rows.

    Attributes:
      system: ``"schur"`` eliminates dw: the range-space form
        ``dw = u - D^-1 A^T Lambda`` with ``(A D^-1 A^T) Lambda = c + A u``
        (needs a diagonal metric); ``"full"`` solves (*) itself.
      method: see above; ``"auto"`` (default) picks by :func:`auto_method`.
      jacobian: ``"matrix_free"`` (JVP/VJP of one linearisation) or
        ``"per_sample"`` (the dense m x N_p Jacobian by vmapped per-sample
        reverse mode, for constraints separable over the batch's sample
        axis; products are then matmuls).
      vjp_batch: the dense methods with ``jacobian="matrix_free"`` form A by
        m VJPs of the linearisation, this many per batched pass (default
        256). A pass holds that many cotangents of every intermediate of the
        constraint function at once: lower it when forming A runs out of
        memory (a CNN's feature maps over a large batch), raise it for
        fewer, larger passes.
      rtol: relative tolerance of the inner solver; default
        :func:`default_rtol` (1e-4 in float32, 1e-8 in float64).
      maxiter: Krylov iteration limit; default :func:`default_maxiter`.
      rcond: relative cut-off of the dense methods (``"qr"``: on singular
        values of ``A D^-1/2``, default ``sqrt(max(m, N_p)) eps``;
        ``"dense"``: on eigenvalues of ``A D^-1 A^T``, default ``4 eps``).
      precondition: ``system="full"``: the block-diagonal preconditioner
        ``blockdiag(P, s^2 I)`` (P approximates D, s^2 is the Rayleigh
        quotient of the Schur complement along the constraint residual).
      constraint_rtol: the step succeeds when ``||A dw + c|| <= constraint_rtol ||c||``
        (plus the rounding floor :func:`row_floor`, which decides only for
        ``c`` near rounding level); default :func:`default_constraint_rtol`
        (1e-3 in float32, 1e-8 in float64).
      refine: at most this many correction rounds on the true constraint
        rows (default 3; 0 turns them off).
      maxxnorm: the growth bound ``||A|| ||x|| / ||b||`` of the Krylov
        solvers (stop code 13, reported as ``KKTStatus.MULTIPLIER_BOUND``).
        Default None: no bound, so legitimate multipliers of any size are
        found.
      reuse: keep the dense Schur factorisation (``method="dense"``) in the
        optax state and reuse it for up to this many later steps whose
        active rows are the same constraints (a fixed pool with
        ``kktopt.active.all_samples()``, a fixed subset): such a step forms
        neither A nor ``A D^-1 A^T`` but solves with the lagged factor and
        refines on its true rows (plain iterative refinement, each round one
        VJP and one JVP); it refactors when the rows change, after
        ``reuse`` steps, or when the lagged rounds do not meet the rows. The
        step is the same minimum-norm step to the row tolerance; only the
        work changes (a lagged preconditioner, as in Newton-Krylov methods).
        Default 0: factor at every step. Needs ``reuse_rows``. Under
        ``jax.vmap`` both branches run (the saving is lost, not the result).
      reuse_rows: the number m of constraint rows of the steps (fixed; the
        cache's size in the optax state), needed with ``reuse``.

    Example:
      >>> import kktopt
      >>> kktopt.KKTSolver() == kktopt.KKTSolver(system="schur", method="auto")
      True
      >>> kktopt.KKTSolver(system="full", method="dense")
      Traceback (most recent call last):
      ...
      ValueError: KKTSolver(system='full', method='dense') is not available: system='full' has methods 'auto', 'minres', 'minres_qlp', 'projected_cg'; 'dense' needs system='schur'.

    References:
      N. I. M. Gould, M. E. Hribar and J. Nocedal, "On the solution of
      equality constrained quadratic programming problems arising in
      optimization", SIAM J. Sci. Comput. 23(4):1376-1395, 2001 (projected CG,
      Alg. II, and iterative refinement of the projections, Sec. 3.2).
      N. J. Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
      Ch. 12 (iterative refinement).
    """

    system: Literal["schur", "full"] = eqx.field(static=True, default="schur")
    method: str = eqx.field(static=True, default="auto")
    jacobian: Literal["matrix_free", "per_sample"] = eqx.field(static=True, default="matrix_free")
    rtol: float | jax.Array | None = None
    maxiter: int | None = eqx.field(static=True, default=None)
    rcond: float | None = eqx.field(static=True, default=None)
    precondition: bool = eqx.field(static=True, default=True)
    constraint_rtol: float | jax.Array | None = None
    refine: int = eqx.field(static=True, default=3)
    maxxnorm: float | None = eqx.field(static=True, default=None)
    reuse: int = eqx.field(static=True, default=0)
    reuse_rows: int | None = eqx.field(static=True, default=None)
    vjp_batch: int = eqx.field(static=True, default=256)

    def __check_init__(self):
        if self.system not in SYSTEMS:
            raise ValueError(f"KKTSolver.system must be one of {SYSTEMS}, got {self.system!r}.")
        if self.method != "auto" and (self.system, self.method) not in _METHODS:
            valid = ", ".join(repr(m) for m in ("auto",) + methods(self.system))
            others = [s for s in SYSTEMS if (s, self.method) in _METHODS]
            hint = f"; {self.method!r} needs system={others[0]!r}" if others else ""
            raise ValueError(
                f"KKTSolver(system={self.system!r}, method={self.method!r}) is not available: "
                f"system={self.system!r} has methods {valid}{hint}."
            )
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"KKTSolver.jacobian must be 'matrix_free' or 'per_sample', got {self.jacobian!r}.")
        for name in ("rtol", "constraint_rtol"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not 0 <= value < 1:
                raise ValueError(f"KKTSolver.{name} must be in [0, 1), got {value}.")
        if self.maxiter is not None and (
            isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or self.maxiter < 1
        ):
            raise ValueError(f"KKTSolver.maxiter must be a positive integer or None, got {self.maxiter!r}.")
        if self.rcond is not None and (not isinstance(self.rcond, (int, float)) or not 0 <= self.rcond < 1):
            raise ValueError(f"KKTSolver.rcond must be a number in [0, 1) or None, got {self.rcond!r}.")
        if not isinstance(self.precondition, bool):
            raise ValueError(f"KKTSolver.precondition must be True or False, got {self.precondition!r}.")
        if isinstance(self.refine, bool) or not isinstance(self.refine, int) or self.refine < 0:
            raise ValueError(f"KKTSolver.refine must be a non-negative integer, got {self.refine!r}.")
        if self.maxxnorm is not None and (not isinstance(self.maxxnorm, (int, float)) or not self.maxxnorm > 1):
            raise ValueError(
                f"KKTSolver.maxxnorm must be None (no bound) or a number > 1, got {self.maxxnorm!r}."
            )
        if isinstance(self.vjp_batch, bool) or not isinstance(self.vjp_batch, int) or self.vjp_batch < 1:
            raise ValueError(f"KKTSolver.vjp_batch must be a positive integer, got {self.vjp_batch!r}.")
        if isinstance(self.reuse, bool) or not isinstance(self.reuse, int) or self.reuse < 0:
            raise ValueError(f"KKTSolver.reuse must be a non-negative integer, got {self.reuse!r}.")
        if self.reuse:
            if self.system != "schur" or self.method not in ("auto", "dense"):
                raise ValueError(
                    "KKTSolver(reuse=...) keeps the dense Schur factorisation: use "
                    f"KKTSolver(system='schur', method='dense', reuse=...), not system={self.system!r}, "
                    f"method={self.method!r}."
                )
            if isinstance(self.reuse_rows, bool) or not isinstance(self.reuse_rows, int) or self.reuse_rows < 1:
                raise ValueError(
                    "KKTSolver(reuse=...) needs reuse_rows=m, the fixed number of constraint rows of the "
                    f"steps (the size of the factor kept in the optax state), got {self.reuse_rows!r}."
                )

    def tolerance(self, dtype) -> jax.Array:
        """``rtol``, or :func:`default_rtol` of ``dtype``, as an array of that dtype."""
        return jnp.asarray(default_rtol(dtype) if self.rtol is None else self.rtol, dtype)

    def constraint_tolerance(self, dtype) -> jax.Array:
        """``constraint_rtol``, or :func:`default_constraint_rtol` of ``dtype``, as an array of that dtype."""
        tol = default_constraint_rtol(dtype) if self.constraint_rtol is None else self.constraint_rtol
        return jnp.asarray(tol, dtype)

    def growth_bound(self, dtype) -> jax.Array:
        """``maxxnorm`` as an array (inf when None: no bound)."""
        return jnp.asarray(jnp.inf if self.maxxnorm is None else self.maxxnorm, dtype)

    def iteration_limit(self, m: int) -> int:
        """``maxiter``, or :func:`default_maxiter` of the m constraint rows."""
        return default_maxiter(m) if self.maxiter is None else self.maxiter

    def init_cache(self, dtype) -> KKTCache | tuple:
        """The empty :class:`KKTCache` of a solver with ``reuse > 0`` (``()`` otherwise)."""
        if not self.reuse:
            return ()
        m = self.reuse_rows
        vec, mat, scalar = jnp.zeros((m,), dtype), jnp.zeros((m, m), dtype), jnp.zeros((), dtype)
        return KKTCache(schur=mat, pinv=PinvFactor(vec, mat, vec, scalar, scalar, scalar),
                        rows=jnp.full((m,), -1, jnp.int32), age=jnp.full((), -1, jnp.int32))

    def resolve(self, lin: Linearization, metric: Metric) -> str:
        """The method this solver runs for ``lin`` and ``metric`` (``"auto"`` resolved)."""
        if self.method != "auto":
            return self.method
        return auto_method(self.system, lin.c.shape[0], _num_params(lin), metric.inverse_diagonal is not None,
                           formed=lin.matrix is not None)

    def solve(
        self,
        lin: Linearization,
        metric: Metric,
        *,
        step: PyTree | None = None,
        gradient: PyTree | None = None,
        cache: KKTCache | None = None,
        row_ids: jax.Array | None = None,
    ) -> KKTSolution:
        """Solve (*) for the linearisation ``lin`` in the metric ``metric``, refine, and judge the step.

        Give ``step`` (the unconstrained step u, closest-step form) or
        ``gradient`` (h). The returned :class:`KKTSolution` carries the true
        relative residual of the constraint rows and the step's
        :class:`~kktopt.krylov.KKTStatus`. With ``reuse > 0``, ``cache`` is
        the :class:`KKTCache` of the previous step (from :meth:`init_cache`
        at first) and ``row_ids`` the ``(m,)`` pool index of each row's
        sample; ``KKTSolution.cache`` is the one to keep.
        """
        if (step is None) == (gradient is None):
            raise ValueError("KKTSolver.solve needs exactly one of step= (closest-step form) or gradient=.")
        key = (self.system, self.resolve(lin, metric))
        if self.reuse and isinstance(cache, KKTCache):
            return _solve_reusing(self, key, lin, metric, step, cache, row_ids)
        dense = self._dense_fallback(key, lin, metric)
        # With a dense fallback, a failed Krylov solve goes to it rather than to a restart.
        sol, _ = _solve_fresh(self, key, lin, metric, step, gradient, allow_restart=dense is None)
        if dense is not None:
            sol = _fall_back(dataclasses.replace(self, method=dense[1]), dense, lin, metric, step, gradient, sol)
        return sol

    def _dense_fallback(self, key, lin: Linearization, metric: Metric):
        """``method="auto"``: the dense method to solve with when its Krylov choice misses the rows.

        ``(system, "dense")`` on the Schur system with a diagonal metric,
        ``(system, "projected_cg")`` on the full one, when there are more
        than ``AUTO_QR_MAX_ROWS`` rows and A fits the limits of a formed
        Jacobian (``AUTO_DENSE_MAX_FORMED_ROWS`` rows,
        ``AUTO_DENSE_MAX_FORMED_ENTRIES`` entries); else None. Fewer rows
        resolve to MINRES-QLP only for a large model (more than 32M
        Jacobian entries): a few hundred rows take a few hundred Krylov
        iterations at most, less than forming A (the 1M-parameter MLP of
        ``benchmarks/step_cost.py``, 96 rows: 0.2 s against 0.8 s), and the
        fallback's buffers would count in XLA's peak memory of every step
        (15x there), taken or not.
        """
        m = lin.c.shape[0]
        if self.method != "auto" or key[1] != "minres_qlp" or m <= AUTO_QR_MAX_ROWS:
            return None
        dense = (key[0], "dense" if key[0] == "schur" else "projected_cg")
        if dense not in _METHODS or (key[0] == "schur" and metric.inverse_diagonal is None):
            return None
        if m > AUTO_DENSE_MAX_FORMED_ROWS or m * _num_params(lin) > AUTO_DENSE_MAX_FORMED_ENTRIES:
            return None
        return dense


def _num_params(lin: Linearization) -> int:
    if lin.matrix is not None:
        return lin.matrix.shape[1]
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(
        jax.eval_shape(lin.vjp, jax.ShapeDtypeStruct(lin.c.shape, lin.c.dtype))))


# The verdicts after which ``method="auto"`` tries its dense fallback.
_RETRIED = (KKTStatus.NOT_CONVERGED, KKTStatus.INCOMPATIBLE, KKTStatus.ACCURACY_LIMIT)


def _second_try(first: KKTSolution, second: KKTSolution, keep: jax.Array, refinements) -> KKTSolution:
    """``second`` (a whole step solved again) where ``keep``, else ``first``; iterations add up."""
    second = second._replace(info=second.info._replace(iterations=second.info.iterations + first.info.iterations),
                             refinements=refinements)
    return _tree.tree_where(keep, second, first)


def _fall_back(cfg: KKTSolver, key, lin: Linearization, metric: Metric, step, gradient,
               sol: KKTSolution) -> KKTSolution:
    """The step solved again by the dense method ``key`` (with its rounds) where ``sol`` missed the rows.

    Kept where it meets the rows better; iterations and rounds add up. A
    ``lax.cond``: steps whose Krylov solve met the rows pay nothing (under
    ``jax.vmap`` both branches run).
    """
    def again():
        new, _ = _solve_fresh(cfg, key, lin, metric, step, gradient)
        return _second_try(sol, new, new.residual < sol.residual, new.refinements + sol.refinements)

    retry = jnp.isin(sol.status, jnp.asarray([int(s) for s in _RETRIED], sol.status.dtype))
    return jax.lax.cond(retry, again, lambda: sol)


def _solve_fresh(cfg: KKTSolver, key, lin: Linearization, metric: Metric, step, gradient,
                 allow_restart: bool = True):
    """The method's solve, its correction rounds and the verdict: ``(solution, the method's factor)``.

    ``allow_restart=False``: no restart (``register_method(..., restart=True)``) after a failed first solve.
    """
    fn = _METHODS[key]
    sol = fn(cfg, lin, metric, step, gradient)
    if step is not None and sol.step_rows_norm is None:
        sol = sol._replace(step_rows_norm=jnp.linalg.norm(lin.jvp(step)))
    correct = _CORRECTIONS.get(key)
    if correct is None:
        correct = fn
    elif sol.factor is not None:  # the rounds reuse the first solve's factorisation
        correct = functools.partial(correct, factor=sol.factor)
    factor = sol.factor
    sol = sol._replace(factor=None)
    restart = _RESTARTS.get(key) if allow_restart else None
    if restart is not None and step is not None and cfg.refine > 0:
        # Failures, and least-squares verdicts: in float32 a Schur
        # complement can read as singular from its own rounding.
        solved = jnp.isin(sol.info.istop, jnp.asarray(_SOLVED_STOPS))
        failed = ~solved & (sol.info.istop != Stop.XNORM_LIMIT) & (sol.info.istop != Stop.NONFINITE)
        sol = sol._replace(refinements=jnp.zeros((), jnp.int32))

        def restarted():  # the restart where it meets the rows better (it can fail too)
            again = restart(cfg, lin, metric, step)
            if again is None:
                return sol
            rows = lambda s: jnp.linalg.norm(lin.c + lin.jvp(s.step))  # noqa: E731
            return _second_try(sol, again, rows(again) < rows(sol), jnp.ones((), jnp.int32))

        sol = jax.lax.cond(failed, restarted, lambda: sol)
    # A method's own round tries even when its first solve read the rows
    # as incompatible: in float32 that can be its rounding, not the rows.
    out = _refine_and_judge(cfg, correct, lin, metric, sol, retry_incompatible=key in _CORRECTIONS)
    return out, factor


def _solve_reusing(cfg: KKTSolver, key, lin: Linearization, metric: Metric, step, cache: KKTCache, row_ids):
    """``reuse``: the lagged factor while the rows are the same and it meets them, else a fresh one."""
    if key not in _LAGGED or metric.inverse_diagonal is None or step is None:
        raise ValueError(
            "KKTSolver(reuse=...) reuses the dense Schur factorisation: it needs method='dense' (or 'auto' "
            "resolving to it), a diagonal metric and the closest-step form (project_kkt, "
            f"scale_by_adam_kkt, hard_sgd, hard_adam); this step resolved to method={key[1]!r}"
            f"{'' if metric.inverse_diagonal is not None else ' with a non-diagonal metric'}."
        )
    m = lin.c.shape[0]
    if m != cfg.reuse_rows:
        raise ValueError(
            f"KKTSolver(reuse_rows={cfg.reuse_rows}) but this step has {m} constraint rows: reuse needs a "
            "fixed number of rows; set reuse_rows to it."
        )
    if row_ids is None:
        row_ids = jnp.arange(m, dtype=jnp.int32)
    rows = jnp.where(lin.mask > 0, jnp.asarray(row_ids, jnp.int32), -1)
    reusable = (cache.age >= 0) & (cache.age < cfg.reuse) & jnp.all(cache.rows == rows)

    def fresh():
        sol, factor = _solve_fresh(cfg, key, lin, metric, step, None)
        new = KKTCache(schur=factor.schur, pinv=factor.pinv, rows=rows, age=jnp.zeros((), jnp.int32))
        return sol, jax.tree_util.tree_map(lambda x, like: x.astype(like.dtype), new, cache)

    def lagged():
        first, correct = _LAGGED[key](cfg, lin, metric, step, cache)
        return _refine_and_judge(cfg, correct, lin, metric, first, retry_incompatible=True)

    shape = jax.eval_shape(lagged)
    lag = jax.lax.cond(reusable, lagged,
                       lambda: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shape))
    use = reusable & kkt_success(lag.status)
    aged = cache._replace(age=cache.age + 1)
    sol, new_cache = jax.lax.cond(use, lambda: (lag, aged), fresh)
    return sol._replace(cache=new_cache)


def _relative(rnorm, ref):
    # NaN stays NaN (a NaN in c must not read as a perfect step).
    return jnp.where(ref == 0, jnp.zeros_like(rnorm), rnorm / jnp.where(ref == 0, 1, ref))


def row_target(cfg: "KKTSolver", cnorm: jax.Array, step_rows_norm: jax.Array | None) -> jax.Array:
    """What the rows must reach: ``||c + A dw|| <= constraint_rtol ||c|| + row_floor``."""
    return cfg.constraint_tolerance(cnorm.dtype) * cnorm + row_floor(cnorm, step_rows_norm)


def _refine_and_judge(cfg: KKTSolver, fn: SolveFn, lin: Linearization, metric: Metric, sol: KKTSolution,
                      retry_incompatible: bool = False):
    """Correction rounds (``fn``) on the true rows ``r = c + A dw``, then the step's status.

    The rounds stop once one reports the rows incompatible (no round can
    help then); with ``retry_incompatible`` the first solve's verdict does not
    stop them, so a round of a different method gets its say.
    """
    c = lin.c
    dtype = c.dtype
    cnorm = jnp.linalg.norm(c)
    target = row_target(cfg, cnorm, sol.step_rows_norm)
    r = c + lin.jvp(sol.step)
    rnorm = jnp.linalg.norm(r)

    if cfg.refine > 0:
        zeros = _tree.tree_zeros_like(sol.step)

        def incompatible(istop):  # the constraints cannot be met: no round can help
            return kkt_status(False, True, True, istop) == KKTStatus.INCOMPATIBLE

        def cond(carry):
            k, _, _, _, rn, _, istop, progress = carry
            return (k < cfg.refine) & (rn > target) & jnp.isfinite(rn) & progress & ~incompatible(istop)

        def body(carry):
            k, dw, lam, r, rn, its, _, _ = carry
            # The correction's own row target, relative to ||r||: target / ||r||.
            sub = eqx.tree_at(lambda s: s.constraint_rtol, cfg, target / jnp.where(rn > 0, rn, 1),
                              is_leaf=lambda x: x is None)
            corr = fn(sub, lin._replace(c=r), metric, zeros, None)
            dw_new = _tree.tree_lincomb((1.0, dw), (1.0, corr.step))
            r_new = c + lin.jvp(dw_new)
            rn_new = jnp.linalg.norm(r_new)
            better = rn_new < rn
            # Keep the better iterate; stop when a round no longer halves the residual.
            dw = _tree.tree_where(better, dw_new, dw)
            lam = jnp.where(better, lam + corr.multipliers, lam)
            r = jnp.where(better, r_new, r)
            progress = rn_new < 0.5 * rn
            rn = jnp.where(better, rn_new, rn)
            return (k + 1, dw, lam, r, rn, its + corr.info.iterations, corr.info.istop, progress)

        first = jnp.zeros_like(sol.info.istop) if retry_incompatible else sol.info.istop
        # A restart (a round that solved the whole step again) counts as one.
        done = jnp.zeros((), jnp.int32) if sol.refinements is None else sol.refinements
        init = (done, sol.step, sol.multipliers, r, rnorm, sol.info.iterations, first, jnp.ones((), bool))
        k, dw, lam, r, rnorm, its, istop, _ = jax.lax.while_loop(cond, body, init)
        istop = jnp.where(k == done, sol.info.istop, istop)  # no round ran: the first solve's code
        info = sol.info._replace(iterations=its.astype(jnp.int32), istop=istop.astype(jnp.int32))
        sol = sol._replace(step=dw, multipliers=lam, info=info)
        rounds = k
    else:
        rounds = jnp.zeros((), jnp.int32)
    # Relative to ||c||, or to the rounding floor when ||c|| lies below it
    # (c = 0 on active rows: the rows A u of the step must still go).
    residual = _relative(rnorm, jnp.maximum(cnorm, row_floor(cnorm, sol.step_rows_norm))).astype(dtype)
    finite = jnp.isfinite(cnorm) & jnp.isfinite(rnorm) & jnp.all(jnp.isfinite(sol.multipliers))
    # Active rows, not ||c|| > 0: equalities met to the last bit still shape the step.
    active = jnp.any(lin.mask > 0)
    status = kkt_status(rnorm <= target, active, finite, sol.info.istop)
    return sol._replace(residual=residual, status=status, refinements=rounds)


# --------------------------------------------------------------------------
# Deprecated spellings (one release): KrylovKKT(...) and SchurKKT(...).
# --------------------------------------------------------------------------


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


class _DeprecatedSolverAlias(type):
    """Metaclass of the old solver classes: calling one returns a :class:`KKTSolver`.

    ``isinstance(s, KrylovKKT)`` (``SchurKKT``) stays true for every solver of
    the full (Schur) system, so old type checks keep working.
    """

    _system: str

    def __call__(cls, *args, **kwargs):
        settings = cls._settings(*args, **kwargs)
        defaults = {f.name: f.default for f in dataclasses.fields(KKTSolver)}
        spelled = ", ".join(
            f"{k}={v!r}" for k, v in settings.items() if k == "method" or not _same(v, defaults[k])
        )
        warnings.warn(
            f"kktopt.{cls.__name__} is deprecated: use kktopt.KKTSolver(system={cls._system!r}, {spelled}).",
            DeprecationWarning,
            stacklevel=2,
        )
        return KKTSolver(system=cls._system, **settings)

    def __instancecheck__(cls, obj):
        return isinstance(obj, KKTSolver) and obj.system == cls._system


class KrylovKKT(metaclass=_DeprecatedSolverAlias):
    """Deprecated: ``kktopt.KKTSolver(system="full", method=...)``.

    ``KrylovKKT()`` keeps its own old default, ``method="minres_qlp"``; the
    new default ``KKTSolver(system="full")`` is ``method="auto"``
    (``"projected_cg"`` for small m, see :func:`auto_method`).
    """

    _system = "full"

    @staticmethod
    def _settings(method="minres_qlp", rtol=None, maxiter=None, precondition=True):
        return dict(method=method, rtol=rtol, maxiter=maxiter, precondition=precondition)


class SchurKKT(metaclass=_DeprecatedSolverAlias):
    """Deprecated: ``kktopt.KKTSolver(system="schur", method=...)``.

    ``SchurKKT()`` keeps its own old default, ``method="dense"``; the new
    default ``KKTSolver()`` is ``method="auto"`` (see :func:`auto_method`).
    """

    _system = "schur"

    @staticmethod
    def _settings(method="dense", rtol=None, maxiter=None, rcond=None):
        return dict(method=method, rtol=rtol, maxiter=maxiter, rcond=rcond)

