"""kktopt's Krylov solvers against scipy's MINRES and jax.scipy's CG / GMRES.

Problems (sizes: see ``--help``):

  (a) laplace3d  3-D Laplacian, 7-point stencil, Dirichlet boundary, on an
                 N^3 grid (SPD). scipy gets a CSR matrix; the JAX solvers a
                 matrix-free stencil on the flat vector.
  (b) kkt        The hypersphere KKT system of the paper (Sec. 6.2, Eq. 5 with
                 eta = 1): K = [[I, A^T], [A, 0]], row i of A the gradient
                 (w - c_i) / ||w - c_i|| of the constraint ||w - c_i|| - 10,
                 c_i ~ N(0, 0.01 I), x0 ~ N(0, I), w = x0 + N(0, I), right-hand
                 side (-g, -c) with g = w - x0. Indefinite. Matrix-free in
                 both: scipy a LinearOperator with a numpy matvec, JAX a pytree
                 (dw, lambda) operator; A is a dense m x d array. float64 and
                 float32 (b32).
  (c) tridiag    A small (n = 1000) indefinite tridiagonal system, where the
                 per-iteration overhead of the solver dominates.

Every solver is run until it reaches the same TRUE relative residual
||b - A x|| / ||b|| (computed here in numpy float64, independently of the
solver): the solvers' own stopping rules differ (scipy's MINRES tests
||r|| / (||T_k||_F ||x||), a Frobenius-norm estimate that grows with the
iteration count; kktopt tests ||r|| / (||A|| ||x|| + ||b||); jax.scipy's
CG/GMRES test ||r|| / ||b||), so one ``rtol`` means different things to each.
For each solver the script searches its own ``rtol`` (a bisection in log
scale) for the loosest value whose solution meets the target, then times the
solve at that value. Times are over interleaved rounds (each round runs every
solver, an untimed call then a timed one), of jit-compiled, warm solves ended
by ``block_until_ready``; ratios are against scipy's MINRES measured in the
same run. Everything is deterministic given ``--seed``.

Usage:
  python benchmarks/krylov.py            # full sizes (minutes), writes benchmarks/RESULTS.md
  python benchmarks/krylov.py --quick    # small sizes and fewer solvers, prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _blas_threads(argv) -> str:
    """The value of ``--blas-threads`` (default 1), read before numpy is imported."""
    for i, arg in enumerate(argv):
        if arg.startswith("--blas-threads="):
            return arg.split("=", 1)[1]
        if arg == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
    return "1"


# BLAS threads must be fixed before numpy loads OpenBLAS. One thread by
# default: on a small shared machine, multithreaded OpenBLAS calls on these
# matrix-vector products wait on descheduled threads (measured: scipy's
# MINRES on (b) with d = 1e4 went from ~13 ms to ~100 ms median with the
# default thread count on 2 busy cores). "0" leaves the environment alone.
BLAS_THREADS = _blas_threads(sys.argv) if __name__ == "__main__" else "0"
if BLAS_THREADS != "0":
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = BLAS_THREADS

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.sparse.linalg as jsp_linalg  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as sp_linalg  # noqa: E402

import kktopt  # noqa: E402
from kktopt import krylov  # noqa: E402

from _results import RESULTS, read_section, replace_section  # noqa: E402

HIGHEST = jax.lax.Precision.HIGHEST
SECTION = "## Krylov solvers (`benchmarks/krylov.py`)"


# ---------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    """One linear system, posed once for scipy and once for JAX.

    ``jax_matvec(params, v)`` applies the operator to a pytree ``v`` shaped
    like ``jax_b``; ``params`` (arrays) is passed to the jitted solves as an
    argument, not closed over, so large matrices are not baked into the
    compiled program as constants.
    """

    key: str
    title: str
    dtype: Any
    n: int
    spd: bool
    scipy_op: Any  # a scipy sparse matrix or LinearOperator
    scipy_b: np.ndarray
    jax_matvec: Callable
    jax_params: Any
    jax_b: Any
    true_matvec: Callable  # float64 numpy v -> A v on flat vectors, for the check
    b64: np.ndarray  # float64 flat right-hand side of the system actually solved
    target: float  # the true relative residual every solver must reach
    repeats: int


def _flat64(x) -> np.ndarray:
    leaves = jax.tree_util.tree_leaves(x)
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in leaves])


def laplace3d(n_side: int, seed: int, repeats: int) -> Problem:
    """(a) -Laplacian, 7-point stencil (6 on the diagonal, -1 to each neighbour), Dirichlet."""
    dtype = np.float64
    one = sp.diags([-np.ones(n_side - 1), 2 * np.ones(n_side), -np.ones(n_side - 1)], [-1, 0, 1])
    eye = sp.identity(n_side)
    lap = (
        sp.kron(sp.kron(one, eye), eye) + sp.kron(sp.kron(eye, one), eye) + sp.kron(sp.kron(eye, eye), one)
    ).tocsr()
    n = n_side**3
    b = np.random.default_rng(seed).standard_normal(n).astype(dtype)

    def matvec(params, v):
        u = v.reshape(n_side, n_side, n_side)
        p = jnp.pad(u, 1)
        out = (
            6 * u
            - p[:-2, 1:-1, 1:-1] - p[2:, 1:-1, 1:-1]
            - p[1:-1, :-2, 1:-1] - p[1:-1, 2:, 1:-1]
            - p[1:-1, 1:-1, :-2] - p[1:-1, 1:-1, 2:]
        )
        return out.reshape(-1)

    probe = np.random.default_rng(seed + 1).standard_normal(n)
    assert np.allclose(np.asarray(jax.jit(matvec)(None, jnp.asarray(probe))), lap @ probe)
    return Problem(
        key="laplace3d", title=f"(a) 3-D Laplacian {n_side}^3, 7-point, float64",
        dtype=dtype, n=n, spd=True, scipy_op=lap, scipy_b=b,
        jax_matvec=matvec, jax_params=None, jax_b=jnp.asarray(b),
        true_matvec=lambda v: lap @ v, b64=b.astype(np.float64), target=1e-8, repeats=repeats,
    )


def hypersphere_kkt(d: int, m: int, seed: int, dtype, repeats: int) -> Problem:
    """(b) Eq. 5 with eta = 1 for min 1/2 ||w - x0||^2 s.t. ||w - c_i|| = 10: K = [[I, A^T], [A, 0]].

    x0 ~ N(0, I), c_i ~ N(0, 0.01 I), linearised at w = x0 + xi with xi ~ N(0, I)
    (a point away from x0, so that both blocks of the right-hand side (-g, -c),
    g = w - x0, are non-zero). Row i of A is (w - c_i) / ||w - c_i||.
    """
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(d)
    w = x0 + rng.standard_normal(d)
    jac = np.empty((m, d))
    cons = np.empty(m)
    for i in range(m):  # row by row: no (m, d) temporaries
        diff = w - 0.1 * rng.standard_normal(d)  # w - c_i, c_i ~ N(0, 0.01 I)
        nrm = np.linalg.norm(diff)
        jac[i] = diff / nrm
        cons[i] = nrm - 10.0
    jac = jac.astype(dtype)
    rhs = [(x0 - w).astype(dtype), (-cons).astype(dtype)]
    del x0, w

    def scipy_matvec(v):
        # scipy's MINRES promotes its vectors to float64 even for a float32
        # operator (its scalars are float64); cast so the matrix is not.
        v = v.astype(dtype, copy=False)
        v1, v2 = v[:d], v[d:]
        return np.concatenate([v1 + jac.T @ v2, jac @ v1])

    op = sp_linalg.LinearOperator((d + m, d + m), matvec=scipy_matvec, rmatvec=scipy_matvec, dtype=dtype)

    def matvec(a, v):
        v1, v2 = v
        return (v1 + jnp.matmul(v2, a, precision=HIGHEST), jnp.matmul(a, v1, precision=HIGHEST))

    jac64 = jac.astype(np.float64)

    def true_matvec(v):
        v1, v2 = v[:d], v[d:]
        return np.concatenate([v1 + jac64.T @ v2, jac64 @ v1])

    name = np.dtype(dtype).name
    return Problem(
        key=f"kkt-{name}", title=f"(b) hypersphere KKT, d = {d:.0e}, m = {m}, {name}".replace("e+0", "e"),
        dtype=dtype, n=d + m, spd=False, scipy_op=op, scipy_b=np.concatenate(rhs),
        jax_matvec=matvec, jax_params=jnp.asarray(jac), jax_b=tuple(jnp.asarray(r) for r in rhs),
        true_matvec=true_matvec, b64=np.concatenate(rhs).astype(np.float64),
        target=1e-8 if dtype == np.float64 else 1e-5, repeats=repeats,
    )


def tridiag_indefinite(n: int, seed: int, repeats: int) -> Problem:
    """(c) T = tridiag(1, d_i, 1) with d_i ~ U(-1, 1): indefinite, nonsingular in practice."""
    rng = np.random.default_rng(seed)
    diag = rng.uniform(-1.0, 1.0, n)
    t = sp.diags([np.ones(n - 1), diag, np.ones(n - 1)], [-1, 0, 1]).tocsr()
    b = rng.standard_normal(n)

    def matvec(dg, v):
        z = jnp.zeros((1,), v.dtype)
        return dg * v + jnp.concatenate([v[1:], z]) + jnp.concatenate([z, v[:-1]])

    return Problem(
        key="tridiag", title=f"(c) tridiag(1, U(-1, 1), 1), n = {n}, float64",
        dtype=np.float64, n=n, spd=False, scipy_op=t, scipy_b=b,
        jax_matvec=matvec, jax_params=jnp.asarray(diag), jax_b=jnp.asarray(b),
        true_matvec=lambda v: t @ v, b64=b, target=1e-8, repeats=repeats,
    )


# ---------------------------------------------------------------------------
# Solvers: each gives solve(rtol) -> (x, iterations) and a timed closure.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Solver:
    name: str
    # rtol -> (flat float64 x, iterations or None, operator applications)
    probe: Callable[[float], tuple[np.ndarray, int | None, int]]
    # rtol -> a zero-argument callable that runs one solve and waits for it
    timed: Callable[[float], Callable[[], Any]]
    spd_only: bool = False


def scipy_minres(p: Problem) -> Solver:
    maxiter = 10 * p.n

    def probe(rtol):
        count = {"it": 0, "mv": 0}

        def matvec(v):
            count["mv"] += 1
            return p.scipy_op @ v

        op = sp_linalg.LinearOperator(p.scipy_op.shape, matvec=matvec, rmatvec=matvec, dtype=p.dtype)

        def tick(_):
            count["it"] += 1

        x, _ = sp_linalg.minres(op, p.scipy_b, rtol=rtol, maxiter=maxiter, callback=tick)
        return np.asarray(x, np.float64), count["it"], count["mv"]

    def timed(rtol):
        return lambda: sp_linalg.minres(p.scipy_op, p.scipy_b, rtol=rtol, maxiter=maxiter)

    return Solver("scipy minres", probe, timed)


_MATVECS = [0]


def _tick():
    _MATVECS[0] += 1


def jax_solver(p: Problem, name: str, call: Callable, spd_only=False, extra_matvecs=None) -> Solver:
    """``call(matvec, b, rtol)`` -> (x, info or None), for a JAX solver.

    For kktopt's solvers the operator applications are ``iterations +
    extra_matvecs`` (the symmetry probe and the exit residual); for
    jax.scipy's, which report no iteration count, a second compiled version
    counts the applications with a host callback (used only while matching
    tolerances, never timed).
    """

    def build(count: bool):
        def solve(params, b, rtol):
            def matvec(v):
                if count:
                    jax.debug.callback(_tick)
                return p.jax_matvec(params, v)

            x, info = call(matvec, b, rtol)
            iters = info.iterations if hasattr(info, "iterations") else jnp.zeros((), jnp.int32) - 1
            return x, iters

        return jax.jit(solve)

    plain = build(False)
    counted = plain if extra_matvecs is not None else build(True)

    def probe(rtol):
        _MATVECS[0] = 0
        x, iters = counted(p.jax_params, p.jax_b, jnp.asarray(rtol, p.dtype))
        jax.block_until_ready(x)
        jax.effects_barrier()
        iters = int(iters)
        if extra_matvecs is not None:
            return _flat64(x), iters, iters + extra_matvecs
        return _flat64(x), None, _MATVECS[0]

    def timed(rtol):
        r = jnp.asarray(rtol, p.dtype)
        return lambda: jax.block_until_ready(plain(p.jax_params, p.jax_b, r))

    return Solver(name, probe, timed, spd_only)


# An earlier kktopt (``--before REV``), timed in the same rounds as the current one.
BEFORE: tuple[str, Any] | None = None


def before_solvers(p: Problem, maxit: int) -> list[Solver]:
    if BEFORE is None:
        return []
    rev, old = BEFORE
    return [
        jax_solver(
            p, f"kktopt minres_qlp @{rev}",
            lambda A, b, r: old.krylov.minres_qlp(A, b, rtol=r, maxiter=maxit), extra_matvecs=4,
        ),
        jax_solver(
            p, f"kktopt minres @{rev}",
            lambda A, b, r: old.krylov.minres(A, b, rtol=r, maxiter=maxit), extra_matvecs=4,
        ),
    ]


def all_solvers(p: Problem) -> list[Solver]:
    maxit = 10 * p.n
    restart = 20
    nochecks = dict(check_symmetry=False, check_residual=False)
    return [
        scipy_minres(p),
        jax_solver(
            p, "kktopt minres_qlp",
            lambda A, b, r: krylov.minres_qlp(A, b, rtol=r, maxiter=maxit), extra_matvecs=4,
        ),
        jax_solver(
            p, "kktopt minres_qlp (no checks)",
            lambda A, b, r: krylov.minres_qlp(A, b, rtol=r, maxiter=maxit, **nochecks), extra_matvecs=0,
        ),
        jax_solver(
            p, "kktopt minres", lambda A, b, r: krylov.minres(A, b, rtol=r, maxiter=maxit), extra_matvecs=4
        ),
        jax_solver(
            p, "kktopt cg", lambda A, b, r: krylov.cg(A, b, rtol=r, maxiter=maxit),
            spd_only=True, extra_matvecs=4,
        ),
        *before_solvers(p, maxit),
        jax_solver(p, "jax cg", lambda A, b, r: jsp_linalg.cg(A, b, tol=r, maxiter=maxit), spd_only=True),
        jax_solver(
            p, f"jax gmres({restart})",
            lambda A, b, r: jsp_linalg.gmres(A, b, tol=r, restart=restart, maxiter=maxit // restart + 1),
        ),
    ]


# ---------------------------------------------------------------------------
# Matching tolerances, timing
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    rtol: float
    relres: float
    iterations: int | None
    matvecs: int
    reached: bool


def true_relres(p: Problem, x: np.ndarray) -> float:
    return float(np.linalg.norm(p.b64 - p.true_matvec(x)) / np.linalg.norm(p.b64))


def calibrate(p: Problem, s: Solver, max_tries: int) -> Outcome:
    """The loosest rtol (up to a factor ~1.5 or one iteration) whose x meets ``p.target``.

    Assumes the true residual falls as rtol falls: bisection in log(rtol)
    between the loosest passing and the tightest failing value seen.
    """
    passing: Outcome | None = None
    failing: Outcome | None = None
    rtol = p.target
    floor = 1e-6 * p.target
    for _ in range(max_tries):
        x, iters, mv = s.probe(rtol)
        out = Outcome(rtol, true_relres(p, x), iters, mv, False)
        out.reached = bool(out.relres <= p.target)
        if out.reached and (passing is None or rtol > passing.rtol):
            passing = out
        if not out.reached and (failing is None or rtol < failing.rtol):
            failing = out
        if passing and failing:
            if failing.matvecs + 1 >= passing.matvecs or passing.rtol * 1.5 >= failing.rtol:
                break
            rtol = math.sqrt(passing.rtol * failing.rtol)
        elif passing:
            rtol = passing.rtol * 10
        else:
            if failing.rtol <= floor:
                break
            rtol = max(failing.rtol / 10, floor)
    return passing or failing


def time_solvers(p: Problem, solvers, outcomes, repeats) -> dict[str, list[float]]:
    """Seconds per solve, ``repeats`` samples per solver.

    Rounds are interleaved across solvers, so that load from other jobs on the
    machine hits them alike, and every timed solve follows an untimed one of
    the same solver: on a loaded machine the first call after another
    library's (BLAS or XLA worker threads still spinning, caches) is several
    times slower, and would otherwise penalise whichever solver comes next.
    """
    runs = {s.name: s.timed(outcomes[s.name].rtol) for s in solvers}
    for run in runs.values():  # compile and warm up
        run()
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run()
            t0 = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - t0)
    return samples


def run_problem(p: Problem, max_tries: int, verbose: bool, only: list[str] | None = None):
    solvers = [s for s in all_solvers(p) if p.spd or not s.spd_only]
    if only:  # scipy's MINRES always runs: it is the reference of the ratios
        names = {s.name for s in solvers}

        def wanted(name):
            # An entry that is a full solver name selects that solver only;
            # any other entry selects every solver whose name contains it.
            return name == "scipy minres" or any(o == name or (o not in names and o in name) for o in only)

        solvers = [s for s in solvers if wanted(s.name)]
    outcomes = {}
    for s in solvers:
        t0 = time.perf_counter()
        outcomes[s.name] = calibrate(p, s, max_tries)
        if verbose:
            o = outcomes[s.name]
            print(
                f"  [{p.key}] {s.name}: rtol {o.rtol:.2e} -> relres {o.relres:.2e}, "
                f"{o.matvecs} matvecs ({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
    times = time_solvers(p, solvers, outcomes, p.repeats)
    return [(s.name, outcomes[s.name], times[s.name]) for s in solvers]


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def environment() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}, {cores} CPU cores, {cpu}",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "kktopt": getattr(kktopt, "__version__", "dev"),
        "backend": jax.default_backend(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
    }


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover
        return "?"


def table(results) -> str:
    head = (
        "| problem | solver | rtol used | iterations | matvecs | true relres "
        "| time [ms] median (min) | scipy / this: median (min) |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for p, res in results:
        ref = {name: t for name, _, t in res}["scipy minres"]
        ref_med, ref_min = statistics.median(ref), min(ref)
        for name, o, t in res:
            relres = f"{o.relres:.1e}" + ("" if o.reached else " (target missed)")
            iters = "-" if o.iterations is None else str(o.iterations)
            med, low = statistics.median(t), min(t)
            rows.append(
                f"| {p.title} | {name} | {o.rtol:.1e} | {iters} | {o.matvecs} | {relres} "
                f"| {1e3 * med:.3g} ({1e3 * low:.3g}) | {ref_med / med:.2f} ({ref_min / low:.2f}) |"
            )
    return head + "\n".join(rows) + "\n"


INTRO = """\
Each solver is run to the same TRUE relative residual ||b - A x|| / ||b||
(target: 1e-8 in float64, 1e-5 in float32), computed in numpy float64
outside the solver. The solvers' stopping rules differ (scipy's MINRES tests
||r|| / (||T_k||_F ||x||), whose Frobenius estimate grows with the iteration
count; kktopt tests ||r|| / (||A|| ||x|| + ||b||); jax.scipy's CG/GMRES
||r|| / ||b||), so the script searches each solver's own `rtol` (a log-scale
bisection) for the loosest value that meets the target and times the solve
there: "rtol used" is that value. "matvecs" counts every operator
application: kktopt's defaults add 2 for the symmetry probe and 2 for the
true residual at exit ("no checks" turns both off); GMRES(20) as jax.scipy
runs it by default ('batched') checks convergence only once per restart.
Times: over interleaved rounds (each runs every solver once untimed, then
once timed), warm jit-compiled solves ended by `block_until_ready`; median
and, in brackets, minimum. The last column is scipy's time over the
solver's (> 1: faster than scipy), both from the same run. CG runs only on
the SPD problem (a). scipy gets a CSR matrix for (a) and (c) and a
`LinearOperator` with a numpy matvec for (b); the JAX solvers get
matrix-free stencils for (a) and (c) and a pytree (dw, lambda) operator with
A as a dense m x d array for (b). scipy's MINRES keeps its vectors in float64
even for the float32 operator of (b32) (its scalars are float64 and numpy
promotes). The machine is shared with other jobs: read ratios, not absolute
times. Regenerate with `python benchmarks/krylov.py` (`--quick` for a smoke
run).
"""


def run_block(env, args, results) -> str:
    lines = [
        f"### jax {env['jax']}, Python {env['python']}",
        "",
        f"- date: {env['date']}",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, jax {env['jax']} / jaxlib {env['jaxlib']} "
        f"({env['backend']}), numpy {env['numpy']}, scipy {env['scipy']}",
        f"- threads: BLAS {env['blas_threads']}; XLA default (its own pool)",
        f"- command: `python benchmarks/krylov.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- seed {args.seed}",
        "",
        table(results),
    ]
    return "\n".join(lines)


def write_results(path: Path, block: str, env) -> None:
    """Replace this script's run for the same jax/Python versions in ``path``; keep the rest."""
    runs, current = {}, None
    for line in read_section(path, SECTION) or []:
        if line.startswith("### "):
            current = line
            runs[current] = []
        elif current is not None:
            runs[current].append(line)
    runs = {head: "\n".join([head, *body]).rstrip() + "\n" for head, body in runs.items()}
    runs[block.splitlines()[0]] = block.rstrip() + "\n"
    replace_section(path, SECTION, "\n".join([INTRO] + [runs[k] for k in sorted(runs)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true",
        help="small sizes, few repeats, problems a,b,c and solvers scipy minres, kktopt minres_qlp, "
        "jax cg, jax gmres(20) unless given (a smoke test; most of its time is compilation)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=int, help="(a) grid side N (default 32; 12 with --quick)")
    parser.add_argument("--d", type=int, help="(b) number of parameters d (default 1e6; 1e4 with --quick)")
    parser.add_argument("--m", type=int, default=20, help="(b) active constraints (default 20)")
    parser.add_argument("--n-small", type=int, help="(c) size n (default 1000; 300 with --quick)")
    parser.add_argument("--repeats", type=int, help="timing repeats (default 15, 5 for (b); 3 with --quick)")
    parser.add_argument("--max-tries", type=int, help="solves per tolerance search (default 12; 6 with --quick)")
    parser.add_argument(
        "--problems", help="comma-separated subset of a, b, b32 (float32 (b)), c (default: all; a,b,c with --quick)"
    )
    parser.add_argument(
        "--output", type=Path, help=f"write the table here (default {RESULTS.name} in full mode, nowhere with --quick)"
    )
    parser.add_argument(
        "--solvers", help="comma-separated solver names, or substrings of names, to run (scipy minres "
        "always runs), e.g. 'kktopt minres_qlp,jax cg' or 'minres_qlp' (both minres_qlp rows)"
    )
    parser.add_argument(
        "--blas-threads", default="1",
        help="threads for numpy/scipy's BLAS (default 1; 0 = leave OPENBLAS_NUM_THREADS etc. as they are)",
    )
    parser.add_argument(
        "--before", metavar="REV",
        help="also time kktopt as it was at git revision REV (its minres_qlp and minres rows, "
        "'@REV' in their names) in the same interleaved rounds: a before/after comparison in one run",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("-v", "--verbose", action="store_true", help="print progress to stderr")
    args = parser.parse_args(argv)
    if args.before:
        global BEFORE
        from _before import load_kktopt

        BEFORE = (args.before, load_kktopt(args.before))

    q = args.quick
    problems = args.problems or ("a,b,c" if q else "a,b,b32,c")
    solvers = args.solvers or ("kktopt minres_qlp,jax cg,jax gmres(20)" if q else None)
    grid = args.grid or (12 if q else 32)
    d = args.d or (10_000 if q else 1_000_000)
    n_small = args.n_small or (300 if q else 1000)
    max_tries = args.max_tries or (6 if q else 12)

    def reps(default, big=False):
        return args.repeats or (3 if q else (5 if big else default))

    makers = {
        "a": lambda: laplace3d(grid, args.seed, reps(15)),
        "b": lambda: hypersphere_kkt(d, args.m, args.seed, np.float64, reps(15, big=not q)),
        "b32": lambda: hypersphere_kkt(d, args.m, args.seed, np.float32, reps(15, big=not q)),
        "c": lambda: tridiag_indefinite(n_small, args.seed, reps(15)),
    }
    env = environment()
    results = []
    only = [o.strip() for o in solvers.split(",")] if solvers else None
    for key in problems.split(","):
        p = makers[key.strip()]()
        results.append((p, run_problem(p, max_tries, args.verbose, only)))
        p.jax_params = p.scipy_op = p.true_matvec = None  # free the large KKT matrices early
    block = run_block(env, args, results)
    print(block)
    output = args.output or (None if q else RESULTS)
    if output is not None and not args.no_write:
        write_results(output, block, env)
        print(f"written to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
