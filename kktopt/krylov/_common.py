"""Pieces shared by the Krylov solvers: argument resolution, reflections, exit checks."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from kktopt import _tree
from kktopt.krylov import _operator
from kktopt.krylov._info import SolverInfo, Stop, stop_message

PyTree = Any


class Settings(NamedTuple):
    """Tolerances of one solve, resolved to arrays of the solve's dtype."""

    rtol: jax.Array
    atol: jax.Array
    maxiter: jax.Array
    maxxnorm: jax.Array
    trancond: jax.Array
    acondlim: jax.Array
    rank_tol: jax.Array
    eps: float


def resolve_settings(
    dtype,
    size: int,
    *,
    rtol=None,
    atol=0.0,
    maxiter=None,
    maxxnorm=None,
    trancond=None,
    acondlim=None,
    rank_tol=None,
) -> Settings:
    """Fill in dtype-aware defaults; every value may be a Python number or a traced array.

    Defaults (float64 / float32): rtol 1e-10 / 1e-5; maxiter 4 n; maxxnorm
    1e7 / 1e4 and trancond 1e7 / 1e4 (the reference software's choices for
    double and single precision); acondlim 1e15 / 1e6 (10^floor(log10(1/eps)));
    rank_tol max(rtol, eps^(2/3)).
    User values of trancond and acondlim are capped at 1/eps, as in the
    reference software. ``maxxnorm`` bounds the growth ratio
    ``||A|| ||x|| / ||b||`` (invariant to the scaling of A and b; the reference
    software bounds ``||x||`` itself, which is the same for ``||A|| = ||b|| = 1``);
    it is not capped (``inf`` disables the bound).
    """
    eps = _operator.dtype_eps(dtype)
    single = eps > 1e-10
    normmax = 1e4 if single else 1e7
    epsinv = 10.0 ** math.floor(math.log10(1.0 / eps))
    cap = 1.0 / eps

    def arr(value, default, upper=None):
        value = default if value is None else value
        value = jnp.asarray(value, dtype)
        if upper is not None:
            value = jnp.minimum(value, jnp.asarray(upper, dtype))
        return value

    if isinstance(rtol, (int, float)) and rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}.")
    if isinstance(maxiter, int) and maxiter < 0:
        raise ValueError(f"maxiter must be >= 0, got {maxiter}.")
    return Settings(
        rtol=arr(rtol, _operator.default_rtol(dtype)),
        atol=arr(atol, 0.0),
        maxiter=jnp.asarray(4 * size if maxiter is None else maxiter, jnp.int32),
        maxxnorm=arr(maxxnorm, normmax),
        trancond=arr(trancond, normmax, cap),
        acondlim=arr(acondlim, epsinv, epsinv),
        rank_tol=arr(rank_tol, 0.0)
        if rank_tol is not None
        else jnp.maximum(arr(rtol, _operator.default_rtol(dtype)), eps ** (2.0 / 3.0)),
        eps=eps,
    )


def sym_ortho(a: jax.Array, b: jax.Array):
    """Stable 2x2 reflection: returns (c, s, r) with [c s; s -c] [a; b] = [r; 0], r >= 0.

    Golub and Van Loan (Matrix Computations, 3rd ed., Alg. 5.1.3) style: the
    ratio of the smaller to the larger entry is formed so nothing overflows.
    ``sym_ortho(0, 0) = (1, 0, 0)``.
    """
    abs_a = jnp.abs(a)
    abs_b = jnp.abs(b)
    tiny = jnp.finfo(jnp.result_type(a)).tiny
    one = jnp.ones_like(a)
    zero = jnp.zeros_like(a)
    safe_a = jnp.where(abs_a > tiny, a, one)
    safe_b = jnp.where(abs_b > tiny, b, one)
    # |b| > |a| > 0
    t_b = a / safe_b
    s_b = jnp.sign(safe_b) / jnp.sqrt(1 + t_b * t_b)
    c_b = s_b * t_b
    r_b = safe_b / s_b
    # |a| >= |b| > 0
    t_a = b / safe_a
    c_a = jnp.sign(safe_a) / jnp.sqrt(1 + t_a * t_a)
    s_a = c_a * t_a
    r_a = safe_a / c_a

    b_zero = abs_b <= tiny
    a_zero = abs_a <= tiny
    b_bigger = abs_b > abs_a
    c = jnp.where(b_zero, jnp.where(a == 0, one, jnp.sign(safe_a)), jnp.where(a_zero, zero, jnp.where(b_bigger, c_b, c_a)))
    s = jnp.where(b_zero, zero, jnp.where(a_zero, jnp.sign(safe_b), jnp.where(b_bigger, s_b, s_a)))
    r = jnp.where(b_zero, abs_a, jnp.where(a_zero, abs_b, jnp.where(b_bigger, r_b, r_a)))
    return c, s, r


