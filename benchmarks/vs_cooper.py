"""Augmented Lagrangian with per-sample multipliers: kktopt against Cooper (PyTorch), side by side.

One small problem, the same in both libraries: an MLP (2 -> 16 -> 2, tanh)
fitted to noisy targets (mean squared error) under two equality constraints
per sample of a pool of unlabeled inputs,

    C(w, x) = [y0 + y1 - sin(x0),  y0 * y1 - 0.1 x1],   y = MLP_w(x),

with one multiplier per constraint value of the pool (Cooper:
``IndexedMultiplier``; kktopt: ``augmented_lagrangian``'s state), the
``AugmentedLagrangian`` formulation (``f + lam . c + rho / 2 ||c||^2``) and
the same hyperparameters. Initial weights, labeled batches and the pool
indices of every step are drawn in numpy and fed to both. Everything runs in
float64 on both sides, so the loss and violation trajectories must agree to
rounding; the script prints the largest absolute difference per quantity
and the time per step of each library (interleaved rounds, one process).

Configurations: SGD primal with plain dual ascent, simultaneous updates
(Cooper's ``SimultaneousOptimizer``); Adam primal with nuPI duals,
dual-first alternating updates (Cooper's ``AlternatingDualPrimalOptimizer``).

Needs the ``cooper`` extra in its own environment (CPU torch):
``pip install -e '.[test,cooper]'``, then ``python benchmarks/vs_cooper.py --write``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

try:
    import cooper
    import torch
except ImportError:
    sys.exit("Cooper is not installed: pip install 'kktopt[cooper]' (in its own environment, CPU torch).")

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import kktopt  # noqa: E402
from _results import RESULTS, replace_section  # noqa: E402

HIDDEN, IN, OUT, K = 16, 2, 2, 2  # K constraint values per sample


def make_problem(seed, pool_size, batch, active, steps):
    rng = np.random.default_rng(seed)
    w = {
        "W1": rng.normal(size=(HIDDEN, IN)) / np.sqrt(IN),
        "b1": 0.1 * rng.normal(size=HIDDEN),
        "W2": rng.normal(size=(OUT, HIDDEN)) / np.sqrt(HIDDEN),
        "b2": 0.1 * rng.normal(size=OUT),
    }
    pool = rng.uniform(-2, 2, size=(pool_size, IN))
    xs = rng.uniform(-2, 2, size=(steps, batch, IN))
    ts = np.stack([np.sin(xs[..., 0]), np.cos(xs[..., 1])], -1) + 0.05 * rng.normal(size=(steps, batch, OUT))
    idx = np.stack([rng.choice(pool_size, size=active, replace=False) for _ in range(steps)])
    return w, pool, xs, ts, idx


CONFIGS = {
    "sgd + dual ascent, simultaneous": dict(
        primal="sgd", lr=0.01, penalty=0.1, dual_lr=0.05, kp=0.0, ki=1.0, ema_nu=0.0, order="simultaneous"),
    "adam + nuPI, dual first": dict(
        primal="adam", lr=0.01, penalty=0.5, dual_lr=0.2, kp=2.0, ki=1.0, ema_nu=0.5, order="dual_first"),
}


# --------------------------------------------------------------------------- kktopt
def jax_mlp(w, x):
    return jnp.tanh(x @ w["W1"].T + w["b1"]) @ w["W2"].T + w["b2"]


def jax_constraints(w, x):
    y = jax_mlp(w, x)
    return jnp.stack([y[:, 0] + y[:, 1] - jnp.sin(x[:, 0]), y[:, 0] * y[:, 1] - 0.1 * x[:, 1]], -1)


def kktopt_run(cfg, w0, pool, xs, ts, idx):
    al = kktopt.transforms.augmented_lagrangian(
        jax_constraints, pool.shape[0], (K,), penalty=cfg["penalty"], dual_lr=cfg["dual_lr"], kp=cfg["kp"],
        ki=cfg["ki"], ema_nu=cfg["ema_nu"], order=cfg["order"],
    )
    primal = optax.sgd(cfg["lr"]) if cfg["primal"] == "sgd" else optax.adam(cfg["lr"], eps=1e-8)
    tx = optax.chain(al, primal)
    pool_j = jnp.asarray(pool)

    def loss_fn(w, x, t):
        return jnp.mean((jax_mlp(w, x) - t) ** 2)

    @jax.jit
    def step(w, state, x, t, i):
        loss, g = jax.value_and_grad(loss_fn)(w, x, t)
        u, state = tx.update(g, state, w, constraint_batch=pool_j[i], constraint_indices=i)
        return optax.apply_updates(w, u), state, loss, state[0].violation_norm

    w = jax.tree_util.tree_map(jnp.asarray, w0)
    state = tx.init(w)

    def run(n=None):
        nonlocal w, state
        out = []
        for s in range(len(xs) if n is None else n):
            s = s % len(xs)
            w, state, loss, viol = step(w, state, xs[s], ts[s], jnp.asarray(idx[s], jnp.int32))
            out.append((loss, viol))
        jax.block_until_ready(w)
        return np.array([[float(a), float(b)] for a, b in out]), np.asarray(state[0].multipliers)

    return run


# --------------------------------------------------------------------------- Cooper
class _MLP(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.l1 = torch.nn.Linear(IN, HIDDEN).double()
        self.l2 = torch.nn.Linear(HIDDEN, OUT).double()
        with torch.no_grad():
            self.l1.weight.copy_(torch.from_numpy(w["W1"]))
            self.l1.bias.copy_(torch.from_numpy(w["b1"]))
            self.l2.weight.copy_(torch.from_numpy(w["W2"]))
            self.l2.bias.copy_(torch.from_numpy(w["b2"]))

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


class _CMP(cooper.ConstrainedMinimizationProblem):
    def __init__(self, pool_size, penalty):
        super().__init__()
        self.multiplier = cooper.multipliers.IndexedMultiplier(num_constraints=pool_size * K, dtype=torch.float64)
        self.penalty = cooper.penalty_coefficients.DensePenaltyCoefficient(
            init=torch.tensor(penalty, dtype=torch.float64))
        self.constraint = cooper.Constraint(
            constraint_type=cooper.ConstraintType.EQUALITY,
            formulation_type=cooper.formulations.AugmentedLagrangian,
            multiplier=self.multiplier, penalty_coefficient=self.penalty,
        )

    def compute_cmp_state(self, model, x, t, xc, i):
        loss = torch.mean((model(x) - t) ** 2)
        y = model(xc)
        c = torch.stack([y[:, 0] + y[:, 1] - torch.sin(xc[:, 0]), y[:, 0] * y[:, 1] - 0.1 * xc[:, 1]], -1)
        flat = (i[:, None] * K + torch.arange(K)).reshape(-1)
        state = cooper.ConstraintState(violation=c.reshape(-1), constraint_features=flat)
        return cooper.CMPState(loss=loss, observed_constraints={self.constraint: state})


def cooper_run(cfg, w0, pool, xs, ts, idx):
    model = _MLP(w0)
    cmp = _CMP(pool.shape[0], cfg["penalty"])
    if cfg["primal"] == "sgd":
        primal = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    else:
        primal = torch.optim.Adam(model.parameters(), lr=cfg["lr"], eps=1e-8)
    if cfg["kp"] == 0.0 and cfg["ema_nu"] == 0.0 and cfg["ki"] == 1.0:
        dual = torch.optim.SGD(cmp.dual_parameters(), lr=cfg["dual_lr"], maximize=True)
    else:
        dual = cooper.optim.nuPI(cmp.dual_parameters(), lr=cfg["dual_lr"], Kp=cfg["kp"], Ki=cfg["ki"],
                                 ema_nu=cfg["ema_nu"], maximize=True)
    kind = (cooper.optim.SimultaneousOptimizer if cfg["order"] == "simultaneous"
            else cooper.optim.AlternatingDualPrimalOptimizer)
    opt = kind(cmp=cmp, primal_optimizers=primal, dual_optimizers=dual)
    pool_t = torch.from_numpy(pool)
    data = [(torch.from_numpy(xs[s]), torch.from_numpy(ts[s]), torch.from_numpy(idx[s]).long())
            for s in range(len(xs))]

    def run(n=None):
        out = []
        for s in range(len(xs) if n is None else n):
            x, t, i = data[s % len(xs)]
            roll = opt.roll(compute_cmp_state_kwargs=dict(model=model, x=x, t=t, xc=pool_t[i], i=i))
            # violation at w_t, before the step (as kktopt's state records it)
            c = roll.cmp_state.observed_constraints[cmp.constraint].violation.detach()
            out.append((float(roll.loss), float(torch.linalg.norm(c))))
        lam = cmp.multiplier.weight.detach().numpy().reshape(pool.shape[0], K)
        return np.array(out), lam

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pool", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--active", type=int, default=32, help="pool samples constrained per step")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    w0, pool, xs, ts, idx = make_problem(args.seed, args.pool, args.batch, args.active, args.steps)
    rows, detail = [], []
    for name, cfg in CONFIGS.items():
        traj_k, lam_k = kktopt_run(cfg, w0, pool, xs, ts, idx)()  # includes compilation
        traj_c, lam_c = cooper_run(cfg, w0, pool, xs, ts, idx)()
        d_loss = np.abs(traj_k[:, 0] - traj_c[:, 0])
        d_viol = np.abs(traj_k[:, 1] - traj_c[:, 1])
        d_lam = np.abs(lam_k - lam_c).max()
        if not (np.isfinite(traj_k).all() and np.isfinite(traj_c).all()):
            sys.exit(f"{name}: a run diverged (non-finite loss or violation); lower the step sizes in CONFIGS.")
        print(f"\n{name}: step, loss (kktopt, Cooper, |diff|), ||c|| of the step's samples (kktopt, Cooper, |diff|)")
        for s in list(range(0, args.steps, max(1, args.steps // 10))) + [args.steps - 1]:
            print(f"  {s:4d}  {traj_k[s, 0]:.12f} {traj_c[s, 0]:.12f} {d_loss[s]:.1e}   "
                  f"{traj_k[s, 1]:.12f} {traj_c[s, 1]:.12f} {d_viol[s]:.1e}")
        print(f"  max |diff| per step: loss {d_loss.max():.2e}, violation {d_viol.max():.2e}; "
              f"final multipliers {d_lam:.2e} (max |lam| {np.abs(lam_k).max():.3f})")

        k_run = kktopt_run(cfg, w0, pool, xs, ts, idx)
        c_run = cooper_run(cfg, w0, pool, xs, ts, idx)
        k_run(2)  # compile
        tk, tc = [], []
        for _ in range(args.rounds):  # interleaved
            t0 = time.perf_counter(); c_run(); tc.append((time.perf_counter() - t0) / args.steps)
            t0 = time.perf_counter(); k_run(); tk.append((time.perf_counter() - t0) / args.steps)
        mk, mc = np.median(tk) * 1e3, np.median(tc) * 1e3
        print(f"  time per step: kktopt {mk:.3f} ms, Cooper {mc:.3f} ms, Cooper / kktopt = {mc / mk:.2f}")
        rows.append(f"| {name} | {d_loss.max():.1e} | {d_viol.max():.1e} | {d_lam:.1e} | "
                    f"{traj_k[-1, 0]:.4f} | {traj_k[-1, 1]:.4f} | {mk:.3f} | {mc:.3f} | {mc / mk:.2f} |")
        detail.append(name)

    body = "\n".join([
        f"2026-12-01; {platform.machine()}, 2 cores, Python {platform.python_version()}, jax {jax.__version__}, "
        f"optax {optax.__version__}, cooper-optim {cooper.__version__ if hasattr(cooper, '__version__') else '?'}, "
        f"torch {torch.__version__} (1 thread). `python benchmarks/vs_cooper.py --write` "
        f"(seed {args.seed}, {args.steps} steps, pool {args.pool}, batch {args.batch}, "
        f"{args.active} constrained pool samples per step, float64 both sides; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end of the run: times on a shared machine are noisy).",
        "",
        "MLP 2-16-2 (tanh), MSE loss, 2 equality constraints per pool sample, one multiplier per constraint "
        "value (Cooper `IndexedMultiplier`, kktopt `augmented_lagrangian` state), augmented-Lagrangian "
        "formulation; same initial weights, batches and pool indices (numpy). Differences are the largest "
        "over all steps; time per step is the median of interleaved rounds (kktopt: one jitted step, "
        "including the loss gradient; Cooper: `roll()`).",
        "",
        "| configuration | max abs diff loss | max abs diff violation | max abs diff final multipliers | "
        "final loss | final violation | kktopt [ms/step] | Cooper [ms/step] | Cooper / kktopt |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ])
    print("\n" + body)
    if args.write:
        replace_section(RESULTS, "## vs_cooper.py: augmented Lagrangian against Cooper", body)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
