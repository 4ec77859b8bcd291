"""TFDS builders (array_record, no TensorFlow) and the numpy loader."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")
from PIL import Image  # noqa: E402

from pose import skeleton as sk  # noqa: E402
from pose.data import load_pose_data, make_builder  # noqa: E402
from pose.datasets import Human36mConfig, make_config  # noqa: E402
from pose.datasets.human36m import assign_split  # noqa: E402
from pose.datasets.synthetic_pose import generate_split  # noqa: E402

SIZES = {"train_size": 300, "pool_size": 200, "validation_size": 50, "test_size": 120}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def test_synthetic_builder_round_trip(synthetic_dir):
    data = load_pose_data("synthetic_pose", data_dir=synthetic_dir, image_size=32, seed=3,
                          **SIZES)
    assert sorted(data) == ["pool", "test", "train", "validation"]
    config = make_config(32, seed=3, **SIZES)
    for split, arrays in data.items():
        reference = generate_split(config, split)
        assert arrays["image"].dtype == np.uint8 and arrays["joints3d"].dtype == np.float32
        assert len(arrays["index"]) == SIZES[f"{split}_size"]
        for key, value in arrays.items():
            assert value.dtype == reference[key].dtype, (split, key)
            np.testing.assert_array_equal(value, reference[key], err_msg=f"{split}/{key}")
    # Test subjects are held out; the splits of the training subjects differ.
    assert set(np.unique(data["test"]["subject"])) <= {5, 6}
    assert set(np.unique(data["train"]["subject"])) <= {0, 1, 2, 3, 4}
    assert not np.array_equal(data["train"]["joints3d"][:50], data["pool"]["joints3d"][:50])


def test_loader_reuses_prepared_data_and_scales_images(synthetic_dir):
    builder = make_builder("synthetic_pose", data_dir=synthetic_dir, image_size=32, seed=3,
                           **SIZES)
    assert builder.is_prepared()  # built by the previous test's call, or build it now
    data = load_pose_data(builder, splits=["test"], image_dtype=np.float32)
    assert list(data) == ["test"]
    image = data["test"]["image"]
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    reference = generate_split(make_config(32, seed=3, **SIZES), "test")
    np.testing.assert_allclose(image * 255.0, reference["image"], atol=1e-3)


def test_loader_rejects_unknown_names_and_splits(synthetic_dir):
    with pytest.raises(ValueError, match="Unknown pose data set"):
        load_pose_data("h36m", data_dir=synthetic_dir)
    with pytest.raises(ValueError, match="not in"):
        load_pose_data("synthetic_pose", data_dir=synthetic_dir, image_size=32, seed=3,
                       splits=["extra"], **SIZES)
    with pytest.raises(ValueError, match="'synthetic_pose' only"):
        load_pose_data("human36m", data_dir=synthetic_dir, train_size=10)


def _fake_manual_dir(root, rng):
    """Two subjects, two Walking takes seen by two cameras, 40x40 crops, both pose formats.

    Take "Walking" has frames 1-6 and a 32-joint .npy; take "Walking 1" has
    frames 11-16 and a .npz with frame numbers and extra rows without images.
    Returns the expected root-relative poses by (subject, camera, frame).
    """
    expected = {}
    for subject in (1, 9):
        for take, frames in (("Walking", np.arange(1, 7)), ("Walking 1", np.arange(11, 17))):
            for camera, camera_id in ((0, "54138969"), (3, "60457274")):
                folder = root / f"S{subject}" / f"{take}.{camera_id}"
                folder.mkdir(parents=True)
                for f in frames:
                    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{f:06d}.jpg", quality=95)
                poses32 = rng.normal(scale=300.0, size=(len(frames), 32, 3)) + 4000.0
                joints = poses32[:, list(sk.H36M_32_TO_17)]
                if take == "Walking":
                    np.save(str(folder) + ".npy", poses32)  # row i = frame i + 1
                else:
                    extra = rng.normal(scale=300.0, size=(3, 17, 3))
                    np.savez(str(folder) + ".npz", joints3d=np.concatenate([extra, joints]),
                             frames=np.concatenate([[100, 101, 102], frames]))
                for f, pose in zip(frames, joints):
                    expected[(subject, camera, int(f))] = pose - pose[0]
    return expected


def test_human36m_builder_on_fake_manual_dir(tmp_path):
    rng = np.random.default_rng(0)
    manual = tmp_path / "manual"
    expected = _fake_manual_dir(manual, rng)
    config = Human36mConfig(name="fake_64", image_size=64, train_subjects=(1,),
                            test_subjects=(9,), train_fraction=0.5, validation_fraction=0.0,
                            block_frames=2)
    data = load_pose_data("human36m", data_dir=tmp_path / "tfds", config=config,
                          manual_dir=manual)
    assert "test" in data and "validation" not in data
    total = sum(len(v["index"]) for v in data.values())
    assert total == len(expected) == 48  # every image once
    test = data["test"]
    assert np.all(test["subject"] == 9) and len(test["index"]) == 24
    np.testing.assert_array_equal(test["index"], np.arange(24))
    assert test["image"].shape == (24, 64, 64, 3) and test["image"].dtype == np.uint8
    for split, arrays in data.items():
        for i in range(len(arrays["index"])):
            subject, camera, frame = (int(arrays[k][i]) for k in ("subject", "camera", "frame"))
            np.testing.assert_allclose(arrays["joints3d"][i], expected[(subject, camera, frame)],
                                       rtol=1e-6, atol=1e-3)
            name = ("Walking" if frame < 10 else "Walking 1") + ".54138969"
            assert arrays["action"][i] == sk.ACTIONS.index("Walking")
            assert split == assign_split(config, subject, name, frame)
    # Blocks of frames keep all cameras of a moment in one split.
    train = data.get("train")
    if train is not None:
        for frame in np.unique(train["frame"]):
            assert np.sum((train["frame"] == frame) & (train["subject"] == 1)) == 2
    # The 40x40 crops were resized to 64x64.
    original = np.asarray(Image.open(manual / "S9" / "Walking.54138969" / "000001.jpg"))
    resized = np.asarray(Image.fromarray(original).resize((64, 64), Image.BILINEAR), np.float64)
    row = np.flatnonzero((test["camera"] == 0) & (test["frame"] == 1))[0]
    assert np.mean(np.abs(test["image"][row] - resized)) < 12


def test_human36m_reports_bad_layout(tmp_path):
    rng = np.random.default_rng(1)
    manual = tmp_path / "manual"
    _fake_manual_dir(manual, rng)
    os.remove(manual / "S1" / "Walking.54138969.npy")
    config = Human36mConfig(name="broken_64", image_size=64, train_subjects=(1,),
                            test_subjects=(9,))
    with pytest.raises(ValueError, match="No poses"):
        load_pose_data("human36m", data_dir=tmp_path / "tfds", config=config, manual_dir=manual)
    with pytest.raises(ValueError, match="not a folder"):
        load_pose_data("human36m", data_dir=tmp_path / "tfds2", config=config,
                       manual_dir=tmp_path / "missing")