def symmetry_probe(matvec: Callable, y: PyTree, eps: float) -> jax.Array:
    """True when ``matvec`` fails the reference software's symmetry probe at ``y``.

    For symmetric A, (A y)'(A y) = y'(A (A y)); a relative gap above eps^(1/3)
    flags the operator as nonsymmetric. Costs two operator applications.
    """
    w = matvec(y)
    r = matvec(w)
    s = _tree.tree_dot(w, w)
    t = _tree.tree_dot(y, r)
    return jnp.abs(s - t) > (jnp.abs(s) + eps) * eps ** (1.0 / 3.0)


def input_checks(
    op: _operator.Operator,
    b: PyTree,
    precond: Callable | None,
    eps: float,
    check_symmetry: bool,
):
    """Checks run before iterating: returns (istop, y = M^-1 b, beta1 = sqrt(b' M^-1 b)).

    istop is 0 when the iteration may start, else one of ZERO_RHS,
    NONFINITE, NONSYMMETRIC_A, NONSYMMETRIC_M, INDEFINITE_M.
    """
    y = b if precond is None else precond(b)
    beta1_sq = _tree.tree_dot(b, y)
    istop = jnp.zeros((), jnp.int32)
    if precond is not None:
        ynorm = _tree.tree_norm(y)
        istop = jnp.where((beta1_sq < 0) & (ynorm > eps), Stop.INDEFINITE_M, istop)
        if check_symmetry:
            r2 = precond(y)
            s = _tree.tree_dot(y, y)
            t = _tree.tree_dot(b, r2)
            bad_m = jnp.abs(s - t) > (jnp.abs(s) + eps) * eps ** (1.0 / 3.0)
            istop = jnp.where(bad_m & (istop == 0), Stop.NONSYMMETRIC_M, istop)
    if check_symmetry:
        if op.matrix is not None:
            bad_a = _operator.dense_symmetry_defect(op.matrix) > eps ** (1.0 / 3.0)
        else:
            bad_a = symmetry_probe(op.matvec, y, eps)
        istop = jnp.where(bad_a & (istop == 0), Stop.NONSYMMETRIC_A, istop)
    istop = jnp.where(beta1_sq == 0, Stop.ZERO_RHS, istop)
    finite = jnp.isfinite(beta1_sq) & _tree.tree_all_finite(y)
    istop = jnp.where(finite, istop, Stop.NONFINITE).astype(jnp.int32)
    beta1 = jnp.sqrt(jnp.maximum(beta1_sq, 0))
    return istop, y, beta1


def exit_residual(matvec: Callable, b: PyTree, x: PyTree):
    """True ||b - A x|| and ||A (b - A x)|| (two operator applications)."""
    r = _tree.tree_sub(b, matvec(x))
    ar = matvec(r)
    return _tree.tree_norm_safe(r), _tree.tree_norm_safe(ar)


def finish_info(
    info: SolverInfo, matvec: Callable, b: PyTree, x: PyTree, check_residual: bool
) -> SolverInfo:
    """Replace recurred residual estimates by true ones when asked to."""
    if not check_residual:
        return info
    rnorm, arnorm = exit_residual(matvec, b, x)
    bnorm = _tree.tree_norm_safe(b)
    xnorm = _tree.tree_norm_safe(x)
    denom = info.anorm * xnorm + bnorm
    relres = jnp.where(denom > 0, rnorm / jnp.where(denom > 0, denom, 1), 0)
    denom2 = info.anorm * rnorm
    relares = jnp.where(denom2 > 0, arnorm / jnp.where(denom2 > 0, denom2, 1), 0)
    return info._replace(rnorm=rnorm, arnorm=arnorm, relres=relres, relares=relares, xnorm=xnorm)


