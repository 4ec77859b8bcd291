"""Cost of the output-projection layer against a pose CNN training step, side by side.

Measures, in one run, the jitted, warm time per batch of 128 of

* the pose CNN's training step (examples/pose, Eq. 13 shape; ``--preset``
  ``small`` by default, 64x64 input): forward and backward pass of the
  squared-error loss over a labeled batch of 128 and an ``optax.adam``
  update: the reference,
* ``kktopt.project_outputs(bone_symmetry, y_hat)`` (the six bone-length
  symmetry constraints of Eq. 15 per sample, Gauss-Newton SQP per sample,
  ``vmap``-ed): forward only, and forward + backward (``jax.grad`` of a
  squared-error loss of the projected poses with respect to ``y_hat``,
  through the layer's implicit KKT adjoint),

on two kinds of input ``y_hat``: (a) synthetic ground-truth poses plus
30 mm Gaussian noise per coordinate (violations of tens of mm, an untrained
or poorly trained model) and (b) ground truth plus 5 mm noise (violations of
a few mm, as a trained model's 2-3 mm median on the test set). The CNN's own
outputs at initialisation are not used: they are far from any skeleton.

Everything is timed in interleaved rounds (each round runs every entry once),
so a load change on a shared machine hits all entries alike; the median is
reported with the ratio layer / training step, the layer's iteration counts
(median and max over the batch) and its per-sample status counts
(``kktopt.ProjectionStatus``). Target: the layer under 10 % of a step.

Run:  python benchmarks/outputs_cost.py [--quick] [--preset small] [--repeats 15] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import kktopt

# The pose example's model and data live in examples/pose (not in the library).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from pose import bone_symmetry, make_model  # noqa: E402
from pose.synthetic import generate  # noqa: E402

from _results import RESULTS, replace_section  # noqa: E402

BATCH = 128
NOISE_MM = {"a: ground truth + 30 mm noise": 30.0, "b: ground truth + 5 mm noise": 5.0}


def build_step(preset: str, seed: int):
    """The jitted CNN training step (Adam) and its arguments."""
    model = make_model(preset, seed)
    params, static = eqx.partition(model, eqx.is_array)
    data = generate(BATCH, image_size=model.image_size, seed=seed)
    images = jnp.asarray(data["image"], jnp.float32) / 255.0
    joints = jnp.asarray(data["joints3d"], jnp.float32)
    tx = optax.adam(1e-4)
    state = tx.init(params)

    def loss(p, x, y):
        pred = jax.vmap(eqx.combine(p, static))(x)
        return jnp.mean(jnp.sum((pred - y) ** 2, axis=(-1, -2)))

    @jax.jit
    def step(p, s, x, y):
        grads = jax.grad(loss)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    return step, (params, state, images, joints), n_params


@jax.jit
def layer_forward(y_hat):
    return kktopt.project_outputs(bone_symmetry, y_hat)


@jax.jit
def layer_grad(y_hat, target):
    def loss(yh):
        y, _ = kktopt.project_outputs(bone_symmetry, yh)
        return jnp.mean(jnp.sum((y - target) ** 2, axis=(-1, -2)))

    return jax.grad(loss)(y_hat)


def layer_inputs(seed: int, predictions: str | None = None):
    """Ground-truth poses (float32, exactly symmetric up to rounding) and the noisy inputs.

    With `predictions` (an ``.npz`` with ``pred`` and ``target``, shapes
    ``(n >= 128, 17, 3)``, e.g. a trained model's test predictions and the
    true poses), its first 128 poses are a third input.
    """
    joints = generate(BATCH, seed=seed + 1, render=False)["joints3d"].astype(np.float32)
    rng = np.random.default_rng(seed)
    out = {}
    for label, sigma in NOISE_MM.items():
        noisy = joints + sigma * rng.standard_normal(joints.shape).astype(np.float32)
        out[label] = (jnp.asarray(noisy), jnp.asarray(joints))
    if predictions is not None:
        data = np.load(predictions)
        pred, target = data["pred"][:BATCH], data["target"][:BATCH]
        if pred.shape != (BATCH, 17, 3) or target.shape != pred.shape:
            raise ValueError(f"--predictions needs pred and target of shape (>= {BATCH}, 17, 3), "
                             f"got {data['pred'].shape} and {data['target'].shape}.")
        out["c: a trained model's test predictions"] = (jnp.asarray(pred, jnp.float32),
                                                        jnp.asarray(target, jnp.float32))
    return out


def summarise(info) -> tuple[str, str, str, str]:
    """(iterations median / max, status counts, max violation after, median distance moved)."""
    its = np.asarray(info.iterations)
    status = np.asarray(info.status)
    counts = ", ".join(f"{kktopt.ProjectionStatus(int(s)).name} {int((status == s).sum())}"
                       for s in np.unique(status))
    return f"{np.median(its):.0f} / {its.max()}", counts, f"{float(np.max(np.asarray(info.violation))):.1e}", \
        f"{float(np.median(np.asarray(info.distance))):.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CNN preset and 3 rounds, a smoke test")
    parser.add_argument("--preset", choices=("tiny", "small", "paper"), default=None,
                        help="pose CNN preset (default small, tiny with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 15, 3 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--predictions", default=None, metavar="NPZ",
                        help="also time the layer on these poses (arrays pred, target: a trained model's "
                             "test predictions, e.g. from examples/pose/projection.py --save-predictions)")
    parser.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    preset = args.preset or ("tiny" if args.quick else "small")
    repeats = args.repeats or (3 if args.quick else 15)

    header = (
        f"kktopt output-projection cost, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, jax {jax.__version__}, {jax.devices()[0].platform}"
    )
    print(header)
    load0 = os.getloadavg()

    step, step_args, n_params = build_step(preset, args.seed)
    inputs = layer_inputs(args.seed, args.predictions)
    entries = {"CNN training step (Adam)": lambda: step(*step_args)}
    infos = {}
    for label, (y_hat, target) in inputs.items():
        c0 = np.abs(np.asarray(bone_symmetry(y_hat)))
        y, info = layer_forward(y_hat)
        jax.block_until_ready(y)
        infos[label] = (info, float(np.median(c0)), float(np.median(np.abs(np.asarray(bone_symmetry(y))))))
        entries[f"layer forward, {label}"] = (lambda yh=y_hat: layer_forward(yh))
        entries[f"layer forward + backward, {label}"] = (lambda yh=y_hat, t=target: layer_grad(yh, t))
    for name, fn in entries.items():  # compile and warm up, untimed
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
        print(f"  warmed {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    times = {name: [] for name in entries}
    for r in range(repeats):
        for name, fn in entries.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{repeats}, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    med = {name: float(np.median(t)) for name, t in times.items()}
    base = med["CNN training step (Adam)"]
    load1 = os.getloadavg()

    title = (f"Pose CNN preset `{preset}` ({n_params:,} parameters), batch {BATCH}; layer: "
             f"`kktopt.project_outputs(bone_symmetry, y_hat)`, float32, default tol and max_iter")
    cols = ["entry", "ms / batch (median)", "x training step"]
    lines = [title, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name in entries:
        lines.append(f"| {name} | {1e3 * med[name]:.2f} | {med[name] / base:.3f} |")
    lines += ["", "Layer forward pass per input (per-sample statistics over the batch of 128):", "",
              "| input | median \\|C\\| before [mm] | median \\|C\\| after [mm] | max violation after [mm] | "
              "median distance moved [mm] | iterations median / max | status counts |",
              "|---|---|---|---|---|---|---|"]
    for label, (info, c_before, c_after) in infos.items():
        its, counts, vmax, dist = summarise(info)
        lines.append(f"| {label} | {c_before:.2f} | {c_after:.1e} | {vmax} | {dist} | {its} | {counts} |")
    note = (f"{repeats} interleaved rounds. 1-minute load average {load0[0]:.1f} at the start, "
            f"{load1[0]:.1f} at the end (5-minute: {load0[1]:.1f}, {load1[1]:.1f}).")
    lines += ["", note]
    print("\n" + "\n".join(lines))
    ratios = {label.split(":")[0]: med[f"layer forward + backward, {label}"] / base for label in infos}
    met = [f"{k} ({100 * v:.1f} %)" for k, v in ratios.items() if v < 0.10]
    missed = [f"{k} ({100 * v:.1f} %)" for k, v in ratios.items() if v >= 0.10]
    verdict = ("Target layer (forward + backward) < 10 % of a training step: "
               f"met for {', '.join(met) or 'no input'}; "
               f"missed for {', '.join(missed) or 'no input'}.")
    print("\n" + verdict)
    if args.write:
        command = f"Command: `python benchmarks/outputs_cost.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
        block = "\n".join([f"### {header}", "", command.rstrip(), ""] + lines + ["", verdict])
        replace_section(RESULTS, SECTION, INTRO + "\n" + block)


SECTION = "## Output projection cost (`benchmarks/outputs_cost.py`)"
INTRO = """Cost of the output-projection layer `kktopt.project_outputs` (six
bone-length symmetry constraints of Eq. 15 per sample, Gauss-Newton SQP per
sample, `vmap`-ed, implicit KKT backward pass) per batch of 128, against one
training step of the pose CNN (forward + backward of the squared-error loss
over a labeled batch of 128, `optax.adam` update), jitted, warm, median over
interleaved rounds (each round runs every entry once). "forward + backward"
is `jax.grad` of a squared-error loss of the projected poses with respect to
the raw outputs `y_hat`. Inputs: synthetic ground-truth poses plus Gaussian
noise per coordinate, 30 mm (a) or 5 mm (b, close to a trained model's 2-3 mm
median violation). Status counts are `ProjectionInfo.status` over the batch.
Target: the layer under 10 % of a training step.
"""


if __name__ == "__main__":
    main()
