"""Pytree helpers shared by the subpackages (vector operations, batch shapes).

Parameters and constraint batches are pytrees, so the few vector operations
the KKT layer needs are tree maps written once here. Dot products run at
HIGHEST precision so that float32 products on accelerators keep float32.
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
    parts = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda u, v: jnp.vdot(u.ravel(), v.ravel(), precision=_HIGHEST), a, b)
    )
    return functools.reduce(operator.add, parts)


def tree_norm(a: PyTree) -> jax.Array:
    """Euclidean norm of a pytree."""
    return jnp.sqrt(tree_dot(a, a))


def tree_scale(alpha, x: PyTree) -> PyTree:
    """alpha * x."""
    return jax.tree_util.tree_map(lambda u: alpha * u, x)


def tree_axpy(alpha, x: PyTree, y: PyTree) -> PyTree:
    """alpha * x + y."""
    return jax.tree_util.tree_map(lambda u, v: alpha * u + v, x, y)


def tree_lincomb(*terms: tuple[Any, PyTree]) -> PyTree:
    """sum_i c_i * x_i for pairs ``(c_i, x_i)``, as one tree map."""
    coeffs = [c for c, _ in terms]

    def combine(*leaves):
        out = coeffs[0] * leaves[0]
        for c, leaf in zip(coeffs[1:], leaves[1:]):
            out = out + c * leaf
        return out

    return jax.tree_util.tree_map(combine, *[t for _, t in terms])


def tree_zeros_like(x: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.zeros_like, x)


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """``tree`` with every leaf cast to the dtype of the matching leaf of ``like``."""
    return jax.tree_util.tree_map(lambda x, y: x.astype(y.dtype), tree, like)


def params_dtype(params: PyTree):
    """The common floating dtype of the parameters."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params has no arrays: pass the trainable arrays (e.g. eqx.filter(model, eqx.is_array)).")
    return jnp.result_type(*leaves)


def batch_size(batch: PyTree) -> int:
    """The common leading (sample) dimension of a batch's leaves."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError(
            "selecting active samples needs a constraint batch with a leading sample axis; "
            "got a batch with no arrays."
        )
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [jnp.shape(leaf) for leaf in leaves]
        raise ValueError(
            "every leaf of the constraint batch must have the same leading sample axis to "
            f"select active samples; got shapes {shapes}."
        )
    return int(sizes.pop())


def take_samples(batch: PyTree, indices: jax.Array) -> PyTree:
    """Gather samples ``indices`` along the leading axis of every leaf."""
    return jax.tree_util.tree_map(lambda x: jnp.take(x, indices, axis=0), batch)


def first_occurrence(keys: jax.Array, valid: jax.Array) -> jax.Array:
    """``valid`` and no earlier valid entry has the same key (de-duplicates sample indices)."""
    same = (keys[:, None] == keys[None, :]) & valid[None, :]
    return valid & ~jnp.any(jnp.tril(same, k=-1), axis=1)


class BatchSpec:
    """Hashable record of a batch's shapes and dtypes (for static fields)."""

    def __init__(self, like: PyTree):
        self.spec = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), like
        )
        leaves, treedef = jax.tree_util.tree_flatten(self.spec)
        self.key = (treedef, tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves))

    @property
    def size(self) -> int:
        return batch_size(self.spec)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, BatchSpec) and self.key == other.key

    def __repr__(self):
        return f"BatchSpec({self.spec})"
