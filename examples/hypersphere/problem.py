"""The hypersphere problem (paper Eq. 16, 17): centres, x0, constraints, start geometry."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

import kktopt
from kktopt.active import RandomSamples

from hypersphere.config import HypersphereConfig

__all__ = [
    "Centres",
    "HypersphereProblem",
    "centres_spec",
    "geometry",
    "make_problem",
    "objective",
    "random_draw",
    "selector",
    "sphere_constraints",
]


class Centres(NamedTuple):
    """The constraint batch: the sphere centres, sample axis first.

    Attributes:
      points: ``(m, d)`` centres c_i.
      sq_norms: ``(m,)`` their squared norms ``||c_i||^2``, kept so that
        evaluating the constraints reads the ``(m, d)`` array once.
    """

    points: jax.Array
    sq_norms: jax.Array

    @classmethod
    def from_points(cls, points: ArrayLike) -> "Centres":
        points = jnp.asarray(points)
        return cls(points, jnp.sum(points * points, axis=-1))


class HypersphereProblem(NamedTuple):
    """One draw of the problem.

    Attributes:
      x0: ``(d,)`` the target of the objective and the start point.
      centres: the :class:`Centres` (the constraint batch of every method).
      fixed: ``(active,)`` int32 indices of ``hard-fixed``'s constraints, the
        first random draw of ``hard``.
    """

    x0: jax.Array
    centres: Centres
    fixed: jax.Array


def sphere_constraints(w: ArrayLike, centres: Centres, radius: float = 10.0) -> jax.Array:
    """``C_i(w) = ||w - c_i|| - radius`` for every centre (paper Eq. 16).

    Written as ``sqrt(||w||^2 - 2 c_i . w + ||c_i||^2)`` so that it costs one
    matrix-vector product with the centres (and its JVP and VJP one each).

    Args:
      w: ``(d,)`` point.
      centres: :class:`Centres` with ``m`` centres.
      radius: sphere radius.

    Returns:
      ``(m,)`` constraint values (0 on the sphere, positive outside).

    Example:
      >>> import jax.numpy as jnp
      >>> from hypersphere.problem import Centres, sphere_constraints
      >>> c = Centres.from_points(jnp.array([[0.0, 0.0], [3.0, 0.0]]))
      >>> sphere_constraints(jnp.array([0.0, 4.0]), c, radius=4.0).tolist()
      [0.0, 1.0]
    """
    w = jnp.asarray(w)
    sq = jnp.dot(w, w) - 2.0 * (centres.points @ w) + centres.sq_norms
    return jnp.sqrt(jnp.maximum(sq, 0.0)) - jnp.asarray(radius, w.dtype)


def selector(config: HypersphereConfig) -> RandomSamples:
    """The random active sets of ``hard``: ``config.active`` of the m spheres per step."""
    return kktopt.active.random_samples(config.active, seed=config.seed)


def random_draw(selector: RandomSamples, m: int, state) -> tuple[jax.Array, object]:
    """One draw of ``selector`` from m constraints: ``(indices, new_state)``.

    For the methods that need ``hard``'s random sets without projecting on
    them: ``soft`` (panel (b) of Fig. 4 compares the same constraints) and
    ``hard-fixed`` (its set is the first draw). The hard transforms record
    their own draws in their state (``RandomSamplesState.indices``).
    """
    _, state = selector.select(None, None, jnp.arange(m, dtype=jnp.int32), state)
    return selector.indices(state), state


def make_problem(config: HypersphereConfig) -> HypersphereProblem:
    """Draw the centres and x0 from ``config.seed`` (must run with the config's dtype enabled).

    ``c_i ~ N(0, s^2 I)`` with ``s^2 = config.coordinate_variance``;
    ``x0 = start_distance * z / ||z||``, ``z ~ N(0, I)``.
    """
    dtype = jnp.dtype(config.dtype)
    key_c, key_x = jax.random.split(jax.random.PRNGKey(config.seed))
    std = math.sqrt(config.coordinate_variance)
    points = std * jax.random.normal(key_c, (config.constraints, config.dim), dtype)
    z = jax.random.normal(key_x, (config.dim,), dtype)
    x0 = config.start_distance * z / jnp.linalg.norm(z)
    sel = selector(config)
    fixed, _ = random_draw(sel, config.constraints, sel.init(x0))
    return HypersphereProblem(x0=x0, centres=Centres.from_points(points), fixed=fixed)


def objective(w, x0):
    """R(w) = 1/2 ||w - x0||^2 of Eq. 16 and 17."""
    return 0.5 * jnp.sum((w - x0) ** 2)


def centres_spec(config: HypersphereConfig) -> Centres:
    """Shapes and dtypes of the constraint batch (the ``like`` of the memory)."""
    dtype = jnp.dtype(config.dtype)
    return Centres(
        jax.ShapeDtypeStruct((config.constraints, config.dim), dtype),
        jax.ShapeDtypeStruct((config.constraints,), dtype),
    )


def geometry(config: HypersphereConfig, problem: HypersphereProblem) -> dict[str, float]:
    """Distances and conditioning at the start point, for the README's discussion."""
    x0, centres, fixed = problem
    pts = centres.points
    gram = np.asarray(pts @ pts.T, np.float64)
    sq = np.diag(gram)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0)
    iu = np.triu_indices(config.constraints, 1)
    dist = np.sqrt(dist2[iu])
    # A at x0: rows (x0 - c_i) / ||x0 - c_i||; A A^T from the Gram matrix.
    xc = np.asarray(pts @ x0, np.float64)
    xx = float(jnp.dot(x0, x0))
    diff = xx - xc[:, None] - xc[None, :] + gram
    norms = np.sqrt(np.diag(diff))
    aat = diff / norms[:, None] / norms[None, :]

    def cond(sub):
        ev = np.linalg.eigvalsh(sub)
        return float(np.sqrt(ev[-1] / max(ev[0], np.finfo(np.float64).tiny)))

    idx = np.asarray(fixed)
    return {
        "centre_distance_median": float(np.median(dist)),
        "centre_distance_min": float(dist.min()),
        "centre_distance_max": float(dist.max()),
        "pairs_intersecting_fraction": float(np.mean(dist < 2 * config.radius)),
        "x0_distance_median": float(np.median(norms)),
        "cond_A_active_at_x0": cond(aat[np.ix_(idx, idx)]),
        "cond_A_all_at_x0": cond(aat) if config.constraints <= config.dim else float("inf"),
    }

