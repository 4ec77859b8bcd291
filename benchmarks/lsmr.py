"""kktopt.krylov.lsmr and min_norm_solve against scipy.sparse.linalg.lsmr on a wide problem.

Problem: a dense wide A (m x n, m << n, the shape of a constraint Jacobian)
with singular values log-spaced from 1 to 1/cond and random singular vectors,
b ~ N(0, I): a compatible system whose minimum-norm solution is pinv(A) b.
Each solver must reach the same TRUE relative residual ||A x - b|| / ||b||
(computed here in float64 numpy): the script tightens each solver's own
tolerance (factors of 10) until it does, then times warm solves over
interleaved rounds (an untimed call, then a timed one, per solver per round).
"scipy / this" is scipy's median time over the solver's, from the same run.

Usage:
  python benchmarks/lsmr.py           # m = 64, n = 20000, float64 and float32; appends to RESULTS.md
  python benchmarks/lsmr.py --quick   # small sizes, prints only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.sparse.linalg as sp_linalg  # noqa: E402

from kktopt import krylov  # noqa: E402

from _results import RESULTS, read_section, replace_section  # noqa: E402

SECTION = "## LSMR on a wide matrix (`benchmarks/lsmr.py`)"


def problem(m, n, cond, seed):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, m)))
    a = (u * np.logspace(0, -np.log10(cond), m)) @ v.T
    return a, rng.standard_normal(m)


def run(m, n, cond, dtype, seed, repeats, target):
    a, b = problem(m, n, cond, seed)
    a = a.astype(dtype)
    b = b.astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)

    def relres(x):
        return float(np.linalg.norm(a64 @ np.asarray(x, np.float64) - b64) / np.linalg.norm(b64))

    aj, bj = jnp.asarray(a), jnp.asarray(b)
    lsmr_jit = jax.jit(lambda a, b, r: krylov.lsmr(a, None, b, rtol=r, check_residual=False))
    mns_jit = jax.jit(lambda a, b: krylov.min_norm_solve(a, b))

    solvers = {
        "scipy lsmr": (
            lambda tol: (sp_linalg.lsmr(a, b, atol=tol, btol=tol, maxiter=20 * m)[0], None),
            lambda tol: (lambda: sp_linalg.lsmr(a, b, atol=tol, btol=tol, maxiter=20 * m)),
        ),
        "kktopt lsmr": (
            lambda tol: lsmr_jit(aj, bj, jnp.asarray(tol, dtype)),
            lambda tol: (lambda: jax.block_until_ready(lsmr_jit(aj, bj, jnp.asarray(tol, dtype)))),
        ),
        "kktopt min_norm_solve (dense QR + SVD)": (
            lambda tol: mns_jit(aj, bj),
            lambda tol: (lambda: jax.block_until_ready(mns_jit(aj, bj))),
        ),
    }
    chosen = {}
    for name, (probe, _) in solvers.items():
        tol = target
        for _ in range(6):
            x, info = probe(tol)
            res = relres(x)
            iters = None if info is None else int(info.iterations)
            if res <= target:
                break
            tol /= 10
        chosen[name] = (tol, res, iters)
    runs = {name: timed(chosen[name][0]) for name, (_, timed) in solvers.items()}
    for r in runs.values():
        r()
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, r in runs.items():
            r()
            t0 = time.perf_counter()
            r()
            samples[name].append(time.perf_counter() - t0)
    ref = statistics.median(samples["scipy lsmr"])
    rows = []
    for name in runs:
        tol, res, iters = chosen[name]
        med = statistics.median(samples[name])
        rows.append(
            f"| {m} x {n}, cond {cond:g}, {np.dtype(dtype).name} | {name} | {tol:.0e} | "
            f"{'-' if iters is None else iters} | {res:.1e}{'' if res <= target else ' (target missed)'} | "
            f"{1e3 * med:.3g} ({1e3 * min(samples[name]):.3g}) | {ref / med:.2f} |"
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--m", type=int)
    parser.add_argument("--n", type=int)
    parser.add_argument("--cond", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    m = args.m or (16 if args.quick else 64)
    n = args.n or (2000 if args.quick else 20000)
    repeats = args.repeats or (3 if args.quick else 10)
    rows = []
    for dtype, target in ((np.float64, 1e-8), (np.float32, 1e-4)):
        rows += run(m, n, args.cond, dtype, args.seed, repeats, target)
    head = (
        "| problem | solver | tol used | iterations | true relres | time [ms] median (min) | scipy / this |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    block = "\n".join([
        f"### {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')}",
        "",
        f"- machine: {platform.system()} {platform.machine()}, {cores} CPU cores; backend {jax.default_backend()}",
        f"- versions: Python {platform.python_version()}, jax {jax.__version__}, numpy {np.__version__}, scipy {scipy.__version__}; BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}",
        f"- command: `python benchmarks/lsmr.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip(),
        "- targets: true ||A x - b|| / ||b|| <= 1e-8 (float64), 1e-4 (float32); scipy's tol is its atol = btol, kktopt's its rtol",
        "",
        head + "\n".join(rows),
        "",
    ])
    print(block)
    if not args.quick and not args.no_write:
        old = read_section(RESULTS, SECTION)
        body = ("\n".join(old).strip() + "\n\n" if old else __doc__.split("\n\n")[1] + "\n\n") + block
        replace_section(RESULTS, SECTION, body)
        print(f"written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
