"""The compiled training step and the KKT diagnostics kept in an optax state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import optax

import kktopt


def compile_step(step: Callable, *args: Any) -> tuple[Callable, float]:
    """Compile `step` ahead of time for `args`; returns it and the seconds taken.

    `step` may be a plain function or already wrapped in ``jax.jit``. Compiling
    before the loop keeps compilation out of the timed iterations and makes
    a shape mismatch fail before the first step rather than recompile.

    Example:
      >>> import jax.numpy as jnp
      >>> f, seconds = compile_step(lambda x: 2 * x, jnp.ones(3))
      >>> f(jnp.ones(3)).tolist(), seconds >= 0
      ([2.0, 2.0, 2.0], True)
    """
    jitted = step if hasattr(step, "lower") else jax.jit(step)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def kkt_info(state: Any) -> kktopt.KKTInfo | None:
    """The `kktopt.KKTInfo` of the last hard step kept in an optax state, if any.

    The hard transforms keep it in their state under ``info``; this finds it
    wherever the transform sits (inside ``optax.chain``,
    ``optax.inject_hyperparams``, ...). None when the state holds none (a
    soft or unconstrained optimiser).

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> tx = optax.chain(optax.sgd(0.1), kktopt.project_kkt(lambda w, b: w @ b))
      >>> info = kkt_info(tx.init(jnp.ones(3)))
      >>> isinstance(info, kktopt.KKTInfo), kkt_info(optax.adam(0.1).init(jnp.ones(3)))
      (True, None)
    """
    found = optax.tree_utils.tree_get_all_with_path(
        state, "info", filtering=lambda _, value: isinstance(value, kktopt.KKTInfo))
    return found[0][1] if found else None


def host_scalars(stats: dict[str, Any]) -> dict[str, float]:
    """Device scalars to Python floats (one transfer per step's metrics)."""
    return {k: float(v) for k, v in jax.device_get(stats).items()}
