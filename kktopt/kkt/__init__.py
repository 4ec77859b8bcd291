"""KKT systems of the linearised constraints, built from one linearisation per step.

* :func:`linearize_constraints`: C(w), and its JVP/VJP, from one ``jax.linearize``.
* Metrics D: :func:`euclidean_metric` (Eq. 5), :func:`diagonal_metric`
  (Adam, Eq. 12), :func:`gauss_newton_metric` (Eq. 6).
* Solvers: :class:`KrylovKKT` (MINRES-QLP on the full system, Algorithms 1
  and 2) and :class:`SchurKKT` (the m x m Schur complement, dense or Krylov).
"""

from kktopt.kkt._linearize import Linearization as Linearization
from kktopt.kkt._linearize import linearize_constraints as linearize_constraints
from kktopt.kkt._metric import Metric as Metric
from kktopt.kkt._metric import diagonal_metric as diagonal_metric
from kktopt.kkt._metric import euclidean_metric as euclidean_metric
from kktopt.kkt._metric import gauss_newton_metric as gauss_newton_metric
from kktopt.kkt._solve import KKTSolution as KKTSolution
from kktopt.kkt._solve import KrylovKKT as KrylovKKT
from kktopt.kkt._solve import SchurKKT as SchurKKT

__all__ = [
    "KKTSolution",
    "KrylovKKT",
    "Linearization",
    "Metric",
    "SchurKKT",
    "diagonal_metric",
    "euclidean_metric",
    "gauss_newton_metric",
    "linearize_constraints",
]
