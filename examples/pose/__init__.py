"""The 3D human pose experiment of the paper (Sec. 5, Fig. 2), end to end.

A CNN regresses the 17 joints of a person from an image (Eq. 13, loss Eq. 14)
on a small labeled set D, and the six left/right bone-length symmetries of
Eq. 15 are imposed on its predictions over a larger unlabeled pool C. Only
public kktopt names are used; the shared plumbing (results JSON,
checkpoints, compiled steps, progress, solver names) is `harness`.

One job per module. The problem:

* `pose.skeleton`: the 17 Human3.6M joints and Table 2's constraints.
* `pose.constraints`: `bone_symmetry`, the constraint function of Eq. 15.
* `pose.synthetic`: a deterministic synthetic Human3.6M-like generator.
* `pose.datasets`: TFDS builders ``synthetic_pose`` and ``human36m``
  (``file_format="array_record"``, read with ``as_data_source()``, no
  TensorFlow; ``pip install 'kktopt[examples]'``; not imported here).
* `pose.data`: `load_pose_data`, numpy arrays from those builders.
* `pose.model`: the Equinox CNN of Eq. 13, its presets, and the
  patch-matmul convolution derivatives that keep Krylov loops fast on
  XLA:CPU.
* `pose.metrics`: MPJPE, median constraint violation, fraction met.

The experiment (the same shape as ``examples/hypersphere``):

* `pose.config`: presets (`PRESETS`, `ExperimentPreset`, `MethodSpec`).
* `pose.problem`: loss, residuals and constraints of the parameters.
* `pose.methods`: the optimisers (soft, hard, Gauss-Newton) and their steps.
* `pose.train`: minibatches, evaluation and the training loop.
* `pose.run`: the resumable run (`run`).
* `pose.report`: tables and figures.
* `pose.cli`: the command line, ``python examples/run_pose.py``.
"""

from pose.config import CONSTRAINED_METHODS as CONSTRAINED_METHODS
from pose.config import HARD_METHODS as HARD_METHODS
from pose.config import METHOD_LABELS as METHOD_LABELS
from pose.config import PRESETS as PRESETS
from pose.config import ExperimentPreset as ExperimentPreset
from pose.config import MethodSpec as MethodSpec
from pose.config import get_preset as get_preset
from pose.config import with_overrides as with_overrides
from pose.constraints import bone_symmetry as bone_symmetry
from pose.data import load_pose_data as load_pose_data
from pose.methods import make_optimizer as make_optimizer
from pose.methods import make_step as make_step
from pose.metrics import fraction_met as fraction_met
from pose.metrics import median_abs_constraint as median_abs_constraint
from pose.metrics import mpjpe as mpjpe
from pose.model import PoseCNN as PoseCNN
from pose.model import make_model as make_model
from pose.problem import PoseProblem as PoseProblem
from pose.problem import make_problem as make_problem
from pose.report import format_seed_table as format_seed_table
from pose.report import format_table as format_table
from pose.report import plot_fig2a as plot_fig2a
from pose.report import plot_fig2b as plot_fig2b
from pose.report import plot_pareto as plot_pareto
from pose.report import table_rows as table_rows
from pose.run import SCHEMA as SCHEMA
from pose.run import load_data as load_data
from pose.run import run as run
from pose.skeleton import JOINT_NAMES as JOINT_NAMES
from pose.skeleton import SYMMETRY_CONSTRAINTS as SYMMETRY_CONSTRAINTS

__all__ = [
    "CONSTRAINED_METHODS",
    "HARD_METHODS",
    "JOINT_NAMES",
    "METHOD_LABELS",
    "PRESETS",
    "SCHEMA",
    "SYMMETRY_CONSTRAINTS",
    "ExperimentPreset",
    "MethodSpec",
    "PoseCNN",
    "PoseProblem",
    "bone_symmetry",
    "format_seed_table",
    "format_table",
    "fraction_met",
    "get_preset",
    "load_data",
    "load_pose_data",
    "make_model",
    "make_optimizer",
    "make_problem",
    "make_step",
    "median_abs_constraint",
    "mpjpe",
    "plot_fig2a",
    "plot_fig2b",
    "plot_pareto",
    "run",
    "table_rows",
    "with_overrides",
]
