"""One linearisation of the constraint map per step (paper Sec. 4.2).

Two ways to linearise, chosen with ``jacobian=``:

* ``"matrix_free"`` (default): ``jax.linearize`` evaluates the constraints
  and keeps what the JVP needs; ``jax.linear_transpose`` of that JVP is the
  VJP. Every Krylov iteration then costs one JVP and one VJP of the
  *linearised* map and never a new forward pass. Memory O(N_p).
* ``"per_sample"``: for constraints that are separable over the samples of
  the batch (the values of sample k depend only on sample k, as for any
  per-example function of a network's output), the m x N_p Jacobian A is
  formed by reverse mode on single samples, batched with ``jax.vmap``: J
  VJPs of a one-sample network per sample, about the cost of one backward
  pass over the batch per constraint index, instead of m VJPs of the whole
  batch. Products with A are then matrix products. Memory O(m N_p).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from kktopt._tree import as_array_fn, batch_size

PyTree = Any


class Linearization(NamedTuple):
    """The constraint map C linearised at the current parameters.

    Attributes:
      c: the active constraint values, flattened to shape ``(m,)``; inactive
        entries are 0.
      mask: ``(m,)`` 1 where a constraint is active, 0 where it is not
        (a satisfied inequality, or padding).
      jvp: ``dw -> mask * (A dw)``, ``A = dC/dw`` (Rop in the paper).
      vjp: ``lam -> A^T (mask * lam)`` (Lop in the paper).
      shape: the shape of the constraint function's output.
      matrix: the dense ``(m, N_p)`` Jacobian (rows of inactive constraints
        zeroed) over the flattened parameters when it was formed
        (``jacobian="per_sample"``), else None.
      unravel: maps a flat ``(N_p,)`` vector back to the parameter pytree
        (with ``matrix``), else None.
      values: the constraint values as ``constraint_fn`` returned them (all
        of them, active or not), before the step.
      rows: ``(m,)`` 1 for every row of the problem, 0 for the rows of
        samples with weight 0 in ``sample_mask`` (padding); the inequality
        test comes on top of it in ``mask``.
      full_jvp: ``dw -> A dw`` on every row (no mask), for :meth:`restrict`.
      full_vjp: ``lam -> A^T lam`` on every row (no mask).
      full_matrix: the dense Jacobian without the mask (with ``matrix``).
    """

    c: jax.Array
    mask: jax.Array
    jvp: Callable[[PyTree], jax.Array]
    vjp: Callable[[jax.Array], PyTree]
    shape: tuple[int, ...]
    matrix: jax.Array | None = None
    unravel: Callable[[jax.Array], PyTree] | None = None
    values: jax.Array | None = None
    rows: jax.Array | None = None
    full_jvp: Callable[[PyTree], jax.Array] | None = None
    full_vjp: Callable[[jax.Array], PyTree] | None = None
    full_matrix: jax.Array | None = None

    @property
    def num_active(self) -> jax.Array:
        return jnp.sum(self.mask).astype(jnp.int32)

    @property
    def finite(self) -> jax.Array:
        """True when every constraint value of the problem's rows (padding excluded) is finite."""
        values = self.c if self.values is None else self.values.reshape(-1)
        rows = self.mask if self.rows is None else self.rows
        return jnp.all(jnp.isfinite(values) | (rows == 0))

    def jacobian_matrix(self, like: PyTree, rows_per_pass: int) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
        """The ``(m, N_p)`` Jacobian of the active rows over the flat parameters, and its unravel map.

        The per-sample Jacobian when it was formed; otherwise m VJPs of the
        linearisation, ``rows_per_pass`` at a time (one ``jax.vmap`` pass
        each, in a ``lax.map``): a batched VJP holds that many cotangents of
        every intermediate of the constraint function at once, so the
        passes bound the memory, not the work. ``like`` is a pytree shaped
        like the parameters.
        """
        if self.matrix is not None:
            return self.matrix, self.unravel
        _, unravel = ravel_pytree(like)
        m = self.c.shape[0]
        eye = jnp.eye(m, dtype=self.c.dtype)

        def row(e):
            return ravel_pytree(self.vjp(e))[0]

        if m <= rows_per_pass:
            return jax.vmap(row)(eye), unravel
        return jax.lax.map(row, eye, batch_size=rows_per_pass), unravel

    def restrict(self, mask: jax.Array) -> "Linearization":
        """The same linearisation with the active rows ``mask`` (within ``rows``); no new evaluation.

        Used by the active-set rounds of ``inequality_rounds``: the rows
        that a step newly violates join the active set and the KKT system
        is solved again on the same linearisation.
        """
        if self.full_jvp is None:
            raise ValueError("restrict needs a Linearization built by kktopt.kkt.linearize_constraints.")
        mask = (jnp.asarray(mask, self.c.dtype) * self.rows).astype(self.c.dtype)
        return _masked(self.values.reshape(-1), mask, self.shape, self.full_jvp, self.full_vjp,
                       self.rows, self.full_matrix, self.unravel)


