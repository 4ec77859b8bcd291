"""The 3D human pose experiment (paper Sec. 5, Fig. 2) from the command line.

    python examples/run_pose.py --preset demo --out runs/pose-demo      # < 10 min on 2 CPU cores
    python examples/run_pose.py --preset small --out runs/pose-small    # < 15 min on 2 CPU cores
    python examples/run_pose.py --preset paper --out runs/pose-paper    # paper sizes, for a GPU
    python examples/run_pose.py --preset small --methods soft-adam hard-sgd \\
        --lr hard-sgd=1e-8,3e-8 --lam soft-adam=0.1,1 --out runs/pose-grid
    python examples/run_pose.py --preset small-seeds --out runs/pose-seeds \\
        --data-dir runs/pose-small/data --unconstrained-from runs/pose-small

Builds the synthetic data set with TFDS (into DIR/data, or --data-dir),
trains the unconstrained model and every constrained configuration of the
preset, and writes DIR/results.json, DIR/fig2a.png, DIR/fig2b.png and
DIR/table.md, then prints the table. Rerunning the same command resumes an
interrupted run: finished configurations are skipped, an unfinished one
continues from its last checkpoint. With --seeds K,K.. every constrained
configuration is repeated with other minibatches (DIR/seeds.md and
DIR/pareto.png: mean and spread over seeds); --unconstrained-from DIR2
starts from the unconstrained model of an earlier run with the same data and
pretraining settings. See examples/pose/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _grid(values: list[str] | None, name: str) -> dict[str, list[float]] | None:
    """``["hard-sgd=1e-8,3e-8", "1e-3"]`` -> ``{"hard-sgd": [1e-8, 3e-8], "*": [1e-3]}``."""
    if not values:
        return None
    out: dict[str, list[float]] = {}
    for item in values:
        method, _, nums = item.rpartition("=")
        try:
            out[method or "*"] = [float(v) for v in nums.split(",") if v]
        except ValueError:
            raise SystemExit(f"--{name} {item!r}: expected [METHOD=]VALUE[,VALUE...]") from None
    return out


def parse_args(argv=None) -> argparse.Namespace:
    from pose.config import CONSTRAINED_METHODS, PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="sizes, steps and hyperparameters (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-dir", default=None, help="TFDS data folder (default OUT/data)")
    p.add_argument("--methods", nargs="+", choices=CONSTRAINED_METHODS, default=None,
                   help="run only these constrained methods")
    p.add_argument("--lr", action="append", metavar="[METHOD=]V[,V..]",
                   help="learning-rate grid replacing the preset's (METHOD omitted: every "
                        "method with a learning rate); repeatable")
    p.add_argument("--lam", action="append", metavar="[METHOD=]V[,V..]",
                   help="soft penalty weight lambda grid (soft methods); repeatable")
    p.add_argument("--damping", action="append", metavar="[METHOD=]V[,V..]",
                   help="Gauss-Newton damping eta grid")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the preset's, 0)")
    p.add_argument("--seeds", default=None, metavar="K[,K..]",
                   help="repeat every constrained configuration with these minibatch seeds "
                        "(same data and unconstrained model), e.g. 0,1,2")
    p.add_argument("--unconstrained-from", default=None, metavar="DIR",
                   help="reuse the unconstrained model of an earlier run in DIR (same data "
                        "and pretraining settings) instead of training it again")
    p.add_argument("--compilation-cache", default="OUT/jax_cache",
                   help="JAX persistent compilation cache folder, 'none' to disable "
                        "(default %(default)s): a resumed run does not recompile")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--no-figures", action="store_true", help="do not write the figures")
    p.add_argument("--stop-after-checkpoints", type=int, default=None, metavar="N",
                   help="stop as if interrupted after N checkpoints (to test resumption)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compilation_cache.lower() != "none":
        import jax

        cache = args.compilation_cache.replace("OUT", args.out, 1)
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    import pose

    preset = pose.with_overrides(
        pose.get_preset(args.preset), methods=args.methods, lr=_grid(args.lr, "lr"),
        lam=_grid(args.lam, "lam"), damping=_grid(args.damping, "damping"), seed=args.seed,
        seeds=None if args.seeds is None else [int(k) for k in args.seeds.split(",") if k])
    print(f"pose experiment, preset {preset.name!r}: {len(preset.methods)} constrained "
          f"configurations -> {args.out}", flush=True)
    t0 = time.perf_counter()
    results = pose.run(preset, args.out, data_dir=args.data_dir, progress=not args.no_progress,
                       figures=not args.no_figures,
                       stop_after_checkpoints=args.stop_after_checkpoints,
                       unconstrained_from=args.unconstrained_from)
    if not results["complete"]:
        return 0
    print()
    print(pose.format_table(results))
    if len({s.seed for s in preset.methods}) > 1:
        print()
        print(pose.format_seed_table(results, markdown=False))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; results in "
          f"{os.path.join(args.out, 'results.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
