"""``project_outputs``: the per-sample closest point on the constraint set, differentiable."""

from __future__ import annotations

import math
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kktopt.outputs._bounds import clip_box, make_bound_solver
from kktopt.outputs._info import ProjectionInfo, ProjectionStatus

_RUNNING = -1
_ARMIJO = 1e-4
_PDAS_ROUNDS = 16


def default_tol(dtype) -> float:
    """The default relative tolerance of `project_outputs` for a float dtype.

    float64: 1e-10; float32: 2e-6; float16/bfloat16: 1e-2. These sit about two
    orders of magnitude above the rounding level of constraint values of the
    form ``J y`` in that dtype (see `project_outputs` for how `tol` is used).
    """
    eps = float(jnp.finfo(dtype).eps)
    if eps < 1e-15:
        return 1e-10
    if eps < 1e-6:
        return 2e-6
    return 1e-2


def _as_flat_constraints(fn, sample_shape, dtype, name):
    """Closure-converted ``fn`` (its closed-over arrays become leaves) and its output size."""
    if fn is None:
        return None, 0
    if not callable(fn):
        raise TypeError(f"{name} must be a function of one sample's output, got {type(fn).__name__}.")
    example = jnp.zeros(sample_shape, dtype)
    try:
        out = jax.eval_shape(fn, example)
    except Exception as err:  # re-raised with the expected call shape
        raise ValueError(
            f"{name} must map ONE sample's output, an array of shape {sample_shape} (y_hat[0]), to "
            f"its constraint values; calling it on that shape failed: {err}") from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(f"{name} must return one array of constraint values, got {out}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{name} must return floating constraint values, got dtype {out.dtype}.")
    return eqx.filter_closure_convert(fn, example), math.prod(out.shape)


