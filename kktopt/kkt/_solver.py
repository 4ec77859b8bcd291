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
import warnings
from typing import Any, Callable, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from kktopt.kkt._linearize import Linearization
from kktopt.kkt._metric import Metric
from kktopt.krylov import SolverInfo

PyTree = Any

SYSTEMS = ("schur", "full")
JACOBIANS = ("matrix_free", "per_sample")


class KKTSolution(NamedTuple):
    """Result of one KKT solve.

    Attributes:
      step: the constrained step dw (shaped like the parameters).
      multipliers: Lambda of (*) in the metric D, shape ``(m,)``.
      info: the inner solver's :class:`~kktopt.krylov.SolverInfo`.
    """

    step: PyTree
    multipliers: jax.Array
    info: SolverInfo


SolveFn = Callable[["KKTSolver", Linearization, Metric, "PyTree | None", "PyTree | None"], KKTSolution]

_METHODS: dict[tuple[str, str], SolveFn] = {}


def register_method(system: str, method: str) -> Callable[[SolveFn], SolveFn]:
    """Register ``fn(solver, lin, metric, step, gradient) -> KKTSolution`` for ``(system, method)``.

    ``step`` is the unconstrained step u (closest-step form) or None, in
    which case ``gradient`` h is given. The function reads its settings from
    the :class:`KKTSolver` fields.
    """
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}.")

    def add(fn: SolveFn) -> SolveFn:
        _METHODS[(system, method)] = fn
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


