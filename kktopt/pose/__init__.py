"""The 3D human pose experiment (paper Sec. 5): skeleton, constraints, data, model, metrics.

* `kktopt.pose.skeleton`: the 17 Human3.6M joints and Table 2's constraints.
* `kktopt.pose.constraints`: `bone_symmetry`, the constraint function of Eq. 15.
* `kktopt.pose.synthetic`: a deterministic synthetic Human3.6M-like generator.
* `kktopt.pose.datasets`: TFDS builders ``synthetic_pose`` and ``human36m``
  (optional dependencies, ``pip install kktopt[data]``; not imported here).
* `kktopt.pose.data`: `load_pose_data`, numpy arrays from those builders.
* `kktopt.pose.model`: the Equinox CNN of Eq. 13 and its presets.
* `kktopt.pose.metrics`: MPJPE, median constraint violation, fraction met.
"""

from kktopt.pose import constraints as constraints
from kktopt.pose import data as data
from kktopt.pose import metrics as metrics
from kktopt.pose import model as model
from kktopt.pose import skeleton as skeleton
from kktopt.pose import synthetic as synthetic
from kktopt.pose.constraints import bone_symmetry as bone_symmetry
from kktopt.pose.data import load_pose_data as load_pose_data
from kktopt.pose.metrics import fraction_met as fraction_met
from kktopt.pose.metrics import median_abs_constraint as median_abs_constraint
from kktopt.pose.metrics import mpjpe as mpjpe
from kktopt.pose.model import PRESETS as PRESETS
from kktopt.pose.model import PoseCNN as PoseCNN
from kktopt.pose.model import make_model as make_model
from kktopt.pose.skeleton import JOINT_NAMES as JOINT_NAMES
from kktopt.pose.skeleton import SYMMETRY_CONSTRAINTS as SYMMETRY_CONSTRAINTS

__all__ = [
    "JOINT_NAMES",
    "PRESETS",
    "SYMMETRY_CONSTRAINTS",
    "PoseCNN",
    "bone_symmetry",
    "constraints",
    "data",
    "fraction_met",
    "load_pose_data",
    "make_model",
    "median_abs_constraint",
    "metrics",
    "model",
    "mpjpe",
    "skeleton",
    "synthetic",
]
