"""kktopt.project_outputs against Pi-net on the same convex projection, side by side.

Problem: batch 128, y in R^n (n = 51), m = 6 random linear equalities A y = b
(b chosen so that the set meets the box) and the box -1 <= y <= 1, y_hat ~
N(0, 1.5^2). Both layers project onto {A y = b, lb <= y <= ub} in float32:

* kktopt: ``project_outputs(lambda y: A @ y - b, y_hat, lower=lb, upper=ub)``
  (bounds by elimination: semismooth Newton on the dual of the equalities,
  each step an m x m solve on the free coordinates; exact once the free set
  is right),
* Pi-net (``pinet-hcnn``): ``Project(eq_constraint, box_constraint)``,
  Douglas-Rachford with ``n_iter`` forward iterations and its implicit
  backward pass (``n_iter_bwd`` iterations).

Reports the agreement of the outputs (max |y_kktopt - y_pinet|, and each
one's constraint violation) and the forward and forward+backward time per
batch, jitted and warm, as medians over interleaved rounds (each round runs
every variant once), with ratios to kktopt from the same run. The reference
for agreement is a float64 run of kktopt (whose result is checked against the
KKT conditions).

Needs the optional extra (its own environment: Pi-net pins its own jax and
torch): ``pip install 'kktopt[pinet]'``.

Run:  python benchmarks/vs_pinet.py [--repeats 7] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import kktopt.outputs as ko

from _results import RESULTS, read_section, replace_section

TITLE = "## Output projection vs Pi-net (`benchmarks/vs_pinet.py`)"


def problem(seed: int, batch: int = 128, n: int = 51, m: int = 6):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(m, n))
    b = a @ rng.uniform(-0.5, 0.5, size=n)
    y_hat = 1.5 * rng.normal(size=(batch, n))
    return a.astype(np.float32), b.astype(np.float32), y_hat.astype(np.float32)


def kktopt_layer(a, b, lb, ub):
    aj, bj = jnp.asarray(a), jnp.asarray(b)

    def project(y_hat):
        return ko.project_outputs(lambda y: aj @ y - bj, y_hat, lower=lb, upper=ub)
    return project


def pinet_layer(a, b, lb, ub, n_iter, n_iter_bwd):
    from pinet import (BoxConstraint, BoxConstraintSpecification, EqualityConstraint, Project,
                       ProjectionInstance)

    n = a.shape[1]
    eq = EqualityConstraint(a_mat=jnp.asarray(a)[None], b=jnp.asarray(b)[None, :, None], method="pinv")
    box = BoxConstraint(BoxConstraintSpecification(lb=jnp.full((1, n, 1), lb, jnp.float32),
                                                   ub=jnp.full((1, n, 1), ub, jnp.float32)))
    layer = Project(eq_constraint=eq, box_constraint=box)

    def project(y_hat):
        out, _ = layer.call(y_raw=ProjectionInstance(x=y_hat[:, :, None]), n_iter=n_iter,
                            n_iter_bwd=n_iter_bwd, fpi=True)
        return out.x[:, :, 0]
    return project


def violation(y, a, b, lb, ub):
    y = np.asarray(y, np.float64)
    eq = np.abs(y @ a.T - b).max()
    box = np.maximum(np.maximum(y - ub, lb - y), 0).max()
    return max(eq, box)


def timed(fn, *args):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", default="100,300,1000", help="Pi-net forward iterations to try")
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args()
    try:
        import pinet  # noqa: F401
    except ImportError:
        sys.exit("Pi-net is not installed: pip install 'kktopt[pinet]' (in its own environment).")

    lb, ub = -1.0, 1.0
    a, b, y_hat = problem(args.seed)
    cot = jnp.asarray(np.random.default_rng(args.seed + 1).normal(size=y_hat.shape), jnp.float32)
    with jax.enable_x64(True):
        ref, info64 = kktopt_layer(a.astype(np.float64), b.astype(np.float64), lb, ub)(
            jnp.asarray(y_hat, jnp.float64))
        ref = np.asarray(ref)
        assert bool(info64.converged.all()), info64.describe()

    variants = {"kktopt project_outputs": kktopt_layer(a, b, lb, ub)}
    for it in [int(s) for s in args.iters.split(",")]:
        variants[f"Pi-net DR, {it} iterations (bwd 50)"] = pinet_layer(a, b, lb, ub, it, 50)

    fwd, both, rows = {}, {}, {}
    for name, proj in variants.items():
        if name.startswith("kktopt"):
            f = jax.jit(lambda v, p=proj: p(v)[0])
        else:
            f = jax.jit(proj)
        g = jax.jit(jax.grad(lambda v, f=f: jnp.sum(cot * f(v))))
        y = np.asarray(f(jnp.asarray(y_hat)))
        g(jnp.asarray(y_hat)).block_until_ready()
        fwd[name], both[name] = f, g
        rows[name] = dict(err=np.abs(y - ref).max(), cv=violation(y, a, b, lb, ub))
    _, info = variants["kktopt project_outputs"](jnp.asarray(y_hat))
    kinfo = f"kktopt status: {info.describe()}"

    times = {name: ([], []) for name in variants}
    x = jnp.asarray(y_hat)
    for _ in range(args.repeats):  # interleaved rounds
        for name in variants:
            times[name][0].append(timed(fwd[name], x))
            times[name][1].append(timed(both[name], x))
    base_f = np.median(times["kktopt project_outputs"][0])
    base_b = np.median(times["kktopt project_outputs"][1])
    lines = ["| layer | max abs error vs float64 KKT point | constraint violation | forward [ms] | x kktopt | "
             "forward+backward [ms] | x kktopt |", "|---|---|---|---|---|---|---|"]
    for name in variants:
        tf, tb = np.median(times[name][0]), np.median(times[name][1])
        lines.append(f"| {name} | {rows[name]['err']:.1e} | {rows[name]['cv']:.1e} | {1e3 * tf:.2f} | "
                     f"{tf / base_f:.3g} | {1e3 * tb:.2f} | {tb / base_b:.3g} |")
    versions = (f"jax {jax.__version__}, pinet-hcnn {md.version('pinet-hcnn')}, "
                f"torch {md.version('torch')}")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"### {stamp}, {platform.system()} {platform.machine()}, Python {platform.python_version()}, "
            f"{versions}, {jax.default_backend()}\n\nCommand: `python benchmarks/vs_pinet.py "
            f"--repeats {args.repeats}{' --write' if args.write else ''}`\n\n"
            f"Batch 128, n = 51, 6 random equalities + box [-1, 1], float32; load average "
            f"{', '.join(f'{v:.2f}' for v in __import__('os').getloadavg())}; {kinfo}.")
    text = head + "\n\n" + "\n".join(lines)
    print(text)
    if args.write:
        intro = ("Same convex projection (linear equalities plus a box, batch 128) through both "
                 "layers, jitted and warm; medians over interleaved rounds, ratios to kktopt "
                 "from the same run. Error is against a float64 kktopt solve (checked KKT point).")
        old = read_section(RESULTS, TITLE)
        body = "\n".join(old).strip() if old else intro
        replace_section(RESULTS, TITLE, body + "\n\n" + text)


if __name__ == "__main__":
    main()
