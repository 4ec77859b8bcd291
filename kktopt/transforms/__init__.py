"""Hard-constraint optax transforms (paper Sec. 4), their aliases and the soft baseline (Eq. 3)."""

from kktopt.transforms._adam import ScaleByAdamKKTState as ScaleByAdamKKTState
from kktopt.transforms._adam import scale_by_adam_kkt as scale_by_adam_kkt
from kktopt.transforms._alias import hard_adam as hard_adam
from kktopt.transforms._alias import hard_sgd as hard_sgd
from kktopt.transforms._gauss_newton import GaussNewtonKKTState as GaussNewtonKKTState
from kktopt.transforms._gauss_newton import gauss_newton_kkt as gauss_newton_kkt
from kktopt.transforms._info import KKTInfo as KKTInfo
from kktopt.transforms._info import get_kkt_info as get_kkt_info
from kktopt.transforms._info import get_kkt_infos as get_kkt_infos
from kktopt.transforms._project import ProjectKKTState as ProjectKKTState
from kktopt.transforms._project import project_kkt as project_kkt
from kktopt.transforms._primal_dual import AugmentedLagrangianState as AugmentedLagrangianState
from kktopt.transforms._primal_dual import augmented_lagrangian as augmented_lagrangian
from kktopt.transforms._soft import constraint_penalty as constraint_penalty
from kktopt.transforms._soft import soft_constrained_loss as soft_constrained_loss
from kktopt.transforms._sqp import SQPMomentumState as SQPMomentumState
from kktopt.transforms._sqp import scale_by_sqp_adam as scale_by_sqp_adam
from kktopt.transforms._sqp import scale_by_sqp_momentum as scale_by_sqp_momentum
from kktopt.transforms._sqp import sqp_adam as sqp_adam
from kktopt.transforms._sqp import sqp_momentum as sqp_momentum

__all__ = [
    "AugmentedLagrangianState",
    "GaussNewtonKKTState",
    "KKTInfo",
    "ProjectKKTState",
    "SQPMomentumState",
    "ScaleByAdamKKTState",
    "augmented_lagrangian",
    "constraint_penalty",
    "gauss_newton_kkt",
    "get_kkt_info",
    "get_kkt_infos",
    "hard_adam",
    "hard_sgd",
    "project_kkt",
    "scale_by_adam_kkt",
    "scale_by_sqp_adam",
    "scale_by_sqp_momentum",
    "soft_constrained_loss",
    "sqp_adam",
    "sqp_momentum",
]
