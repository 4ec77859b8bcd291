"""How well one hard step meets its linearised constraints, and what it costs, by solver x dtype x m.

For each problem, transform and :class:`kktopt.KKTSolver`, one jitted step
from the same parameters; the residual ``||A dw + c|| / ||c||`` of the step
``dw`` is recomputed independently in float64 (a float64 JVP of the
constraint function at the parameters, both cast up), next to the step's
own ``KKTInfo.linearized_residual`` and status. Time per step is the median
of warm calls.

Problems:

* ``mlp``: an MLP R^4 -> R^3 (two tanh layers of 16), constraints
  ``||y|| = 1`` and ``sum(y) = 0`` on 16 inputs (m = 32, cond(A) about 640)
  or 8 inputs (m = 16); one step after ``optax.sgd(0.05)`` / Adam / a
  Gauss-Newton step (damping 1e-2), float32 and float64.
* ``cnn``: the ``small`` pose CNN of examples/pose (144k parameters) after
  ``--pretrain`` (300) unconstrained Adam steps (lr 2e-3, batch 128, 1024
  synthetic images; the Quickstart demo's unconstrained model is trained the
  same way; cached under runs/kkt_accuracy/), the six bone-symmetry
  constraints on 16 samples mined from a pool of 128 (m = 96) and on 128
  samples (m = 768); Hard-SGD (lr 1e-8 on the mean squared error in mm^2,
  the pose experiment's), Hard-Adam
  (lr 1e-4, eps 1e-8, and eps 1 as in the pose experiment) and
  Gauss-Newton-KKT (damping 1e3), float32.

Run:  python benchmarks/kkt_accuracy.py [--quick] [--problems mlp,cnn] [--solvers default,...] [--transforms Hard-Adam,...] [--repeats 3] [--pretrain 300] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kktopt

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))
from _problems import sphere_sum_mlp  # noqa: E402
from _results import RESULTS, replace_section  # noqa: E402

SOLVERS = {
    "default": None,
    "default per-sample": kktopt.KKTSolver(jacobian="per_sample"),
    "qr": kktopt.KKTSolver(method="qr"),
    "lsmr": kktopt.KKTSolver(method="lsmr"),
    "schur minres_qlp": kktopt.KKTSolver(method="minres_qlp"),
    "schur dense": kktopt.KKTSolver(method="dense"),
    "full minres_qlp": kktopt.KKTSolver(system="full", method="minres_qlp"),
}
GN_SOLVERS = {
    "default": None,
    "default per-sample": kktopt.KKTSolver(system="full", jacobian="per_sample"),
    "full minres_qlp": kktopt.KKTSolver(system="full", method="minres_qlp"),
}


def mlp_problem(n, dtype, seed=0):
    """The MLP of ``tests/test_kkt_numerics.py`` (R^4 -> R^3, ||y|| = 1 and sum(y) = 0 on n inputs)."""
    params, pool, cfn, _, residuals, (xl, yl) = sphere_sum_mlp(n, dtype, seed)

    def f_loss(p, batch):  # the mean squared error over the 64 x 3 labels
        return jnp.sum(residuals(p, batch) ** 2) / yl.shape[1]

    return dict(params=params, cfn=cfn, loss=f_loss, residuals=residuals, batch=(xl, yl), pool=pool,
                active=None, lr=0.05, damping=1e-2, m=2 * n)


def pretrained_cnn(preset, seed, steps, images, joints, static_like):
    """The pose CNN after ``steps`` unconstrained Adam steps (lr 2e-3, batch 128), cached under runs/."""
    import equinox as eqx

    cache = ROOT / "runs" / "kkt_accuracy" / f"cnn-{preset}-seed{seed}-adam{steps}.eqx"
    if cache.exists():
        return eqx.tree_deserialise_leaves(cache, static_like)
    params, static = eqx.partition(static_like, eqx.is_array)

    def loss(p, x, y):
        pred = jax.vmap(eqx.combine(p, static))(x)
        return jnp.mean(jnp.sum((pred - y) ** 2, axis=(-1, -2)))

    opt = optax.adam(2e-3)

    @jax.jit
    def step(p, s, x, y):
        value, g = jax.value_and_grad(loss)(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    state = opt.init(params)
    rng = np.random.default_rng(seed)
    n = images.shape[0]
    t0 = time.perf_counter()
    for i in range(steps):
        idx = rng.choice(n, 128, replace=False)
        params, state, value = step(params, state, images[idx], joints[idx])
        if (i + 1) % 50 == 0:
            print(f"  pretraining {preset} CNN: step {i + 1}/{steps}, loss {float(value):.4g}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    model = eqx.combine(params, static)
    cache.parent.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(cache, model)
    return model


def cnn_problem(samples, quick, seed=0, pretrain=300):
    import equinox as eqx
    from pose import bone_symmetry, make_model
    from pose.synthetic import generate

    preset = "tiny" if quick else "small"
    model = make_model(preset, seed)
    n_train = 1024
    data = generate(n_train + 128 + 128, image_size=model.image_size, seed=seed)
    images = jnp.asarray(data["image"], jnp.float32) / 255.0
    joints = jnp.asarray(data["joints3d"])
    if pretrain:
        model = pretrained_cnn(preset, seed, pretrain, images[:n_train], joints[:n_train], model)
    images, joints = images[n_train:], joints[n_train:]
    params, static = eqx.partition(model, eqx.is_array)

    def forward(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    def cfn(p, x):
        return bone_symmetry(forward(p, x))

    def loss(p, batch):
        return jnp.mean(jnp.sum((forward(p, batch[0]) - batch[1]) ** 2, axis=(-1, -2)))

    def residuals(p, batch):
        return (forward(p, batch[0]) - batch[1]).reshape(-1) / np.sqrt(batch[0].shape[0])

    active = kktopt.active.mined_samples(16) if samples == 16 else None
    # Hard-SGD's learning rate is the pose experiment's (examples/pose/config.py: 1e-8 on this
    # loss in mm^2). At 1e-3 the SGD step moves the rows 5e4 times as far as their violation
    # (||A u|| / ||c||), and in float32 A dw + c cannot even be evaluated to 1e-3 of ||c||: the
    # exact float64 step, rounded to float32, already leaves 1.1e-3 (m = 96, 100-step model).
    return dict(params=params, cfn=cfn, loss=loss, residuals=residuals, batch=(images[:128], joints[:128]),
                pool=images[128:], active=active, lr=1e-8, damping=1e3, m=6 * samples)


def transforms(prob, solver_map):
    cfn, active = prob["cfn"], prob["active"]
    out = {}
    for name, solver in solver_map["sgd"].items():
        out[("Hard-SGD", name)] = ("grad", optax.chain(optax.sgd(prob["lr"]), kktopt.project_kkt(cfn, solver=solver, active=active)))
    for name, solver in solver_map["sgd"].items():
        out[("Hard-Adam", name)] = ("grad", kktopt.hard_adam(1e-4, cfn, solver=solver, active=active))
    for name, solver in solver_map.get("adam_eps1", {}).items():
        out[("Hard-Adam eps=1", name)] = ("grad", kktopt.hard_adam(1e-4, cfn, eps=1.0, solver=solver, active=active))
    for name, solver in solver_map["gn"].items():
        out[("Gauss-Newton-KKT", name)] = (
            "gn", kktopt.gauss_newton_kkt(prob["residuals"], cfn, damping=prob["damping"], solver=solver, active=active)
        )
    return out


def f64_residual(cfn, params, xc, dw):
    """||A dw + c|| / ||c|| on the rows the step was solved for, in float64 (numpy inputs, x64 scope)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    d = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), dw)
    x = np.asarray(xc, np.float64)
    with jax.enable_x64(True):
        p = jax.tree_util.tree_map(jnp.asarray, p)
        d = jax.tree_util.tree_map(jnp.asarray, d)
        c, jv = jax.jvp(lambda q: cfn(q, jnp.asarray(x)).reshape(-1), (p,), (d,))
        return float(jnp.linalg.norm(c + jv) / jnp.linalg.norm(c))


