"""Time per training step of soft and hard constraint methods, side by side.

Measures, in one run, the jitted step time (forward, backward, KKT solve,
optimiser update) of

* Soft-Adam (Eq. 3 penalty + optax.adam): the baseline,
* Hard-SGD (Eq. 5) and Hard-Adam (Eq. 12) with the default solver
  ``kktopt.KKTSolver()`` (``method="auto"``), the dense minimum-norm
  correction ``method="qr"`` (its Jacobian formed by m VJPs of the batch, or
  per sample: ``jacobian="per_sample"``) and matrix-free ``method="lsmr"``, each on 16
  constraint samples and on 16 samples mined from a pool of 128 (Eq. 9),
* the earlier configurations: MINRES-QLP on the full KKT system
  (``KKTSolver(system="full", method="minres_qlp")``, Alg. 1), MINRES-QLP on
  the Schur complement (``method="minres_qlp"``), the dense Schur complement
  on per-sample Jacobians (``method="dense", jacobian="per_sample"``), a
  multiplier memory of 128 samples,
* Gauss-Newton-KKT (Eq. 6, Alg. 2), its default solver and full MINRES-QLP,

on (a) a CNN of the paper's Eq. 13 shape (``--preset``: the pose example's
``tiny``, ``small`` (default, 64x64 input) or ``paper``) and (b) an MLP with
about 1M parameters, both with a labeled batch of 128 and 16 constraint
samples (six bone-length symmetry constraints each, m = 96). Steps are timed
in interleaved rounds (each round runs every method once), so a load change
on a shared machine hits all of them alike. Prints the median seconds per
step, the ratio to Soft-Adam, the first step's KKT status
(``KKTInfo.status``), linearised residual and inner iterations, and the
compiled program's memory (arguments + outputs + temporaries, from XLA's
memory analysis); with ``--write`` also records the tables in
``benchmarks/RESULTS.md``.

``--before REV`` also builds the same table (the rows that exist there) with
kktopt as it was at git revision REV (``benchmarks/_before.py``), times both
in the same rounds, and prints for each row the ratio of the hard-over-soft
ratios, after / before (< 1: faster now). The model and data come from
examples/pose for both.

Run:  python benchmarks/step_cost.py [--quick] [--preset small] [--repeats 7] [--models cnn,mlp]
          [--methods SUBSTR,...] [--before REV] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
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


def build_cnn(seed: int, preset: str):
    model = make_model(preset, seed)
    params, static = eqx.partition(model, eqx.is_array)
    size = model.image_size
    data = generate(128 + 128, image_size=size, seed=seed)
    images = jnp.asarray(data["image"], jnp.float32) / 255.0
    joints = jnp.asarray(data["joints3d"])

    def forward(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    return params, forward, images[:128], joints[:128], images[128:]


def build_mlp(seed: int, preset: str):
    widths = (64, 64, 51) if preset == "tiny" else (512, 1024, 512, 51)
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


# The method table: name -> (transform, solver key, constraint batch, memory).
# Solver keys name one configuration in both APIs (``solver_for``); a row whose
# key has no counterpart in the earlier kktopt is timed only for the current one.
def _with_and_without_mining(label, transform, rows):
    """``rows`` = [(name, solver key)] of ``label``, each on 16 samples, then each mined 16/128."""
    return [(f"{label} {name}{suffix}", transform, key, sel, False)
            for sel, suffix in (("plain", ""), ("pool", ", mined 16/128")) for name, key in rows]


TABLE = [("Soft-Adam", "soft", None, "plain", False)]
_NEW_METHODS = [("default (auto)", "default"), ("qr", "qr"), ("qr per-sample Jacobian", "qr per_sample"),
                ("lsmr", "lsmr")]
TABLE += _with_and_without_mining("Hard-SGD", "sgd", _NEW_METHODS)
TABLE += _with_and_without_mining("Hard-SGD", "sgd", [
    ("MINRES-QLP", "full minres_qlp"), ("MINRES-QLP on Schur complement", "schur minres_qlp"),
    ("dense Schur", "schur dense"),
])
TABLE += [
    ("Hard-SGD MINRES-QLP on Schur complement, mined 16/128, memory 128", "sgd", "schur minres_qlp", "pool", True),
]
TABLE += _with_and_without_mining("Hard-Adam", "adam", _NEW_METHODS)
TABLE += [
    ("Hard-Adam MINRES-QLP", "adam", "full minres_qlp", "plain", False),
    ("Hard-Adam MINRES-QLP on Schur complement", "adam", "schur minres_qlp", "plain", False),
    ("Hard-Adam dense Schur", "adam", "schur dense", "plain", False),
    ("Gauss-Newton-KKT default", "gn", "default", "plain", False),
    ("Gauss-Newton-KKT MINRES-QLP", "gn", "full minres_qlp", "plain", False),
]


def solver_for(kk, key: str, before: bool):
    """``(solver, extra transform kwargs)`` for a solver key, or None when ``kk`` lacks it."""
    if key == "default":
        return None, {}
    if not before:
        spec = {
            "qr": dict(method="qr"),
            "qr per_sample": dict(method="qr", jacobian="per_sample"),
            "lsmr": dict(method="lsmr"),
            "full minres_qlp": dict(system="full", method="minres_qlp"),
            "schur minres_qlp": dict(method="minres_qlp"),
            "schur dense": dict(method="dense", jacobian="per_sample"),
        }[key]
        return kk.KKTSolver(**spec), {}
    # kktopt before the single KKTSolver configuration (a18f10c and earlier).
    if key == "full minres_qlp":
        return kk.KrylovKKT(), {}
    if key == "schur minres_qlp":
        return kk.SchurKKT(method="minres_qlp"), {}
    if key == "schur dense":
        return kk.SchurKKT(), {"jacobian": "per_sample"}
    return None  # qr, lsmr: new methods


def methods(kk, forward, like, before: bool, only):
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

    lr = 1e-6
    out = {}
    for name, transform, key, sel, memory in TABLE:
        if only and name != "Soft-Adam" and not any(o in name for o in only):
            continue
        if transform == "soft":
            out[name] = ("soft", optax.adam(1e-3), kk.soft_constrained_loss(loss, cfn, 1e-3))
            continue
        got = solver_for(kk, key, before)
        if got is None:
            continue
        solver, extra = got
        kw = dict(extra)
        if solver is not None:
            kw["solver"] = solver
        if sel == "pool":
            kw["active"] = kk.active.mined_samples(16)
        if memory:
            kw["memory"] = kk.memory.multiplier_memory(128, like)
        if transform == "sgd":
            out[name] = (sel, optax.chain(optax.sgd(lr), kk.project_kkt(cfn, **kw)), loss)
        elif transform == "adam":
            out[name] = (sel, kk.hard_adam(1e-4, cfn, **kw), loss)
        else:
            out[name] = ("gn", kk.gauss_newton_kkt(residuals, cfn, damping=1e3, **kw), loss)
    return out


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


def kkt_info(kk, state):
    """(iterations, status, linearised residual) of the first step, from the state's KKTInfo."""
    for leaf in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, kk.KKTInfo)):
        if isinstance(leaf, kk.KKTInfo):
            status = getattr(leaf, "status", None)
            # Before KKTStatus the only verdict was the inner solver's istop.
            status = f"istop {int(leaf.solver.istop)}" if status is None else str(int(status))
            return int(leaf.solver.iterations), status, float(leaf.linearized_residual)
    return None, "-", None


