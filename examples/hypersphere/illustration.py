"""Fig. 3 of the paper, computed: hard steps on nearly identical circles in d = 2."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kktopt
from kktopt.active import take_samples

from hypersphere.problem import Centres, objective, sphere_constraints

__all__ = ["Illustration2D", "illustration_2d"]


class Illustration2D(NamedTuple):
    """Data of Fig. 3 (d = 2), all numpy.

    Attributes:
      centres: ``(k, 2)`` circle centres (radius ``radius``).
      radius: circle radius.
      x0: the objective's target and the start point.
      w: the point where the two linearisations are drawn.
      normals: ``(2, 2)`` unit normals a_i of the linearisations at w.
      offsets: ``(2,)`` constraint values C_i(w) (line i: a_i . (v - w) = -C_i).
      kkt_step: w after one hard step with circles 0 and 1 active.
      path_changing: ``(n + 1, 2)`` iterates with a random active pair.
      path_fixed: ``(n + 1, 2)`` iterates with circles 0 and 1 always active.
      violations_changing: ``(n + 1, k)`` |C_i| of every circle along
        ``path_changing``.
      violations_fixed: ``(n + 1, k)`` the same along ``path_fixed``.
    """

    centres: np.ndarray
    radius: float
    x0: np.ndarray
    w: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray
    kkt_step: np.ndarray
    path_changing: np.ndarray
    path_fixed: np.ndarray
    violations_changing: np.ndarray
    violations_fixed: np.ndarray


def illustration_2d(
    seed: int = 0, *, circles: int = 5, steps: int = 12, radius: float = 10.0, lr: float = 0.05
) -> Illustration2D:
    """Compute Fig. 3: nearly identical circles in d = 2 and hard steps on them.

    The centres are drawn from the paper's ``N(0, 0.01 I)``. Two circles of
    equal radius whose centres are ~0.2 apart intersect, but only at two
    points, far along the perpendicular bisector; at a point near the line
    through the centres their linearisations are nearly parallel and meet
    far away, so the KKT step of Eq. 5 jumps far from both. Three or more
    such circles have no common point (slightly incompatible). Both paths
    take hard steps with ``project_kkt`` (dense Schur solver, exact at d = 2)
    from the same start x0 toward the same objective ``1/2 ||w - x0||^2``;
    the active pair is the constraint batch: a pair drawn at each step by
    ``kktopt.active.random_samples(2)`` (changing) or circles 0 and 1
    (fixed).

    Args:
      seed: seeds the centres and the active pairs.
      circles: number of circles (>= 3 so the changing pair has a choice).
      steps: hard steps per path.
      radius: circle radius.
      lr: SGD learning rate before the projection.

    Returns:
      An :class:`Illustration2D`.
    """
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(seed)
        pts = 0.1 * jax.random.normal(key, (circles, 2), jnp.float64)
        centres = Centres.from_points(pts)
        cfn = functools.partial(sphere_constraints, radius=radius)
        # Start on the far side of the line through centres 0 and 1, where
        # their linearisations are nearly parallel.
        axis = (pts[1] - pts[0]) / jnp.linalg.norm(pts[1] - pts[0])
        normal = jnp.array([-axis[1], axis[0]])
        x0 = 0.5 * (pts[0] + pts[1]) + 10.6 * axis + 0.8 * normal
        pair = take_samples(centres, jnp.array([0, 1]))
        c, jvp = jax.linearize(lambda v: cfn(v, pair), x0)
        normals = jnp.stack([jvp(jnp.array([1.0, 0.0])), jvp(jnp.array([0.0, 1.0]))], axis=1)

        # The fixed pair is the whole constraint batch (all of it active); the
        # changing pair is drawn from all circles by
        # kktopt.active.random_samples(2), as in the d = 1e6 experiment.
        solver = kktopt.KKTSolver(method="dense")

        def path(active, batch):
            tx = optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, active=active, solver=solver))

            @jax.jit
            def step(w, state):
                u, state = tx.update(jax.grad(objective)(w, x0), state, w, constraint_batch=batch)
                return w + u, state

            ws, state = [x0], tx.init(x0)
            for _ in range(steps):
                w, state = step(ws[-1], state)
                ws.append(w)
            return np.asarray(jnp.stack(ws))

        fixed = path(kktopt.active.all_samples(), pair)
        changing = path(kktopt.active.random_samples(2, seed=seed), centres)
        violations = jax.vmap(lambda v: jnp.abs(cfn(v, centres)))
        return Illustration2D(
            centres=np.asarray(pts),
            radius=radius,
            x0=np.asarray(x0),
            w=np.asarray(x0),
            normals=np.asarray(normals),
            offsets=np.asarray(c),
            kkt_step=fixed[1],
            path_changing=changing,
            path_fixed=fixed,
            violations_changing=np.asarray(violations(jnp.asarray(changing))),
            violations_fixed=np.asarray(violations(jnp.asarray(fixed))),
        )
