"""The synthetic generator: exact symmetry, determinism, shapes and rendering."""

from __future__ import annotations

import numpy as np
import pytest

from pose import skeleton as sk
from pose import synthetic


def _bone_differences(joints: np.ndarray) -> np.ndarray:
    """|C_j| of Eq. 15 in float64 numpy, independent of the jax implementation."""
    quads = np.asarray(sk.SYMMETRY_CONSTRAINTS)
    y = joints.astype(np.float64)
    left = np.linalg.norm(y[:, quads[:, 0]] - y[:, quads[:, 1]], axis=-1)
    right = np.linalg.norm(y[:, quads[:, 2]] - y[:, quads[:, 3]], axis=-1)
    return np.abs(left - right)


@pytest.fixture(scope="module")
def small_set():
    return synthetic.generate(96, image_size=32, seed=7)


def test_ground_truth_satisfies_symmetry_constraints_float64():
    data = synthetic.generate(2000, seed=11, num_subjects=7, walking_fraction=0.5,
                              render=False, joints_dtype=np.float64)
    assert data["joints3d"].dtype == np.float64
    assert np.max(_bone_differences(data["joints3d"])) < 1e-6  # mm
    # ... while the bones themselves vary: not a degenerate pose.
    thigh = np.linalg.norm(data["joints3d"][:, sk.L_HIP] - data["joints3d"][:, sk.L_KNEE], axis=-1)
    assert 350 < thigh.min() and thigh.max() < 560


def test_float32_output_is_symmetric_to_rounding(small_set):
    assert np.max(_bone_differences(small_set["joints3d"])) < 1e-3


def test_subjects_have_different_adult_proportions():
    subjects = synthetic.make_subjects(range(20), seed=0)
    for name, nominal in synthetic.NOMINAL_BONE_LENGTHS.items():
        ratio = subjects.lengths[name] / nominal
        assert 0.8 < ratio.min() and ratio.max() < 1.2, name
        assert ratio.std() > 0.03, name  # varied between subjects


def test_shapes_dtypes_and_root_relative(small_set):
    d = small_set
    assert d["image"].shape == (96, 32, 32, 3) and d["image"].dtype == np.uint8
    assert d["joints3d"].shape == (96, 17, 3) and d["joints3d"].dtype == np.float32
    assert d["joints2d"].shape == (96, 17, 2) and d["joints2d"].dtype == np.float32
    for key in ("subject", "camera", "action", "frame"):
        assert d[key].shape == (96,) and d[key].dtype == np.int32, key
    np.testing.assert_array_equal(d["index"], np.arange(96))
    np.testing.assert_array_equal(d["joints3d"][:, sk.PELVIS], 0.0)
    assert set(np.unique(d["action"])) <= {synthetic.WALKING, synthetic.POSING}
    assert set(np.unique(d["subject"])) <= set(range(5))
    assert set(np.unique(d["camera"])) <= set(range(4))
    # Images vary (noise, clutter, bodies), and the root projects near the centre.
    assert d["image"].std() > 10
    assert np.all(np.abs(d["joints2d"][:, sk.PELVIS] - 16) < 2)


def test_camera_coordinates_are_y_down():
    d = synthetic.generate(200, seed=1, walking_fraction=1.0, render=False)
    # Walking upright: head above (smaller y) and feet below the pelvis.
    assert np.all(d["joints3d"][:, sk.HEAD, 1] < -300)
    assert np.all(d["joints3d"][:, sk.L_FOOT, 1] > 300)


def test_deterministic_and_independent_of_request_size():
    a = synthetic.generate(300, image_size=32, seed=5)
    b = synthetic.generate(300, image_size=32, seed=5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    head = synthetic.generate(40, image_size=32, seed=5)
    middle = synthetic.generate(60, image_size=32, seed=5, start=230)
    for key in a:
        if key == "index":
            continue
        np.testing.assert_array_equal(head[key], a[key][:40], err_msg=key)
        np.testing.assert_array_equal(middle[key], a[key][230:290], err_msg=key)
    np.testing.assert_array_equal(middle["index"], np.arange(230, 290))
    other = synthetic.generate(40, image_size=32, seed=6)
    assert not np.array_equal(other["joints3d"], head["joints3d"])
    stream = synthetic.generate(40, image_size=32, seed=5, stream=1)
    assert not np.array_equal(stream["joints3d"], head["joints3d"])


def test_subject_selection():
    d = synthetic.generate(100, seed=0, subjects=(5, 6), render=False)
    assert set(np.unique(d["subject"])) == {5, 6}


def test_bone_lengths_are_constant_per_subject():
    d = synthetic.generate(600, seed=2, render=False, joints_dtype=np.float64)
    lengths = np.linalg.norm(d["joints3d"][:, 1:] - d["joints3d"][:, list(sk.PARENTS[1:])], axis=-1)
    per_subject = []
    for s in np.unique(d["subject"]):
        rows = lengths[d["subject"] == s]
        np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape), atol=1e-8)
        per_subject.append(rows[0])
    assert np.ptp(np.array(per_subject), axis=0).min() > 1.0  # mm: subjects differ


