"""The hypersphere experiment of the paper (Sec. 6.2, Fig. 3 and Fig. 4).

A toy problem that isolates the diagnosis of the paper: many nearly identical
constraints, of which only a random subset is active at each step.

* Hard (Eq. 16): ``min 1/2 ||w - x0||^2  s.t.  ||w - c_i|| - r = 0``, i = 1..m.
* Soft (Eq. 17): ``min 1/2 ||w - x0||^2 + lam * sum_i (||w - c_i|| - r)^2``.

Defaults: d = 1e6, m = 200 centres, r = 10, lam = 100, 20 random active
constraints per step, 500 steps. Five methods, each written with the public
optax transforms exactly as a user would write them:

* ``soft``: ``optax.sgd(soft_lr)`` (no momentum) on the full soft objective
  (``kktopt.soft_constrained_loss``, all m constraints every step).
* ``hard``: ``optax.chain(optax.sgd(hard_lr), kktopt.project_kkt(...,
  active=kktopt.active.random_samples(20)))`` (paper Eq. 5), solved by the
  dense Schur complement (default, ``system="schur"``) or MINRES-QLP on the
  full KKT system (``system="full"``).
* ``hard-fixed``: the same 20 constraints at every step (the first random
  draw of ``hard``), to test the paper's diagnosis: a fixed active set
  converges onto its intersection.
* ``hard-all``: all m constraints active at every step.
* ``hard-memory``: ``hard`` with ``memory=kktopt.memory.multiplier_memory(
  memory, centres)``: the constraints projected at earlier steps keep
  pulling the step with their accumulated Lagrange multipliers, so they are
  not forgotten when they leave the random active set (the paper's open
  problem, Sec. 7).

Interpretation of the centres (``centre_spread``). The paper draws
``c_i ~ N(0, 0.01 I)`` and calls the spheres nearly identical (the spread of
the centres, 0.1, is two orders of magnitude below the radius). Read per
coordinate in d = 1e6, that makes the centres about ``sqrt(2 * 0.01 * d)``
= 141 apart: no two spheres of radius 10 even intersect, the hard problem is
infeasible and every linearisation is well conditioned (the rows of A are
nearly orthogonal), the opposite of what the paper describes. The default
``"matched"`` reading keeps the geometry of the paper's d = 2 picture in any
dimension: per-coordinate variance ``0.01 * 2 / d``, so that
``E ||c_i - c_j||^2 = 0.04`` as for ``N(0, 0.01 I)`` in d = 2 (the two
readings coincide at d = 2). ``"literal"`` is the per-coordinate reading.

One job per module: `hypersphere.config` (settings), `hypersphere.problem`
(centres, x0, Eq. 16), `hypersphere.methods` (one compiled step per method),
`hypersphere.run` (the resumable run), `hypersphere.illustration` (Fig. 3's
d = 2 computation), `hypersphere.report` (figures) and `hypersphere.cli`
(``python examples/run_hypersphere.py``).

Everything a run produces goes to one folder: ``metrics.json`` (written after
every method, so an interrupted run resumes: methods already there are
skipped unless ``force=True``), ``fig3.png`` and ``fig4.png``.

References:
  Marquez-Neila, Salzmann and Fua (2017), Sec. 6.2, Eq. 5, 16, 17, Fig. 3, 4.
"""


from hypersphere.config import METHODS as METHODS
from hypersphere.config import HypersphereConfig as HypersphereConfig
from hypersphere.illustration import Illustration2D as Illustration2D
from hypersphere.illustration import illustration_2d as illustration_2d
from hypersphere.problem import Centres as Centres
from hypersphere.problem import HypersphereProblem as HypersphereProblem
from hypersphere.problem import make_problem as make_problem
from hypersphere.problem import sphere_constraints as sphere_constraints
from hypersphere.report import plot_fig3 as plot_fig3
from hypersphere.report import plot_fig4 as plot_fig4
from hypersphere.run import run as run
from hypersphere.run import run_method as run_method

__all__ = [
    "METHODS",
    "Centres",
    "HypersphereConfig",
    "HypersphereProblem",
    "Illustration2D",
    "illustration_2d",
    "make_problem",
    "plot_fig3",
    "plot_fig4",
    "run",
    "run_method",
    "sphere_constraints",
]
