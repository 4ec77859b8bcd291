"""Vector-space helpers on pytrees of arrays.

Krylov solvers in kktopt act on pytrees (the parameters of a network are
pytrees), so the handful of BLAS-1 operations they need are written once here
as tree maps. Dot products run at HIGHEST precision so that float32 solves on
accelerators do not silently drop to bfloat16 passes.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

_HIGHEST = jax.lax.Precision.HIGHEST


def tree_dot(a: PyTree, b: PyTree) -> jax.Array:
    """Euclidean inner product of two pytrees with the same structure."""
    leaves = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(
            lambda u, v: jnp.vdot(u.ravel(), v.ravel(), precision=_HIGHEST), a, b
        )
    )
    return functools.reduce(operator.add, leaves)


def tree_norm(a: PyTree) -> jax.Array:
    """Euclidean norm of a pytree."""
    return jnp.sqrt(tree_dot(a, a))


def tree_axpy(alpha: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    """alpha * x + y."""
    return jax.tree_util.tree_map(lambda u, v: alpha * u + v, x, y)


def tree_lincomb(*terms: tuple[jax.Array, PyTree]) -> PyTree:
    """sum_i c_i * x_i for pairs (c_i, x_i), evaluated as one tree map."""
    coeffs = [c for c, _ in terms]
    trees = [t for _, t in terms]

    def combine(*leaves):
        out = coeffs[0] * leaves[0]
        for c, leaf in zip(coeffs[1:], leaves[1:]):
            out = out + c * leaf
        return out

    return jax.tree_util.tree_map(combine, *trees)


def tree_scale(alpha: jax.Array, x: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda u: alpha * u, x)


def tree_sub(x: PyTree, y: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.subtract, x, y)


def tree_zeros_like(x: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.zeros_like, x)


def tree_where(pred: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda u, v: jnp.where(pred, u, v), x, y)


def tree_size(x: PyTree) -> int:
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(x))


def tree_all_finite(x: PyTree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(x)
    return functools.reduce(
        jnp.logical_and, [jnp.all(jnp.isfinite(leaf)) for leaf in leaves], jnp.array(True)
    )


def tree_max_abs(x: PyTree) -> jax.Array:
    """max |x_i| over every leaf (0 for a pytree with no entries; NaN propagates)."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(x) if leaf.size]
    if not leaves:
        return jnp.zeros((), jnp.result_type(*jax.tree_util.tree_leaves(x)) if jax.tree_util.tree_leaves(x) else jnp.float32)
    return functools.reduce(jnp.maximum, [jnp.max(jnp.abs(leaf)) for leaf in leaves])


def pow2_scale(m: jax.Array) -> jax.Array:
    """A power of two within a factor 2 of ``m`` (1 where m is 0 or not finite).

    Dividing by it is exact, so scaling a vector with it changes no digit.
    """
    ok = jnp.isfinite(m) & (m > 0)
    _, e = jnp.frexp(jnp.where(ok, m, 1))
    return jnp.where(ok, jnp.ldexp(jnp.ones_like(m), e), 1).astype(m.dtype)


def tree_norm_safe(a: PyTree) -> jax.Array:
    """Euclidean norm of a pytree that neither overflows nor underflows.

    The entries are divided by a power of two near max |a_i| before the sum of
    squares (one extra pass over the data), so ``||a||`` is finite whenever it
    is representable, e.g. for entries of size 1e160 in float64 or 1e30 in
    float32 where ``sqrt(a' a)`` overflows.
    """
    if tree_size(a) == 0:
        return tree_norm(a) if jax.tree_util.tree_leaves(a) else jnp.zeros(())
    s = pow2_scale(tree_max_abs(a))
    return s * tree_norm(jax.tree_util.tree_map(lambda u: u / s, a))
