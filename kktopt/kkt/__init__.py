"""KKT systems of the linearised constraints, built from one linearisation per step.

* :func:`linearize_constraints`: C(w), and its JVP/VJP, from one ``jax.linearize``.
* Metrics D: :func:`euclidean_metric` (Eq. 5), :func:`adam_metric` (Eq. 12),
  :func:`gauss_newton_metric` (Eq. 6) and :func:`diagonal_metric`.
* :class:`KKTSolver`: one configuration of the solve (full system or Schur
  complement; MINRES-QLP, MINRES, CG or dense; matrix-free or per-sample
  Jacobian). ``KrylovKKT`` and ``SchurKKT`` are its deprecated spellings.
"""

from kktopt.kkt import _full, _projected, _schur  # noqa: F401  (register the solve methods)
from kktopt.kkt._linearize import Linearization as Linearization
from kktopt.kkt._linearize import linearize_constraints as linearize_constraints
from kktopt.kkt._metric import Metric as Metric
from kktopt.kkt._metric import adam_metric as adam_metric
from kktopt.kkt._metric import diagonal_metric as diagonal_metric
from kktopt.kkt._metric import euclidean_metric as euclidean_metric
from kktopt.kkt._metric import gauss_newton_curvature_scale as gauss_newton_curvature_scale
from kktopt.kkt._metric import gauss_newton_metric as gauss_newton_metric
from kktopt.kkt._solver import KKTCache as KKTCache
from kktopt.kkt._solver import KKTSolution as KKTSolution
from kktopt.kkt._solver import KKTSolver as KKTSolver
from kktopt.kkt._solver import KrylovKKT as KrylovKKT
from kktopt.kkt._solver import SchurKKT as SchurKKT
from kktopt.kkt._solver import auto_method as auto_method
from kktopt.kkt._solver import default_constraint_rtol as default_constraint_rtol
from kktopt.kkt._solver import default_maxiter as default_maxiter
from kktopt._status import KKT_SUCCESS_CODES as KKT_SUCCESS_CODES
from kktopt._status import KKTStatus as KKTStatus
from kktopt._status import kkt_status_message as kkt_status_message
from kktopt.kkt._solver import default_rtol as default_rtol
from kktopt.kkt._solver import methods as methods
from kktopt.kkt._solver import register_method as register_method
from kktopt.kkt._solver import row_floor as row_floor

__all__ = [
    "KKT_SUCCESS_CODES",
    "KKTCache",
    "KKTSolution",
    "KKTStatus",
    "auto_method",
    "default_constraint_rtol",
    "kkt_status_message",
    "KKTSolver",
    "KrylovKKT",
    "Linearization",
    "Metric",
    "SchurKKT",
    "adam_metric",
    "default_maxiter",
    "default_rtol",
    "diagonal_metric",
    "euclidean_metric",
    "gauss_newton_curvature_scale",
    "gauss_newton_metric",
    "linearize_constraints",
    "methods",
    "register_method",
    "row_floor",
]
