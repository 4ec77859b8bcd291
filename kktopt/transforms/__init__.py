"""Hard-constraint optax transforms (paper Sec. 4) and the soft baseline (Eq. 3)."""

from kktopt.transforms._adam import ScaleByAdamKKTState as ScaleByAdamKKTState
from kktopt.transforms._adam import hard_adam as hard_adam
from kktopt.transforms._adam import scale_by_adam_kkt as scale_by_adam_kkt
from kktopt.transforms._common import KKTInfo as KKTInfo
from kktopt.transforms._gauss_newton import GaussNewtonKKTState as GaussNewtonKKTState
from kktopt.transforms._gauss_newton import gauss_newton_kkt as gauss_newton_kkt
from kktopt.transforms._project import ProjectKKTState as ProjectKKTState
from kktopt.transforms._project import project_kkt as project_kkt
from kktopt.transforms._soft import constraint_penalty as constraint_penalty
from kktopt.transforms._soft import soft_constrained_loss as soft_constrained_loss

__all__ = [
    "GaussNewtonKKTState",
    "KKTInfo",
    "ProjectKKTState",
    "ScaleByAdamKKTState",
    "constraint_penalty",
    "gauss_newton_kkt",
    "hard_adam",
    "project_kkt",
    "scale_by_adam_kkt",
    "soft_constrained_loss",
]
