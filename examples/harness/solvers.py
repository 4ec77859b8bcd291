"""The KKT solver of a hard step, named as kktopt names it: system, method, Jacobian.

kktopt's solver configuration has three parts: the ``system`` solved (the
full KKT system, or the m x m Schur complement ``A D^-1 A^T``), the
``method`` that solves it (``minres_qlp``, ``minres``, ``cg``, ``dense``)
and how the constraint Jacobian is applied (``matrix_free``: JVP/VJP of one
linearisation; ``per_sample``: a dense Jacobian by per-sample reverse mode).
The experiments' command lines and configuration files use exactly these
spellings; `SolverChoice.build` turns them into the `kktopt.KKTSolver` the
transforms take.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import kktopt

SYSTEMS: tuple[str, ...] = ("full", "schur")
"""``full``: MINRES-QLP/MINRES on the (N_p + m)-dimensional KKT system (the
paper's Algorithm 1); ``schur``: the m x m Schur complement (SGD and Adam
metrics only)."""

METHODS: dict[str, tuple[str, ...]] = {
    "full": ("minres_qlp", "minres"),
    "schur": ("dense", "minres_qlp", "minres", "cg"),
}
"""The methods available for each system."""

JACOBIANS: tuple[str, ...] = ("matrix_free", "per_sample")
"""How the transforms apply the constraint Jacobian."""

_DEFAULTS = {"full": ("minres_qlp", "matrix_free"), "schur": ("dense", "per_sample")}

# Spellings of earlier versions of the experiments, still accepted.
_LEGACY = {"krylov": "full", "minres-qlp": "full", "schur": "schur"}


class SolverChoice(NamedTuple):
    """One KKT solver configuration of the experiments.

    Attributes:
      system: one of `SYSTEMS`.
      method: one of ``METHODS[system]``.
      jacobian: one of `JACOBIANS`.
      rtol: relative tolerance of the iterative methods (None: kktopt's
        default for the dtype); ``dense`` uses it only to tell a solution
        from a least-squares one.
      maxiter: iteration limit of the iterative methods (None: kktopt's
        default, ``4 m + 20``).
      rcond: relative eigenvalue cutoff of ``dense`` (None: kktopt's
        default, ``4 eps``).
      reuse: ``dense`` only: keep the factorisation for up to this many
        later steps with the same rows (``kktopt.KKTSolver(reuse=...)``);
        0 factors at every step.
      reuse_rows: the fixed number of constraint rows, with ``reuse``.
    """

    system: str
    method: str
    jacobian: str
    rtol: float | None = None
    maxiter: int | None = None
    rcond: float | None = None
    reuse: int = 0
    reuse_rows: int | None = None

    def build(self) -> kktopt.KKTSolver:
        """The ``solver=`` of the hard transforms: one `kktopt.KKTSolver` with all three names."""
        kwargs = {"rcond": self.rcond} if self.method == "dense" else {}
        if self.reuse:
            kwargs.update(reuse=self.reuse, reuse_rows=self.reuse_rows)
        return kktopt.KKTSolver(system=self.system, method=self.method, jacobian=self.jacobian,
                                rtol=self.rtol, maxiter=self.maxiter, **kwargs)

    def label(self) -> str:
        """``schur/dense/per_sample`` (``+reuse50`` with reuse): the names, for tables and file names."""
        return f"{self.system}/{self.method}/{self.jacobian}" + (f"+reuse{self.reuse}" if self.reuse else "")


def legacy_system(value: str, *, where: str = "solver") -> str:
    """The system named by an earlier spelling, with a DeprecationWarning.

    Earlier versions of the experiments took ``solver="krylov"`` (or
    ``"minres-qlp"``) and ``solver="schur"``. With ``where="system"``,
    ``"full"`` and ``"schur"`` pass silently and only the old values warn;
    with ``where="solver"`` (the old keyword) every value warns.
    """
    if value in SYSTEMS and where == "system":
        return value
    if value not in _LEGACY and value not in SYSTEMS:
        raise ValueError(f"{where} must be one of {SYSTEMS}, got {value!r}.")
    new = _LEGACY.get(value, value)
    warnings.warn(f"{where}={value!r} is deprecated; write system={new!r} (method "
                  f"{_DEFAULTS[new][0]!r}, jacobian {_DEFAULTS[new][1]!r} by default).",
                  DeprecationWarning, stacklevel=3)
    return new


def solver_choice(system: str = "schur", method: str | None = None, jacobian: str | None = None,
                  *, rtol: float | None = None, maxiter: int | None = None,
                  rcond: float | None = None) -> SolverChoice:
    """Validate a solver configuration and fill in the defaults of its system.

    Args:
      system: ``"full"`` or ``"schur"`` (earlier spellings ``"krylov"`` and
        ``"minres-qlp"`` mean ``"full"``, with a DeprecationWarning).
      method: default ``"minres_qlp"`` for ``full``, ``"dense"`` for
        ``schur``.
      jacobian: default ``"matrix_free"`` for ``full``, ``"per_sample"`` for
        ``schur`` (its dense solve then costs one matrix product).
      rtol: see `SolverChoice`.
      maxiter: see `SolverChoice`.
      rcond: see `SolverChoice` (``schur``/``dense`` only).

    Returns:
      The `SolverChoice`.

    Example:
      >>> solver_choice("full")
      SolverChoice(system='full', method='minres_qlp', jacobian='matrix_free', rtol=None, maxiter=None, rcond=None, reuse=0, reuse_rows=None)
      >>> solver_choice("full", "dense")
      Traceback (most recent call last):
      ...
      ValueError: method 'dense' does not solve the full system; choose one of ('minres_qlp', 'minres') or system='schur'.
    """
    system = legacy_system(system, where="system")
    default_method, default_jacobian = _DEFAULTS[system]
    method = default_method if method is None else method
    jacobian = default_jacobian if jacobian is None else jacobian
    if method not in METHODS[system]:
        other = next(s for s in SYSTEMS if s != system)
        hint = f" or system={other!r}" if method in METHODS[other] else ""
        raise ValueError(f"method {method!r} does not solve the {system} system; choose one of "
                         f"{METHODS[system]}{hint}.")
    if jacobian not in JACOBIANS:
        raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}.")
    if rcond is not None and method != "dense":
        raise ValueError("rcond applies to method='dense' only.")
    return SolverChoice(system, method, jacobian, rtol, maxiter, rcond)