def maybe_throw(x: PyTree, info: SolverInfo, throw: bool, name: str):
    """Raise when a solve failed, with the message of the code that occurred.

    Uses ``equinox.branched_error_if``, so it also raises under jit (at
    runtime, when the result is used).
    """
    if not throw:
        return x, info
    bad = ~info.success
    msgs = [
        f"{name} failed with istop {code}: {stop_message(code)}" for code in range(max(Stop) + 1)
    ]
    index = jnp.clip(info.istop, 0, max(Stop))

    def check(leaf):
        if jnp.ndim(bad) == 0:
            return eqx.branched_error_if(leaf, bad, index, msgs)
        return eqx.branched_error_if(leaf, jnp.any(bad), jnp.max(jnp.where(bad, index, 0)), msgs)

    x = jax.tree_util.tree_map(check, x)
    return x, info


def linear_solve(matvec: Callable, b: PyTree, solve: Callable) -> tuple[PyTree, SolverInfo]:
    """Wrap a solver in ``lax.custom_linear_solve`` so gradients use implicit rules.

    Derivatives of x = A^-1 b with respect to b and to the arrays the operator
    closes over are themselves solves with the same (symmetric) operator; the
    loop is never unrolled for reverse mode.
    """
    return jax.lax.custom_linear_solve(matvec, b, solve, symmetric=True, has_aux=True)


class Lanczos(NamedTuple):
    """Carry of the (preconditioned) symmetric Lanczos process.

    ``r1``, ``r2`` are the last two unnormalised Lanczos vectors (beta_{k-1}
    v_{k-1} and beta_k v_k in the M-inner-product sense) and ``y = M^-1 r2``.
    Without a preconditioner ``y`` is ``r2`` itself and is not carried
    (``y = None``): one vector less in the loop state.
    """

    r1: PyTree
    r2: PyTree
    y: PyTree | None
    beta: jax.Array  # beta_k
    betan: jax.Array  # beta_{k+1}


def lanczos_init(b: PyTree, y: PyTree, beta1: jax.Array, precond: Callable | None) -> Lanczos:
    return Lanczos(
        r1=b, r2=b, y=None if precond is None else y, beta=jnp.zeros_like(beta1), betan=beta1
    )


def lanczos_step(
    matvec: Callable, precond: Callable | None, lz: Lanczos, first: jax.Array, eps: float
):
    """One Lanczos step: returns (v_k, alpha_k, new carry, M-indefinite flag, finite flag).

    beta_{k+1} v_{k+1} = A v_k - alpha_k v_k - beta_k v_{k-1} with
    ``beta_{k+1} = sqrt(r' M^-1 r)``. One operator application (and one
    preconditioner application).
    """
    beta = lz.betan
    v = _tree.tree_scale(1 / beta, lz.r2 if precond is None else lz.y)
    p = matvec(v)
    p = _tree.tree_axpy(jnp.where(first, 0, -beta / jnp.where(first, 1, lz.beta)), lz.r1, p)
    alfa = _tree.tree_dot(v, p)
    p = _tree.tree_axpy(-alfa / beta, lz.r2, p)
    if precond is None:
        y = None
        betan_sq = _tree.tree_dot(p, p)
        m_indefinite = jnp.array(False)
    else:
        y = precond(p)
        betan_sq = _tree.tree_dot(p, y)
        m_indefinite = (betan_sq < 0) & (_tree.tree_norm(y) > eps)
    finite = jnp.isfinite(alfa) & jnp.isfinite(betan_sq)
    betan = jnp.sqrt(jnp.maximum(betan_sq, 0))
    return v, alfa, Lanczos(r1=lz.r2, r2=p, y=y, beta=beta, betan=betan), m_indefinite, finite


def hypot(*xs):
    """sqrt(sum x_i^2) of a few scalars."""
    return jnp.sqrt(sum(x * x for x in xs))


def safe_div(a, b):
    """a / b with b = 0 replaced by 1 (callers mask the result)."""
    return a / jnp.where(b == 0, jnp.ones_like(b), b)


