"""Exact reference solver for small symmetric systems (eigendecomposition, pseudo-inverse)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kktopt.krylov import _common, _operator, _tree
from kktopt.krylov._info import SolverInfo, Stop

PyTree = Any

__all__ = ["dense_solve", "materialize"]

_HIGHEST = jax.lax.Precision.HIGHEST


def materialize(A, b: PyTree, *, shift=0.0) -> jax.Array:
    """The n x n matrix of ``A - shift I`` acting on flattened vectors shaped like ``b``.

    Applies the operator to the n unit vectors (one batched application via
    ``jax.vmap``), so it costs n matvecs: for small systems and tests only.
    """
    op = _operator.make_operator(A, b, shift=shift)
    flat_b, unravel = ravel_pytree(b)
    if op.matrix is not None and (isinstance(shift, (int, float)) and shift == 0):
        return op.matrix

    def flat_matvec(v):
        return ravel_pytree(op.matvec(unravel(v)))[0]

    eye = jnp.eye(flat_b.shape[0], dtype=flat_b.dtype)
    return jax.vmap(flat_matvec, out_axes=1)(eye)


def _sym_sqrt(m: jax.Array) -> tuple[jax.Array, jax.Array]:
    lam, q = jnp.linalg.eigh(m)
    return (q * jnp.sqrt(jnp.maximum(lam, 0))) @ q.T, lam


class PinvFactor(NamedTuple):
    """Eigendecomposition of a symmetric matrix, truncated for its pseudo-inverse.

    Attributes:
      eigenvalues, eigenvectors: from ``jnp.linalg.eigh``.
      inverse: 1 / lambda for the kept eigenvalues, 0 for the dropped ones.
      anorm: max |lambda|.
      kept_min: smallest kept |lambda|.
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    inverse: jax.Array
    anorm: jax.Array
    kept_min: jax.Array

    def apply(self, b: jax.Array) -> jax.Array:
        """pinv(A) @ b."""
        q = self.eigenvectors
        return jnp.matmul(q, self.inverse * jnp.matmul(q.T, b, precision=_HIGHEST), precision=_HIGHEST)


def symmetric_pinv(mat: jax.Array, rcond) -> PinvFactor:
    """Factor a symmetric matrix for ``pinv``, dropping |lambda| <= rcond * max |lambda|."""
    lam, q = jnp.linalg.eigh(mat)
    amax = jnp.max(jnp.abs(lam))
    keep = jnp.abs(lam) > rcond * amax
    inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
    kept_min = jnp.min(jnp.where(keep, jnp.abs(lam), jnp.inf))
    return PinvFactor(lam, q, inv, amax, kept_min)


def dense_info(mat, b, x, factor: PinvFactor, rtol, istop) -> SolverInfo:
    """SolverInfo of a dense solve ``mat x = b`` (true residuals; istop 0 means it ran)."""
    r = b - jnp.matmul(mat, x, precision=_HIGHEST)
    ar = jnp.matmul(mat, r, precision=_HIGHEST)
    rnorm = jnp.linalg.norm(r)
    arnorm = jnp.linalg.norm(ar)
    xnorm = jnp.linalg.norm(x)
    bnorm = jnp.linalg.norm(b)
    amax = factor.anorm
    relres = _common.safe_div(rnorm, amax * xnorm + bnorm)
    relares = _common.safe_div(arnorm, amax * rnorm)
    verdict = jnp.where(
        bnorm == 0,
        Stop.ZERO_RHS,
        jnp.where(relres <= rtol, Stop.SOLVED_RTOL, Stop.LEAST_SQUARES_RTOL),
    )
    istop = jnp.where(istop == 0, verdict, istop).astype(jnp.int32)
    izero = jnp.zeros((), jnp.int32)
    return SolverInfo(
        istop=istop, iterations=izero, minres_iterations=izero, qlp_iterations=izero,
        rnorm=rnorm, arnorm=arnorm, relres=relres, relares=relares, anorm=amax,
        acond=_common.safe_div(amax, factor.kept_min), xnorm=xnorm,
    )