def measure(prob, kind, tx, repeats):
    params, pool, batch = prob["params"], prob["pool"], prob["batch"]
    state = tx.init(params)

    def step(params, state, batch, pool):
        if kind == "gn":
            return tx.update(None, state, params, residual_batch=batch, constraint_batch=pool)
        grads = jax.grad(prob["loss"])(params, batch)
        return tx.update(grads, state, params, constraint_batch=pool)

    fn = jax.jit(step).lower(params, state, batch, pool).compile()
    dw, new_state = jax.block_until_ready(fn(params, state, batch, pool))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, state, batch, pool))
        times.append(time.perf_counter() - t0)
    info = kktopt.get_kkt_info(new_state)
    xc = pool
    if prob["active"] is not None:
        xc = pool[np.asarray(prob["active"].indices(new_state_active(new_state)))]
    return dict(
        residual=f64_residual(prob["cfn"], params, xc, dw),
        reported=float(info.linearized_residual),
        status=int(info.status),
        iterations=int(info.solver.iterations),
        refinements=int(info.refinements),
        seconds=float(np.median(times)),
    )


def new_state_active(state):
    def is_hard(x):
        return hasattr(x, "active") and hasattr(x, "info")

    for leaf in jax.tree_util.tree_leaves(state, is_leaf=is_hard):
        if is_hard(leaf):
            return leaf.active
    raise ValueError("no hard transform state found")


