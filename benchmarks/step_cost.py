"""Time per training step of soft and hard constraint methods, side by side.

Measures, in one run, the jitted step time (forward, backward, KKT solve,
optimiser update) of

* Soft-Adam (Eq. 3 penalty + optax.adam): the baseline,
* Hard-SGD with MINRES-QLP on the full KKT system (matrix-free, Alg. 1),
  on 16 constraint samples, and on 16 samples mined from a pool of 128 (Eq. 9),
* Hard-SGD with MINRES-QLP on the m x m Schur complement A A^T (matrix-free:
  one VJP and one JVP per iteration, Krylov vectors of length m), likewise,
* Hard-SGD with the dense Schur complement (per-sample Jacobian), likewise,
* Hard-SGD (Schur MINRES-QLP, mined) with a multiplier memory of 128 samples
  (kktopt.memory.multiplier_memory, the memory strategy of the README),
* Hard-Adam (Eq. 12): MINRES-QLP on the full system and on the Schur
  complement, and dense Schur,
* Gauss-Newton-KKT (Eq. 6, Alg. 2, MINRES-QLP),

on (a) a CNN of the paper's Eq. 13 shape at 64x64 input (the ``small``
preset of examples/pose) and (b) an MLP with about 1M parameters, both with a
labeled batch of 128 and 16 constraint samples (six bone-length symmetry
constraints each, m = 96). Steps are timed in interleaved rounds (each round
runs every method once), so a load change on a shared machine hits all of
them alike. Prints the median seconds per step, the ratio to Soft-Adam, the
inner solver's iterations, and the compiled program's memory (arguments +
outputs + temporaries, from XLA's memory analysis); with ``--write`` also
records the tables in ``benchmarks/RESULTS.md``.

Run:  python benchmarks/step_cost.py [--quick] [--repeats 7] [--models cnn,mlp] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import kktopt

# The pose example's model and data live in examples/pose (not in the library).
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"))
from pose import bone_symmetry, make_model  # noqa: E402
from pose.synthetic import generate  # noqa: E402

from _results import RESULTS, replace_section


def build_cnn(seed: int, quick: bool):
    model = make_model("tiny" if quick else "small", seed)
    params, static = eqx.partition(model, eqx.is_array)
    size = model.image_size
    data = generate(128 + 128, image_size=size, seed=seed)
    images = jnp.asarray(data["image"], jnp.float32) / 255.0
    joints = jnp.asarray(data["joints3d"])

    def forward(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    return params, forward, images[:128], joints[:128], images[128:]


def build_mlp(seed: int, quick: bool):
    widths = (64, 64, 51) if quick else (512, 1024, 512, 51)
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        params.append(
            {
                "w": jnp.asarray(rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in), jnp.float32),
                "b": jnp.zeros(fan_out, jnp.float32),
            }
        )
    params[-1]["w"] = params[-1]["w"] * 100.0  # predictions in mm, roughly

    def forward(p, x):
        h = x
        for layer in p[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        return (h @ p[-1]["w"] + p[-1]["b"]).reshape(x.shape[0], 17, 3)

    data = generate(256, image_size=32, seed=seed, render=False)
    x = jnp.asarray(rng.normal(size=(256, widths[0])), jnp.float32)
    joints = jnp.asarray(data["joints3d"])
    return params, forward, x[:128], joints[:128], x[128:]


def methods(forward, like):
    # The data are arguments of the jitted step (as in training), never
    # closed-over constants that XLA could fold at compile time.
    def loss(p, batch):
        images, joints = batch
        return jnp.mean(jnp.sum((forward(p, images) - joints) ** 2, axis=(-1, -2)))

    def cfn(p, xc):
        return bone_symmetry(forward(p, xc))

    def residuals(p, batch):
        images, joints = batch
        return (forward(p, images) - joints).reshape(-1) / np.sqrt(images.shape[0])

    krylov = kktopt.KKTSolver(system="full")
    schur = kktopt.KKTSolver(method="dense", jacobian="per_sample")
    schur_qlp = kktopt.KKTSolver()
    mined = kktopt.active.mined_samples(16)
    soft = kktopt.soft_constrained_loss(loss, cfn, 1e-3)
    lr = 1e-6
    return {
        "Soft-Adam": ("soft", optax.adam(1e-3), soft),
        "Hard-SGD MINRES-QLP": ("hard", optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=krylov)), loss),
        "Hard-SGD MINRES-QLP, mined 16/128": (
            "pool",
            optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=krylov, active=mined)),
            loss,
        ),
        "Hard-SGD MINRES-QLP on Schur complement": (
            "hard", optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=schur_qlp)), loss,
        ),
        "Hard-SGD MINRES-QLP on Schur complement, mined 16/128": (
            "pool", optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=schur_qlp, active=mined)), loss,
        ),
        "Hard-SGD dense Schur": (
            "hard",
            optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=schur)),
            loss,
        ),
        "Hard-SGD dense Schur, mined 16/128": (
            "pool",
            optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=schur, active=mined)),
            loss,
        ),
        "Hard-SGD MINRES-QLP on Schur complement, mined 16/128, memory 128": (
            "pool",
            optax.chain(
                optax.sgd(lr),
                kktopt.project_kkt(
                    cfn, solver=schur_qlp, active=mined,
                    memory=kktopt.memory.multiplier_memory(128, like),
                ),
            ),
            loss,
        ),
        "Hard-Adam MINRES-QLP": ("hard", kktopt.hard_adam(1e-4, cfn, solver=krylov), loss),
        "Hard-Adam MINRES-QLP on Schur complement": ("hard", kktopt.hard_adam(1e-4, cfn, solver=schur_qlp), loss),
        "Hard-Adam dense Schur": ("hard", kktopt.hard_adam(1e-4, cfn, solver=schur), loss),
        "Gauss-Newton-KKT MINRES-QLP": ("gn", kktopt.gauss_newton_kkt(residuals, cfn, damping=1e3, solver=krylov), loss),
    }


def make_step(kind, tx, objective):
    def step(params, state, batch, xc, pool):
        if kind == "soft":
            grads = jax.grad(objective)(params, batch, xc)
            updates, state = tx.update(grads, state, params)
        elif kind == "gn":
            updates, state = tx.update(None, state, params, residual_batch=batch, constraint_batch=xc)
        else:
            grads = jax.grad(objective)(params, batch)
            batch = pool if kind == "pool" else xc
            updates, state = tx.update(grads, state, params, constraint_batch=batch)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


def solver_iterations(state):
    for leaf in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, kktopt.KKTInfo)):
        if isinstance(leaf, kktopt.KKTInfo):
            return int(leaf.solver.iterations)
    return None


def compile_step(step, params, state, data):
    compiled = step.lower(params, state, *data).compile()
    mem = compiled.memory_analysis()
    nbytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes if mem else None
    out = compiled(params, state, *data)  # untimed first call
    jax.block_until_ready(out)
    return compiled, nbytes, solver_iterations(out[1])


def run(model_name, build, seed, repeats, quick):
    params, forward, images, joints, pool = build(seed, quick)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    xc = pool[:16]
    compiled = {}
    data = ((images, joints), xc, pool)
    for name, (kind, tx, objective) in methods(forward, pool).items():
        state = tx.init(params)
        fn, nbytes, iters = compile_step(make_step(kind, tx, objective), params, state, data)
        compiled[name] = (fn, state, nbytes, iters)
    times = {name: [] for name in compiled}
    for _ in range(repeats):  # interleaved rounds
        for name, (fn, state, _, _) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, state, *data))
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["Soft-Adam"]))
    print(f"\n({model_name}) {n_params:,} parameters, labeled batch 128, 16 constraint samples (m = 96)")
    print(f"{'method':66s} {'s/step':>8s} {'x soft':>7s} {'iters':>6s} {'memory MB':>10s}")
    lines = [
        f"({model_name}) {n_params:,} parameters, labeled batch 128, 16 constraint samples (m = 96)",
        "",
        "| method | s/step (median) | x Soft-Adam | solver iterations | XLA memory [MB] |",
        "|---|---|---|---|---|",
    ]
    for name, (_, _, nbytes, iters) in compiled.items():
        seconds = float(np.median(times[name]))
        mb = f"{nbytes / 2**20:.0f}" if nbytes else "-"
        it = "-" if iters is None else str(iters)
        print(f"{name:66s} {seconds:8.3f} {seconds / base:7.2f} {it:>6s} {mb:>10s}")
        lines.append(f"| {name} | {seconds:.3f} | {seconds / base:.2f} | {it} | {mb} |")
    return n_params, lines


SECTION = "## Step cost (`benchmarks/step_cost.py`)"
INTRO = """One jitted training step (forward, backward, KKT solve, optimiser update),
warm, median over interleaved rounds (each round runs every method once, so
load changes on a shared machine hit all methods alike); ratios are to
Soft-Adam in the same run. Labeled batch 128; the constraint batch is 16
samples (six bone-length constraints each, m = 96), or 16 mined (Eq. 9) from
a pool of 128, whose forward pass is part of the step. "solver iterations"
is the Krylov count of the first step (0: dense). "XLA memory" is arguments +
outputs + temporaries of the compiled step. Learning rates are small, so
every step is comparable; the soft penalty weight is 1e-3.
"""


def write_results(block: str) -> None:
    replace_section(RESULTS, SECTION, INTRO + "\n" + block)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, for smoke tests")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="record the tables in benchmarks/RESULTS.md")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="cnn,mlp")
    args = parser.parse_args(argv)
    builders = {"cnn": ("a: CNN, Eq. 13 shape, 64x64", build_cnn), "mlp": ("b: MLP", build_mlp)}
    import os

    header = (
        f"kktopt step cost, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, jax {jax.__version__}, {jax.devices()[0].platform}"
    )
    print(header)
    blocks = [f"### {header}", "", f"Command: `python benchmarks/step_cost.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip()]
    for key in args.models.split(","):
        label, build = builders[key]
        _, lines = run(label, build, args.seed, args.repeats, args.quick)
        blocks += [""] + lines
    if args.write:
        write_results("\n".join(blocks))

if __name__ == "__main__":
    main()