def stop_verdict(
    istop: jax.Array,
    *,
    k: jax.Array,
    relres: jax.Array,
    relaresl: jax.Array,
    rnorm: jax.Array,
    xnorm: jax.Array,
    anorm: jax.Array,
    acond: jax.Array,
    betan: jax.Array,
    beta1: jax.Array,
    settings: Settings,
    ls_stagnated: jax.Array | None = None,
) -> jax.Array:
    """The stopping tests of the MINRES family, in the reference software's order.

    The first test that holds sets the code; when none holds ``istop`` is
    returned unchanged (0 to continue, or a code set earlier in the step).
    ``relaresl`` is ||A r_{k-1}|| / (||A|| ||r_{k-1}||): the least-squares
    tests lag one step behind. ``ls_stagnated`` (MINRES-QLP only) marks a
    least-squares solution that cannot improve further in this precision; it
    counts as LEAST_SQUARES_EPS.
    """
    eps = settings.eps
    checks = [
        (1 + relres <= 1, Stop.SOLVED_EPS),
        (1 + relaresl <= 1, Stop.LEAST_SQUARES_EPS),
        (relres <= settings.rtol, Stop.SOLVED_RTOL),
        (rnorm <= settings.atol, Stop.SOLVED_ABSTOL),
        (relaresl <= settings.rtol, Stop.LEAST_SQUARES_RTOL),
        (jnp.array(False) if ls_stagnated is None else ls_stagnated, Stop.LEAST_SQUARES_EPS),
        (anorm * xnorm * eps >= beta1, Stop.EIGENVECTOR),
        (anorm * xnorm >= settings.maxxnorm * beta1, Stop.XNORM_LIMIT),
        ((acond >= settings.acondlim) | (acond >= 0.1 / eps), Stop.ACOND_LIMIT),
        (k >= settings.maxiter, Stop.MAXITER),
        # Krylov subspace exhausted: beta_{k+1} is rounding noise.
        (betan <= eps ** (2.0 / 3.0) * anorm, Stop.LANCZOS_EXHAUSTED),
    ]
    verdict = istop
    for fired, code in reversed(checks):
        verdict = jnp.where(fired, code, verdict)
    return verdict.astype(jnp.int32)


def run_solver(
    loop: Callable,
    name: str,
    A,
    b: PyTree,
    *,
    shift,
    preconditioner,
    x0,
    check_symmetry: bool,
    check_residual: bool,
    throw: bool,
    **tolerances,
) -> tuple[PyTree, SolverInfo]:
    """Everything around a solver's iteration: checks, warm start, implicit gradients, exit.

    ``loop(matvec, b, precond, y0, beta1, istop0, settings, dtype)`` runs the
    iteration from x = 0 and returns ``(x, info)``.
    """
    op = _operator.make_operator(A, b, shift=shift)
    precond = _operator.make_preconditioner(preconditioner, b)
    settings = resolve_settings(op.dtype, op.size, **tolerances)
    if x0 is not None:
        _operator._check_same_structure("x0", x0, b)
    if op.size == 0:
        return maybe_throw(
            _tree.tree_zeros_like(b) if x0 is None else x0, empty_info(op.dtype), throw, name
        )

    def solve(matvec, rhs):
        # Solve with rhs / s for a power of two s near max |rhs| (exact), so
        # that no norm or inner product of the iteration over- or underflows
        # for a finite rhs of any size; the solution is s x.
        scale = _tree.pow2_scale(_tree.tree_max_abs(rhs))
        rhs_s = jax.tree_util.tree_map(lambda u: u / scale, rhs)
        s = settings._replace(atol=settings.atol / scale)
        istop0, y0, beta1 = input_checks(op, rhs_s, precond, s.eps, check_symmetry)
        # maxiter = 0 runs no iteration.
        istop0 = jnp.where((istop0 == 0) & (s.maxiter <= 0), Stop.MAXITER, istop0).astype(jnp.int32)
        x, info = loop(matvec, rhs_s, precond, y0, beta1, istop0, s, op.dtype)
        x = _tree.tree_scale(scale, x)
        info = info._replace(
            rnorm=info.rnorm * scale,
            arnorm=jnp.where(info.arnorm >= 0, info.arnorm * scale, info.arnorm),
            xnorm=info.xnorm * scale,
        )
        return x, finish_info(info, matvec, rhs, x, check_residual and x0 is None)

    if x0 is None:
        x, info = linear_solve(op.matvec, b, solve)
    else:
        rhs = _tree.tree_sub(b, op.matvec(x0))
        dx, info = linear_solve(op.matvec, rhs, solve)
        x = jax.tree_util.tree_map(jnp.add, x0, dx)
        info = finish_info(info, op.matvec, b, x, check_residual)
    return maybe_throw(x, info, throw, name)


def empty_info(dtype) -> SolverInfo:
    """The info of a solve with n = 0 unknowns: x is the empty vector, istop ZERO_RHS."""
    info = SolverInfo.empty(dtype)
    return info._replace(istop=jnp.asarray(Stop.ZERO_RHS, jnp.int32), acond=jnp.ones((), dtype))
