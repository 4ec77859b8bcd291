"""Seconds per step of the hypersphere experiment's methods, side by side in one run.

    python benchmarks/hypersphere_steps.py                    # defaults: d = 1e6, m = 200, float64
    python benchmarks/hypersphere_steps.py --dim 100000 --steps 10

Times each method (and the alternative KKT solvers of the hard ones) the way
``examples/run_hypersphere.py`` runs it: a compiled ``lax.scan`` over
``--steps`` steps, after a warm-up chunk of the same length (compilation and
first-touch of the temporaries excluded), in interleaved rounds so that a
change of the machine's load affects every configuration alike. Prints
s/step, the ratio to ``soft`` (median over rounds) and the compile time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import jax  # noqa: E402
from kktopt.active import take_samples  # noqa: E402

import hypersphere as hs  # noqa: E402
from hypersphere.methods import chunk_fn, fns, step_key  # noqa: E402

# (label, experiment method, solver override (system, method, jacobian, reuse) or None for the run's choice)
CANDIDATES = [
    ("soft", "soft", None),
    ("hard", "hard", None),
    ("hard (schur/minres_qlp/matrix_free)", "hard", ("schur", "minres_qlp", "matrix_free", 0)),
    ("hard-fixed", "hard-fixed", None),
    ("hard-fixed (schur/dense/per_sample, no reuse)", "hard-fixed", ("schur", "dense", "per_sample", 0)),
    ("hard-all", "hard-all", None),
    ("hard-all (schur/dense/per_sample, no reuse)", "hard-all", ("schur", "dense", "per_sample", 0)),
    ("hard-all (schur/dense/matrix_free, no reuse)", "hard-all", ("schur", "dense", "matrix_free", 0)),
    ("hard-all (schur/dense/matrix_free, reuse 50)", "hard-all", ("schur", "dense", "matrix_free", 50)),
    ("hard-fixed (schur/dense/matrix_free, reuse 50)", "hard-fixed", ("schur", "dense", "matrix_free", 50)),
    ("hard-all (full/minres_qlp/matrix_free)", "hard-all", ("full", "minres_qlp", "matrix_free", 0)),
    ("hard-memory", "hard-memory", None),
]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="labels to run (default all)")
    a = p.parse_args(argv)
    base = hs.HypersphereConfig(dim=a.dim, iters=a.steps)
    rows = {}
    with jax.enable_x64(True):
        problem = hs.make_problem(base)
        x0, centres, fixed = problem
        fixed_batch = take_samples(centres, fixed)
        todo = [c for c in CANDIDATES if a.only is None or c[0] in a.only]
        runs = {}
        for label, method, override in todo:
            cfg = base if override is None else dataclasses.replace(
                base, system=override[0], method=override[1], jacobian=override[2], reuse=override[3])
            key = step_key(cfg)
            init, _ = fns(key, method)
            args = (x0, centres, fixed_batch if method == "hard-fixed" else None, fixed)
            chunk = chunk_fn(key, method, a.steps)
            t0 = time.perf_counter()
            carry = init(x0, x0, centres)
            carry, rec = chunk(carry, *args)  # compile + warm-up
            jax.block_until_ready(rec)
            runs[label] = [chunk, carry, args, time.perf_counter() - t0, []]
            print(f"compiled {label} ({time.perf_counter() - t0:.1f} s)", flush=True)
        for r in range(a.rounds):
            for label, run in runs.items():
                chunk, carry, args = run[:3]
                t0 = time.perf_counter()
                carry, rec = chunk(carry, *args)
                jax.block_until_ready(rec)
                run[4].append((time.perf_counter() - t0) / a.steps)
                run[1] = carry
                extra = ""
                if "iterations" in rec:
                    extra = f", KKT it. {float(rec['iterations'].mean()):.1f}"
                print(f"round {r}: {label}: {run[4][-1]:.3f} s/step{extra}", flush=True)
        soft = statistics.median(runs["soft"][4]) if "soft" in runs else None
        print(f"\nd = {a.dim:g}, m = {base.constraints}, {a.steps} steps x {a.rounds} rounds, "
              f"load {os.getloadavg()[0]:.2f}, jax {jax.__version__}")
        print("| configuration | s/step | x soft | compile + warm-up (s) |\n|---|---|---|---|")
        for label, run in runs.items():
            s = statistics.median(run[4])
            rows[label] = s
            ratio = "-" if soft is None else f"{s / soft:.1f}"
            print(f"| {label} | {s:.3f} | {ratio} | {run[3]:.1f} |")


if __name__ == "__main__":
    main()