def test_left_and_right_limbs_have_distinct_colours():
    assert np.all(synthetic.LEFT_COLOURS[:, 0] > synthetic.LEFT_COLOURS[:, 2] + 100)  # warm
    assert np.all(synthetic.RIGHT_COLOURS[:, 2] > synthetic.RIGHT_COLOURS[:, 0] + 100)  # cool
    d = synthetic.generate(256, image_size=64, seed=3)
    image = d["image"].astype(np.float64)
    uv = d["joints2d"]
    rows = np.arange(len(image))

    def warm_fraction(a: int, b: int) -> float:
        mid = np.clip((0.5 * (uv[:, a] + uv[:, b])).astype(int), 0, 63)
        colour = image[rows, mid[:, 1], mid[:, 0]]
        return float(np.mean(colour[:, 0] > colour[:, 2]))

    # Sampled at the middle of each shin (sometimes hidden by another limb).
    assert warm_fraction(sk.L_KNEE, sk.L_FOOT) > 0.8
    assert warm_fraction(sk.R_KNEE, sk.R_FOOT) < 0.2
    assert warm_fraction(sk.L_ELBOW, sk.L_WRIST) > 0.7
    assert warm_fraction(sk.R_ELBOW, sk.R_WRIST) < 0.3


def test_nearer_limb_is_drawn_over_farther_one():
    d = synthetic.generate(512, image_size=64, seed=4)
    uv, z, image = d["joints2d"], d["joints3d"][..., 2], d["image"].astype(np.float64)
    left = [(sk.L_HIP, sk.L_KNEE), (sk.L_KNEE, sk.L_FOOT), (sk.L_SHOULDER, sk.L_ELBOW),
            (sk.L_ELBOW, sk.L_WRIST)]
    right = [(sk.FLIP_PERMUTATION[a], sk.FLIP_PERMUTATION[b]) for a, b in left]
    steps = (0.3, 0.5, 0.7, 1.0)
    agree = []
    for (a0, a1) in left:
        for (b0, b1) in right:
            for ta in steps:
                for tb in steps:
                    # A point of a left limb and one of a right limb on the same
                    # pixel, at least 12 cm apart in depth.
                    pa = uv[:, a0] + ta * (uv[:, a1] - uv[:, a0])
                    za = z[:, a0] + ta * (z[:, a1] - z[:, a0])
                    pb = uv[:, b0] + tb * (uv[:, b1] - uv[:, b0])
                    zb = z[:, b0] + tb * (z[:, b1] - z[:, b0])
                    rows = np.flatnonzero((np.linalg.norm(pa - pb, axis=-1) < 0.7)
                                          & (np.abs(za - zb) > 120))
                    pix = np.clip(pa[rows].astype(int), 0, 63)
                    colour = image[rows, pix[:, 1], pix[:, 0]]
                    agree.extend((colour[:, 0] > colour[:, 2]) == (za[rows] < zb[rows]))
    assert len(agree) >= 50
    assert np.mean(agree) > 0.9  # the nearer limb's colour wins


@pytest.mark.parametrize("kwargs, match", [
    ({"num_examples": -1}, "must be >= 0"),
    ({"num_examples": 2, "image_size": 8}, "at least 16"),
    ({"num_examples": 2, "walking_fraction": 1.5}, r"\[0, 1\]"),
    ({"num_examples": 2, "subjects": ()}, "subjects is empty"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic.generate(**kwargs)


def test_empty_request():
    d = synthetic.generate(0, image_size=32)
    assert d["image"].shape == (0, 32, 32, 3) and d["joints3d"].shape == (0, 17, 3)
