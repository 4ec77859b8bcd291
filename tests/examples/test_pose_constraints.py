"""Skeleton tables and the Eq. 15 constraint function against plain numpy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pose import skeleton as sk
from pose.constraints import bone_symmetry, safe_norm


def _reference(joints: np.ndarray) -> np.ndarray:
    """Eq. 15 with an explicit loop over samples and constraints, from the names of Table 2."""
    names = {
        "left shoulder": "left_shoulder", "left elbow": "left_elbow", "left hand": "left_wrist",
        "right shoulder": "right_shoulder", "right elbow": "right_elbow",
        "right hand": "right_wrist", "left hip": "left_hip", "left knee": "left_knee",
        "left heel": "left_foot", "right hip": "right_hip", "right knee": "right_knee",
        "right heel": "right_foot", "chest": "thorax", "pelvis": "pelvis",
    }
    table2 = [
        ("left shoulder", "left elbow", "right shoulder", "right elbow"),
        ("left elbow", "left hand", "right elbow", "right hand"),
        ("left hip", "left knee", "right hip", "right knee"),
        ("left knee", "left heel", "right knee", "right heel"),
        ("chest", "left shoulder", "chest", "right shoulder"),
        ("pelvis", "left hip", "pelvis", "right hip"),
    ]
    idx = [[sk.JOINT_NAMES.index(names[n]) for n in row] for row in table2]
    flat = joints.reshape(-1, 17, 3)
    out = np.zeros((len(flat), 6))
    for k, y in enumerate(flat):
        for j, (a, b, c, d) in enumerate(idx):
            out[k, j] = np.sqrt(np.sum((y[a] - y[b]) ** 2)) - np.sqrt(np.sum((y[c] - y[d]) ** 2))
    return out.reshape(*joints.shape[:-2], 6)


def test_skeleton_tables_are_consistent():
    assert len(sk.JOINT_NAMES) == len(sk.PARENTS) == sk.NUM_JOINTS == 17
    assert sk.PARENTS[0] == -1 and all(0 <= p < j for j, p in enumerate(sk.PARENTS) if j)
    assert len(sk.BONES) == 16
    # Human3.6M order: the names at the indices the brief fixes.
    expected = {0: "pelvis", 1: "right_hip", 3: "right_foot", 4: "left_hip", 8: "thorax",
                10: "head", 11: "left_shoulder", 13: "left_wrist", 14: "right_shoulder",
                16: "right_wrist"}
    assert all(sk.JOINT_NAMES[i] == n for i, n in expected.items())
    for left, right in zip(sk.LEFT_JOINTS, sk.RIGHT_JOINTS):
        assert sk.JOINT_NAMES[left].replace("left", "right") == sk.JOINT_NAMES[right]
        assert sk.FLIP_PERMUTATION[left] == right and sk.FLIP_PERMUTATION[right] == left
    for a, b, c, d in sk.SYMMETRY_CONSTRAINTS:
        assert (a, b) in sk.BONES and (c, d) in sk.BONES
        assert sk.FLIP_PERMUTATION[a] == c and sk.FLIP_PERMUTATION[b] == d


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bone_symmetry_matches_loop_reference(dtype):
    rng = np.random.default_rng(0)
    joints = rng.normal(scale=300.0, size=(5, 4, 17, 3))
    with jax.enable_x64(dtype == np.float64):
        got = bone_symmetry(joints.astype(dtype))
        assert got.shape == (5, 4, 6) and got.dtype == dtype
        tol = 1e-9 if dtype == np.float64 else 2e-3  # mm
        np.testing.assert_allclose(np.asarray(got), _reference(joints), atol=tol, rtol=0)


def test_bone_symmetry_jit_vmap_and_single_pose():
    joints = np.random.default_rng(1).normal(scale=200.0, size=(8, 17, 3)).astype(np.float32)
    ref = _reference(joints.astype(np.float64))
    np.testing.assert_allclose(jax.jit(bone_symmetry)(joints), ref, atol=2e-3)
    np.testing.assert_allclose(jax.vmap(bone_symmetry)(joints), ref, atol=2e-3)
    np.testing.assert_allclose(bone_symmetry(joints[3]), ref[3], atol=2e-3)


def test_symmetric_mirror_pose_satisfies_constraints():
    rng = np.random.default_rng(2)
    pose = rng.normal(scale=300.0, size=(17, 3))
    mirrored = pose[list(sk.FLIP_PERMUTATION)] * np.array([-1.0, 1.0, 1.0])
    # Left bones of `pose` equal right bones of `mirrored`, so the difference flips sign.
    np.testing.assert_allclose(bone_symmetry(mirrored), -bone_symmetry(pose), atol=2e-3)


@pytest.mark.parametrize("shape", [(17,), (16, 3), (4, 17, 2), (51,)])
def test_bone_symmetry_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(\.\.\., 17, 3\)"):
        bone_symmetry(np.zeros(shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_derivatives_are_finite_at_zero_length_bone(dtype):
    @jax.jit
    def derivatives(pose):
        grad = jax.grad(lambda y: jnp.sum(bone_symmetry(y) ** 2 + bone_symmetry(y)))(pose)
        value, lin = jax.linearize(bone_symmetry, pose)
        _, vjp = jax.vjp(bone_symmetry, pose)
        return grad, lin(jnp.ones_like(pose)), vjp(jnp.ones_like(value))[0], jax.jacobian(
            bone_symmetry)(pose)

    with jax.enable_x64(dtype == np.float64):
        pose = jnp.asarray(np.random.default_rng(3).normal(scale=100.0, size=(17, 3)), dtype)
        pose = pose.at[sk.L_ELBOW].set(pose[sk.L_SHOULDER])  # zero-length left upper arm
        grad, jvp, vjp, jac = derivatives(pose)
        assert grad.dtype == dtype
        for d in (grad, jvp, vjp, jac):
            assert bool(jnp.all(jnp.isfinite(d)))
        # Away from zero the derivative is the unit bone direction (jac: (6, 17, 3)).
        a, b, _, _ = sk.SYMMETRY_CONSTRAINTS[2]
        u = (pose[a] - pose[b]) / jnp.linalg.norm(pose[a] - pose[b])
        np.testing.assert_allclose(jac[2, a], u, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(jac[2, b], -u, rtol=1e-5, atol=1e-6)


def test_safe_norm_matches_numpy():
    x = np.random.default_rng(4).normal(size=(7, 3))
    x[2] = 0.0
    np.testing.assert_allclose(safe_norm(x), np.linalg.norm(x, axis=-1), rtol=1e-6)
