"""The m x m Schur complement system, dense or with a Krylov method.

    (A D^-1 A^T) Lambda = c + A u,   dw = u - D^-1 A^T Lambda.

Needs a metric with a cheap inverse (SGD and Adam; not Gauss-Newton).
``"dense"`` forms the matrix (one product of the m x N_p Jacobian: the
per-sample one, or m VJPs in one ``jax.vmap`` pass) and applies its pseudo-inverse
(eigendecomposition: exact minimum-norm for any rank); ``"minres_qlp"``,
``"minres"`` and ``"cg"`` solve it matrix-free, one VJP and one JVP per
iteration.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kktopt import _tree
from kktopt.kkt._linearize import Linearization
from kktopt.kkt._metric import Metric
from kktopt.kkt._solver import KKTSolution, KKTSolver, register_method, row_target
from kktopt.krylov import SolverInfo, Stop, cg, dense_solve, lsmr, min_norm_factor, minres, minres_qlp
from kktopt._tree import pow2_scale
from kktopt.krylov.dense import PinvFactor, dense_info, symmetric_pinv

_HIGHEST = jax.lax.Precision.HIGHEST
PyTree = Any


def default_dense_rcond(dtype) -> float:
    """Eigenvalue cut-off of ``method="dense"`` on ``A D^-1 A^T``, relative to its largest: ``4 eps``.

    The eigenvalues of the computed Schur complement carry an absolute error
    of order ``eps ||A D^-1 A^T||``, so only those within a few ``eps`` of
    zero are noise; the former ``m eps`` dropped real directions in float32
    (an eigenvalue ratio of 2e-6 at m = 32).
    """
    return 4.0 * float(jnp.finfo(dtype).eps)


def _inner_rtol(cfg: KKTSolver, dtype) -> jax.Array:
    """The Krylov solvers' own relative test: ``cfg.rtol`` when set, else eps (the row test decides)."""
    return cfg.tolerance(dtype) if cfg.rtol is not None else jnp.asarray(jnp.finfo(dtype).eps, dtype)


def _row_atol(cfg: KKTSolver, lin: Linearization, r: jax.Array) -> jax.Array:
    """Stop once the rows residual is half their target (`row_target`; ``r = c + A u``)."""
    return 0.5 * row_target(cfg, jnp.linalg.norm(lin.c), jnp.linalg.norm(r - lin.c))


def _unconstrained_step(lin: Linearization, metric: Metric, step, gradient):
    if metric.inverse is None:
        raise ValueError(
            f"the Schur complement needs a metric with a cheap inverse; the {metric.name} metric has "
            "none. Use solver=kktopt.KKTSolver(system='full') instead."
        )
    return metric.inverse(_tree.tree_scale(-1, gradient)) if step is None else step


def _finish(metric: Metric, lin: Linearization, step, lam, info, r: jax.Array) -> KKTSolution:
    """The step ``u - D^-1 A^T lam`` of multipliers ``lam`` for the rows ``r = c + A u``."""
    delta = metric.inverse(lin.vjp(lam))
    return KKTSolution(step=_tree.tree_lincomb((1.0, step), (-1.0, delta)), multipliers=lam, info=info,
                       step_rows_norm=jnp.linalg.norm(r - lin.c))


