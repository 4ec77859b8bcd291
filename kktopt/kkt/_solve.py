"""Solving the KKT system of the linearised constraints.

Every hard transform needs the solution of

    [ D   A^T ] [ dw     ]   [ -h ]
    [ A   0   ] [ Lambda ] = [ -c ]                                    (*)

with D the metric (I, the Adam metric, or J^T J + eta I), A = dC/dw, c the
active constraint values and h the gradient-like vector (paper Eq. 5, 6, 12).
When the unconstrained step u = -D^-1 h is known (SGD, Adam), kktopt solves
(*) in closest-step form: dw = u + delta, where delta is the smallest
correction (in the D-norm) with A delta = -(c + A u). The matrix then does not
carry the learning rate, and the right-hand side vanishes exactly when no
constraint is active, so the step is then exactly the unconstrained one.

Two families of solvers, chosen with the ``solver=`` argument of the
transforms:

* :class:`KrylovKKT` (default): MINRES-QLP (or MINRES) on the full system (*),
  matrix-free, each iteration one JVP and one VJP of the linearised
  constraints (Algorithm 1; plus one of each for the residual map in the
  Gauss-Newton case, Algorithm 2). Preconditioned with blockdiag(D, s^2 I),
  where s^2 is the Rayleigh quotient of the Schur complement A D^-1 A^T along
  the constraint residual, so the two blocks are on the same scale.
* :class:`SchurKKT`: eliminates dw and solves the m x m Schur complement
  (A D^-1 A^T) Lambda = c + A u, densely (eigendecomposition, pseudo-inverse:
  exact minimum-norm) or with a Krylov method. Needs a diagonal metric.

On rank-deficient or incompatible constraints (duplicated or nearly dependent
rows of A) both return the minimum-norm correction that satisfies the
linearised constraints in the least-squares sense.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kktopt.kkt._linearize import Linearization
from kktopt.kkt._metric import Metric
from kktopt.krylov import _tree
from kktopt.krylov._info import SolverInfo, Stop
from kktopt.krylov.cg import cg
from kktopt.krylov.dense import dense_info, dense_solve, symmetric_pinv
from kktopt.krylov.minres import minres
from kktopt.krylov.minres_qlp import minres_qlp

PyTree = Any

_KRYLOV = {"minres_qlp": minres_qlp, "minres": minres}


class KKTSolution(NamedTuple):
    """Result of one KKT solve.

    Attributes:
      step: the constrained step dw (shaped like the parameters).
      multipliers: Lambda of (*) in the metric D, shape ``(m,)``.
      info: the inner solver's :class:`~kktopt.krylov.SolverInfo`.
    """

    step: PyTree
    multipliers: jax.Array
    info: SolverInfo


def _default_maxiter(m: int) -> int:
    # With D = I (or a preconditioned diagonal D) the KKT matrix has at most
    # 2m + 1 distinct eigenvalues, so MINRES needs at most 2m + 1 steps in
    # exact arithmetic; leave room for rounding.
    return 4 * m + 20


def _rtol(rtol, dtype) -> jax.Array:
    """The solver tolerance: the user's, or 1e-4 in float32 and 1e-8 in float64.

    A training step needs the linearised constraints met far below the error
    of the linearisation itself, not to machine precision.
    """
    if rtol is None:
        rtol = 1e-4 if jnp.finfo(dtype).eps > 1e-10 else 1e-8
    return jnp.asarray(rtol, dtype)


def _rayleigh_schur(lin: Linearization, metric: Metric, r: jax.Array) -> jax.Array:
    """s^2 = rhat^T A P^-1 A^T rhat for rhat = r / ||r||: one VJP."""
    rnorm = jnp.linalg.norm(r)
    rhat = r / jnp.where(rnorm > 0, rnorm, 1)
    g = lin.vjp(rhat)
    s2 = _tree.tree_dot(g, metric.approx_inverse(g))
    return jnp.where(s2 > 0, s2, 1).astype(r.dtype)


class KrylovKKT(eqx.Module):
    """Solve the full KKT system matrix-free with MINRES-QLP (default) or MINRES.

    Attributes:
      method: ``"minres_qlp"`` (minimum-length solutions on rank-deficient
        constraints) or ``"minres"``.
      rtol: relative tolerance of the Krylov solve (see
        :func:`kktopt.krylov.minres_qlp`); default 1e-4 in float32, 1e-8 in
        float64.
      maxiter: iteration limit; default ``4 m + 20`` for m constraints.
      precondition: use the block-diagonal preconditioner blockdiag(D, s^2 I).
    """

    method: Literal["minres_qlp", "minres"] = eqx.field(static=True, default="minres_qlp")
    rtol: float | jax.Array | None = None
    maxiter: int | None = eqx.field(static=True, default=None)
    precondition: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.method not in _KRYLOV:
            raise ValueError(f"KrylovKKT.method must be one of {sorted(_KRYLOV)}, got {self.method!r}.")
        if isinstance(self.rtol, (int, float)) and not 0 <= self.rtol < 1:
            raise ValueError(f"KrylovKKT.rtol must be in [0, 1), got {self.rtol}.")
        if self.maxiter is not None and (not isinstance(self.maxiter, int) or self.maxiter < 1):
            raise ValueError(f"KrylovKKT.maxiter must be a positive integer, got {self.maxiter!r}.")

    def solve(
        self,
        lin: Linearization,
        metric: Metric,
        *,
        step: PyTree | None = None,
        gradient: PyTree | None = None,
    ) -> KKTSolution:
        m = lin.c.shape[0]
        dtype = lin.c.dtype
        if step is not None:
            # Closest-step form: unknowns (delta, Lambda), rhs (0, -(c + A u)).
            r = lin.c + lin.jvp(step)
            top = _tree.tree_zeros_like(step)
        else:
            r = lin.c
            top = _tree.tree_scale(-1, gradient)

        def matvec(z):
            dw, lam = z
            return (_tree.tree_lincomb((1.0, metric.matvec(dw)), (1.0, lin.vjp(lam))), lin.jvp(dw))

        if self.precondition:
            s2 = _rayleigh_schur(lin, metric, r)

            def precond(z):
                dw, lam = z
                return (metric.approx_inverse(dw), lam / s2)
        else:
            precond = None

        solver = _KRYLOV[self.method]
        (dw, lam), info = solver(
            matvec,
            (top, -r),
            preconditioner=precond,
            rtol=_rtol(self.rtol, dtype),
            maxiter=_default_maxiter(m) if self.maxiter is None else self.maxiter,
            maxxnorm=1.0 / jnp.finfo(dtype).eps,
            check_symmetry=False,
            check_residual=False,
        )
        if step is not None:
            dw = _tree.tree_lincomb((1.0, step), (1.0, dw))
        return KKTSolution(step=dw, multipliers=lam, info=info)


class SchurKKT(eqx.Module):
    """Eliminate dw and solve the m x m Schur complement system.

    (A D^-1 A^T) Lambda = c + A u,   dw = u - D^-1 A^T Lambda.

    Attributes:
      method: ``"dense"`` forms the m x m matrix and solves it by
        eigendecomposition (pseudo-inverse: exact minimum-norm for any rank),
        with one step of iterative refinement that reuses the factorisation.
        The matrix is ``A D^-1 A^T`` from the dense Jacobian when the
        transform was built with ``jacobian="per_sample"`` (one matrix
        product), else m VJPs and m JVPs in one batched ``jax.vmap`` pass.
        ``"minres_qlp"`` and ``"cg"`` solve it matrix-free (one VJP and one
        JVP per iteration).
      rtol, maxiter: Krylov settings (``"dense"`` only uses rtol to tell a
        solution, istop 4, from a least-squares one, istop 6).
      rcond: relative eigenvalue cutoff of the dense pseudo-inverse (default
        ``m * eps``).

    Requires a metric whose inverse is cheap (SGD and Adam; not Gauss-Newton).
    """

    method: Literal["dense", "minres_qlp", "cg"] = eqx.field(static=True, default="dense")
    rtol: float | jax.Array | None = None
    maxiter: int | None = eqx.field(static=True, default=None)
    rcond: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.method not in ("dense", "minres_qlp", "cg"):
            raise ValueError(
                f"SchurKKT.method must be 'dense', 'minres_qlp' or 'cg', got {self.method!r}."
            )

    def solve(
        self,
        lin: Linearization,
        metric: Metric,
        *,
        step: PyTree | None = None,
        gradient: PyTree | None = None,
    ) -> KKTSolution:
        if metric.inverse is None:
            raise ValueError(
                f"SchurKKT needs a metric with a cheap inverse; the {metric.name} metric has none. "
                "Use solver=kktopt.KrylovKKT() (the full KKT system) instead."
            )
        if step is None:
            step = metric.inverse(_tree.tree_scale(-1, gradient))
        dtype = lin.c.dtype
        m = lin.c.shape[0]
        if self.method == "dense" and lin.matrix is not None and metric.inverse_diagonal is not None:
            return self._dense_from_matrix(lin, metric, step)
        r = lin.c + lin.jvp(step)

        def schur(lam):
            return lin.jvp(metric.inverse(lin.vjp(lam)))

        if self.method == "dense":
            lam, info = dense_solve(schur, r, rtol=_rtol(self.rtol, dtype), rcond=self.rcond, check_symmetry=False)
        else:
            solver = minres_qlp if self.method == "minres_qlp" else cg
            lam, info = solver(
                schur,
                r,
                rtol=_rtol(self.rtol, dtype),
                maxiter=_default_maxiter(m) if self.maxiter is None else self.maxiter,
                check_symmetry=False,
                check_residual=False,
            )
        delta = metric.inverse(lin.vjp(lam))
        dw = _tree.tree_lincomb((1.0, step), (-1.0, delta))
        return KKTSolution(step=dw, multipliers=lam, info=info)

    def _dense_from_matrix(self, lin: Linearization, metric: Metric, step: PyTree) -> KKTSolution:
        hi = jax.lax.Precision.HIGHEST
        a = lin.matrix
        dtype = a.dtype
        dinv = metric.inverse_diagonal
        if isinstance(dinv, (int, float)):
            dinv = jnp.full((a.shape[1],), dinv, dtype)
        else:
            dinv = ravel_pytree(dinv)[0].astype(dtype)
        u = ravel_pytree(step)[0]
        r = lin.c + jnp.matmul(a, u, precision=hi)
        ad = a * dinv
        schur = jnp.matmul(ad, a.T, precision=hi)
        schur = 0.5 * (schur + schur.T)
        rcond = a.shape[0] * jnp.finfo(dtype).eps if self.rcond is None else self.rcond
        factor = symmetric_pinv(schur, rcond)
        lam = factor.apply(r)
        # One step of iterative refinement on the constraint rows, reusing the
        # factorisation: in float32 it recovers the digits that the
        # cancellation between c and A u costs when the step is large.
        lam = lam + factor.apply(r - jnp.matmul(schur, lam, precision=hi))
        delta = jnp.matmul(lam, ad, precision=hi)
        finite = jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(r))
        istop = jnp.where(finite, 0, Stop.NONFINITE).astype(jnp.int32)
        lam = jnp.where(finite, lam, 0)
        delta = jnp.where(finite, delta, 0)
        info = dense_info(schur, r, lam, factor, _rtol(self.rtol, dtype), istop)
        dw = _tree.tree_lincomb((1.0, step), (-1.0, lin.unravel(delta)))
        return KKTSolution(step=dw, multipliers=lam, info=info)
