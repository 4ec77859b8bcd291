"""The hypersphere experiment (paper Sec. 6.2, Fig. 3 and Fig. 4) from the command line.

    python examples/run_hypersphere.py --out runs/hypersphere            # paper defaults, d = 1e6
    python examples/run_hypersphere.py --dim 10000 --iters 200 --out runs/hs-small
    python examples/run_hypersphere.py --methods hard hard-memory --system full --out runs/hs

Writes DIR/metrics.json (after every method: rerunning the same command
skips the methods already there, so an interrupted run resumes; --force
recomputes them), DIR/fig3.png and DIR/fig4.png. See
examples/hypersphere/ for the problem, its interpretation and the metrics.
The KKT solver flags spell kktopt's solver configuration: --system
{schur,full}, --method {dense,minres_qlp,minres,cg}, --jacobian
{per_sample,matrix_free}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import harness
from hypersphere.config import ALL_METHODS, METHODS, HypersphereConfig
from hypersphere.report import format_table, plot_fig4
from hypersphere.run import run

_ALL_METHODS = sorted({m for ms in harness.METHODS.values() for m in ms})


def parse_args(argv=None) -> argparse.Namespace:
    d = HypersphereConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--dim", type=int, default=d.dim, help="dimension d (default %(default)s)")
    p.add_argument("--constraints", type=int, default=d.constraints, help="number of spheres m (default %(default)s)")
    p.add_argument("--active", type=int, default=d.active, help="random active constraints per step (default %(default)s)")
    p.add_argument("--iters", type=int, default=d.iters, help="steps per method (default %(default)s)")
    p.add_argument("--lam", type=float, default=d.lam, help="soft penalty weight lambda (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of centres, x0 and active sets (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--soft-lr", type=float, default=None,
                   help="SGD learning rate of soft (default 1/(1 + 2 lam m), half the stability bound)")
    p.add_argument("--hard-lr", type=float, default=d.hard_lr,
                   help="SGD learning rate before the projection, eta = 1/lr in Eq. 5 (default %(default)s)")
    p.add_argument("--system", choices=harness.SYSTEMS, default=None,
                   help="KKT system of the hard steps: schur (default; the k x k Schur complement, fastest "
                        "here) or full (the full KKT system, the paper's Algorithm 1)")
    p.add_argument("--method", choices=_ALL_METHODS, default=None,
                   help="KKT solver method (default: dense for schur, minres_qlp for full); not to be "
                        "confused with --methods, the experiment's methods")
    p.add_argument("--jacobian", choices=harness.JACOBIANS, default=None,
                   help="constraint Jacobian: per_sample (default for schur) or matrix_free (default for full)")
    p.add_argument("--solver", choices=["schur", "krylov"], default=None,
                   help="deprecated: --solver schur is --system schur, --solver krylov is --system full")
    p.add_argument("--rtol", type=float, default=d.rtol,
                   help="relative tolerance of the iterative methods (default: 1e-4 in float32, 1e-8 in float64)")
    p.add_argument("--memory", type=int, default=d.memory,
                   help="samples remembered by hard-memory's multiplier memory (default %(default)s)")
    p.add_argument("--reuse", type=int, default=d.reuse,
                   help="steps hard-fixed and hard-all keep their dense Schur factorisation "
                        "(kktopt.KKTSolver(reuse=...); 0: factor every step; default %(default)s)")
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help="feedback gain of hard-alpha, A dw = -alpha c (default %(default)s)")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help="heavy-ball coefficient of sqp-momentum (default %(default)s)")
    p.add_argument("--penalty", type=float, default=None,
                   help="augmented-Lagrangian penalty rho of auglag, also its dual step (default 2 lam)")
    p.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(METHODS),
                   help="methods to run (default the paper's five; extra: " + ", ".join(ALL_METHODS[len(METHODS):]) + ")")
    p.add_argument("--centre-spread", choices=["matched", "literal"], default=d.centre_spread,
                   help="matched: per-coordinate variance 0.01*2/d (paper's d=2 geometry); literal: 0.01")
    p.add_argument("--start-distance", type=float, default=d.start_distance, help="||x0|| (default %(default)s)")
    p.add_argument("--radius", type=float, default=d.radius, help="sphere radius (default %(default)s)")
    p.add_argument("--dtype", choices=["float64", "float32"], default=d.dtype, help="default %(default)s")
    p.add_argument("--force", action="store_true", help="recompute methods already in DIR/metrics.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-figures", action="store_true", help="do not write the figures")
    p.add_argument("--plot-extra", nargs="+", default=[], metavar="DIR",
                   help="also draw (dashed) in fig4 the methods of DIR/metrics.json, a run with the same "
                        "settings but another --iters (e.g. a shorter run of the expensive hard-all)")
    a = p.parse_args(argv)
    if a.solver is not None:
        new = "full" if a.solver == "krylov" else "schur"
        if a.system is not None and a.system != new:
            p.error(f"--solver {a.solver} (deprecated) contradicts --system {a.system}; drop --solver.")
        print(f"--solver {a.solver} is deprecated; use --system {new}.", file=sys.stderr)
        a.system = new
    if a.system is None:
        a.system = d.system
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    try:
        config = HypersphereConfig(
            dim=a.dim, constraints=a.constraints, active=a.active, iters=a.iters, lam=a.lam, seed=a.seed,
            radius=a.radius, centre_spread=a.centre_spread, start_distance=a.start_distance,
            soft_lr=a.soft_lr, hard_lr=a.hard_lr, system=a.system, method=a.method, jacobian=a.jacobian,
            rtol=a.rtol, dtype=a.dtype, memory=a.memory, reuse=a.reuse, alpha=a.alpha, momentum=a.momentum,
            penalty=a.penalty,
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    extra = [harness.read_json(Path(folder) / "metrics.json") for folder in a.plot_extra]
    t0 = time.perf_counter()
    result = run(config, a.out, methods=a.methods, force=a.force, progress=not a.no_progress,
                 figures=not a.no_figures)
    wall = time.perf_counter() - t0
    if extra and not a.no_figures:
        plot_fig4(result, Path(a.out) / "fig4.png", extra=extra)
    print(f"soft lr {config.resolved_soft_lr:.3e}, hard lr {config.hard_lr:.3e}")
    print(format_table(result, markdown=False))
    print(f"wall time {wall:.1f} s; results in {a.out}")


if __name__ == "__main__":
    main()