def _check_output(out, params) -> None:
    if not isinstance(out, jax.ShapeDtypeStruct | jax.Array):
        kind = type(out).__name__
        raise TypeError(
            "constraint_fn(params, constraint_batch) must return one array of constraint "
            f"values (each entry one constraint C_jk, 0 when satisfied); it returned a {kind}. "
            "Stack several constraint groups with jnp.concatenate([c1.ravel(), c2.ravel()])."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"constraint_fn must return floating-point values, got dtype {out.dtype}: "
            "constraints must be differentiable functions of the parameters."
        )
    leaves = jax.tree_util.tree_leaves(params)
    if leaves:
        dtype = jnp.result_type(*leaves)
        if out.dtype != dtype:
            raise TypeError(
                f"constraint_fn returned dtype {out.dtype} but the parameters are {dtype}: "
                f"cast its output with .astype({dtype.name!r}) so the KKT system has one dtype."
            )


def _check_params(params) -> None:
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params has no arrays: pass the trainable arrays (e.g. eqx.filter(model, eqx.is_array)).")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"params must contain only floating-point arrays, found dtype {jnp.result_type(leaf)}: "
                "split a model with eqx.partition(model, eqx.is_inexact_array) and pass the arrays."
            )


def linearize_constraints(
    constraint_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    constraint_batch: Any,
    *,
    inequality: bool = False,
    jacobian: Literal["matrix_free", "per_sample"] = "matrix_free",
    sample_mask: jax.Array | None = None,
) -> Linearization:
    """Evaluate and linearise ``constraint_fn(params, constraint_batch)`` once.

    Args:
      constraint_fn: ``(params, constraint_batch) -> Array`` of constraint
        values; equality constraints mean ``C = 0``.
      params: the parameters (a pytree of float arrays).
      constraint_batch: whatever ``constraint_fn`` takes as its second
        argument (inputs of unlabeled samples, sphere centres, ...).
      inequality: treat every constraint as ``C <= 0``: a satisfied one
        (``C <= 0``) is inactive and contributes nothing, a violated one is
        treated as an equality (paper Sec. 4.4).
      jacobian: ``"matrix_free"`` or ``"per_sample"`` (see the module
        docstring; the latter needs constraints separable over the leading
        sample axis of ``constraint_batch`` and of the output).
      sample_mask: optional 1/0 weights over the leading (sample) axis of the
        output: constraints of a sample with weight 0 are inactive (padding
        of a fixed-shape selection).

    Returns:
      A :class:`Linearization`.
    """
    _check_params(params)
    constraint_fn = as_array_fn(constraint_fn)
    out_struct = jax.eval_shape(lambda p: constraint_fn(p, constraint_batch), params)
    _check_output(out_struct, params)
    shape = tuple(out_struct.shape)
    if sample_mask is not None and (len(shape) == 0 or shape[0] != jnp.shape(sample_mask)[0]):
        raise ValueError(
            f"a sample mask of length {jnp.shape(sample_mask)[0]} needs constraint_fn to return "
            f"values with that many samples on the leading axis; got shape {shape}."
        )
    if jacobian == "per_sample":
        return _linearize_per_sample(
            constraint_fn, params, constraint_batch, inequality, shape, sample_mask
        )
    if jacobian != "matrix_free":
        raise ValueError(f"jacobian must be 'matrix_free' or 'per_sample', got {jacobian!r}.")

    def flat_fn(p):
        return constraint_fn(p, constraint_batch).reshape(-1)

    c, jvp_raw = jax.linearize(flat_fn, params)
    transpose = jax.linear_transpose(jvp_raw, params)

    def vjp_raw(lam):
        (out,) = transpose(lam)
        return out

    rows = _sample_rows(c, shape, sample_mask)
    mask = _active_mask(c, inequality, rows)
    return _masked(c, mask, shape, jvp_raw, vjp_raw, rows)