def dense_solve(
    A,
    b: PyTree,
    *,
    shift=0.0,
    preconditioner: Callable | None = None,
    x0: PyTree | None = None,
    rtol=None,
    rcond=None,
    check_symmetry: bool = True,
    throw: bool = False,
) -> tuple[PyTree, SolverInfo]:
    """Minimum-length (least-squares) solution of ``(A - shift I) x = b`` by eigendecomposition.

    The exact answer MINRES-QLP converges to: ``x = pinv(A - shift I) @ b``,
    with eigenvalues ``|lambda| <= rcond * max |lambda|`` treated as zero
    (default ``rcond = n * eps``). With a preconditioner ``v -> M^-1 v`` it
    returns the least-squares solution of minimum M-norm with the residual
    measured in the M^-1-norm, which is what preconditioned MINRES-QLP returns
    (``x = S pinv(S A S) S b`` with ``S = (M^-1)^(1/2)``). Same call shape and
    :class:`~kktopt.krylov.SolverInfo` as the Krylov solvers; ``iterations``
    is 0. Costs n operator applications plus an O(n^3) eigendecomposition.

    Example:
      >>> import jax.numpy as jnp
      >>> from kktopt.krylov import dense_solve
      >>> x, info = dense_solve(jnp.diag(jnp.array([-1.0, 0.0, 2.0])), jnp.ones(3))
      >>> [round(float(v), 4) for v in x]
      [-1.0, 0.0, 0.5]
    """
    op = _operator.make_operator(A, b, shift=shift)
    precond = _operator.make_preconditioner(preconditioner, b)
    eps = _operator.dtype_eps(op.dtype)
    rtol = _operator.default_rtol(op.dtype) if rtol is None else rtol
    flat_b, unravel = ravel_pytree(b)
    n = flat_b.shape[0]
    rcond = n * eps if rcond is None else rcond
    mat = materialize(A, b, shift=shift)
    if x0 is not None:
        _operator._check_same_structure("x0", x0, b)
        flat_x0 = ravel_pytree(x0)[0]
        rhs = flat_b - jnp.matmul(mat, flat_x0, precision=_HIGHEST)
    else:
        flat_x0 = jnp.zeros_like(flat_b)
        rhs = flat_b
    istop = jnp.zeros((), jnp.int32)
    if check_symmetry:
        bad = _operator.dense_symmetry_defect(mat) > eps ** (1.0 / 3.0)
        istop = jnp.where(bad, Stop.NONSYMMETRIC_A, istop)
    sym = 0.5 * (mat + mat.T)
    if precond is not None:
        minv = jax.vmap(lambda e: ravel_pytree(precond(unravel(e)))[0], out_axes=1)(
            jnp.eye(n, dtype=flat_b.dtype)
        )
        if check_symmetry:
            bad_m = _operator.dense_symmetry_defect(minv) > eps ** (1.0 / 3.0)
            istop = jnp.where(bad_m & (istop == 0), Stop.NONSYMMETRIC_M, istop)
        s, mlam = _sym_sqrt(0.5 * (minv + minv.T))
        indefinite = jnp.min(mlam) <= 0
        istop = jnp.where(indefinite & (istop == 0), Stop.INDEFINITE_M, istop)
    else:
        s = None
    abar = sym if s is None else s @ sym @ s
    bbar = rhs if s is None else s @ rhs
    factor = symmetric_pinv(abar, rcond)
    xbar = factor.apply(bbar)
    dx = xbar if s is None else s @ xbar
    finite = jnp.all(jnp.isfinite(mat)) & jnp.all(jnp.isfinite(flat_b))
    istop = jnp.where(finite, istop, Stop.NONFINITE)
    dx = jnp.where(istop == 0, dx, 0)
    x = flat_x0 + dx
    info = dense_info(mat, flat_b, x, factor, rtol, istop)
    return _common.maybe_throw(unravel(x), info, throw, "dense_solve")
