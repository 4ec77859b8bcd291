"""Exact reference solver for small symmetric systems (eigendecomposition, pseudo-inverse)."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kktopt import _tree
from kktopt.krylov import _common, _operator
from kktopt.krylov._info import SolverInfo, Stop

PyTree = Any

__all__ = ["MinNormFactor", "dense_solve", "materialize", "min_norm_factor", "min_norm_solve"]

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
      lam_min: smallest |lambda| of all (dropped ones included).
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    inverse: jax.Array
    anorm: jax.Array
    kept_min: jax.Array
    lam_min: jax.Array | None = None

    @property
    def acond(self) -> jax.Array:
        """max |lambda| / min |lambda| over every eigenvalue, dropped ones included (inf if one is 0)."""
        low = self.kept_min if self.lam_min is None else self.lam_min
        return jnp.where(low > 0, _common.safe_div(self.anorm, low), jnp.inf).astype(self.anorm.dtype)

    def apply(self, b: jax.Array) -> jax.Array:
        """pinv(A) @ b."""
        q = self.eigenvectors
        return jnp.matmul(q, self.inverse * jnp.matmul(q.T, b, precision=_HIGHEST), precision=_HIGHEST)


def symmetric_pinv(mat: jax.Array, rcond) -> PinvFactor:
    """Factor a symmetric matrix for ``pinv``, dropping |lambda| <= rcond * max |lambda|."""
    lam, q = jnp.linalg.eigh(mat)
    if lam.shape[0] == 0:
        zero = jnp.zeros((), lam.dtype)
        return PinvFactor(lam, q, lam, zero, jnp.full((), jnp.inf, lam.dtype), jnp.full((), jnp.inf, lam.dtype))
    amax = jnp.max(jnp.abs(lam))
    keep = jnp.abs(lam) > rcond * amax
    inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
    kept_min = jnp.min(jnp.where(keep, jnp.abs(lam), jnp.inf))
    return PinvFactor(lam, q, inv, amax, kept_min, jnp.min(jnp.abs(lam)))


def dense_info(mat, b, x, factor: PinvFactor, rtol, istop) -> SolverInfo:
    """SolverInfo of a dense solve ``mat x = b`` (true residuals; istop 0 means it ran)."""
    r = b - jnp.matmul(mat, x, precision=_HIGHEST)
    ar = jnp.matmul(mat, r, precision=_HIGHEST)
    rnorm = _tree.tree_norm_safe(r)
    arnorm = _tree.tree_norm_safe(ar)
    xnorm = _tree.tree_norm_safe(x)
    bnorm = _tree.tree_norm_safe(b)
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
        acond=jnp.where(bnorm > 0, factor.acond, 1).astype(amax.dtype), xnorm=xnorm,
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
    if n == 0:
        return _common.maybe_throw(b if x0 is None else x0, _common.empty_info(op.dtype), throw, "dense_solve")
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
    # Apply the pseudo-inverse to bbar / scale (a power of two near max |bbar|):
    # no overflow for any finite right-hand side.
    scale = _tree.pow2_scale(jnp.max(jnp.abs(bbar)))
    xbar = factor.apply(bbar / scale) * scale
    dx = xbar if s is None else s @ xbar
    finite = jnp.all(jnp.isfinite(mat)) & jnp.all(jnp.isfinite(flat_b))
    istop = jnp.where(finite, istop, Stop.NONFINITE)
    dx = jnp.where(istop == 0, dx, 0)
    x = flat_x0 + dx
    info = dense_info(mat, flat_b, x, factor, rtol, istop)
    return _common.maybe_throw(unravel(x), info, throw, "dense_solve")


class MinNormFactor(NamedTuple):
    """A rank-revealing factorisation ``A = L diag(s) R^T`` of a rectangular matrix, for ``pinv(A)``.

    Built by :func:`min_norm_factor` from a Householder QR of ``A^T`` (wide
    ``A``) or of ``A`` (tall ``A``) and an SVD of the small square triangular
    factor; ``cond(A)`` is never squared. ``apply`` costs two matrix-vector
    products with the ``max(m, n) x min(m, n)`` orthonormal factor and three
    with small ones, so the factor can be reused, e.g. for iterative
    refinement ``x += factor.apply(b - A x)``.

    Attributes:
      q: the orthonormal factor of the QR decomposition, ``(max(m, n), min(m, n))``.
      u, vt: the SVD ``R = u diag(s) vt`` of the triangular factor.
      singular_values: ``s``, the singular values of ``A`` (descending).
      inverse: ``1 / s`` for the kept values, 0 for the dropped ones.
      wide: True when ``A`` had at least as many columns as rows (the QR was of ``A^T``).
      rank: the number of kept singular values.
    """

    q: jax.Array
    u: jax.Array
    vt: jax.Array
    singular_values: jax.Array
    inverse: jax.Array
    wide: bool
    rank: jax.Array

    @property
    def anorm(self) -> jax.Array:
        """||A||_2 = the largest singular value."""
        s = self.singular_values
        return s[0] if s.shape[0] else jnp.zeros((), s.dtype)

    @property
    def acond(self) -> jax.Array:
        """sigma_max / sigma_min over all ``min(m, n)`` singular values (inf if one is 0)."""
        s = self.singular_values
        if not s.shape[0]:
            return jnp.ones((), s.dtype)
        return jnp.where(s[-1] > 0, s[0] / jnp.where(s[-1] > 0, s[-1], 1), jnp.inf)

    def apply(self, rhs: jax.Array) -> jax.Array:
        """``pinv(A) @ rhs`` (rhs of length m, result of length n), truncated at the cut-off."""
        if self.wide:
            # A^T = Q U S V^T, so pinv(A) = Q U S^+ V^T.
            t = self.inverse * jnp.matmul(self.vt, rhs, precision=_HIGHEST)
            return jnp.matmul(self.q, jnp.matmul(self.u, t, precision=_HIGHEST), precision=_HIGHEST)
        # A = Q U S V^T, so pinv(A) = V S^+ U^T Q^T.
        t = jnp.matmul(self.u.T, jnp.matmul(rhs, self.q, precision=_HIGHEST), precision=_HIGHEST)
        return jnp.matmul(self.vt.T, self.inverse * t, precision=_HIGHEST)


def default_min_norm_rcond(m: int, n: int, dtype) -> float:
    """The default relative cut-off of :func:`min_norm_factor`: ``sqrt(max(m, n)) * eps``.

    Singular values are of ``A`` itself (not of ``A A^T``), so the cut-off is
    on ``sigma / sigma_max``, and a direction is dropped only when it is
    within rounding of zero: the computed singular values are exact for a
    matrix ``A + E`` with ``||E||_2`` of order ``sqrt(max(m, n)) eps ||A||_2``
    (the Householder QR bound of Higham, Accuracy and Stability of Numerical
    Algorithms, 2nd ed., Thm. 19.4, whose dimension factor behaves like its
    square root for rounding errors of random sign, Sec. 2.8), and the
    entries of ``A`` carry their own rounding of ``eps |a_ij|``, i.e.
    ``||E||_2 <= eps ||A||_F <= sqrt(min(m, n)) eps ||A||_2``. numpy's
    ``max(m, n) eps`` is the worst-case form of the same rule; it drops real
    directions in float32 on large Jacobians (n = 1e6: 0.12). In float32
    with m = 32, n = 1000 the cut-off is 3.8e-6, i.e. cond(A) up to 2.6e5
    is kept (the eigenvalue cut-off ``m eps`` on ``A A^T`` keeps cond(A) up to
    only about 510).
    """
    return math.sqrt(max(m, n, 1)) * float(jnp.finfo(dtype).eps)


def min_norm_factor(a: jax.Array, *, rcond=None) -> MinNormFactor:
    """Factor a rectangular matrix for its pseudo-inverse without forming ``A A^T``.

    Args:
      a: an ``(m, n)`` float matrix (any shape and rank).
      rcond: singular values ``sigma <= rcond * sigma_max`` count as zero
        (default :func:`default_min_norm_rcond`, ``sqrt(max(m, n)) eps``).

    Returns:
      A :class:`MinNormFactor`.

    References:
      G. H. Golub and C. F. Van Loan, Matrix Computations, 4th ed., Sec. 5.5.4
      (minimum-norm solutions via QR and SVD) and Sec. 5.4.8 (R-SVD: the SVD
      of ``A`` from the SVD of its triangular factor).
    """
    a = jnp.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"min_norm_factor: a must be a 2-D matrix, got shape {a.shape}.")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise ValueError(f"min_norm_factor: a must be real floating point, got {a.dtype}: cast it first.")
    m, n = a.shape
    wide = n >= m
    rcond = default_min_norm_rcond(m, n, a.dtype) if rcond is None else rcond
    q, r = jnp.linalg.qr(a.T if wide else a, mode="reduced")
    u, s, vt = jnp.linalg.svd(r, full_matrices=False)
    smax = s[0] if s.shape[0] else jnp.zeros((), a.dtype)
    keep = s > rcond * smax
    inverse = jnp.where(keep, 1 / jnp.where(keep, s, 1), 0)
    return MinNormFactor(q, u, vt, s, inverse, wide, jnp.sum(keep).astype(jnp.int32))


def min_norm_solve(
    a: jax.Array,
    b: jax.Array,
    *,
    rcond=None,
    rtol=None,
    refine: int = 1,
    throw: bool = False,
) -> tuple[jax.Array, SolverInfo]:
    """``pinv(A) @ b`` for a rectangular ``A``: the minimum-norm (least-squares) solution.

    For a wide ``A`` of full row rank this is the minimum-norm solution of
    ``A x = b``, ``A^T (A A^T)^-1 b``, computed from a Householder QR of
    ``A^T`` and an SVD of the ``m x m`` triangular factor (see
    :class:`MinNormFactor`): the error grows with ``cond(A)``, not with
    ``cond(A)^2`` as through the normal matrix ``A A^T``. Directions with
    ``sigma <= rcond * sigma_max`` are dropped (rank-deficient or duplicated
    rows), which gives the minimum-norm least-squares solution. ``refine``
    steps of iterative refinement ``x += pinv(A) (b - A x)`` reuse the
    factorisation. Cost: O(m^2 n) for the QR (wide ``A``), O(m^3) for the SVD.

    Args:
      a: an ``(m, n)`` matrix.
      b: a vector of length m.
      rcond: relative singular-value cut-off (default ``sqrt(max(m, n)) eps``;
        see :func:`default_min_norm_rcond` for why).
      rtol: a solution (istop 4) when ``||b - A x|| <= rtol (||A|| ||x|| + ||b||)``,
        else a least-squares solution (istop 6) when
        ``||A^T r|| <= rtol ||A|| ||r||``; otherwise istop 14 (the dropped
        directions or the conditioning left neither test met). Default 1e-10
        (float64), 1e-5 (float32).
      refine: steps of iterative refinement (default 1).
      throw: raise with the stop code's message when the solve does not succeed.

    Returns:
      ``(x, info)``, ``info`` a :class:`~kktopt.krylov.SolverInfo` with true
      residuals, ``anorm = sigma_max``, ``acond = sigma_max / sigma_min`` (all
      singular values; inf when A is exactly rank-deficient) and
      ``iterations = refine``. NaN or Inf in ``a`` or ``b`` gives istop 16 and
      ``x = 0``; ``b = 0`` gives istop 3. Use :func:`min_norm_factor` to keep
      the factorisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from kktopt.krylov import min_norm_solve
      >>> A = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
      >>> x, info = min_norm_solve(A, jnp.array([2.0, 2.0]))
      >>> [round(float(v), 4) for v in x]
      [0.6667, 1.3333, 0.6667]
    """
    a = jnp.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"min_norm_solve: a must be a 2-D matrix, got shape {a.shape}.")
    b = jnp.asarray(b)
    if b.ndim != 1 or b.shape[0] != a.shape[0]:
        raise ValueError(
            f"min_norm_solve: b must be a vector of length {a.shape[0]} (the rows of a), got shape {b.shape}."
        )
    dtype = jnp.result_type(a, b)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"min_norm_solve: a and b must be real floating point, got {dtype}.")
    a = a.astype(dtype)
    b = b.astype(dtype)
    m, n = a.shape
    if m == 0 or n == 0:
        info = _common.empty_info(dtype)
        if m > 0:
            bnorm = _tree.tree_norm_safe(b)
            info = info._replace(
                istop=jnp.where(bnorm > 0, Stop.LEAST_SQUARES_EPS, Stop.ZERO_RHS).astype(jnp.int32),
                rnorm=bnorm, relres=jnp.where(bnorm > 0, 1, 0).astype(dtype),
            )
        return _common.maybe_throw(jnp.zeros((n,), dtype), info, throw, "min_norm_solve")
    rtol = _operator.default_rtol(dtype) if rtol is None else rtol
    finite = jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b))
    a_ok = jnp.where(finite, a, 0)
    b_ok = jnp.where(finite, b, 0)
    factor = min_norm_factor(a_ok, rcond=rcond)
    scale = _tree.pow2_scale(jnp.max(jnp.abs(b_ok)))
    bs = b_ok / scale
    x = factor.apply(bs)
    for _ in range(refine):
        x = x + factor.apply(bs - jnp.matmul(a_ok, x, precision=_HIGHEST))
    x = jnp.where(finite, x * scale, 0)
    r = b_ok - jnp.matmul(a_ok, x, precision=_HIGHEST)
    ar = jnp.matmul(r, a_ok, precision=_HIGHEST)
    rnorm = _tree.tree_norm_safe(r)
    arnorm = _tree.tree_norm_safe(ar)
    xnorm = _tree.tree_norm_safe(x)
    bnorm = _tree.tree_norm_safe(b_ok)
    anorm = factor.anorm
    relres = _common.safe_div(rnorm, anorm * xnorm + bnorm)
    relares = _common.safe_div(arnorm, anorm * rnorm)
    istop = jnp.where(
        ~finite,
        Stop.NONFINITE,
        jnp.where(
            bnorm == 0,
            Stop.ZERO_RHS,
            jnp.where(
                relres <= rtol,
                Stop.SOLVED_RTOL,
                jnp.where(relares <= rtol, Stop.LEAST_SQUARES_RTOL, Stop.ACOND_LIMIT),
            ),
        ),
    ).astype(jnp.int32)
    izero = jnp.zeros((), jnp.int32)
    info = SolverInfo(
        istop=istop, iterations=jnp.asarray(refine, jnp.int32), minres_iterations=izero,
        qlp_iterations=izero, rnorm=rnorm, arnorm=arnorm, relres=relres, relares=relares,
        anorm=anorm, acond=factor.acond.astype(dtype), xnorm=xnorm,
    )
    return _common.maybe_throw(x, info, throw, "min_norm_solve")
