"""TensorFlow Datasets builders of the pose experiment (no TensorFlow needed).

Importing this package registers the ``synthetic_pose`` and ``human36m``
builders with TFDS. It needs tensorflow-datasets, pillow, importlib_resources
and array_record (``pip install 'kktopt[examples]'``). Build with
``file_format="array_record"`` and read with ``builder.as_data_source()``, or
use `pose.data.load_pose_data`, which does both.
"""

from pose.datasets._features import SPLITS as SPLITS
from pose.datasets._features import pose_features as pose_features
from pose.datasets.human36m import Human36m as Human36m
from pose.datasets.human36m import Human36mConfig as Human36mConfig
from pose.datasets.synthetic_pose import SyntheticPose as SyntheticPose
from pose.datasets.synthetic_pose import SyntheticPoseConfig as SyntheticPoseConfig
from pose.datasets.synthetic_pose import make_config as make_config

__all__ = [
    "SPLITS",
    "Human36m",
    "Human36mConfig",
    "SyntheticPose",
    "SyntheticPoseConfig",
    "make_config",
    "pose_features",
]
