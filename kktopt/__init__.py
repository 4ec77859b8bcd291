"""kktopt: hard output constraints for deep networks in JAX.

Optax transformations that, at every step, solve the KKT system of the
linearised constraints (Marquez-Neila, Salzmann and Fua 2017) matrix-free
with a JAX-native MINRES-QLP:

>>> import optax, kktopt
>>> def constraint_fn(params, batch):          # C(w) = 0 when satisfied
...     return params["w"] @ batch
>>> tx = optax.chain(optax.sgd(1e-2), kktopt.project_kkt(constraint_fn))
>>> tx = kktopt.hard_sgd(1e-2, constraint_fn)  # the same optimiser in one line

Argument order: building blocks (``project_kkt``, ``scale_by_adam_kkt``,
``gauss_newton_kkt``) take the problem's functions first; the one-line
optimisers (``hard_sgd``, ``hard_adam``) take ``learning_rate`` first, like
optax's.
"""

from kktopt import active as active
from kktopt import kkt as kkt
from kktopt import krylov as krylov
from kktopt import memory as memory
from kktopt import outputs as outputs
from kktopt.outputs import OutputProjection as OutputProjection
from kktopt.outputs import ProjectedModel as ProjectedModel
from kktopt.outputs import ProjectionInfo as ProjectionInfo
from kktopt.outputs import ProjectionStatus as ProjectionStatus
from kktopt.outputs import project_outputs as project_outputs
from kktopt.active import mine_active_constraints as mine_active_constraints
from kktopt.kkt import KKTSolver as KKTSolver
from kktopt.kkt import KKTStatus as KKTStatus
from kktopt.kkt import kkt_status_message as kkt_status_message
from kktopt.kkt import KrylovKKT as KrylovKKT
from kktopt.kkt import SchurKKT as SchurKKT
from kktopt.transforms import GaussNewtonKKTState as GaussNewtonKKTState
from kktopt.transforms import KKTInfo as KKTInfo
from kktopt.transforms import ProjectKKTState as ProjectKKTState
from kktopt.transforms import ScaleByAdamKKTState as ScaleByAdamKKTState
from kktopt.transforms import constraint_penalty as constraint_penalty
from kktopt.transforms import gauss_newton_kkt as gauss_newton_kkt
from kktopt.transforms import get_kkt_info as get_kkt_info
from kktopt.transforms import get_kkt_infos as get_kkt_infos
from kktopt.transforms import hard_adam as hard_adam
from kktopt.transforms import hard_sgd as hard_sgd
from kktopt.transforms import project_kkt as project_kkt
from kktopt.transforms import scale_by_adam_kkt as scale_by_adam_kkt
from kktopt.transforms import soft_constrained_loss as soft_constrained_loss
from kktopt.transforms import AugmentedLagrangianState as AugmentedLagrangianState
from kktopt.transforms import SQPMomentumState as SQPMomentumState
from kktopt.transforms import augmented_lagrangian as augmented_lagrangian
from kktopt.transforms import scale_by_sqp_adam as scale_by_sqp_adam
from kktopt.transforms import scale_by_sqp_momentum as scale_by_sqp_momentum
from kktopt.transforms import sqp_adam as sqp_adam
from kktopt.transforms import sqp_momentum as sqp_momentum

__version__ = "0.2.0.dev0"

__all__ = [
    "AugmentedLagrangianState",
    "GaussNewtonKKTState",
    "KKTInfo",
    "KKTSolver",
    "KKTStatus",
    "KrylovKKT",
    "OutputProjection",
    "ProjectKKTState",
    "ProjectedModel",
    "ProjectionInfo",
    "ProjectionStatus",
    "SQPMomentumState",
    "ScaleByAdamKKTState",
    "SchurKKT",
    "active",
    "augmented_lagrangian",
    "constraint_penalty",
    "gauss_newton_kkt",
    "get_kkt_info",
    "get_kkt_infos",
    "hard_adam",
    "hard_sgd",
    "kkt",
    "kkt_status_message",
    "krylov",
    "memory",
    "mine_active_constraints",
    "outputs",
    "project_kkt",
    "project_outputs",
    "scale_by_adam_kkt",
    "scale_by_sqp_adam",
    "scale_by_sqp_momentum",
    "soft_constrained_loss",
    "sqp_adam",
    "sqp_momentum",
]
