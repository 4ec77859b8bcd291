"""Hyperparameter sweeps in one compiled program: ``jax.vmap`` over a whole training run.

The paper grid-searched learning rates and penalty weights one run at a
time. With kktopt every transform accepts traced hyperparameters (through
``optax.inject_hyperparams`` or as plain arguments), so a whole jitted
training loop can be vmapped over a batch of settings and compiled once.

The problem: a small MLP learns a noisy map R^4 -> R^3 whose outputs must
conserve a quantity, ``sum(y) = sum(x)`` (an equality constraint on the
network's output, nonlinear in the weights). Labels are few (32); the
constraint is imposed on 256 unlabeled inputs, 32 random ones per step.

Run:  python examples/sweep.py [--steps 300] [--seed 0]

Prints, for 8 learning rates of Hard-Adam and 8 penalty weights of
Soft-Adam, the test error and the constraint violation on unseen inputs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kktopt


def make_data(seed: int):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=(4, 3))

    def target(x):
        y = np.tanh(x @ w_true)
        # make the true map conservative: shift so that sum(y) = sum(x)
        return y + (x.sum(-1, keepdims=True) - y.sum(-1, keepdims=True)) / 3

    x_lab = rng.normal(size=(32, 4))
    y_lab = target(x_lab) + 0.05 * rng.normal(size=(32, 3))
    x_pool = rng.normal(size=(256, 4))
    x_test = rng.normal(size=(1000, 4))
    return [jnp.asarray(a, jnp.float32) for a in (x_lab, y_lab, x_pool, x_test, target(x_test))]


def init_params(seed: int):
    rng = np.random.default_rng(seed + 1)
    return {
        "w1": jnp.asarray(rng.normal(size=(4, 32)) / 2, jnp.float32),
        "b1": jnp.zeros(32, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(32, 3)) / np.sqrt(32), jnp.float32),
        "b2": jnp.zeros(3, jnp.float32),
    }


def net(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params, batch):
    x, y = batch
    return jnp.mean(jnp.sum((net(params, x) - y) ** 2, axis=-1))


def conservation(params, x):
    """One constraint per sample: sum of outputs minus sum of inputs (0 when conserved)."""
    return jnp.sum(net(params, x), axis=-1, keepdims=True) - jnp.sum(x, axis=-1, keepdims=True)


def train(tx, params, objective, pool, steps):
    """A whole training run: ``steps`` updates of ``tx`` on ``objective(params)``."""
    state = tx.init(params)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(objective)(params)
        updates, state = tx.update(grads, state, params, constraint_batch=pool)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, state), None, length=steps)
    return params


def evaluate(params, x_test, y_test):
    err = jnp.mean(jnp.sum((net(params, x_test) - y_test) ** 2, axis=-1))
    viol = jnp.median(jnp.abs(conservation(params, x_test)))
    return err, viol


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_lab, y_lab, x_pool, x_test, y_test = make_data(args.seed)
    params = init_params(args.seed)
    selector = kktopt.active.random_samples(32, seed=args.seed)

    # Hard-Adam over 8 learning rates: inject_hyperparams makes the learning
    # rate a traced array, so vmap batches the whole run.
    def hard_run(lr):
        tx = optax.inject_hyperparams(kktopt.hard_adam, static_args="constraint_fn")(
            learning_rate=lr, constraint_fn=conservation, active=selector
        )
        run = train(tx, params, lambda p: loss_fn(p, (x_lab, y_lab)), x_pool, args.steps)
        return evaluate(run, x_test, y_test)

    # Soft-Adam over 8 penalty weights (Eq. 3): lambda enters the loss.
    def soft_run(lam):
        soft = kktopt.soft_constrained_loss(loss_fn, conservation, lam)
        tx = optax.with_extra_args_support(optax.adam(3e-3))
        run = train(tx, params, lambda p: soft(p, (x_lab, y_lab), x_pool), None, args.steps)
        return evaluate(run, x_test, y_test)

    lrs = jnp.asarray(np.geomspace(3e-4, 3e-1, 8), jnp.float32)
    lams = jnp.asarray(np.geomspace(1e-3, 1e2, 8), jnp.float32)
    for name, fn, values, label in (
        ("Hard-Adam", hard_run, lrs, "learning rate"),
        ("Soft-Adam (lr 3e-3)", soft_run, lams, "lambda"),
    ):
        t0 = time.perf_counter()
        err, viol = jax.block_until_ready(jax.jit(jax.vmap(fn))(values))
        seconds = time.perf_counter() - t0
        print(f"\n{name}: 8 settings x {args.steps} steps, one compiled program, {seconds:.1f} s")
        print(f"  {label:>13}  test MSE   median |sum y - sum x|")
        for v, e, c in zip(np.asarray(values), np.asarray(err), np.asarray(viol)):
            print(f"  {v:13.3g}  {e:8.4f}   {c:10.2e}")


if __name__ == "__main__":
    main()
