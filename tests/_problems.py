"""Reference test problems for the Krylov solvers and the KKT step (see DESIGN notes).

The diagonal family is the one used by the MINRES-QLP reference software's
test program (Choi and Saunders, ACM TOMS Algorithm 937): A = diag(d) with
d_j = j / n, x_true_j = n + 1 - j, b = (A - shift I) x_true; the singular
variant zeroes the last two d_j and x_true_j, the incompatible variant sets the
last two entries of b to 1, and the preconditioner is M = |d - shift| with 0.1
added to every tenth entry (entries that are zero are replaced by 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def diag_problem(n: int, shift: float, singular: bool, consistent: bool):
    j = np.arange(1, n + 1, dtype=np.float64)
    d = j / n
    x_true = n + 1 - j
    if singular:
        d[-2:] = 0.0
        x_true[-2:] = 0.0
    b = d * x_true - shift * x_true
    if not consistent:
        b[-2:] = 1.0
    m = np.abs(d - shift)
    m[9::10] += 0.1
    m = np.where(np.abs(m) > np.finfo(np.float64).eps, m, 1.0)
    return d, b, 1.0 / m


def tridiag(n: int, lower: float, diag: float, upper: float) -> np.ndarray:
    return (
        np.diag(np.full(n, diag)) + np.diag(np.full(n - 1, upper), 1) + np.diag(np.full(n - 1, lower), -1)
    )


RANK3_A = np.array([[3, 2, -1, 5], [2, -2, 4, 0], [-1, 4, 1, 3], [5, 0, 3, 5]], dtype=np.float64)
RANK3_B = np.array([1, -8, 5, 2], dtype=np.float64)
RANK3_X = np.array([-0.37037, 0.907407, -0.611111, 0.537037])

SISC_A = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=np.float64)
SISC_B = np.array([6, 9, 6, 3], dtype=np.float64)
SISC_X = np.array([2, 4, 3, 2], dtype=np.float64)


def pinv_solution(a: np.ndarray, b: np.ndarray, shift: float = 0.0) -> np.ndarray:
    return np.linalg.pinv(a - shift * np.eye(a.shape[0])) @ b


def sphere_sum_mlp(n, dtype, seed=0):
    """The MLP R^4 -> R^3 with ||y|| = 1 and sum(y) = 0 on n inputs (n = 16: m = 32, cond(A) about 640).

    Returns ``(params, pool, constraint_fn, grads, residual_fn, (x, y))``: the
    tanh MLP's weights, the n constrained inputs, the constraint function, the
    gradient of a least-squares loss on 64 labelled samples, its residual
    function (for Gauss-Newton) and those samples. Shared by
    ``tests/test_kkt_numerics.py`` and ``benchmarks/kkt_accuracy.py``.
    """
    widths = (4, 16, 16, 3)
    rng = np.random.default_rng(seed)
    params = [
        {"w": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), dtype), "b": jnp.asarray(0.1 * rng.normal(size=b), dtype)}
        for a, b in zip(widths[:-1], widths[1:])
    ]
    xc = jnp.asarray(rng.normal(size=(16, 4)), dtype)[:n]
    xl = jnp.asarray(rng.normal(size=(64, 4)), dtype)
    yl = jnp.asarray(rng.normal(size=(64, 3)), dtype)

    def f(p, x):
        h = x
        for layer in p[:-1]:
            h = jnp.tanh(h @ layer["w"] + layer["b"])
        return h @ p[-1]["w"] + p[-1]["b"]

    def cfn(p, x):
        y = f(p, x)
        return jnp.stack([jnp.sum(y * y, -1) - 1.0, jnp.sum(y, -1)], -1)

    def residuals(p, batch):
        return ((f(p, batch[0]) - batch[1]) / 8.0).reshape(-1)

    grads = jax.grad(lambda p: jnp.mean((f(p, xl) - yl) ** 2))(params)
    return params, xc, cfn, grads, residuals, (xl, yl)