def project_outputs(
    constraint_fn: Callable[[jax.Array], jax.Array] | None,
    y_hat: ArrayLike,
    *,
    inequality_fn: Callable[[jax.Array], jax.Array] | None = None,
    weight: ArrayLike | None = None,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    max_iter: int = 50,
    max_backtracks: int = 12,
    hessian: bool = False,
) -> tuple[jax.Array, ProjectionInfo]:
    """Project each sample of a batch onto its constraint set, differentiably.

    For every sample ``i`` solves

        y_i = argmin_y 1/2 ||y - y_hat_i||_W^2   s.t.  c(y) = 0,  g(y) <= 0,

    with ``c = constraint_fn`` and ``g = inequality_fn`` applied to one
    sample, and ``W = diag(weight)``. This is the output layer of HardNet,
    KKT-hPINN, ENFORCE and Pi-net, for general smooth nonlinear constraints.

    Forward pass (per sample, batched over the leading axis): Gauss-Newton
    SQP iterations, each the exact closest point to ``y_hat`` on the current
    linearisation of the working constraints, from an orthonormal basis of
    the row space of the weighted Jacobian ``J W^{-1/2}``: a thin SVD
    computed as a Householder QR of its transpose and an SVD of the m x m
    triangle (accuracy governed by cond(J), not cond(J)^2; singular values
    below ``10 max(m, n) eps s_max`` are dropped, so a rank-deficient or
    incompatible system gives the minimum-norm least-squares step). For
    equality constraints with at most 16 rows the iterations first use
    CholeskyQR2 (two Cholesky passes on m x m Gram matrices, written out so
    that they vectorise over the batch), accepted only where it is as
    accurate (``cond(J)^2 eps < 0.1``), else the sample continues with the
    SVD; and once at most 16 samples of the batch are still iterating, those
    continue on their own instead of the whole batch waiting for the
    slowest. An Armijo backtracking line search runs on the merit
    function ``1/2 ||y - y_hat||_W^2 + rho ||c(y)||`` (``rho`` above the
    multipliers' norm, which makes every step a descent direction; Nocedal
    and Wright 2006, Sec. 18.3-18.4). Gauss-Newton converges linearly, at a
    rate about ``|lambda| * curvature`` (small when the corrections are small
    against the constraints' radius of curvature, as for bone lengths);
    ``hessian=True`` adds the curvature of the constraints (the Hessian of the
    Lagrangian, applied by forward-over-reverse products, tangential step by
    projected CG, Gauss-Newton step wherever it is not positive definite) for
    fewer iterations on large corrections. Inequalities enter through a
    working set updated by the primal-dual active-set rule (Hintermuller, Ito
    and Kunisch 2002): an inequality joins when violated, leaves when its
    multiplier is negative; the working set is treated as equalities. After
    16 such rounds (the rule can cycle when constraints couple) the working
    set changes by one constraint per round (drop the most negative
    multiplier, else add the most violated inequality), as in primal
    active-set methods (Nocedal and Wright 2006, Alg. 16.3).

    Guarantee: a sample is reported ``CONVERGED`` only at a KKT point of the
    projection problem, to tolerance, checked on the returned ``y``:

    * ``|c_j(y)| <= atol + tol * s_j`` and ``g_j(y) <= atol + tol * s_j``,
      with ``s_j = ||J_j||_1 ||y||_inf`` (the size of the rounding error of a
      constraint value ``J_j y``);
    * ``||P_T W^{1/2} (y - y_hat)|| <= tol (||W^{1/2} (y - y_hat)|| +
      ||W^{1/2} y||_inf)``, where ``P_T`` projects on the tangent space of the
      working constraints (stationarity: ``W (y - y_hat) = -J^T nu``);
    * ``mu_j ||J_j W^{-1/2}|| >= -tol (...)`` (same scale) for working
      inequalities, ``mu_j = 0`` for the others (dual feasibility,
      complementarity).

    An input that already satisfies them is returned unchanged (bit for bit)
    with 0 iterations. Every other outcome carries its
    :class:`ProjectionStatus` code: ``MAX_ITER``, ``INFEASIBLE`` (least-squares
    point of an incompatible linearisation), ``NONFINITE`` (NaN/Inf in
    ``y_hat`` or the constraints; ``y`` is then ``y_hat`` or the last finite
    iterate), ``STALLED``. Without inequalities the result is a local
    minimiser when the reduced Hessian is positive definite (always for
    linear and convex constraints); a KKT point is what is checked.

    Bounds (``lower``/``upper``, no ``inequality_fn``): a box alone is the
    clip (exact in any diagonal metric, 0 or 1 iterations). With equalities,
    each Gauss-Newton iteration solves the linearised problem with the box
    exactly, through its concave dual in the m equality multipliers:
    ``y(lambda) = clip(y_hat - W^-1 J^T lambda)``, maximised by semismooth
    Newton, whose step is the m x m equality system on the free coordinates
    (those strictly inside the box; an active bound fixes its coordinate),
    with an Armijo search on the dual and a gradient step 1/L along rows the
    free coordinates cannot reach (globally convergent ascent; piecewise
    quadratic, so exact once the free set is right; Hintermuller, Ito and
    Kunisch 2002). Linear equalities take one iteration plus the check.
    ``CONVERGED`` means ``|c_j(y)| <= atol + tol s_j``, ``lower <= y <=
    upper`` exactly, and the natural KKT residual ``||W^{1/2} (y -
    clip(y_hat - W^-1 J^T lambda))||`` below the stationarity bound above.
    An empty set (equalities that cannot hold in the box) ends ``MAX_ITER``
    or ``STALLED``. For nonlinear equalities the iteration is Gauss-Newton
    (linear rate, about ``|lambda| * curvature``): large corrections against
    the constraints' curvature may end ``MAX_ITER``. The backward pass is
    implicit on the free coordinates (projected CG preconditioned with
    ``W``: exact in one step for linear equalities; Gould, Hribar and Nocedal
    2001), zero on the fixed ones.

    Backward pass: implicit differentiation of the KKT conditions at ``y``
    (``jax.custom_vjp``), not unrolling: with ``H = W + sum_j nu_j
    Hess c_j(y)`` (working set only), the adjoint solves
    ``[[H, J^T], [J, 0]] [u; s] = [y_bar; 0]`` by the null-space method
    (projected CG on the reduced Hessian, matrix-free Hessian-vector
    products; Nocedal and Wright Alg. 16.2); then
    ``y_hat_bar = W u``, and arrays the constraint functions close over (or
    hold, as Equinox modules) get their gradients too, as does ``weight``.
    Active inequalities are differentiated as equalities (the active set is
    locally constant, i.e. strict complementarity is assumed). Gradients are
    those of the returned point; they are exact where it is ``CONVERGED``.
    The iteration state and ``info`` are not differentiated.

    Args:
      constraint_fn: equalities ``c(y) = 0`` of ONE sample: a function of an
        array shaped like ``y_hat[0]`` returning the constraint values (any
        shape). ``None`` for inequalities only. It should be differentiable
        at the points of interest (for norms, use one with a finite
        derivative at 0, e.g. ``jnp.where(sq > 0, jnp.sqrt(...), 0)``).
      y_hat: the raw outputs, shape ``(batch, *sample_shape)``, float32 or
        float64.
      inequality_fn: optional inequalities ``g(y) <= 0`` of one sample.
      weight: optional positive diagonal weight ``W``, broadcastable to
        ``y_hat.shape`` (one sample's shape, or per sample); default 1.
      lower, upper: optional bounds ``lower <= y <= upper`` (scalars, one
        sample's shape or per sample; ``-inf``/``inf`` for none; fixed: no
        gradient flows into them). Without ``inequality_fn`` they are
        handled by elimination (see "Bounds" above): every iterate lies in
        the box, so the bounds hold exactly. With ``inequality_fn`` they join
        its rows (shared, concrete bounds only).
      tol: relative tolerance (Python float); default `default_tol` of the
        dtype (float32 2e-6, float64 1e-10).
      atol: absolute tolerance on constraint values, in their units.
      max_iter: iteration limit (Gauss-Newton steps plus working-set
        changes) per sample.
      max_backtracks: halvings of the step allowed in the line search.
      hessian: use SQP steps with the Lagrangian's Hessian (fewer, dearer
        iterations; measured on Eq. 15 in float32 it can end ``STALLED`` near
        the rounding level); default False: Gauss-Newton steps.

    Returns:
      ``(y, info)``: ``y`` shaped like ``y_hat``, and a
      :class:`ProjectionInfo` whose fields have the batch axis first.

    Raises:
      ValueError: if ``y_hat`` has no batch axis or is not floating, if a
        constraint function cannot be called on one sample, if ``weight``
        does not broadcast or is not positive, or if neither constraint
        function is given.

    Example:
      >>> import jax, jax.numpy as jnp, kktopt
      >>> def on_sphere(y):                      # one sample: ||y|| = 2
      ...     return jnp.sum(y**2, keepdims=True) - 4.0
      >>> y_hat = jnp.array([[3.0, 4.0], [0.0, 1.0]])
      >>> y, info = kktopt.project_outputs(on_sphere, y_hat)
      >>> [round(float(v), 4) for v in y[0]]
      [1.2, 1.6]
      >>> info.converged.tolist()
      [True, True]
      >>> loss = lambda y_hat: jnp.sum(kktopt.project_outputs(on_sphere, y_hat)[0][:, 0])
      >>> g = jax.grad(loss)(y_hat)             # implicit, through the KKT system
      >>> simplex = lambda y: jnp.sum(y, keepdims=True) - 1.0   # with y >= 0 (a bound)
      >>> kktopt.project_outputs(simplex, jnp.array([[2.0, -1.0, 0.5]]), lower=0.0)[0].tolist()
      [[1.0, 0.0, 0.0]]

    References:
      Min, Azizan (2024), "HardNet: Hard-Constrained Neural Networks with
      Universal Approximation Guarantees", arXiv:2410.10807 (affine case).
      Chen, Flores-Cerrillo, Ierapetritou et al. (2024), "Physics-informed
      neural networks with hard linear equality constraints" (KKT-hPINN),
      Computers & Chemical Engineering 189.
      Lastrucci et al. (2025), "ENFORCE: Nonlinear Constrained Learning with
      Adaptive-depth Neural Projection"; HardNet++ (2025-26).
      Grontas, Terpin, Balta, D'Andrea, Lygeros (2026), "Pi-net: Hard-
      Constrained Neural Networks via Operator Splitting", ICLR 2026.
      Nocedal, Wright (2006), "Numerical Optimization", 2nd ed., Ch. 16.5
      (active sets), 18.1-18.4 (SQP, merit functions, line search).
      Hintermuller, Ito, Kunisch (2002), SIAM J. Optim. 13(3):865-888
      (primal-dual active set strategy).
      Fukaya, Nakatsukasa, Yanagisawa, Yamamoto (2014), "CholeskyQR2: a
      simple and communication-avoiding algorithm for computing a tall-skinny
      QR factorization", ScalA 2014 (the fast factorisation).
    """
    y_hat = jnp.asarray(y_hat)
    if y_hat.ndim < 1:
        raise ValueError(
            "y_hat must have a leading batch axis (shape (batch, *sample_shape)); for one sample "
            "use y_hat[None] and take y[0].")
    if not jnp.issubdtype(y_hat.dtype, jnp.floating):
        raise ValueError(f"y_hat must be floating (float32 or float64), got {y_hat.dtype}; "
                         "cast it with .astype(jnp.float32).")
    has_bounds = lower is not None or upper is not None
    if constraint_fn is None and inequality_fn is None and not has_bounds:
        raise ValueError("give constraint_fn (equalities c(y) = 0), inequality_fn (g(y) <= 0), "
                         "lower/upper bounds, or several of them.")
    if int(max_iter) < 0 or int(max_backtracks) < 0:
        raise ValueError(f"max_iter and max_backtracks must be >= 0, got {max_iter}, {max_backtracks}.")
    dtype = y_hat.dtype
    batch, sample_shape = y_hat.shape[0], y_hat.shape[1:]
    n = math.prod(sample_shape)
    tol = default_tol(dtype) if tol is None else float(tol)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}.")
    atol = float(atol)

    if weight is None:
        w = jnp.ones(y_hat.shape, dtype)
    else:
        weight = jnp.asarray(weight, dtype)
        try:
            w = jnp.broadcast_to(weight, y_hat.shape)
        except ValueError as err:
            raise ValueError(
                f"weight of shape {weight.shape} does not broadcast to y_hat's shape {y_hat.shape}; "
                f"give one sample's shape {sample_shape} or the full shape.") from err
        if not isinstance(weight, jax.core.Tracer):
            if not bool(np.all(np.asarray(weight) > 0)):
                raise ValueError("weight must be positive (a diagonal metric); got a non-positive entry.")

    if has_bounds:
        lo, hi = _bounds(lower, upper, y_hat.shape, sample_shape, dtype)
        if inequality_fn is None:
            if constraint_fn is None:
                return clip_box(y_hat, lo, hi, batch, n)
            eq_fn, m_e = _as_flat_constraints(constraint_fn, sample_shape, dtype, "constraint_fn")
            if m_e == 0:
                return clip_box(y_hat, lo, hi, batch, n)
            params, static = eqx.partition(eq_fn, eqx.is_inexact_array)
            solve = make_bound_solver(static, sample_shape, dtype, n, m_e, tol, atol, int(max_iter),
                                      int(max_backtracks), max(int(max_iter), 1) + 2 * m_e)
            y, info = jax.vmap(solve, in_axes=(None, 0, 0, 0, 0))(
                params, y_hat.reshape(batch, n), w.reshape(batch, n), lo.reshape(batch, n),
                hi.reshape(batch, n))
            return y.reshape(y_hat.shape), info
        # with general inequalities the bounds join them as rows (dense active-set path)
        try:
            lo1, hi1 = (np.broadcast_to(np.asarray(v if v is not None else fill, np.float64), sample_shape)
                        for v, fill in ((lower, -np.inf), (upper, np.inf)))
        except Exception as err:  # traced or per-sample bounds
            raise ValueError("with inequality_fn, lower/upper must be concrete and shared by all samples "
                             "(a scalar or one sample's shape); or write them into inequality_fn.") from err
        inequality_fn = _with_bound_rows(inequality_fn, lo1.astype(dtype), hi1.astype(dtype))

    eq_fn, m_e = _as_flat_constraints(constraint_fn, sample_shape, dtype, "constraint_fn")
    in_fn, m_i = _as_flat_constraints(inequality_fn, sample_shape, dtype, "inequality_fn")
    if m_e + m_i == 0:
        raise ValueError("the constraint functions return no values (size 0); give at least one constraint.")
    fns = (eq_fn, in_fn)
    params, static = eqx.partition(fns, eqx.is_inexact_array)
    solve = _make_solver(static, sample_shape, dtype, n, m_e, m_i, tol, atol,
                         int(max_iter), int(max_backtracks), bool(hessian))
    y, info = solve(params, y_hat.reshape(batch, n), w.reshape(batch, n))
    return y.reshape(y_hat.shape), info