class KKTSolver(eqx.Module):
    """How the hard transforms solve the KKT system of the linearised constraints.

    ``KKTSolver()`` is the default of :func:`kktopt.project_kkt`,
    :func:`kktopt.scale_by_adam_kkt` and the aliases: MINRES-QLP on the m x m
    Schur complement, matrix-free (``benchmarks/step_cost.py`` measured it
    1.8x (CNN) to 9x (1M-parameter MLP) faster per step than MINRES-QLP on
    the full system). :func:`kktopt.gauss_newton_kkt` needs
    ``system="full"`` (its metric has no cheap inverse).

    Attributes:
      system: ``"schur"`` eliminates dw and solves
        ``(A D^-1 A^T) Lambda = c + A u``, ``dw = u - D^-1 A^T Lambda``
        (needs a diagonal metric); ``"full"`` solves (*) itself, matrix-free
        (the paper's Algorithms 1 and 2).
      method: ``"minres_qlp"`` (minimum-length solutions on rank-deficient
        constraints), ``"minres"``, ``"cg"`` (Schur only) or ``"dense"``
        (Schur only: forms the m x m matrix and applies its pseudo-inverse
        by eigendecomposition, exact minimum-norm, one refinement step).
      jacobian: ``"matrix_free"`` (JVP/VJP of one linearisation) or
        ``"per_sample"`` (the dense m x N_p Jacobian by vmapped per-sample
        reverse mode, for constraints separable over the batch's sample
        axis; products are then matmuls, cheap for ``method="dense"``).
      rtol: relative tolerance; default :func:`default_rtol` (1e-4 in
        float32, 1e-8 in float64). ``"dense"`` uses it only to tell a
        solution (istop 4) from a least-squares one (istop 6).
      maxiter: Krylov iteration limit; default :func:`default_maxiter`
        (``4 m + 20``).
      rcond: relative eigenvalue cut-off of ``"dense"``; default ``m * eps``.
      precondition: ``system="full"``: the block-diagonal preconditioner
        ``blockdiag(P, s^2 I)`` (P approximates D, s^2 is the Rayleigh
        quotient of the Schur complement along the constraint residual).
        The Schur-complement methods run unpreconditioned.

    Example:
      >>> import kktopt
      >>> kktopt.KKTSolver() == kktopt.KKTSolver(system="schur", method="minres_qlp")
      True
      >>> kktopt.KKTSolver(system="full", method="dense")
      Traceback (most recent call last):
      ...
      ValueError: KKTSolver(system='full', method='dense') is not available: system='full' has methods 'minres', 'minres_qlp'; 'dense' needs system='schur'.
    """

    system: Literal["schur", "full"] = eqx.field(static=True, default="schur")
    method: str = eqx.field(static=True, default="minres_qlp")
    jacobian: Literal["matrix_free", "per_sample"] = eqx.field(static=True, default="matrix_free")
    rtol: float | jax.Array | None = None
    maxiter: int | None = eqx.field(static=True, default=None)
    rcond: float | None = eqx.field(static=True, default=None)
    precondition: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.system not in SYSTEMS:
            raise ValueError(f"KKTSolver.system must be one of {SYSTEMS}, got {self.system!r}.")
        if (self.system, self.method) not in _METHODS:
            valid = ", ".join(repr(m) for m in methods(self.system))
            others = [s for s in SYSTEMS if (s, self.method) in _METHODS]
            hint = f"; {self.method!r} needs system={others[0]!r}" if others else ""
            raise ValueError(
                f"KKTSolver(system={self.system!r}, method={self.method!r}) is not available: "
                f"system={self.system!r} has methods {valid}{hint}."
            )
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"KKTSolver.jacobian must be 'matrix_free' or 'per_sample', got {self.jacobian!r}.")
        if isinstance(self.rtol, (int, float)) and not 0 <= self.rtol < 1:
            raise ValueError(f"KKTSolver.rtol must be in [0, 1), got {self.rtol}.")
        if self.maxiter is not None and (
            isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or self.maxiter < 1
        ):
            raise ValueError(f"KKTSolver.maxiter must be a positive integer or None, got {self.maxiter!r}.")
        if self.rcond is not None and (not isinstance(self.rcond, (int, float)) or not 0 <= self.rcond < 1):
            raise ValueError(f"KKTSolver.rcond must be a number in [0, 1) or None, got {self.rcond!r}.")
        if not isinstance(self.precondition, bool):
            raise ValueError(f"KKTSolver.precondition must be True or False, got {self.precondition!r}.")

    def tolerance(self, dtype) -> jax.Array:
        """``rtol``, or :func:`default_rtol` of ``dtype``, as an array of that dtype."""
        return jnp.asarray(default_rtol(dtype) if self.rtol is None else self.rtol, dtype)

    def iteration_limit(self, m: int) -> int:
        """``maxiter``, or :func:`default_maxiter` of the m constraint rows."""
        return default_maxiter(m) if self.maxiter is None else self.maxiter

    def solve(
        self,
        lin: Linearization,
        metric: Metric,
        *,
        step: PyTree | None = None,
        gradient: PyTree | None = None,
    ) -> KKTSolution:
        """Solve (*) for the linearisation ``lin`` in the metric ``metric``.

        Give ``step`` (the unconstrained step u, closest-step form) or
        ``gradient`` (h).
        """
        if (step is None) == (gradient is None):
            raise ValueError("KKTSolver.solve needs exactly one of step= (closest-step form) or gradient=.")
        return _METHODS[(self.system, self.method)](self, lin, metric, step, gradient)


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
    """Deprecated: ``kktopt.KKTSolver(system="full", method=...)``."""

    _system = "full"

    @staticmethod
    def _settings(method="minres_qlp", rtol=None, maxiter=None, precondition=True):
        return dict(method=method, rtol=rtol, maxiter=maxiter, precondition=precondition)


class SchurKKT(metaclass=_DeprecatedSolverAlias):
    """Deprecated: ``kktopt.KKTSolver(system="schur", method=...)`` (the old default method was ``"dense"``)."""

    _system = "schur"

    @staticmethod
    def _settings(method="dense", rtol=None, maxiter=None, rcond=None):
        return dict(method=method, rtol=rtol, maxiter=maxiter, rcond=rcond)

