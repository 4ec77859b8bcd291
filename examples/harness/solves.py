"""What each hard step achieved: the KKT diagnostics the experiments record.

A hard method only deserves the name if its steps meet their linearised
constraints. `solve_record` picks, from the `kktopt.KKTInfo` of one step, the
numbers that tell (the linearised residual ``||A dw + c|| / ||c||``, the
inner solver's iterations and stop code, and the status code of the solve
when kktopt reports one); `summarise_solves` turns the records of many steps
into their distribution (median, 90th percentile and maximum residual,
median and maximum iterations, counts per stop code), as written at every
checkpoint of the pose experiment and for every method of the hypersphere
experiment.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

import kktopt

__all__ = ["SOLVE_KEYS", "solve_record", "summarise_solves"]

SOLVE_KEYS: tuple[str, ...] = ("linearized_residual", "violation_norm", "iterations", "istop")
"""The per-step numbers every hard step records (plus ``status`` where kktopt reports it)."""


def solve_record(info: kktopt.KKTInfo) -> dict[str, jax.Array]:
    """The per-step diagnostics of one hard step, as device scalars (jit-able).

    ``linearized_residual`` (``||A dw + c|| / ||c||``), ``violation_norm``
    (``||c||`` over the active constraints before the step: when it is at
    rounding level, as for a method that has converged onto its
    constraints, the ratio is rounding noise of order 1), ``iterations`` and
    ``istop`` of the inner solve, and ``status`` when the installed kktopt's
    `KKTInfo` has one (a code for the whole solve; older versions have none,
    and the key is then absent).

    Example:
      >>> import jax.numpy as jnp, optax, kktopt
      >>> tx = kktopt.project_kkt(lambda w, _: jnp.sum(w, keepdims=True) - 1.0)
      >>> w = jnp.zeros(3)
      >>> _, state = tx.update(jnp.zeros(3), tx.init(w), w, constraint_batch=None)
      >>> rec = solve_record(kktopt.get_kkt_info(state))
      >>> float(rec["linearized_residual"]) < 1e-5, set(SOLVE_KEYS) <= set(rec)
      (True, True)
    """
    out = {
        "linearized_residual": info.linearized_residual,
        "violation_norm": info.violation_norm,
        "iterations": info.solver.iterations,
        "istop": info.solver.istop,
    }
    status = getattr(info, "status", None)
    if status is not None:
        out["status"] = status
    return out


def _codes(values: Sequence[Any]) -> dict[str, int]:
    counts = Counter(int(v) for v in values)
    return {str(k): counts[k] for k in sorted(counts)}


def summarise_solves(records: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The distribution of the diagnostics of many hard steps.

    Args:
      records: per-step records (`solve_record`'s keys, host numbers), either
        as a list of dicts or as a dict of per-step lists; other keys are
        ignored.

    Returns:
      ``{"steps", "linearized_residual_median", "linearized_residual_p90",
      "linearized_residual_max", "residual_norm_median", "iterations_median",
      "iterations_max", "istop_counts", "success_fraction"}`` (and ``"status_counts"`` when the
      records have a ``status``); counts map a code (as a string) to the
      number of steps that stopped with it, ``residual_norm_median`` is the
      median of ``||A dw + c||`` itself (from ``violation_norm``, when
      recorded; it tells a converged method, whose relative residual is
      rounding noise, from one that misses its constraints), ``success_fraction`` is the share
      of steps whose stop code kktopt counts as success. Non-finite residuals
      (a diverged run) make the residual statistics non-finite (``null`` in
      the results file). Empty when there are no records.

    Example:
      >>> s = summarise_solves({"linearized_residual": [1e-9, 2e-9, 1e-3], "iterations": [5, 7, 100],
      ...                       "istop": [4, 4, 9]})
      >>> s["linearized_residual_median"], s["iterations_max"], s["istop_counts"]
      (2e-09, 100, {'4': 2, '9': 1})
    """
    if not isinstance(records, Mapping):
        records = {k: [r[k] for r in records] for k in (records[0] if records else {})}
    res = np.asarray(records.get("linearized_residual", []), np.float64)
    if res.size == 0:
        return {}
    its = np.asarray(records["iterations"], np.int64)
    codes = records["istop"]
    out = {
        "steps": int(res.size),
        "linearized_residual_median": float(np.median(res)),
        "linearized_residual_p90": float(np.percentile(res, 90)),
        "linearized_residual_max": float(np.max(res)),
        "residual_norm_median": None,
        "iterations_median": float(np.median(its)),
        "iterations_max": int(np.max(its)),
        "istop_counts": _codes(codes),
        "success_fraction": float(np.mean([int(c) in kktopt.krylov.SUCCESS_CODES for c in codes])),
    }
    if "violation_norm" in records:
        out["residual_norm_median"] = float(np.median(res * np.asarray(records["violation_norm"], np.float64)))
    if "status" in records:
        out["status_counts"] = _codes(records["status"])
    return out