def _bounds(lower, upper, shape, sample_shape, dtype):
    """Bounds broadcast to ``shape`` (no gradient flows into them), checked where concrete."""
    out = []
    for name, b, fill in (("lower", lower, -jnp.inf), ("upper", upper, jnp.inf)):
        if b is None:
            out.append(jnp.full(shape, fill, dtype))
            continue
        b = jnp.asarray(b, dtype)
        try:
            out.append(jax.lax.stop_gradient(jnp.broadcast_to(b, shape)))
        except ValueError as err:
            raise ValueError(
                f"{name} of shape {b.shape} does not broadcast to y_hat's shape {shape}; give a "
                f"scalar, one sample's shape {sample_shape} or the full shape.") from err
    lo, hi = out
    concrete = [np.asarray(b) for b in (lower, upper) if b is not None and not isinstance(b, jax.core.Tracer)]
    if len(concrete) == sum(b is not None for b in (lower, upper)):
        if any(np.isnan(b).any() for b in concrete):
            raise ValueError("lower/upper contain NaN; use -inf/inf for a missing bound.")
        if lower is not None and upper is not None and np.any(concrete[0] > concrete[1]):
            raise ValueError("lower > upper somewhere: the box is empty; check the bounds.")
    return lo, hi


def _with_bound_rows(inequality_fn, lo, hi):
    """``g`` extended by the finite bounds as rows ``y - upper <= 0``, ``lower - y <= 0``."""
    lo_idx = np.flatnonzero(np.isfinite(np.asarray(lo)).ravel())
    hi_idx = np.flatnonzero(np.isfinite(np.asarray(hi)).ravel())
    lo_v, hi_v = np.ravel(lo)[lo_idx], np.ravel(hi)[hi_idx]

    def extended(y):
        flat = jnp.ravel(y)
        return jnp.concatenate([jnp.ravel(inequality_fn(y)).astype(y.dtype), flat[hi_idx] - hi_v,
                                lo_v - flat[lo_idx]])
    return extended


