"""A hyperparameter grid of pose runs: one vmapped program against one compiled step per run, side by side.

The pose study (``examples/run_pose_study.py``) can run the configurations
of a method family either as one program vmapped over the stacked runs
(parameters, optimiser states, traced hyperparameters and minibatches) or
one after another through one compiled step (the hyperparameters are traced
arguments in both cases, so neither recompiles per configuration). This
script times both for the same runs, per run and per step, in interleaved
rounds (so a load change on a shared machine hits both alike), and prints
the ratio vmapped / in turn for each family and grid size.

Run:  python benchmarks/study_vmap.py [--families soft-adam hard-adam] [--sizes 4 8] [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import pose  # noqa: E402
from pose import model as pose_model  # noqa: E402
from pose import study  # noqa: E402
from pose.config import get_preset  # noqa: E402

from _results import RESULTS, replace_section  # noqa: E402


def _inputs(size: int, base, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, px = base.batch_size, base.image_size
    images = rng.integers(0, 256, (size, n, px, px, 3), dtype=np.uint8)
    joints = rng.normal(0, 300, (size, n, 17, 3)).astype(np.float32)
    pool = rng.integers(0, 256, (size, n, px, px, 3), dtype=np.uint8)
    pidx = np.stack([rng.permutation(base.pool_size)[:n] for _ in range(size)]).astype(np.int32)
    return images, joints, pool, pidx


def measure(family_name: str, size: int, repeats: int, base_name: str = "small") -> dict:
    base = get_preset(base_name)
    model = pose_model.make_model(base.model, 0)
    params, problem = pose.make_problem(model)
    fam = {f.name: f for f in study.FAMILIES}[family_name]
    grid = [dict(fam.grid[k % len(fam.grid)]) for k in range(size)]
    pool_dev = None
    if study._uses_whole_pool(fam.kind):
        rng = np.random.default_rng(1)
        pool_dev = jnp.asarray(rng.integers(0, 256, (base.pool_size, base.image_size,
                                                     base.image_size, 3), dtype=np.uint8))
    states = [study._build(fam.kind, problem, hp, fam.fixed, base=base, pool=pool_dev, seed=k)
              .init(params) for k, hp in enumerate(grid)]
    step = study.make_study_step(fam, problem, base, pool_dev)
    images, joints, pool, pidx = _inputs(size, base)
    hps = {k: jnp.asarray([g[k] for g in grid], jnp.float32) for k in grid[0]}
    stacked = (study._stack([params] * size), study._stack(states), hps, images, joints, pool, pidx)
    vmapped = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, 0, 0, 0, 0, None))).lower(
        *stacked, pool_dev).compile()
    one = jax.jit(step).lower(*study._take(stacked, 0), pool_dev).compile()
    runs = [study._take(stacked, k) for k in range(size)]

    def in_turn():
        for r in runs:
            jax.block_until_ready(one(*r, pool_dev))

    def batched():
        jax.block_until_ready(vmapped(*stacked, pool_dev))

    in_turn(), batched()  # warm
    t_turn, t_vmap = [], []
    for _ in range(repeats):
        t0 = time.perf_counter(); in_turn(); t_turn.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); batched(); t_vmap.append(time.perf_counter() - t0)
    a, b = float(np.median(t_turn)) / size, float(np.median(t_vmap)) / size
    return {"family": family_name, "runs": size, "in_turn_s_per_run": a, "vmapped_s_per_run": b,
            "ratio": b / a}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["soft-adam", "hard-adam"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base", default="small", help="pose preset of the model and batch sizes")
    ap.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    rows = []
    for fam in a.families:
        for size in a.sizes:
            r = measure(fam, size, a.repeats, a.base)
            rows.append(r)
            print(f"{fam:12s} {size:3d} runs: in turn {r['in_turn_s_per_run']:.3f} s/run, vmapped "
                  f"{r['vmapped_s_per_run']:.3f} s/run, vmapped / in turn {r['ratio']:.2f}", flush=True)
    if a.write:
        load = os.getloadavg()
        body = [
            f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), "
            f"load average at the end {load[0]:.2f}. `python benchmarks/study_vmap.py "
            f"--families {' '.join(a.families)} --sizes {' '.join(map(str, a.sizes))}`: one step of "
            f"`{a.base}` pose runs (batch 128), median of {a.repeats} interleaved rounds.", "",
            "| family | runs | in turn (s per run) | vmapped (s per run) | vmapped / in turn |",
            "|---|---|---|---|---|"]
        body += [f"| {r['family']} | {r['runs']} | {r['in_turn_s_per_run']:.3f} | "
                 f"{r['vmapped_s_per_run']:.3f} | {r['ratio']:.2f} |" for r in rows]
        replace_section(RESULTS, "## Pose study: vmapped grid against runs in turn", "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