def _krylov_schur(krylov):
    def solve(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
        step = _unconstrained_step(lin, metric, step, gradient)
        r = lin.c + lin.jvp(step)

        def schur(lam):
            return lin.jvp(metric.inverse(lin.vjp(lam)))

        lam, info = krylov(
            schur,
            r,
            rtol=_inner_rtol(cfg, r.dtype),
            atol=_row_atol(cfg, lin, r),
            maxiter=cfg.iteration_limit(r.shape[0]),
            **({} if krylov is cg else {"maxxnorm": cfg.growth_bound(r.dtype)}),
            check_symmetry=False,
            check_residual=False,
        )
        return _finish(metric, lin, step, lam, info, r)

    return solve


_KRYLOV_SCHUR = {name: register_method("schur", name)(_krylov_schur(krylov))
                 for name, krylov in (("minres_qlp", minres_qlp), ("minres", minres), ("cg", cg))}


def _lsmr_restart(cfg: KKTSolver, lin: Linearization, metric: Metric, step) -> KKTSolution | None:
    """The first round after a failed Krylov solve on the Schur complement: the whole step by LSMR.

    A solve that stopped on a failure (condition limit, iteration limit,
    singular or incompatible verdict) can leave multipliers so far off that
    the rows of its step cancel beyond the working precision: a correction
    of them cannot recover, since ``A dw`` is no longer evaluated to the
    accuracy it needs (Hard-Adam at its default eps on the pose CNN: the
    rows stayed at 0.11 of ``||c||``). The step is solved again from u by
    LSMR on ``A D^-1/2`` (conditioning cond(A)). None without a diagonal metric.
    """
    if metric.inverse_diagonal is None:
        return None
    return _lsmr_solve(cfg, lin, metric, step, lin.c + lin.jvp(step))


@register_method("schur", "dense")
def _dense(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
    step = _unconstrained_step(lin, metric, step, gradient)
    if metric.inverse_diagonal is not None:
        # Form A once (the per-sample Jacobian, or m VJPs in batched
        # passes): the Schur complement is then one matmul, and a correction
        # round reuses A and the eigendecomposition instead of m more VJPs.
        a, unravel = lin.jacobian_matrix(step, cfg.vjp_batch)
        return _dense_from_matrix(cfg, lin, metric, step, a, unravel)
    r = lin.c + lin.jvp(step)

    def schur(lam):
        return lin.jvp(metric.inverse(lin.vjp(lam)))

    rcond = default_dense_rcond(r.dtype) if cfg.rcond is None else cfg.rcond
    lam, info = dense_solve(schur, r, rtol=cfg.tolerance(r.dtype), rcond=rcond, check_symmetry=False)
    return _finish(metric, lin, step, lam, info, r)


# Columns per block of `_gram`: on XLA:CPU one dot with a contraction of
# 1e5-1e6 columns runs 2-6x below the speed of the same product summed over
# blocks of ~2k columns (benchmarks/step_cost.py and hypersphere_steps.py).
_GRAM_BLOCK = 2048


def _gram(rows: jax.Array, col_scale: jax.Array | None = None) -> jax.Array:
    """``B B^T`` for ``B = rows * col_scale`` (columns scaled; ``rows`` itself when None).

    Summed over blocks of ``_GRAM_BLOCK`` columns in a ``lax.scan``: B is
    not formed, so a diagonal metric costs no m x N_p copy, and the long
    contraction runs as short dots, which XLA:CPU executes several times
    faster than one dot over every column.
    """
    m, n = rows.shape

    def block(r, s):
        b = r if s is None else r * s
        return jnp.matmul(b, b.T, precision=_HIGHEST)

    nb = n // _GRAM_BLOCK
    if nb < 2:
        return block(rows, col_scale)

    def body(acc, i):
        start = i * _GRAM_BLOCK
        r = jax.lax.dynamic_slice_in_dim(rows, start, _GRAM_BLOCK, axis=1)
        s = None if col_scale is None else jax.lax.dynamic_slice_in_dim(col_scale, start, _GRAM_BLOCK)
        return acc + block(r, s), None

    acc, _ = jax.lax.scan(body, jnp.zeros((m, m), rows.dtype), jnp.arange(nb))
    tail = nb * _GRAM_BLOCK
    if tail < n:
        acc = acc + block(rows[:, tail:], None if col_scale is None else col_scale[tail:])
    return acc


class _DenseFactor(NamedTuple):
    """What ``"dense"`` hands its correction rounds.

    ``B = A D^-1/2 = rows_scale * rows * col_scale``: ``rows`` is A itself
    (never a scaled copy), ``rows_scale`` the root of a scalar metric (else
    1) and ``col_scale`` the flat root of a diagonal one (else None);
    ``dinv`` (``D^-1``, scalar or flat), the unravel map of the flat
    parameters, and the eigendecomposition of ``S = B B^T``.
    """

    rows: jax.Array
    rows_scale: jax.Array
    col_scale: jax.Array | None
    dinv: jax.Array
    unravel: Callable
    schur: jax.Array
    pinv: PinvFactor


def _dense_from_matrix(cfg: KKTSolver, lin: Linearization, metric: Metric, step, a: jax.Array,
                       unravel: Callable) -> KKTSolution:
    dtype = a.dtype
    dinv = metric.inverse_diagonal
    if isinstance(dinv, (int, float)):
        # A scalar metric scales the small matrices, not the (m, N_p) one.
        rows_scale, col_scale = jnp.asarray(dinv ** 0.5, dtype), None
        dinv = jnp.asarray(dinv, dtype)
    else:
        dinv = ravel_pytree(dinv)[0].astype(dtype)
        rows_scale, col_scale = jnp.ones((), dtype), jnp.sqrt(dinv)
    schur = rows_scale ** 2 * _gram(a, col_scale)
    u = ravel_pytree(step)[0].astype(dtype)
    r = lin.c + jnp.matmul(a, u, precision=_HIGHEST)
    schur = 0.5 * (schur + schur.T)
    rcond = default_dense_rcond(dtype) if cfg.rcond is None else cfg.rcond
    factor = symmetric_pinv(schur, rcond)
    lam = factor.apply(r)
    # One step of iterative refinement on the constraint rows, reusing the
    # factorisation: in float32 it recovers the digits that the
    # cancellation between c and A u costs when the step is large.
    lam = lam + factor.apply(r - jnp.matmul(schur, lam, precision=_HIGHEST))
    # A non-finite entry of A makes its Gram matrix non-finite (its diagonal
    # sums the squares of every entry), so the small matrix is checked, not
    # another pass over A.
    finite = jnp.all(jnp.isfinite(schur)) & jnp.all(jnp.isfinite(r))
    istop = jnp.where(finite, 0, Stop.NONFINITE).astype(jnp.int32)
    lam = jnp.where(finite, lam, 0)
    info = dense_info(schur, r, lam, factor, cfg.tolerance(dtype), istop)
    dw = _tree.tree_lincomb((1.0, step), (-1.0, _tree.cast_like(unravel(_metric_rows(a, dinv, lam)), step)))
    return KKTSolution(step=dw, multipliers=lam, info=info, step_rows_norm=jnp.linalg.norm(r - lin.c),
                       factor=_DenseFactor(a, rows_scale, col_scale, dinv, unravel, schur, factor))


def _metric_rows(a: jax.Array, dinv: jax.Array, lam: jax.Array) -> jax.Array:
    """``D^-1 A^T lam`` over the flat parameters (one product with A)."""
    return dinv * jnp.matmul(lam, a, precision=_HIGHEST)


@register_method("schur", "dense", correction=True)
def _dense_correction(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient,
                      factor: _DenseFactor | None = None) -> KKTSolution:
    """A correction round of ``"dense"``: iterative refinement with the first solve's factor, or,
    past ``cond(S) > eps^-1/2``, the rows through a preconditioned second Gram matrix.

    The rows left by the first solve are ``r = lin.c``; ``step`` is zero (the
    contract of a correction round, see ``register_method``). While the
    computed ``S = A D^-1 A^T`` resolves every direction it keeps well
    (``cond(S) eps < eps^1/2``), its error ``O(eps ||S||)`` contracts each
    round of plain refinement by ``cond(S) eps``: the round is
    ``lam = pinv(S) r`` from the eigendecomposition already at hand, one
    pass over A (`_plain_round`). Beyond that, see `_gram_round`.
    """
    if factor is None:  # the first solve had no D^-1/2 to form B with: the plain dense round
        return _dense(cfg, lin, metric, step, gradient)
    dtype = factor.rows.dtype
    pinv = factor.pinv
    resolved = pinv.kept_min > jnp.sqrt(jnp.finfo(dtype).eps) * pinv.anorm
    args = (cfg, lin, metric, step, gradient, factor)
    return jax.lax.cond(resolved, lambda: _plain_round(*args), lambda: _gram_round(*args))


def _pinv_step(cfg: KKTSolver, r: jax.Array, pinv: PinvFactor, schur: jax.Array, step,
               delta_of: Callable[[jax.Array], PyTree]) -> KKTSolution:
    """``lam = pinv(S) r`` from an eigendecomposition at hand, and the step ``u - D^-1 A^T lam``."""
    finite = jnp.all(jnp.isfinite(r))
    r = jnp.where(finite, r, 0)
    lam = pinv.apply(r)
    istop = jnp.where(finite, 0, Stop.NONFINITE).astype(jnp.int32)
    info = dense_info(schur, r, lam, pinv, cfg.tolerance(r.dtype), istop)
    dw = _tree.tree_lincomb((1.0, step), (-1.0, _tree.cast_like(delta_of(lam), step)))
    return KKTSolution(step=dw, multipliers=lam, info=info)


def _plain_round(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient,
                 factor: _DenseFactor) -> KKTSolution:
    """Iterative refinement on the true rows with the first solve's eigendecomposition of S."""
    step = _unconstrained_step(lin, metric, step, gradient)
    return _pinv_step(cfg, lin.c, factor.pinv, factor.schur, step,
                      lambda lam: factor.unravel(_metric_rows(factor.rows, factor.dinv, lam)))


@register_method("schur", "dense", lagged=True)
def _dense_lagged(cfg: KKTSolver, lin: Linearization, metric: Metric, step, cache):
    """A step of ``KKTSolver(reuse=...)`` with the factor of an earlier step: ``(first solve, rounds)``.

    Neither A nor ``A D^-1 A^T`` is formed: the first solve applies the kept
    eigendecomposition to ``c + A u`` (one JVP) and takes the step
    ``u - D^-1 A^T lam`` (one VJP); each correction round does the same for
    the rows it is given. Iterative refinement with an approximate factor
    (a lagged preconditioner) converges while the factor is close to this
    step's Schur complement; when the rows move too far the rounds stop
    halving the residual and the solver refactors.
    """
    pinv = cache.pinv
    r = lin.c + lin.jvp(step)
    first = _pinv_step(cfg, r, pinv, cache.schur, step, lambda lam: metric.inverse(lin.vjp(lam)))
    first = first._replace(step_rows_norm=jnp.linalg.norm(r - lin.c))

    def correct(cfg: KKTSolver, lin_r: Linearization, metric: Metric, zero, gradient) -> KKTSolution:
        return _pinv_step(cfg, lin_r.c, pinv, cache.schur, zero, lambda lam: metric.inverse(lin_r.vjp(lam)))

    return first, correct


def _gram_round(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient,
                factor: _DenseFactor) -> KKTSolution:
    """The round for rows beyond plain refinement: a preconditioned second Gram matrix.

    Another solve through the computed ``S = A D^-1 A^T`` would repeat its
    error once ``cond(A D^-1/2)^2 eps`` nears 1: the eigenvalues of S below
    about ``eps ||S||`` are rounding. This round takes ``B = A D^-1/2``, the eigendecomposition
    ``S = V W V^T`` (W floored at ``4 eps ||S||``) and the preconditioned
    rows ``C = P B`` with ``P = W^-1/2 V^T``: orthonormal in every direction
    S resolves, so ``C C^T``, computed from C itself, is well conditioned. Then
    ``y = C^T pinv(C C^T) P r`` is the minimum-norm solution of
    ``B y = r`` (the preconditioner is invertible), with an error that
    grows with ``cond(C)^2``, not ``cond(B)^2``; the multipliers are
    ``lam = P^T pinv(C C^T) P r`` and the correction ``D^-1/2 C^T mu``. The
    same idea as CholeskyQR2 (a second Gram matrix of the once-orthogonalised
    rows); two more passes over A. ``factor`` is the first solve's: A and the
    eigendecomposition of S, so a round forms neither again. Rounds repeat
    while the rows fail and each round halves their residual.

    References:
      T. Fukaya, Y. Nakatsukasa, Y. Yanagisawa and Y. Yamamoto,
      "CholeskyQR2: a simple and communication-avoiding algorithm for
      computing a tall-skinny QR factorization on a large-scale parallel
      system", ScalA 2014.
    """
    a, unravel = factor.rows, factor.unravel
    dtype = a.dtype
    r = lin.c  # the rounds pass a zero step: no product A u to form
    w = factor.pinv.eigenvalues
    v = factor.pinv.eigenvectors
    w = jnp.where(jnp.isfinite(w), w, 0)
    v = jnp.where(jnp.isfinite(v), v, 0)
    rcond = default_dense_rcond(dtype) if cfg.rcond is None else cfg.rcond
    floor = jnp.maximum(default_dense_rcond(dtype) * jnp.max(jnp.abs(w), initial=0), jnp.finfo(dtype).tiny)
    pre = jax.lax.rsqrt(jnp.maximum(w, floor))[:, None] * v.T  # P = W^-1/2 V^T
    b = a if factor.col_scale is None else a * factor.col_scale
    # C itself, once: the correction is taken from the same computed C as its
    # Gram matrix, so C's rounding cancels in the rows (B C^T mu = P^-1 C C^T mu
    # up to P^-1 times that rounding). Through B^T P^T mu instead, the large
    # entries of P^T mu would meet B's rounding unchecked.
    cmat = factor.rows_scale * jnp.matmul(pre, b, precision=_HIGHEST)
    gram = _gram(cmat)
    gram = 0.5 * (gram + gram.T)
    # A non-finite entry of A makes this Gram matrix non-finite: checked here, not on A.
    finite = jnp.all(jnp.isfinite(gram)) & jnp.all(jnp.isfinite(r))
    gram = jnp.where(finite, gram, 0)
    rhs = jnp.matmul(pre, jnp.where(finite, r, 0), precision=_HIGHEST)
    factor2 = symmetric_pinv(gram, rcond)
    mu = factor2.apply(rhs)
    mu = jnp.where(finite, mu + factor2.apply(rhs - jnp.matmul(gram, mu, precision=_HIGHEST)), 0)
    istop = jnp.where(finite, 0, Stop.NONFINITE).astype(jnp.int32)
    info = dense_info(gram, rhs, mu, factor2, cfg.tolerance(dtype), istop)
    sqrt_dinv = factor.rows_scale if factor.col_scale is None else factor.col_scale
    delta = sqrt_dinv * jnp.matmul(mu, cmat, precision=_HIGHEST)  # D^-1/2 C^T mu
    step = _unconstrained_step(lin, metric, step, gradient)
    dw = _tree.tree_lincomb((1.0, step), (-1.0, _tree.cast_like(unravel(delta), step)))
    return KKTSolution(step=dw, multipliers=jnp.matmul(pre.T, mu, precision=_HIGHEST), info=info)


def _flat_inverse_diagonal(metric: Metric, n: int, dtype) -> jax.Array:
    dinv = metric.inverse_diagonal
    if isinstance(dinv, (int, float)):
        return jnp.full((n,), dinv, dtype)
    return ravel_pytree(dinv)[0].astype(dtype)


def _needs_diagonal(metric: Metric, method: str) -> None:
    if metric.inverse_diagonal is None:
        raise ValueError(
            f"KKTSolver(method={method!r}) needs a diagonal metric (SGD, Adam); the {metric.name} metric "
            "is not diagonal. Use solver=kktopt.KKTSolver(system='full') instead."
        )


@register_method("schur", "qr")
def _qr(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
    """Minimum D-norm correction ``delta = -D^-1/2 pinv(A D^-1/2) (c + A u)`` from a QR of ``(A D^-1/2)^T``.

    The error grows with ``cond(A D^-1/2)``, not its square; ``cfg.refine``
    rounds of iterative refinement on the constraint rows reuse the
    factorisation (one matmul with A each).
    """
    _needs_diagonal(metric, "qr")
    step = _unconstrained_step(lin, metric, step, gradient)
    a, unravel = lin.jacobian_matrix(step, cfg.vjp_batch)
    dtype = a.dtype
    n = a.shape[1]
    u = ravel_pytree(step)[0].astype(dtype)
    r = lin.c + jnp.matmul(a, u, precision=_HIGHEST)
    sqrt_dinv = jnp.sqrt(_flat_inverse_diagonal(metric, n, dtype))
    b = a * sqrt_dinv
    finite = jnp.all(jnp.isfinite(b)) & jnp.all(jnp.isfinite(r))
    b = jnp.where(finite, b, 0)
    r_ok = jnp.where(finite, r, 0)
    factor = min_norm_factor(b, rcond=cfg.rcond)
    # Work with r / scale (a power of two): no overflow for any finite r.
    scale = pow2_scale(jnp.max(jnp.abs(r_ok)))
    rs = r_ok / scale
    y = factor.apply(rs)
    for _ in range(max(cfg.refine, 1)):
        y = y + factor.apply(rs - jnp.matmul(b, y, precision=_HIGHEST))
    # y = B^T lam, so lam = pinv(B^T) y: V S^+ U^T Q^T y for a wide B (B^T = Q U S V^T),
    # Q U S^+ V^T y for a tall one (more rows than parameters: B = Q U S V^T).
    if factor.wide:
        t = jnp.matmul(factor.u.T, jnp.matmul(y, factor.q, precision=_HIGHEST), precision=_HIGHEST)
        lam = jnp.matmul(factor.vt.T, factor.inverse * t, precision=_HIGHEST) * scale
    else:
        t = factor.inverse * jnp.matmul(factor.vt, y, precision=_HIGHEST)
        lam = jnp.matmul(factor.q, jnp.matmul(factor.u, t, precision=_HIGHEST), precision=_HIGHEST) * scale
    y = y * scale
    res = r_ok - jnp.matmul(b, y, precision=_HIGHEST)
    rnorm = jnp.linalg.norm(res)
    bnorm = jnp.linalg.norm(r_ok)
    arnorm = jnp.linalg.norm(jnp.matmul(res, b, precision=_HIGHEST))
    anorm = factor.anorm
    xnorm = jnp.linalg.norm(y)
    relres = jnp.where(bnorm > 0, rnorm / jnp.where(bnorm > 0, bnorm, 1), 0)
    relares = jnp.where(anorm * rnorm > 0, arnorm / jnp.where(anorm * rnorm > 0, anorm * rnorm, 1), 0)
    rtol = cfg.tolerance(dtype)
    istop = jnp.where(
        ~finite, Stop.NONFINITE,
        jnp.where(bnorm == 0, Stop.ZERO_RHS,
                  jnp.where(relres <= rtol, Stop.SOLVED_RTOL,
                            jnp.where(relares <= rtol, Stop.LEAST_SQUARES_RTOL, Stop.ACOND_LIMIT))),
    ).astype(jnp.int32)
    izero = jnp.zeros((), jnp.int32)
    info = SolverInfo(
        istop=istop, iterations=izero, minres_iterations=izero, qlp_iterations=izero, rnorm=rnorm,
        arnorm=arnorm, relres=relres, relares=relares, anorm=anorm, acond=factor.acond.astype(dtype),
        xnorm=xnorm,
    )
    delta = jnp.where(finite, sqrt_dinv * y, 0)
    lam = jnp.where(finite, lam, 0)
    dw = _tree.tree_lincomb((1.0, step), (-1.0, _tree.cast_like(unravel(delta), step)))
    return KKTSolution(step=dw, multipliers=lam, info=info, step_rows_norm=jnp.linalg.norm(r - lin.c))


@register_method("schur", "lsmr")
def _lsmr(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
    """Minimum D-norm correction by LSMR on ``B = A D^-1/2``, matrix-free (conditioning cond(B)).

    ``y = pinv(B) r`` by LSMR; the multipliers ``lam = pinv(B^T) y`` by a
    second LSMR run on the tall ``B^T`` (each iteration one JVP and one VJP).
    """
    _needs_diagonal(metric, "lsmr")
    step = _unconstrained_step(lin, metric, step, gradient)
    return _lsmr_solve(cfg, lin, metric, step, lin.c + lin.jvp(step))


def _lsmr_round(krylov_solve):
    """The correction round of ``krylov_solve``, a Krylov method on the Schur complement: LSMR on ``A D^-1/2``.

    Another Krylov solve on ``A D^-1 A^T`` would meet the same squared
    conditioning that stopped the first one (in float32 it stalls once
    ``cond(A D^-1/2)^2 eps`` nears 1, as with Adam's metric at its default
    eps). LSMR works on ``A D^-1/2`` itself, so its attainable accuracy
    grows with ``cond(A D^-1/2)`` only; it runs only when the first solve
    missed the rows. The rows are ``lin.c`` (a round's step is zero).
    """

    def round_(cfg: KKTSolver, lin: Linearization, metric: Metric, step, gradient) -> KKTSolution:
        if metric.inverse_diagonal is None:  # no D^-1/2 to form A D^-1/2 with: repeat the method
            return krylov_solve(cfg, lin, metric, step, gradient)
        return _lsmr_solve(cfg, lin, metric, _unconstrained_step(lin, metric, step, gradient), lin.c)

    return round_


def _lsmr_solve(cfg: KKTSolver, lin: Linearization, metric: Metric, step, r) -> KKTSolution:
    dtype = lin.c.dtype
    dinv = metric.inverse_diagonal
    if isinstance(dinv, (int, float)):  # a scalar metric: no parameter-sized array of its root

        def scaled(v):
            return _tree.tree_scale(dinv ** 0.5, v)
    else:
        sqrt_dinv = jax.tree_util.tree_map(lambda d, p: jnp.sqrt(d).astype(p.dtype), dinv, step)

        def scaled(v):
            return jax.tree_util.tree_map(jnp.multiply, sqrt_dinv, v)

    def bmat(v):
        return lin.jvp(scaled(v))

    def bt(lam):
        return scaled(lin.vjp(lam))

    m = r.shape[0]
    maxiter = cfg.iteration_limit(m)
    y, info = lsmr(bmat, bt, r, x_like=step, rtol=_inner_rtol(cfg, dtype), atol=_row_atol(cfg, lin, r),
                   maxiter=maxiter)
    lam, info_lam = lsmr(bt, bmat, y, x_like=r, rtol=cfg.tolerance(dtype), maxiter=maxiter)
    info = info._replace(iterations=info.iterations + info_lam.iterations)
    dw = _tree.tree_lincomb((1.0, step), (-1.0, scaled(y)))
    return KKTSolution(step=dw, multipliers=lam, info=info, step_rows_norm=jnp.linalg.norm(r - lin.c))


for _name, _solve in _KRYLOV_SCHUR.items():
    register_method("schur", _name, correction=True)(_lsmr_round(_solve))
    register_method("schur", _name, restart=True)(_lsmr_restart)