def _chol_upper(g, cut):
    """Upper Cholesky factor ``g = r^T r`` of a small SPD matrix, written out (vectorises over a batch).

    Returns ``(r, ok)``; ``ok`` is False where a pivot is at or below ``cut``
    (numerically singular), and ``r`` is then finite but meaningless.
    """
    m = g.shape[0]
    rows = [[None] * m for _ in range(m)]  # rows[i][j] = r[i, j], i <= j
    ok = jnp.array(True)
    for i in range(m):
        d = g[i, i] - sum(rows[k][i] ** 2 for k in range(i))
        ok = ok & (d > cut)
        rii = jnp.sqrt(jnp.where(d > cut, d, 1.0))
        rows[i][i] = rii
        for j in range(i + 1, m):
            rows[i][j] = (g[i, j] - sum(rows[k][i] * rows[k][j] for k in range(i))) / rii
    zero = jnp.zeros((), g.dtype)
    r = jnp.stack([jnp.stack([rows[i][j] if j >= i else zero for j in range(m)]) for i in range(m)])
    return r, ok


def _inv_upper(r):
    """Inverse of a small upper-triangular matrix by back substitution, written out."""
    m = r.shape[0]
    cols = []
    for j in range(m):  # column j of r^-1 solves r x = e_j
        x = [None] * m
        for i in reversed(range(m)):
            if i > j:  # below the diagonal of the inverse
                x[i] = jnp.zeros((), r.dtype)
                continue
            x[i] = ((1.0 if i == j else 0.0) - sum(r[i, k] * x[k] for k in range(i + 1, j + 1))) / r[i, i]
        cols.append(jnp.stack(x))
    return jnp.stack(cols, axis=1)


def _small_matmul(r, x):
    """``r @ x`` for a small ``r`` (at most 16 columns), as a written-out sum over its columns.

    Under ``vmap`` this is one fused elementwise loop; XLA:CPU's batched dot
    for such shapes (batch x 6 x 6 times batch x 6 x 51) is 3-7x slower.
    """
    if r.shape[1] > _FAST_MAX_ROWS:
        return r @ x
    if x.ndim == 1:
        return sum(r[:, i] * x[i] for i in range(r.shape[1]))
    return sum(r[:, i][:, None] * x[i][None, :] for i in range(r.shape[1]))