def _sample_rows(c, shape, sample_mask):
    if sample_mask is None:
        return jnp.ones_like(c)
    per_sample = jnp.asarray(sample_mask, c.dtype).reshape((shape[0],) + (1,) * (len(shape) - 1))
    return jnp.broadcast_to(per_sample, shape).reshape(-1)


def _active_mask(c, inequality, rows):
    return (c > 0).astype(c.dtype) * rows if inequality else rows


def _masked(c, mask, shape, full_jvp, full_vjp, rows, full_matrix=None, unravel=None,
            all_on: bool = False) -> Linearization:
    """The linearisation restricted to the rows ``mask``.

    Inactive rows are set to 0 with ``where`` rather than a product, so a
    NaN or Inf in a padding row (a sample of weight 0) cannot leak into the
    active system. ``all_on`` (static) says that ``mask`` is 1 on every row,
    so the dense Jacobian needs no masked copy.
    """
    on = mask > 0
    if full_matrix is None or all_on:
        matrix = full_matrix
    else:
        matrix = jnp.where(on[:, None], full_matrix, 0)
    if matrix is None:

        def jvp(dw):
            return jnp.where(on, full_jvp(dw), 0)

        def vjp(lam):
            return full_vjp(jnp.where(on, lam, 0))

    else:
        hi = jax.lax.Precision.HIGHEST

        def jvp(dw):
            return jnp.matmul(matrix, ravel_pytree(dw)[0], precision=hi)

        def vjp(lam):
            return unravel(jnp.matmul(lam, matrix, precision=hi))

    return Linearization(
        c=jnp.where(on, c, 0), mask=mask, jvp=jvp, vjp=vjp, shape=shape, matrix=matrix,
        unravel=unravel, values=c.reshape(shape), rows=rows, full_jvp=full_jvp, full_vjp=full_vjp,
        full_matrix=full_matrix,
    )


def _linearize_per_sample(constraint_fn, params, batch, inequality, shape, sample_mask) -> Linearization:
    b = batch_size(batch)
    if len(shape) == 0 or shape[0] != b:
        raise ValueError(
            "jacobian='per_sample' needs constraint_fn to return values with the sample axis "
            f"first: the batch has {b} samples but the output has shape {shape}."
        )
    flat_params, unravel = ravel_pytree(params)
    per_sample = int(np.prod(shape[1:], dtype=np.int64))

    def one(sample):
        single = jax.tree_util.tree_map(lambda x: x[None], sample)

        def f(fp):
            return constraint_fn(unravel(fp), single)[0].reshape(-1)

        values, pullback = jax.vjp(f, flat_params)
        eye = jnp.eye(per_sample, dtype=values.dtype)
        (rows,) = jax.vmap(pullback)(eye)
        return values, rows

    values, jac_rows = jax.vmap(one)(batch)
    c = values.reshape(-1)
    full = jac_rows.reshape(c.shape[0], -1)
    hi = jax.lax.Precision.HIGHEST

    def full_jvp(dw):
        return jnp.matmul(full, ravel_pytree(dw)[0], precision=hi)

    def full_vjp(lam):
        return unravel(jnp.matmul(lam, full, precision=hi))

    rows = _sample_rows(c, shape, sample_mask)
    mask = _active_mask(c, inequality, rows)
    # Equalities without padding: every row is active by construction, so the
    # Jacobian is used as it is (no masked m x N_p copy at every step).
    all_on = not inequality and sample_mask is None
    return _masked(c, mask, shape, full_jvp, full_vjp, rows, full, unravel, all_on=all_on)
