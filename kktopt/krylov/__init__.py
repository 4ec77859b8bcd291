"""Krylov solvers for symmetric and rectangular systems, jit/vmap-able.

``minres_qlp`` is the workhorse (singular, indefinite systems; minimum-length
solutions). ``minres`` and ``cg`` are the classical methods for comparison
(Table 1 of Marquez-Neila et al. 2017), and ``dense_solve`` is an exact
eigendecomposition reference for small systems. All share one call shape and
return ``(x, SolverInfo)``. For a rectangular ``A`` (e.g. the constraint
Jacobian of a KKT step) ``lsmr`` is the matrix-free minimum-norm
least-squares solver and ``min_norm_solve`` its dense counterpart (QR of
``A^T`` and an SVD of the small factor); neither squares ``cond(A)``.
"""

from kktopt.krylov._info import SUCCESS_CODES as SUCCESS_CODES
from kktopt.krylov._info import SolverInfo as SolverInfo
from kktopt.krylov._info import Stop as Stop
from kktopt.krylov._info import stop_message as stop_message
from kktopt.krylov.cg import cg as cg
from kktopt.krylov.dense import dense_solve as dense_solve
from kktopt.krylov.dense import materialize as materialize
from kktopt.krylov.dense import min_norm_solve as min_norm_solve
from kktopt.krylov.dense import MinNormFactor as MinNormFactor
from kktopt.krylov.dense import min_norm_factor as min_norm_factor
from kktopt.krylov.lsmr import lsmr as lsmr
from kktopt.krylov.minres import minres as minres
from kktopt.krylov.minres_qlp import minres_qlp as minres_qlp

__all__ = [
    "SUCCESS_CODES",
    "MinNormFactor",
    "SolverInfo",
    "Stop",
    "cg",
    "dense_solve",
    "lsmr",
    "materialize",
    "minres",
    "min_norm_factor",
    "min_norm_solve",
    "minres_qlp",
    "stop_message",
]