# Largest number of rows for which the forward iterations first try the
# written-out CholeskyQR2 factorisation (see `_make_solver`).
_FAST_MAX_ROWS = 16
# Samples still iterating when the batch-wide loop hands over to per-sample loops.
_TAIL = 16
_NEEDS_ROBUST = -2  # internal: the fast factorisation declined; continue with the SVD one


def _make_solver(static, sample_shape, dtype, n, m_e, m_i, tol, atol, max_iter, max_backtracks,
                 use_hessian):
    """The batched solve with its implicit VJP, for fixed shapes and options.

    Every iteration factors the weighted Jacobian of the working constraints
    as ``a = R^T Q^T`` (``Q`` an orthonormal basis of its row space) and uses
    it for the minimum-norm step, the tangent projection and the multipliers.
    Two factorisations give that form:

    * robust: the thin SVD through a Householder QR of ``a^T`` and an SVD of
      the m x m triangle, with the rank cut-off (any rank, any conditioning);
    * fast (equalities only, m <= min(16, n)): CholeskyQR2 (Fukaya, Nakatsukasa,
      Yanagisawa, Yamamoto 2014): two Cholesky passes of m x m Gram matrices,
      written out so that it vectorises over the batch instead of calling
      LAPACK once per sample. It is accepted only where the second Gram
      matrix is within 0.1 of the identity (``cond(a)^2 eps`` below 0.1),
      where its ``Q`` is orthonormal to rounding and it agrees with the SVD
      (no singular value is cut there); otherwise the sample continues with
      the robust factorisation from the same iterate.

    The iterations run batch-wide until at most 16 samples still iterate;
    those continue in per-sample loops on a gathered sub-batch of 16 (fast
    factorisation), and then the samples it declined (robust factorisation),
    so the whole batch no longer waits for its slowest sample.
    """
    m = m_e + m_i
    eps = float(jnp.finfo(dtype).eps)
    tiny = float(jnp.finfo(dtype).tiny)
    rcond = 10.0 * max(m, n, 1) * eps
    cg_rtol = 16 * eps  # adjoint solve: to rounding level
    newton_rtol = 1e-3  # forward SQP steps: inexact Newton is enough
    cg_maxiter = n + 2
    fast = m_i == 0 and 1 <= m <= min(n, _FAST_MAX_ROWS)

    def h_all(params, y):
        eq, ineq = eqx.combine(params, static)
        x = y.reshape(sample_shape)
        parts = [jnp.ravel(f(x)).astype(dtype) for f in (eq, ineq) if f is not None]
        return jnp.concatenate(parts)

    def jacobian(params, y):
        f = lambda yy: h_all(params, yy)
        return (jax.jacrev(f) if m < n else jax.jacfwd(f))(y)

    def values_and_jacobian(params, y):
        """``(h(y), J(y))`` sharing one evaluation of the constraints."""
        if m >= n:
            return h_all(params, y), jacobian(params, y)
        h, pullback = jax.vjp(lambda yy: h_all(params, yy), y)
        return h, jax.vmap(lambda e: pullback(e)[0])(jnp.eye(m, dtype=dtype))

    def factor_robust(a):
        """``(qt, p)``: ``pinv(a) = qt^T p``, the rows of ``qt`` an orthonormal basis of a's row space.

        Thin SVD ``a = u diag(s) vk`` with the kept singular values (rank
        cut-off rcond); for m <= n from a Householder QR of a^T and the SVD of
        its m x m triangle (cheaper than an SVD of a, and as accurate: no
        a a^T). Dropped directions are zero rows of ``qt``.
        """
        if m <= n:
            qa, r = jnp.linalg.qr(a.T)  # a^T = qa r
            ur, s, vrt = jnp.linalg.svd(r)  # r = ur s vrt  =>  a = vrt^T s (qa ur)^T
            u, vk = vrt.T, (qa @ ur).T
        else:
            u, s, vk = jnp.linalg.svd(a, full_matrices=False)
        keep = s > jnp.maximum(rcond * jnp.max(s), tiny)
        sinv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
        return vk * keep[:, None], sinv[:, None] * u.T

    def factor_fast(a):
        """CholeskyQR2 of ``a^T``: ``(q^T, r^-T, ok)``; ``ok`` False where it must not be used."""
        g1 = a @ a.T
        r1, ok1 = _chol_upper(g1, 16 * eps * jnp.max(jnp.diagonal(g1)) + tiny)
        r1it = _inv_upper(r1).T
        q1t = _small_matmul(r1it, a)  # rows: an orthonormal basis up to cond(a)^2 eps
        g2 = q1t @ q1t.T
        r2, ok2 = _chol_upper(g2, 0.5)
        r2it = _inv_upper(r2).T
        qt = _small_matmul(r2it, q1t)
        pinv_left = _small_matmul(r2it, r1it)
        ok = ok1 & ok2 & (jnp.max(jnp.abs(g2 - jnp.eye(m, dtype=dtype))) <= 0.1)
        ok = ok & jnp.all(jnp.isfinite(qt)) & jnp.all(jnp.isfinite(pinv_left))
        return qt, pinv_left, ok

    def factor_batch(a):
        """A batch of factorisations: the fast one, with the robust one wherever it declined."""
        if not fast:
            return jax.vmap(factor_robust)(a)
        qt, p, ok = jax.vmap(factor_fast)(a)

        def mend(qp):
            qr_, pr_ = jax.vmap(factor_robust)(a)
            sel = lambda f, r: jnp.where(ok[:, None, None], f, r)  # noqa: E731
            return sel(qp[0], qr_), sel(qp[1], pr_)

        return jax.lax.cond(jnp.all(ok), lambda qp: qp, mend, (qt, p))

    def tangent(qt, x):
        """x minus its part in the row space of the working Jacobian (orthonormal rows ``qt``)."""
        return x - _small_matmul(qt.T, qt @ x)

    def projected_cg(matvec, qt, rhs, rtol):
        """Solves P M P x = P rhs on the tangent space by CG (Nocedal and Wright, Alg. 16.2).

        Returns x and whether the reduced matrix was positive definite along
        every direction tried (else x is the iterate before the first direction of
        non-positive curvature).
        """
        r0 = tangent(qt, rhs)
        bnorm = jnp.linalg.norm(r0)

        def cond(c):
            k, _, r, _, rr, bad = c
            return (k < cg_maxiter) & (jnp.sqrt(rr) > rtol * bnorm) & ~bad

        def body(c):
            k, x, r, p, rr, _ = c
            mp = tangent(qt, matvec(p))
            curv = p @ mp
            bad = ~(curv > eps * (p @ p))
            alpha = jnp.where(bad, 0.0, rr / jnp.where(bad, 1.0, curv))
            x = x + alpha * p
            r = r - alpha * mp
            rr_new = r @ r
            p = r + (rr_new / jnp.maximum(rr, tiny)) * p
            return k + 1, x, r, p, rr_new, bad

        init = (jnp.int32(0), jnp.zeros_like(rhs), r0, r0, r0 @ r0, jnp.array(False))
        _, x, _, _, rr, bad = jax.lax.while_loop(cond, body, init)
        return x, ~bad

    def lagrangian_hvp(params, y, nu, p):
        """(sum_j nu_j Hess h_j(y)) p, a forward-over-reverse product."""
        grad = jax.grad(lambda yy: nu @ h_all(params, yy))
        return jax.jvp(grad, (y,), (p,))[1]

    eq_rows = np.arange(m) < m_e  # numpy: a constant, not a value of the enclosing trace

    def working_mask(active):
        """1 on the working rows (every equality, the active inequalities), 0 elsewhere."""
        return (eq_rows | jnp.concatenate([jnp.zeros(m_e, bool), active])).astype(dtype)

    def analyse(params, yh, w, y, active, nu_prev, robust):
        """Constraints, the SQP step on the working set and the KKT tests at y."""
        sw = jnp.sqrt(w)
        zh = sw * yh
        h, jac = values_and_jacobian(params, y)
        finite = jnp.all(jnp.isfinite(h)) & jnp.all(jnp.isfinite(jac))
        mask = working_mask(active)
        hw = h * mask
        at = jac * mask[:, None] / sw[None, :]
        if robust:
            qt, pl = factor_robust(at)
            usable = jnp.array(True)
        else:
            qt, pl, usable = factor_fast(at)
        z = sw * y
        v = zh - z
        vnorm, znorm = jnp.linalg.norm(v), jnp.max(jnp.abs(z), initial=0.0)
        tang = tangent(qt, v)
        dn = -_small_matmul(qt.T, pl @ hw)  # minimum-norm step onto the linearisation
        if use_hessian:
            nu_w = nu_prev * mask

            def hess_z(p):  # (I + W^-1/2 H_L W^-1/2) p
                return p + lagrangian_hvp(params, y, nu_w, p / sw) / sw

            dt, pd = projected_cg(hess_z, qt, v - hess_z(dn), newton_rtol)
            pd = pd & jnp.all(jnp.isfinite(dt))
            d = dn + jnp.where(pd, dt, tang)
            resid = v - jnp.where(pd, hess_z(d), d)
        else:
            d = dn + tang
            resid = v - d
        nu = pl.T @ (qt @ resid)  # multipliers of the linearised problem
        scale = atol + tol * jnp.sum(jnp.abs(jac), axis=1) * jnp.max(jnp.abs(y), initial=0.0)
        force = tol * (vnorm + znorm)
        rownorm = jnp.linalg.norm(at, axis=1)
        g, gs = h[m_e:], scale[m_e:]
        nu_here = pl.T @ (qt @ v)  # least-squares multipliers at y itself
        mu_ok = nu_here[m_e:] * rownorm[m_e:] >= -force
        eq_ok = jnp.all(jnp.abs(h[:m_e]) <= scale[:m_e])
        ineq_ok = jnp.all(jnp.where(active, (jnp.abs(g) <= gs) & mu_ok, g <= gs))
        stat_res = jnp.linalg.norm(tang)
        converged = finite & eq_ok & ineq_ok & (stat_res <= force)
        # multipliers' signs mean something only where the working set's own
        # problem is solved: drop inequalities only there; add violated ones any time
        ws_solved = finite & eq_ok & jnp.all(jnp.where(active, jnp.abs(g) <= gs, True)) & (
            jnp.linalg.norm(tang) <= force)
        new_active = jnp.where(active, mu_ok | ~ws_solved, g > gs)
        violation = jnp.maximum(jnp.max(jnp.abs(h[:m_e]), initial=0.0),
                                jnp.max(jnp.maximum(g, 0.0), initial=0.0))
        feasible = eq_ok & jnp.all(jnp.where(active, jnp.abs(g) <= gs, g <= gs))
        proj_h = at @ _small_matmul(qt.T, pl @ hw)  # the part of the violation the Jacobian can reach
        return dict(h=hw, finite=finite, usable=usable, mask=mask, proj_h=proj_h, v=v, d=d, nu=nu,
                    nu_here=nu_here, vnorm=vnorm, znorm=znorm, converged=converged,
                    new_active=new_active, stat_res=stat_res, violation=violation,
                    feasible=feasible, force=force, reach=jnp.linalg.norm(proj_h),
                    mu_scaled=jnp.where(ws_solved, nu_here[m_e:] * rownorm[m_e:], 0.0),
                    g_excess=g - gs)

    def line_search(params, yh, w, y, a, rho, mask):
        """Armijo backtracking on 1/2 ||z - z_hat||^2 + rho ||h_working||."""
        sw = jnp.sqrt(w)
        v, d, hw = a["v"], a["d"], a["h"]
        hnorm = jnp.linalg.norm(hw)
        slope = -(v @ d) - rho * (hw @ a["proj_h"]) / jnp.maximum(hnorm, tiny)
        phi0 = 0.5 * a["vnorm"] ** 2 + rho * hnorm
        slack = 16 * eps * (phi0 + a["znorm"] * (a["vnorm"] + jnp.linalg.norm(d)))
        step = d / sw

        def trial(alpha):
            yt = y + alpha * step
            ht = h_all(params, yt) * mask
            phi = 0.5 * jnp.sum((sw * (yh - yt)) ** 2) + rho * jnp.linalg.norm(ht)
            ok = jnp.isfinite(phi) & (phi <= phi0 + _ARMIJO * alpha * jnp.minimum(slope, 0.0) + slack)
            return yt, ok

        def cond(c):
            j, _, ok = c
            return (~ok) & (j <= max_backtracks)

        def body(c):
            j, _, _ = c
            yt, ok = trial(jnp.asarray(0.5, dtype) ** j)
            return j + 1, yt, ok

        _, yt, ok = jax.lax.while_loop(cond, body, (jnp.int32(0), y, jnp.array(False)))
        return yt, ok

    def init_state(yh):
        nonfinite_input = ~jnp.all(jnp.isfinite(yh))
        zero = jnp.zeros((), dtype)
        return (jnp.int32(0), yh, jnp.zeros(m_i, bool), zero,
                jnp.where(nonfinite_input, ProjectionStatus.NONFINITE, _RUNNING).astype(jnp.int32),
                (jnp.full((), jnp.nan, dtype), jnp.full((), jnp.nan, dtype), zero,
                 jnp.zeros(m, dtype)), jnp.int32(0))

    def step(params, yh, w, state, robust):
        """One iteration of one sample (a working-set change or a line-searched SQP step)."""
        k, y, active, rho, status, (_, _, _, nu_prev), rounds = state
        a = analyse(params, yh, w, y, active, nu_prev, robust)
        new_active = a["new_active"]
        if m_i:
            # After PDAS_ROUNDS primal-dual rounds (all changes at once, which can
            # cycle when constraints couple), one change per round: drop the most
            # negative multiplier, else add the most violated inequality.
            drop = jnp.where(active, a["mu_scaled"], jnp.inf)
            add = jnp.where(active, -jnp.inf, a["g_excess"])
            j_drop, j_add = jnp.argmin(drop), jnp.argmax(add)
            single = jnp.where(drop[j_drop] < -a["force"], active.at[j_drop].set(False),
                               jnp.where(add[j_add] > 0, active.at[j_add].set(True), active))
            new_active = jnp.where(rounds < _PDAS_ROUNDS, new_active, single)
        stepping = a["finite"] & ~a["converged"] & (k < max_iter)
        # Least-squares point of an incompatible linearisation: the part of the
        # violation that the Jacobian can reach is at rounding level.
        hn = jnp.linalg.norm(a["h"])
        stuck = (stepping & ~a["feasible"] & (a["stat_res"] <= a["force"])
                 & (a["reach"] <= max(tol, 64 * eps) * hn))
        if m_i:
            # too many inequalities in the working set make it incompatible:
            # release the one with the smallest multiplier instead of giving up
            score = jnp.where(active, a["nu_here"][m_e:], jnp.inf)
            j = jnp.argmin(score)
            release = stuck & jnp.any(active) & jnp.all(new_active == active)
            new_active = jnp.where(release, active.at[j].set(False), new_active)
            stuck = stuck & ~release
        changed = jnp.any(new_active != active)
        rounds = rounds + changed.astype(jnp.int32)
        infeasible = stuck & ~changed
        stepping = stepping & ~changed
        stepping = stepping & ~infeasible
        rho = jnp.maximum(rho, 1.1 * jnp.linalg.norm(a["nu"]))
        yt, ok = line_search(params, yh, w, y, a, rho, a["mask"])
        y = jnp.where(stepping & ok, yt, y)
        active = jnp.where(a["finite"] & ~a["converged"] & (k < max_iter), new_active, active)
        status = jnp.select(
            [~a["finite"], a["converged"], infeasible, stepping & ~ok, k >= max_iter],
            [ProjectionStatus.NONFINITE, ProjectionStatus.CONVERGED, ProjectionStatus.INFEASIBLE,
             ProjectionStatus.STALLED, ProjectionStatus.MAX_ITER], _RUNNING).astype(jnp.int32)
        k = jnp.where(status == _RUNNING, k + 1, k)
        nu_next = jnp.where(stepping & ok, a["nu"], a["nu_here"])
        summary = (a["violation"], a["stat_res"], a["vnorm"], nu_next)
        new = (k, y, active, rho, status, summary, rounds)
        if robust:
            return new
        # the fast factorisation declined: nothing moves, the robust loop takes over
        declined = state[:4] + (jnp.int32(_NEEDS_ROBUST),) + state[5:]
        return jax.tree_util.tree_map(lambda x, o: jnp.where(a["usable"], x, o), new, declined)

    def run(params, yh, w, state, robust=True):
        """One sample's loop until it stops (or, fast, until the fast factorisation declines)."""
        return jax.lax.while_loop(lambda s: s[4] == _RUNNING,
                                  lambda s: step(params, yh, w, s, robust), state)

    def forward(params, yh, w):
        """The batch's projections: ``(y, info, active)``, every array with the batch axis first."""
        batch = yh.shape[0]
        state = jax.vmap(init_state)(yh)
        running = lambda s: s[4] == _RUNNING
        if not fast:
            state = jax.vmap(run, in_axes=(None, 0, 0, 0))(params, yh, w, state)
        else:
            tail = min(batch, _TAIL)

            def wide(s):  # every sample still running takes one step, the others stay
                new = jax.vmap(step, in_axes=(None, 0, 0, 0, None))(params, yh, w, s, False)
                live = running(s)
                return jax.tree_util.tree_map(
                    lambda x, o: jnp.where(live.reshape((-1,) + (1,) * (x.ndim - 1)), x, o), new, s)

            if batch > tail:  # (not traced otherwise: a batch this small starts in the tail)
                state = jax.lax.while_loop(lambda s: jnp.sum(running(s)) > tail, wide, state)

            def narrow(s, code, robust):
                """Samples with status `code`, `tail` at a time, gathered, to the end of their loops."""
                todo = s[4] == code
                idx = jnp.nonzero(todo, size=tail, fill_value=batch)[0]
                valid = idx < batch
                take = lambda x: jnp.take(x, idx, axis=0, mode="clip")
                sub = jax.tree_util.tree_map(take, s)
                sub_status = jnp.where(valid, _RUNNING, ProjectionStatus.CONVERGED).astype(jnp.int32)
                sub = sub[:4] + (sub_status,) + sub[5:]
                sub = jax.vmap(run, in_axes=(None, 0, 0, 0, None))(params, take(yh), take(w), sub, robust)
                return jax.tree_util.tree_map(lambda x, v: x.at[idx].set(v, mode="drop"), s, sub)

            # the tail with the fast factorisation, then whatever it declined with the robust one
            for code, robust in ((_RUNNING, False), (_NEEDS_ROBUST, True)):
                state = jax.lax.while_loop(lambda s, c=code: jnp.any(s[4] == c),
                                           lambda s, c=code, r=robust: narrow(s, c, r), state)
        # every sample's last iteration analysed its returned point without moving it,
        # so the multipliers it carries are the least-squares ones of that point
        k, y, active, _, status, (violation, stat_res, dist, nu), _ = state
        info = ProjectionInfo(status=status, iterations=k, violation=violation,
                              stationarity=stat_res, distance=dist,
                              num_active=jnp.sum(active, axis=1).astype(jnp.int32), multipliers=nu)
        return y, info, active

    @jax.custom_vjp
    def solve(params, yh, w):
        y, info, _ = forward(params, yh, w)
        return y, info

    def solve_fwd(params, yh, w):
        y, info, active = forward(params, yh, w)
        return (y, info), (params, yh, w, y, info.multipliers, active)

    def solve_bwd(res, cotangents):
        params, yh, w, y, nu, active = res
        y_bar = cotangents[0]
        mask = jax.vmap(working_mask)(active)
        nu = jnp.where(mask > 0, nu, 0.0)
        qt, pl = factor_batch(jax.vmap(jacobian, in_axes=(None, 0))(params, y) * mask[:, :, None])

        def one(y, yh, w, nu, mask, qt, pl, y_bar):
            def lagrangian(p, yy):
                return nu @ h_all(p, yy)

            # Adjoint KKT system [[H, J^T], [J, 0]] [u; s] = [y_bar; 0], H = W + sum nu_j Hess h_j,
            # by the null-space method: u = P H P-solve on the tangent space, then J^T s = y_bar - H u.
            hess = lambda p: w * p + lagrangian_hvp(params, y, nu, p)
            u, _ = projected_cg(hess, qt, y_bar, cg_rtol)
            s = pl.T @ (qt @ (y_bar - hess(u)))
            yh_bar = w * u
            w_bar = -u * (y - yh)

            def pulled(p):
                curvature = jax.jvp(lambda yy: lagrangian(p, yy), (y,), (u,))[1]
                return curvature + s @ (h_all(p, y) * mask)

            if jax.tree_util.tree_leaves(params):
                p_bar = jax.tree_util.tree_map(jnp.negative, jax.grad(pulled)(params))
            else:
                p_bar = params
            return p_bar, yh_bar, w_bar

        p_bar, yh_bar, w_bar = jax.vmap(one)(y, yh, w, nu, mask, qt, pl, y_bar)
        p_bar = jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), p_bar)
        return p_bar, yh_bar, w_bar

    solve.defvjp(solve_fwd, solve_bwd)
    return solve
