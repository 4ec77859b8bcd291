"""Turning what a user passes as ``A`` (and ``M^-1``) into a checked matvec."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kktopt import _tree

PyTree = Any
Matvec = Callable[[PyTree], PyTree]

_HIGHEST = jax.lax.Precision.HIGHEST


class Operator(NamedTuple):
    """A checked linear map on the vector space of ``b``.

    Attributes:
      matvec: v -> A v on pytrees shaped like ``b``.
      matrix: the dense matrix when ``A`` was given as an array, else None.
      size: total number of scalars in ``b``.
      dtype: the floating dtype of the solve.
    """

    matvec: Matvec
    matrix: jax.Array | None
    size: int
    dtype: Any


def _struct(tree: PyTree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _solve_dtype(b: PyTree):
    leaves = jax.tree_util.tree_leaves(b)
    if not leaves:
        raise ValueError("b is an empty pytree: there is nothing to solve for.")
    dtypes = {jnp.result_type(leaf) for leaf in leaves}
    if len(dtypes) != 1:
        raise ValueError(
            f"all leaves of b must share one floating dtype, got {sorted(map(str, dtypes))}: "
            "cast them with jax.tree_util.tree_map(lambda x: x.astype(dtype), b)."
        )
    (dtype,) = dtypes
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"b must be real floating point (float32 or float64), got {dtype}: "
            "cast it with b.astype(jnp.float32)."
        )
    return dtype


def _check_same_structure(name: str, out, expected) -> None:
    out_struct = jax.tree_util.tree_structure(out)
    exp_struct = jax.tree_util.tree_structure(expected)
    if out_struct != exp_struct:
        raise ValueError(
            f"{name} must map a vector shaped like b to one with the same pytree structure; "
            f"got structure {out_struct} for input structure {exp_struct}."
        )
    for o, e in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(expected)):
        if o.shape != e.shape or o.dtype != e.dtype:
            raise ValueError(
                f"{name} must return leaves with the shapes and dtypes of b; got "
                f"{o.shape} {o.dtype} where b has {e.shape} {e.dtype}. "
                "(A dtype mismatch usually means the operator closes over arrays of another dtype.)"
            )


def make_operator(A, b: PyTree, *, shift=0.0) -> Operator:
    """Check ``A`` against ``b`` and return a matvec for ``A - shift * I``.

    ``A`` is either a square 2-D array (then ``b`` must be a 1-D array of
    matching length) or a callable mapping pytrees shaped like ``b`` to
    pytrees shaped like ``b``. Structural mistakes raise ``ValueError`` at
    trace time.
    """
    dtype = _solve_dtype(b)
    size = _tree.tree_size(b)
    if callable(A) and not isinstance(A, (jax.Array, np.ndarray)):
        out = jax.eval_shape(A, _struct(b))
        _check_same_structure("the operator A", out, b)
        base = A
        matrix = None
    else:
        try:
            matrix = jnp.asarray(A)
        except TypeError as err:
            raise TypeError(
                "A must be a square 2-D array or a callable v -> A v on pytrees shaped like b; "
                f"got {type(A).__name__}."
            ) from err
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"A must be a square matrix, got shape {matrix.shape}. For a rectangular "
                "least-squares problem min ||K x - y|| solve the symmetric normal or augmented "
                "system instead, e.g. A = [[I, K], [K^T, 0]]."
            )
        if not isinstance(b, (jax.Array, np.ndarray)) or jnp.ndim(b) != 1:
            raise ValueError(
                "when A is a matrix, b must be a 1-D array; for pytree vectors pass A as a callable. "
                f"Got b of type {type(b).__name__}"
                + (f" with shape {jnp.shape(b)}" if hasattr(b, "shape") else "")
                + "."
            )
        if b.shape[0] != matrix.shape[0]:
            raise ValueError(
                f"A has shape {matrix.shape} but b has length {b.shape[0]}: they must match."
            )
        if not jnp.issubdtype(matrix.dtype, jnp.floating) and not jnp.issubdtype(
            matrix.dtype, jnp.integer
        ):
            raise ValueError(f"A must be real, got dtype {matrix.dtype}.")
        matrix = matrix.astype(dtype)

        def base(v):
            return jnp.matmul(matrix, v, precision=_HIGHEST)

    if isinstance(shift, (int, float)) and shift == 0:
        matvec = base
    else:
        shift_ = jnp.asarray(shift, dtype)

        def matvec(v):
            return _tree.tree_axpy(-shift_, v, base(v))

    return Operator(matvec=matvec, matrix=matrix, size=size, dtype=dtype)


def make_preconditioner(M, b: PyTree) -> Matvec | None:
    """Check a preconditioner callable ``v -> M^-1 v`` against ``b``."""
    if M is None:
        return None
    if not callable(M) or isinstance(M, (jax.Array, np.ndarray)):
        raise TypeError(
            "preconditioner must be a callable v -> M^-1 v for a symmetric positive definite M "
            "(for a matrix Minv, pass lambda v: Minv @ v)."
        )
    out = jax.eval_shape(M, _struct(b))
    _check_same_structure("the preconditioner", out, b)
    return M


def dtype_eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


def default_rtol(dtype) -> float:
    """Default relative tolerance: 1e-5 in float32, 1e-10 in float64 (and 1e-2 in half precision)."""
    eps = dtype_eps(dtype)
    if eps > 1e-4:
        return 1e-2
    if eps > 1e-10:
        return 1e-5
    return 1e-10


def dense_symmetry_defect(matrix: jax.Array) -> jax.Array:
    """max |A - A^T| relative to max |A| (0 for a symmetric matrix)."""
    scale = jnp.max(jnp.abs(matrix))
    defect = jnp.max(jnp.abs(matrix - matrix.T))
    return jnp.where(scale > 0, defect / jnp.where(scale > 0, scale, 1), 0)