def compile_step(kk, step, params, state, data):
    compiled = step.lower(params, state, *data).compile()
    mem = compiled.memory_analysis()
    nbytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes if mem else None
    out = compiled(params, state, *data)  # untimed first call
    jax.block_until_ready(out)
    return compiled, nbytes, kkt_info(kk, out[1])


def run(model_name, build, seed, repeats, preset, only=None, before=None):
    """Times every method (and, with ``before = (rev, module)``, the earlier kktopt's) in interleaved rounds."""
    params, forward, images, joints, pool = build(seed, preset)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    xc = pool[:16]
    data = ((images, joints), xc, pool)
    versions = [("now", kktopt, False)] + ([(before[0], before[1], True)] if before else [])
    compiled = {}
    for tag, kk, old in versions:
        for name, (kind, tx, objective) in methods(kk, forward, pool, old, only).items():
            state = tx.init(params)
            t0 = time.perf_counter()
            fn, nbytes, info = compile_step(kk, make_step(kind, tx, objective), params, state, data)
            print(f"  compiled {name} [{tag}] in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            compiled[(tag, name)] = (fn, state, nbytes, info)
    times = {key: [] for key in compiled}
    for r in range(repeats):  # interleaved rounds: every method of both versions once per round
        for key, (fn, state, _, _) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, state, *data))
            times[key].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{repeats} done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    med = {key: float(np.median(t)) for key, t in times.items()}
    base = {tag: med[(tag, "Soft-Adam")] for tag, _, _ in versions}
    title = f"({model_name}) {n_params:,} parameters, labeled batch 128, 16 constraint samples (m = 96)"
    cols = ["method", "s/step (median)", "x Soft-Adam", "status", "lin. residual", "iterations", "XLA memory [MB]"]
    if before:
        cols += [f"x Soft-Adam @{before[0]}", "after / before"]
    lines = [title, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    print("\n" + title)
    print("\n".join(lines[2:4]))
    for (tag, name), (_, _, nbytes, (iters, status, res)) in compiled.items():
        if tag != "now":
            continue
        seconds = med[(tag, name)]
        ratio = seconds / base["now"]
        mb = f"{nbytes / 2**20:.0f}" if nbytes else "-"
        it = "-" if iters is None else str(iters)
        rs = "-" if res is None else f"{res:.1e}"
        row = [name, f"{seconds:.3f}", f"{ratio:.2f}", status, rs, it, mb]
        if before:
            old = (before[0], name)
            if old in med:
                old_ratio = med[old] / base[before[0]]
                _, _, _, (oit, ost, ores) = compiled[old]
                row += [f"{old_ratio:.2f} ({ost}, {'-' if ores is None else f'{ores:.1e}'}, {oit} its)",
                        f"{ratio / old_ratio:.2f}"]
            else:
                row += ["- (new)", "-"]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1])
    return n_params, lines


