"""Krylov solvers for symmetric systems, jit/vmap-able and differentiable.

``minres_qlp`` is the workhorse (singular, indefinite systems; minimum-length
solutions). ``minres`` and ``cg`` are the classical methods for comparison
(Table 1 of Marquez-Neila et al. 2017), and ``dense_solve`` is an exact
eigendecomposition reference for small systems. All share one call shape and
return ``(x, SolverInfo)``.
"""

from kktopt.krylov._info import SUCCESS_CODES as SUCCESS_CODES
from kktopt.krylov._info import SolverInfo as SolverInfo
from kktopt.krylov._info import Stop as Stop
from kktopt.krylov._info import stop_message as stop_message
from kktopt.krylov.cg import cg as cg
from kktopt.krylov.dense import dense_solve as dense_solve
from kktopt.krylov.dense import materialize as materialize
from kktopt.krylov.minres import minres as minres
from kktopt.krylov.minres_qlp import minres_qlp as minres_qlp

__all__ = [
    "SUCCESS_CODES",
    "SolverInfo",
    "Stop",
    "cg",
    "dense_solve",
    "materialize",
    "minres",
    "minres_qlp",
    "stop_message",
]
