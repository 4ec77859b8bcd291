"""Load the pose data sets as numpy arrays, building them with TFDS if needed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

_READ_BATCH = 1024  # records decoded at a time


def _tfds_modules():
    try:
        import tensorflow_datasets as tfds

        from pose import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Loading pose data needs tensorflow-datasets, pillow, importlib_resources and "
            "array_record (not TensorFlow): pip install 'kktopt[examples]'.") from err
    return tfds, datasets


def make_builder(
    name_or_builder: Any = "synthetic_pose",
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 64,
    train_size: int | None = None,
    pool_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    config: Any = None,
):
    """The TFDS builder that `load_pose_data` reads (array_record format).

    Args:
      name_or_builder: ``"synthetic_pose"``, ``"human36m"`` or a builder.
      data_dir: where TFDS stores the prepared data (default
        ``~/tensorflow_datasets``).
      image_size: image side; picks the config when `config` is None.
      train_size: synthetic ``train`` size (default of `make_config`).
      pool_size: synthetic ``pool`` size.
      validation_size: synthetic ``validation`` size.
      test_size: synthetic ``test`` size.
      seed: synthetic generator seed.
      config: a config name or `BuilderConfig` overriding the above.

    Returns:
      A `tfds.core.DatasetBuilder`.
    """
    tfds, datasets = _tfds_modules()
    if isinstance(name_or_builder, tfds.core.DatasetBuilder):
        return name_or_builder
    data_dir = None if data_dir is None else os.fspath(os.path.expanduser(data_dir))
    sizes = {"train_size": train_size, "pool_size": pool_size,
             "validation_size": validation_size, "test_size": test_size}
    if name_or_builder == "synthetic_pose":
        if config is None:
            config = datasets.make_config(
                image_size, seed=seed, **{k: v for k, v in sizes.items() if v is not None})
        cls = datasets.SyntheticPose
    elif name_or_builder == "human36m":
        if any(v is not None for v in sizes.values()):
            raise ValueError("Split sizes apply to 'synthetic_pose' only; Human3.6M splits are "
                             "set by a Human36mConfig (train_fraction, validation_fraction).")
        if config is None:
            config = f"walking_{image_size}"
            if config not in {c.name for c in datasets.Human36m.BUILDER_CONFIGS}:
                config = datasets.Human36mConfig(name=f"walking_{image_size}",
                                                 image_size=image_size)
        cls = datasets.Human36m
    else:
        raise ValueError(f"Unknown pose data set {name_or_builder!r}; use 'synthetic_pose', "
                         "'human36m' or pass a tfds DatasetBuilder.")
    return cls(config=config, data_dir=data_dir, file_format="array_record")


def read_split(source: Sequence[dict[str, Any]], *, image_dtype: Any = np.uint8
               ) -> dict[str, np.ndarray]:
    """Stacks the records of a TFDS data source, sorted by their ``index``.

    Args:
      source: ``builder.as_data_source()[split]``.
      image_dtype: ``np.uint8`` (0..255, compact) or a float dtype (scaled to
        [0, 1]).

    Returns:
      Dict of arrays with leading dimension ``len(source)``.
    """
    n = len(source)
    features = source.dataset_info.features
    out: dict[str, np.ndarray] = {}
    for start in range(0, n, _READ_BATCH):
        records = source.__getitems__(range(start, min(start + _READ_BATCH, n)))
        for key in records[0]:
            values = np.stack([np.asarray(r[key], features[key].np_dtype) for r in records])
            if key not in out:
                out[key] = np.empty((n, *values.shape[1:]), values.dtype)
            out[key][start:start + len(records)] = values
    if n == 0:
        return out
    order = np.argsort(out["index"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    if "image" in out and np.dtype(image_dtype) != np.uint8:
        out["image"] = out["image"].astype(image_dtype) / np.asarray(255, image_dtype)
    return out


def load_pose_data(
    name_or_builder: Any = "synthetic_pose",
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 64,
    train_size: int | None = None,
    pool_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    config: Any = None,
    splits: Sequence[str] | None = None,
    manual_dir: str | os.PathLike | None = None,
    image_dtype: Any = np.uint8,
) -> dict[str, dict[str, np.ndarray]]:
    """Loads a pose data set as numpy arrays, preparing it first if needed.

    The data set is built once into `data_dir` (array_record files, no
    TensorFlow) and later calls only read it. Records are returned in the
    order of their ``index`` feature.

    Args:
      name_or_builder: ``"synthetic_pose"`` (default), ``"human36m"`` (needs
        `manual_dir`, see `pose.datasets.human36m`) or a TFDS builder
        made with ``file_format="array_record"`` (see `make_builder`).
      data_dir: where prepared data live (default ``~/tensorflow_datasets``).
      image_size: image side (64 or 128 for the predefined configs).
      train_size: synthetic labeled set D size.
      pool_size: synthetic unlabeled constraint set C size.
      validation_size: synthetic validation size.
      test_size: synthetic test size.
      seed: synthetic generator seed.
      config: a builder config (name or object) instead of the sizes.
      splits: which splits to load (default: all that exist among
        ``train``, ``pool``, ``validation``, ``test``).
      manual_dir: folder with the Human3.6M crops and poses.
      image_dtype: ``np.uint8`` (default, compact; `PoseCNN` accepts it) or a
        float dtype for images in [0, 1].

    Returns:
      ``{split: {"image": (N, H, W, 3), "joints3d": (N, 17, 3) float32 mm,
      "subject", "camera", "action", "frame": (N,) int32, "index": (N,) int64}}``.

    Example:
      >>> from pose.data import load_pose_data
      >>> data = load_pose_data(data_dir="/tmp/tfds", train_size=256, pool_size=256,
      ...                       validation_size=0, test_size=128)  # doctest: +SKIP
      >>> data["train"]["image"].shape  # doctest: +SKIP
      (256, 64, 64, 3)
    """
    tfds, datasets = _tfds_modules()
    builder = make_builder(name_or_builder, data_dir=data_dir, image_size=image_size,
                           train_size=train_size, pool_size=pool_size,
                           validation_size=validation_size, test_size=test_size, seed=seed,
                           config=config)
    if manual_dir is not None:
        manual_dir = os.fspath(os.path.expanduser(manual_dir))
    if isinstance(builder, datasets.Human36m) and not builder.is_prepared():
        folder = manual_dir or os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
        if not os.path.isdir(folder):
            raise ValueError(f"Human3.6M manual_dir {folder!r} is not a folder; pass manual_dir="
                             f"...\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    download_config = tfds.download.DownloadConfig(try_download_gcs=False, manual_dir=manual_dir)
    builder.download_and_prepare(download_config=download_config)
    available = list(builder.info.splits.keys())
    if splits is None:
        splits = [s for s in datasets.SPLITS if s in available]
    unknown = [s for s in splits if s not in available]
    if unknown:
        raise ValueError(f"Splits {unknown} are not in {builder.info.full_name} "
                         f"(available: {available}).")
    sources = builder.as_data_source()
    return {split: read_split(sources[split], image_dtype=image_dtype) for split in splits}