SECTION = "## Step cost (`benchmarks/step_cost.py`)"
INTRO = """One jitted training step (forward, backward, KKT solve, optimiser update),
warm, median over interleaved rounds (each round runs every method once, so
load changes on a shared machine hit all methods alike); ratios are to
Soft-Adam in the same run. Labeled batch 128; the constraint batch is 16
samples (six bone-length constraints each, m = 96), or 16 mined (Eq. 9) from
a pool of 128, whose forward pass is part of the step. "status" is the
first step's `KKTInfo.status` (0 solved: `||A dw + c|| <= 1e-3 ||c||` in
float32; 2 iteration limit, 3 incompatible, 5 accuracy limit), "lin.
residual" its `||A dw + c|| / ||c||`, "iterations" the inner Krylov count
(0: dense). "XLA memory" is arguments + outputs + temporaries of the compiled
step. Learning rates are small, so every step is comparable; the soft penalty
weight is 1e-3. With `--before REV`, the same rows built with kktopt at
revision REV run in the same rounds (their status column is the inner
solver's `istop`, which is all that version reported); "after / before" is
the ratio of the two x Soft-Adam ratios (< 1: the step got cheaper).
"""


def write_results(block: str) -> None:
    replace_section(RESULTS, SECTION, INTRO + "\n" + block)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models (= --preset tiny), for smoke tests")
    parser.add_argument("--preset", choices=("tiny", "small", "paper"), default=None,
                        help="size of the pose CNN (examples/pose presets; default small, tiny with --quick)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="record the tables in benchmarks/RESULTS.md")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--methods", default=None,
                        help="comma-separated substrings: only rows whose name contains one (Soft-Adam always runs)")
    parser.add_argument("--before", metavar="REV", default=None,
                        help="also time kktopt as it was at git revision REV, same rows, same rounds")
    args = parser.parse_args(argv)
    preset = args.preset or ("tiny" if args.quick else "small")
    only = [o.strip() for o in args.methods.split(",") if o.strip()] if args.methods else None
    before = None
    if args.before:
        from _before import load_kktopt

        before = (args.before, load_kktopt(args.before))
    builders = {"cnn": (f"a: CNN, Eq. 13 shape, preset {preset}", build_cnn), "mlp": ("b: MLP", build_mlp)}
    header = (
        f"kktopt step cost, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, jax {jax.__version__}, {jax.devices()[0].platform}"
    )
    print(header)
    load0 = os.getloadavg()
    blocks = [f"### {header}", "", f"Command: `python benchmarks/step_cost.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip()]
    for key in args.models.split(","):
        label, build = builders[key]
        _, lines = run(label, build, args.seed, args.repeats, preset, only, before)
        blocks += [""] + lines
    load1 = os.getloadavg()
    note = (f"1-minute load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
            f"(5-minute: {load0[1]:.1f}, {load1[1]:.1f}).")
    print(note)
    blocks += ["", note]
    if args.write:
        write_results("\n".join(blocks))


if __name__ == "__main__":
    main()
