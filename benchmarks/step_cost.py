"""Time per training step of soft and hard constraint methods, side by side.

Measures, in one run, the jitted step time (forward, backward, KKT solve,
optimiser update) of

* Soft-Adam (Eq. 3 penalty + optax.adam): the baseline,
* Hard-SGD with MINRES-QLP on the full KKT system (matrix-free, Alg. 1),
* Hard-SGD with the dense Schur complement (per-sample Jacobian),
* Hard-SGD with 16 constraint samples mined from a pool of 128 (Eq. 9),
* Hard-Adam (Eq. 12), MINRES-QLP and dense Schur,
* Gauss-Newton-KKT (Eq. 6, Alg. 2, MINRES-QLP),

on (a) a CNN of the paper's Eq. 13 shape at 64x64 input (the ``small``
preset of kktopt.pose) and (b) an MLP with about 1M parameters, both with a
labeled batch of 128 and 16 constraint samples (six bone-length symmetry
constraints each, m = 96). Prints the median seconds per step, the ratio to
Soft-Adam, the inner solver's iterations, and the compiled program's memory
(arguments + outputs + temporaries, from XLA's memory analysis).

Run:  python benchmarks/step_cost.py [--quick] [--repeats 5] [--models cnn,mlp]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import kktopt
from kktopt.pose import bone_symmetry, make_model
from kktopt.pose.synthetic import generate


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


def methods(forward, images, joints):
    def loss(p, batch=None):
        return jnp.mean(jnp.sum((forward(p, images) - joints) ** 2, axis=(-1, -2)))

    def cfn(p, xc):
        return bone_symmetry(forward(p, xc))

    def residuals(p, batch):
        return (forward(p, images) - joints).reshape(-1) / np.sqrt(images.shape[0])

    krylov = kktopt.KrylovKKT()
    schur = kktopt.SchurKKT()
    mined = kktopt.active.mined_samples(16)
    soft = kktopt.soft_constrained_loss(lambda p, b: loss(p), cfn, 1e-3)
    lr = 1e-6
    return {
        "Soft-Adam": ("soft", optax.adam(1e-3), soft),
        "Hard-SGD MINRES-QLP": ("hard", optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=krylov)), loss),
        "Hard-SGD dense Schur": (
            "hard",
            optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=schur, jacobian="per_sample")),
            loss,
        ),
        "Hard-SGD dense Schur, mined 16/128": (
            "pool",
            optax.chain(optax.sgd(lr), kktopt.project_kkt(cfn, solver=schur, jacobian="per_sample", active=mined)),
            loss,
        ),
        "Hard-Adam MINRES-QLP": ("hard", kktopt.hard_adam(1e-4, cfn, solver=krylov), loss),
        "Hard-Adam dense Schur": ("hard", kktopt.hard_adam(1e-4, cfn, solver=schur, jacobian="per_sample"), loss),
        "Gauss-Newton-KKT MINRES-QLP": ("gn", kktopt.gauss_newton_kkt(residuals, cfn, damping=1e3, solver=krylov), loss),
    }


def make_step(kind, tx, objective, xc, pool):
    def step(params, state):
        if kind == "soft":
            grads = jax.grad(objective)(params, None, xc)
            updates, state = tx.update(grads, state, params)
        elif kind == "gn":
            updates, state = tx.update(None, state, params, residual_batch=None, constraint_batch=xc)
        else:
            grads = jax.grad(objective)(params)
            batch = pool if kind == "pool" else xc
            updates, state = tx.update(grads, state, params, constraint_batch=batch)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


def solver_iterations(state):
    for leaf in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, kktopt.KKTInfo)):
        if isinstance(leaf, kktopt.KKTInfo):
            return int(leaf.solver.iterations)
    return None


def time_step(step, params, state, repeats):
    compiled = step.lower(params, state).compile()
    mem = compiled.memory_analysis()
    nbytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes if mem else None
    out = compiled(params, state)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = compiled(params, state)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), nbytes, solver_iterations(out[1])


def run(model_name, build, seed, repeats, quick):
    params, forward, images, joints, pool = build(seed, quick)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    xc = pool[:16]
    rows = []
    for name, (kind, tx, objective) in methods(forward, images, joints).items():
        step = make_step(kind, tx, objective, xc, pool)
        seconds, nbytes, iters = time_step(step, params, tx.init(params), repeats)
        rows.append((name, seconds, nbytes, iters))
    base = rows[0][1]
    print(f"\n({model_name}) {n_params:,} parameters, labeled batch 128, 16 constraint samples (m = 96)")
    print(f"{'method':38s} {'s/step':>8s} {'x soft':>7s} {'iters':>6s} {'memory MB':>10s}")
    lines = []
    for name, seconds, nbytes, iters in rows:
        mb = f"{nbytes / 2**20:.0f}" if nbytes else "-"
        it = "-" if iters is None else str(iters)
        print(f"{name:38s} {seconds:8.3f} {seconds / base:7.2f} {it:>6s} {mb:>10s}")
        lines.append(f"| {name} | {seconds:.3f} | {seconds / base:.2f} | {it} | {mb} |")
    return n_params, lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, for smoke tests")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="cnn,mlp")
    args = parser.parse_args(argv)
    builders = {"cnn": ("a: CNN, Eq. 13 shape, 64x64", build_cnn), "mlp": ("b: MLP", build_mlp)}
    print(
        f"kktopt step cost, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, jax {jax.__version__}, {jax.devices()[0].platform}"
    )
    for key in args.models.split(","):
        label, build = builders[key]
        run(label, build, args.seed, args.repeats, args.quick)


if __name__ == "__main__":
    main()