def run_problem(label, prob, solvers, repeats, lines, rows, only=None):
    print(f"\n{label}", flush=True)
    for (transform, solver), (kind, tx) in transforms(prob, solvers).items():
        if only and not any(o in transform for o in only):
            continue
        r = measure(prob, kind, tx, repeats)
        rows.append((label, transform, solver, r))
        print(f"  {transform:17s} {solver:18s} residual {r['residual']:.2e} (reported {r['reported']:.2e}) "
              f"status {r['status']} its {r['iterations']:4d} ref {r['refinements']} {r['seconds'] * 1e3:9.1f} ms",
              flush=True)
        lines.append(
            f"| {label} | {transform} | {solver} | {r['residual']:.1e} | {r['status']} | {r['iterations']} | "
            f"{r['refinements']} | {r['seconds'] * 1e3:.1f} |"
        )


SECTION = "## KKT step accuracy (`benchmarks/kkt_accuracy.py`)"
INTRO = """One hard step from the same parameters per row: `residual` is
`||A dw + c|| / ||c||` of the returned step recomputed in float64 (targets:
<= 1e-3 in float32, <= 1e-8 in float64); `status` is `KKTInfo.status`
(0 solved, 1 no active rows, 2 iteration limit, 3 incompatible, 4 growth
bound, 5 accuracy limit); `its` the inner iterations (0: dense), `ref` the
refinement rounds on the constraint rows; time is the warm jitted step
(forward, backward, solve). "default" is `KKTSolver()` for Hard-SGD/Adam
(`method="auto"`) and `KKTSolver(system="full")` for Gauss-Newton-KKT;
"default per-sample" is `KKTSolver(jacobian="per_sample")` (CNN only).
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--problems", default="mlp,cnn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--solvers", default=None, help="comma-separated solver names to run (default: all)")
    parser.add_argument("--transforms", default=None,
                        help="comma-separated substrings: only transforms whose name contains one (default: all)")
    parser.add_argument("--cnn-samples", default="16,128",
                        help="constraint samples of the CNN problems: 16 (mined from 128, m = 96), 128 (m = 768)")
    parser.add_argument("--dtypes", default="float32,float64", help="dtypes of the MLP problems")
    parser.add_argument("--sizes", default="16,8", help="constraint samples of the MLP problems (m = 2 x each)")
    parser.add_argument("--pretrain", type=int, default=300,
                        help="unconstrained Adam steps of the CNN before the measured step (cached under runs/; 0: random init)")
    args = parser.parse_args(argv)
    header = (
        f"kktopt KKT step accuracy, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, jax {jax.__version__}, {jax.devices()[0].platform}"
    )
    print(header)
    lines = [f"### {header}", "", f"Command: `python benchmarks/kkt_accuracy.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip(), "",
             "| problem | transform | solver | residual (f64) | status | its | ref | ms/step |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    keep = set(args.solvers.split(",")) if args.solvers else None
    only = [t.strip() for t in args.transforms.split(",") if t.strip()] if args.transforms else None

    def pick(table):
        return {k: v for k, v in table.items() if keep is None or k in keep}

    def save():  # after every problem, so a later one that fails loses nothing measured
        if args.write:
            replace_section(RESULTS, SECTION, INTRO + "\n" + "\n".join(lines))

    all_solvers = {"sgd": pick(SOLVERS), "gn": pick(GN_SOLVERS), "adam_eps1": pick({"default": None})}
    if "mlp" in args.problems:
        for dtype in [jnp.dtype(d).type for d in args.dtypes.split(",")]:
            ctx = jax.enable_x64(dtype == jnp.float64)
            with ctx:
                for n in [int(k) for k in args.sizes.split(",")]:
                    prob = mlp_problem(n, dtype)
                    run_problem(f"MLP m={2 * n} {jnp.dtype(dtype).name}", prob, all_solvers, args.repeats, lines, rows, only)
                    save()
    if "cnn" in args.problems:
        cnn_solvers = {"sgd": pick({k: SOLVERS[k] for k in ("default", "default per-sample", "qr", "lsmr",
                                                                "schur minres_qlp", "schur dense")}),
                       "gn": pick(GN_SOLVERS),
                       "adam_eps1": pick({k: SOLVERS[k] for k in ("default", "default per-sample", "qr")})}
        for samples in ((16,) if args.quick else [int(k) for k in args.cnn_samples.split(",")]):
            prob = cnn_problem(samples, args.quick, pretrain=args.pretrain)
            solvers = cnn_solvers
            if samples > 16:
                # "qr": a Householder QR of the 144k x 768 Jacobian (3.5 s at m = 96 on
                # XLA:CPU, growing with m^2).
                solvers = {k: {n: s for n, s in v.items() if n != "qr"} for k, v in cnn_solvers.items()}
            run_problem(f"CNN m={6 * samples} float32", prob, solvers, args.repeats, lines, rows, only)
            save()
    return rows


if __name__ == "__main__":
    main()
