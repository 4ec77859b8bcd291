"""Pytree helpers shared by the subpackages (vector operations, batch shapes, output types).

Parameters and constraint batches are pytrees, so the few vector operations
the KKT layer needs are tree maps written once here. Dot products run at
HIGHEST precision so that float32 products on accelerators keep float32.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

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


def tree_sub(x: PyTree, y: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.subtract, x, y)


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


def as_array_fn(constraint_fn: Callable[[PyTree, Any], Any]) -> Callable[[PyTree, Any], jax.Array]:
    """``constraint_fn`` with an array-like output (Python or NumPy scalar, NumPy array) made a JAX array.

    A Python number takes the dtype of the parameters (it is weakly typed);
    a tuple, list or dict is passed through, for :func:`_check_output` to
    reject with its message.
    """
    if getattr(constraint_fn, "_kktopt_as_array", False):
        return constraint_fn

    def wrapped(params, batch):
        out = constraint_fn(params, batch)
        if isinstance(out, (bool, int, float, np.ndarray, np.generic)):
            leaves = [x for x in jax.tree_util.tree_leaves(params) if hasattr(x, "dtype")]
            weak = isinstance(out, (int, float)) and not isinstance(out, bool)
            out = jnp.asarray(out)
            if weak and leaves and jnp.issubdtype(jnp.result_type(*leaves), jnp.floating):
                out = out.astype(jnp.result_type(*leaves))
        return out

    wrapped._kktopt_as_array = True
    wrapped.__wrapped__ = constraint_fn
    return wrapped
