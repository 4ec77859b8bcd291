"""Metrics of Sec. 5 against plain numpy loops."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pose import skeleton as sk
from pose.metrics import (
    abs_constraints,
    fraction_met,
    median_abs_constraint,
    mpjpe,
    per_joint_error,
)


def _violations(pred: np.ndarray) -> np.ndarray:
    out = []
    for y in pred:
        for a, b, c, d in sk.SYMMETRY_CONSTRAINTS:
            out.append(abs(np.linalg.norm(y[a] - y[b]) - np.linalg.norm(y[c] - y[d])))
    return np.array(out)


@pytest.fixture
def poses():
    rng = np.random.default_rng(0)
    target = rng.normal(scale=400.0, size=(9, 17, 3))
    pred = target + rng.normal(scale=30.0, size=target.shape)
    return pred, target


def test_mpjpe_matches_loop(poses):
    pred, target = poses
    per_sample = [np.mean([np.linalg.norm(p[m] - t[m]) for m in range(17)])
                  for p, t in zip(pred, target)]
    np.testing.assert_allclose(mpjpe(pred, target), np.mean(per_sample), rtol=1e-5)
    np.testing.assert_allclose(jax.jit(mpjpe)(pred, target), np.mean(per_sample), rtol=1e-5)
    assert per_joint_error(pred, target).shape == (9, 17)
    assert float(mpjpe(target, target)) == 0.0


def test_median_and_fraction_met_match_numpy(poses):
    pred, _ = poses
    viol = _violations(pred)
    np.testing.assert_allclose(abs_constraints(pred).reshape(-1), viol, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(median_abs_constraint(pred), np.median(viol), rtol=1e-4)
    thresholds = np.array([0.0, 5.0, 20.0, 50.0, 1e6])
    expected = [np.mean(viol <= t) for t in thresholds]
    np.testing.assert_allclose(fraction_met(pred, thresholds), expected, atol=1e-6)
    np.testing.assert_allclose(jax.jit(fraction_met)(pred, thresholds), expected, atol=1e-6)
    grid = fraction_met(pred, thresholds.reshape(5, 1))
    assert grid.shape == (5, 1)
    met = np.asarray(fraction_met(pred))  # default thresholds: non-decreasing in [0, 1]
    assert np.all(np.diff(met) >= 0) and 0 <= met.min() and met.max() <= 1


def test_exactly_symmetric_poses_meet_every_threshold():
    # Left joints mirror the right ones through the x = 0 plane, which holds
    # the pelvis and thorax: every left bone equals its right twin.
    rng = np.random.default_rng(1)
    half = rng.normal(scale=300.0, size=(17, 3))
    mirrored = half[list(sk.FLIP_PERMUTATION)] * np.array([-1.0, 1.0, 1.0])
    sym = np.where(np.isin(np.arange(17), sk.LEFT_JOINTS)[:, None], mirrored, half)
    sym[sk.PELVIS] = [0.0, 0.0, 0.0]
    sym[sk.THORAX] = [0.0, -500.0, 10.0]
    assert float(median_abs_constraint(sym[None])) < 1e-3
    assert float(fraction_met(sym[None], [1e-3])[0]) == 1.0


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        mpjpe(np.zeros((2, 17, 3)), np.zeros((3, 17, 3)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 17, 3\)"):
        median_abs_constraint(np.zeros((2, 51)))
