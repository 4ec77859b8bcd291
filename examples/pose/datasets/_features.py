"""Feature schema shared by the pose data set builders."""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds

from pose.skeleton import NUM_JOINTS

SPLITS: tuple[str, ...] = ("train", "pool", "validation", "test")
"""Split names: labeled set D, unlabeled constraint set C, validation, test."""


def pose_features(image_size: int, encoding_format: str) -> tfds.features.FeaturesDict:
    """The features of one example.

    Args:
      image_size: side of the square RGB image.
      encoding_format: how images are stored: ``"jpeg"`` or ``"png"``
        (``tfds.features.Image``, compact, decoded with PIL when read), or
        ``"raw"`` (a uint8 ``tfds.features.Tensor``, lossless and read
        without decoding).

    Returns:
      A FeaturesDict with ``image`` (H, W, 3) uint8 RGB, ``joints3d`` (17, 3)
      float32 mm (root-relative camera coordinates), int32 ``subject``,
      ``camera``, ``action`` (index into `pose.skeleton.ACTIONS`),
      ``frame`` and int64 ``index`` (the example's position in its split).
    """
    return tfds.features.FeaturesDict({
        "image": (tfds.features.Tensor(shape=(image_size, image_size, 3), dtype=np.uint8)
                  if encoding_format == "raw" else
                  tfds.features.Image(shape=(image_size, image_size, 3),
                                      encoding_format=encoding_format)),
        "joints3d": tfds.features.Tensor(shape=(NUM_JOINTS, 3), dtype=np.float32),
        "subject": tfds.features.Scalar(dtype=np.int32),
        "camera": tfds.features.Scalar(dtype=np.int32),
        "action": tfds.features.Scalar(dtype=np.int32),
        "frame": tfds.features.Scalar(dtype=np.int32),
        "index": tfds.features.Scalar(dtype=np.int64),
    })


def encode_image(image: np.ndarray, encoding_format: str) -> bytes:
    """Encodes an (H, W, 3) uint8 image as PNG (lossless) or JPEG (quality 95) bytes."""
    from PIL import Image  # pillow is required by tensorflow-datasets without TensorFlow

    buffer = io.BytesIO()
    if encoding_format == "png":
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
