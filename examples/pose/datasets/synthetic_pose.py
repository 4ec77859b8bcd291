"""TFDS builder of the synthetic Human3.6M-like pose data set.

The examples come from `pose.synthetic.generate`; the builder only
stores them (images as raw uint8 tensors: lossless, so a loaded set equals
the generator's arrays, and read back without decoding). Splits:

* ``train``: labeled set D, from the training subjects (stream 0);
* ``pool``: unlabeled constraint set C, training subjects, other examples
  (stream 1); its joints are stored too, for evaluation on the pool;
* ``validation``: training subjects, other examples (stream 2), for model
  selection;
* ``test``: held-out subjects (stream 3), as Human3.6M's test subjects.

Sizes, image size, subjects and seed are fields of `SyntheticPoseConfig`;
`make_config` names a config after them, so different sizes are stored side
by side. Build and read without TensorFlow:

    builder = SyntheticPose(config="64px", data_dir=..., file_format="array_record")
    builder.download_and_prepare()
    data = builder.as_data_source()  # records in shuffled order: sort by "index"
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow_datasets as tfds

from pose import synthetic
from pose.datasets._features import pose_features

_STREAMS = {"train": 0, "pool": 1, "validation": 2, "test": 3}
_BLOCK = 512  # examples generated at a time while writing


@dataclasses.dataclass(eq=False)
class SyntheticPoseConfig(tfds.core.BuilderConfig):
    """Sizes and generator settings of a synthetic pose data set.

    Attributes:
      image_size: side of the square images (64 for CPU, 128 as in the paper).
      train_size: examples in ``train`` (labeled set D).
      pool_size: examples in ``pool`` (unlabeled constraint set C).
      validation_size: examples in ``validation``.
      test_size: examples in ``test``.
      seed: generator seed (subjects, cameras, examples).
      train_subjects: subjects of train, pool and validation.
      test_subjects: subjects of test (disjoint from `train_subjects`).
      num_cameras: cameras around the subject.
      walking_fraction: share of walking examples; the rest are random poses.
    """

    image_size: int = 64
    train_size: int = 4096
    pool_size: int = 16384
    validation_size: int = 1024
    test_size: int = 4096
    seed: int = 0
    train_subjects: tuple[int, ...] = (0, 1, 2, 3, 4)
    test_subjects: tuple[int, ...] = (5, 6)
    num_cameras: int = 4
    walking_fraction: float = 0.75

    def sizes(self) -> dict[str, int]:
        """Number of examples of each split."""
        return {"train": self.train_size, "pool": self.pool_size,
                "validation": self.validation_size, "test": self.test_size}


def make_config(image_size: int = 64, *, train_size: int = 4096, pool_size: int = 16384,
                validation_size: int = 1024, test_size: int = 4096, seed: int = 0,
                train_subjects: tuple[int, ...] = (0, 1, 2, 3, 4),
                test_subjects: tuple[int, ...] = (5, 6), num_cameras: int = 4,
                walking_fraction: float = 0.75) -> SyntheticPoseConfig:
    """A `SyntheticPoseConfig` whose name encodes its settings.

    The name reads ``{image_size}px_{train}_{pool}_{validation}_{test}_seed{seed}``,
    followed by a short hash when subjects, cameras or walking fraction differ
    from the defaults, so every setting is built in its own directory.

    Args:
      image_size: side of the square images.
      train_size: examples in ``train``.
      pool_size: examples in ``pool``.
      validation_size: examples in ``validation``.
      test_size: examples in ``test``.
      seed: generator seed.
      train_subjects: subjects of train, pool and validation.
      test_subjects: subjects of test.
      num_cameras: number of cameras.
      walking_fraction: share of walking examples.

    Returns:
      The config.
    """
    sizes = (train_size, pool_size, validation_size, test_size)
    if any(int(s) < 0 for s in sizes):
        raise ValueError(f"split sizes must be >= 0, got {sizes}.")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
    train_subjects, test_subjects = tuple(map(int, train_subjects)), tuple(map(int, test_subjects))
    if set(train_subjects) & set(test_subjects):
        raise ValueError(f"train_subjects {train_subjects} and test_subjects {test_subjects} "
                         "overlap; use disjoint subject ids so test measures generalisation.")
    name = f"{image_size}px_{train_size}_{pool_size}_{validation_size}_{test_size}_seed{seed}"
    extra = (train_subjects, test_subjects, num_cameras, float(walking_fraction))
    if extra != ((0, 1, 2, 3, 4), (5, 6), 4, 0.75):
        name += "_" + hashlib.sha1(repr(extra).encode()).hexdigest()[:8]
    return SyntheticPoseConfig(
        name=name, description=f"Synthetic pose data, {image_size}x{image_size} images.",
        image_size=image_size, train_size=train_size, pool_size=pool_size,
        validation_size=validation_size, test_size=test_size, seed=seed,
        train_subjects=train_subjects, test_subjects=test_subjects, num_cameras=num_cameras,
        walking_fraction=walking_fraction)


class SyntheticPose(tfds.core.GeneratorBasedBuilder):
    """Synthetic Human3.6M-like images with 17 root-relative 3D joints (mm)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIGS = [
        SyntheticPoseConfig(name="64px", description="64x64 images, CPU-sized splits.",
                            image_size=64),
        SyntheticPoseConfig(name="128px", description="128x128 images as in the paper.",
                            image_size=128, train_size=16384, pool_size=65536,
                            validation_size=4096, test_size=16384),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        config: SyntheticPoseConfig = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Synthetic stand-in for Human3.6M: rendered people (left limbs warm, right "
                "limbs cool colours) walking or posing, seen by several cameras, with 17 "
                "root-relative 3D joints in camera coordinates (mm)."),
            features=pose_features(config.image_size, "raw"),
            supervised_keys=("image", "joints3d"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split)
                for split, size in self.builder_config.sizes().items() if size > 0}

    def _generate_examples(self, split: str):
        config: SyntheticPoseConfig = self.builder_config
        size = config.sizes()[split]
        subjects = config.test_subjects if split == "test" else config.train_subjects
        for start in range(0, size, _BLOCK):
            data = synthetic.generate(
                min(_BLOCK, size - start), image_size=config.image_size, seed=config.seed,
                subjects=subjects, num_cameras=config.num_cameras,
                walking_fraction=config.walking_fraction, stream=_STREAMS[split], start=start)
            for i in range(len(data["index"])):
                yield int(data["index"][i]), {
                    "image": data["image"][i],
                    "joints3d": data["joints3d"][i],
                    "subject": data["subject"][i],
                    "camera": data["camera"][i],
                    "action": data["action"][i],
                    "frame": data["frame"][i],
                    "index": data["index"][i],
                }


def generate_split(config: SyntheticPoseConfig, split: str) -> dict[str, np.ndarray]:
    """The arrays of one split of `config`, straight from the generator (no TFDS).

    Args:
      config: the data set settings.
      split: ``"train"``, ``"pool"``, ``"validation"`` or ``"test"``.

    Returns:
      `pose.synthetic.generate`'s dict for that split, in index order.
    """
    if split not in _STREAMS:
        raise ValueError(f"Unknown split {split!r}; choose one of {sorted(_STREAMS)}.")
    return synthetic.generate(
        config.sizes()[split], image_size=config.image_size, seed=config.seed,
        subjects=config.test_subjects if split == "test" else config.train_subjects,
        num_cameras=config.num_cameras, walking_fraction=config.walking_fraction,
        stream=_STREAMS[split])
