"""The 3D human pose experiment of the paper (Sec. 5, Fig. 2), end to end.

A CNN regresses the 17 joints of a person from an image (Eq. 13, loss Eq. 14)
on a small labeled set D, and the six left/right bone-length symmetries of
Eq. 15 are imposed on its predictions over a larger unlabeled pool C. On the
synthetic Human3.6M-like data of `pose.synthetic` (generated and stored with
TFDS), a run:

1. builds the data set (``train`` = D, ``pool`` = C, ``validation``,
   ``test`` with held-out subjects);
2. trains the unconstrained model with Adam (minibatch 128) and keeps the
   best one on validation;
3. starting from it, trains every constrained configuration of the preset:
   Soft-SGD and Soft-Adam (``kktopt.soft_constrained_loss`` + plain optax),
   Hard-SGD (``optax.sgd`` + ``kktopt.project_kkt``, MINRES-QLP), Hard-Adam
   (``kktopt.scale_by_adam_kkt``, i.e. ``kktopt.hard_adam``) and
   Gauss-Newton-KKT (``kktopt.gauss_newton_kkt``), each with random constraint
   minibatches (a random pool minibatch of 128, all active) or mined ones (the
   16 samples of such a minibatch with the largest median |C|, Eq. 9);
4. evaluates every checkpoint on the test set and on the pool: MPJPE (mm),
   median |C| (mm) and the proportion of constraints met versus threshold;
   times every iteration (``block_until_ready``, compilation excluded);
5. writes ``results.json``, ``fig2a.png``, ``fig2b.png`` and ``table.md``
   (and, when configurations are repeated over minibatch seeds,
   ``seeds.md`` and ``pareto.png``: mean and spread over seeds).

Beyond the paper, a `MethodSpec` can give a hard method a
``kktopt.memory.multiplier_memory`` (``memory``, ``decay``), the dense Schur
solver on per-sample Jacobians (``system="schur"``, ``rcond``), or be the
``adam-project`` method (``optax.adam`` then ``kktopt.project_kkt``); the
presets ``small-probes`` and ``small-seeds`` use them (see the README,
"Pose: keeping constraints active").

The run is resumable: the state (parameters and optimiser state, serialised
with ``eqx.tree_serialise_leaves``) is saved at every checkpoint, finished
configurations are recorded in ``results.json`` and skipped when the same
command runs again, and minibatches are a pure function of (seed, step), so
a resumed configuration sees the minibatches it would have seen.

From the command line: ``python examples/run_pose.py --preset demo --out DIR``.

References:
  Marquez-Neila, Salzmann and Fua (2017), Sec. 5, Eq. 3, 5, 6, 9, 12-15, Fig. 2.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

import harness
import kktopt
from harness import compile_step, fingerprint, load_tree, read_json, save_tree, write_json

from pose import model as pose_model
from pose.config import METHOD_LABELS, PRESETS, ExperimentPreset, MethodSpec, get_preset
from pose.data import load_pose_data
from pose.methods import make_optimizer, make_step, memory_selector
from pose.problem import make_problem
from pose.report import format_seed_table, format_table, plot_fig2a, plot_fig2b, plot_pareto
from pose.train import THRESHOLDS_MM, Evaluator, Interrupted, as_lam, batch_indices, train_loop

__all__ = ["PRESETS", "SCHEMA", "STREAM_LABELED", "STREAM_POOL", "STREAM_PRETRAIN", "load_data", "machine", "run"]

SCHEMA = "kktopt.pose_experiment/2"
"""Version tag of ``results.json`` (2: standard JSON, null for non-finite numbers, ``system``
in place of ``solver``)."""

STREAM_PRETRAIN, STREAM_LABELED, STREAM_POOL = 0, 1, 2
"""Minibatch streams of `batch_indices`: the same (seed, stream, step) gives the same minibatch."""


def load_data(preset: ExperimentPreset, data_dir: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Build (once) and load the synthetic data set of `preset` with TFDS."""
    return load_pose_data("synthetic_pose", data_dir=data_dir, image_size=preset.image_size,
                          train_size=preset.train_size, pool_size=preset.pool_size,
                          validation_size=preset.validation_size, test_size=preset.test_size,
                          seed=preset.seed)


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device": str(jax.devices()[0]), "loadavg_1_5_15_start": [round(x, 2) for x in load]}


class _Run:
    """State shared by the phases of one run (data, problem, files, checkpoint budget)."""

    def __init__(self, preset: ExperimentPreset, out: Path, results: dict[str, Any], *,
                 progress: bool, stop_after_checkpoints: int | None,
                 log: Callable[[str], None], reuse: Path | None = None):
        self.preset, self.out, self.results = preset, out, results
        self.reuse = reuse
        self.progress, self.log = progress, log
        self.stop_after = stop_after_checkpoints
        self.checkpoints_saved = 0
        self.results_path = out / "results.json"
        self._pool_device = None

    # -- bookkeeping ------------------------------------------------------
    def save_results(self) -> None:
        write_json(self.results_path, self.results)

    def count_checkpoint(self) -> None:
        self.checkpoints_saved += 1
        if self.stop_after is not None and self.checkpoints_saved >= self.stop_after:
            raise Interrupted(f"stopped after {self.checkpoints_saved} checkpoints")

    # -- data and model ----------------------------------------------------
    def setup(self, data_dir: Path) -> None:
        p = self.preset
        model_preset = pose_model.PRESETS[p.model]
        if model_preset.image_size != p.image_size:
            raise ValueError(f"model preset {p.model!r} takes {model_preset.image_size}px images, "
                             f"the preset asks for {p.image_size}px.")
        t0 = time.perf_counter()
        data = load_data(p, data_dir)
        # Relative to the output folder, so results.json names no machine's paths.
        self.results["data"] = {**p.data_dict(), "data_dir": os.path.relpath(data_dir, self.out),
                                "load_or_build_seconds": round(time.perf_counter() - t0, 2)}
        self.train = (data["train"]["image"], data["train"]["joints3d"])
        self.pool = data["pool"]["image"]
        n_eval = min(p.pool_eval_size, p.pool_size)
        self.evaluator = Evaluator(self.predict_fn, {
            "test": (data["test"]["image"], data["test"]["joints3d"]),
            "validation": (data["validation"]["image"], data["validation"]["joints3d"]),
            "pool": (data["pool"]["image"][:n_eval], data["pool"]["joints3d"][:n_eval]),
        })
        model = pose_model.make_model(p.model, key=p.seed)
        self.params0, self.problem = make_problem(model)
        self.results["model"] = {"preset": p.model,
                                 "num_params": pose_model.num_params(model)}

    def predict_fn(self, params, images):
        return self.problem.predict(params, images)

    def batch(self, step: int, stream: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        idx = batch_indices(len(self.train[0]), self.preset.batch_size, step,
                            self.preset.seed + offset, stream)
        return self.train[0][idx], self.train[1][idx]

    def pool_batch(self, step: int, offset: int = 0) -> np.ndarray:
        idx = batch_indices(len(self.pool), self.preset.batch_size, step,
                            self.preset.seed + offset, STREAM_POOL)
        return self.pool[idx]

    def constraint_pool(self, spec: MethodSpec, step: int) -> Any:
        """The ``constraint_batch`` of step `step`: a random pool minibatch, or the whole pool.

        With a multiplier memory the whole pool, the same device array at
        every step (uploaded once), from which the optimiser's selector
        draws; otherwise minibatch `step` of the pool (`pool_batch`).
        """
        if spec.memory is None:
            return self.pool_batch(step, spec.seed)
        if self._pool_device is None:
            self._pool_device = jax.device_put(self.pool)
        return self._pool_device

    # -- unconstrained model ----------------------------------------------
    def pretrain(self) -> Any:
        """Train (or load) the unconstrained model; returns its best parameters."""
        p = self.preset
        fp = fingerprint(p.base_dict())
        folder = self.out / "checkpoints" / "unconstrained"
        folder.mkdir(parents=True, exist_ok=True)
        best_path, state_path, prog_path = (folder / "best.eqx", folder / "state.eqx",
                                            folder / "progress.json")
        entry_path = folder / "entry.json"
        entry = self.results.get("unconstrained")
        if (entry and entry.get("status") == "done" and entry.get("fingerprint") == fp
                and best_path.exists()):
            self.log(f"unconstrained model: finished earlier (best step {entry['best_step']}), "
                     "loaded.")
            return load_tree(best_path, self.params0)
        if self.reuse is not None:
            other = Path(self.reuse) / "checkpoints" / "unconstrained"
            if not (other / "entry.json").exists() or not (other / "best.eqx").exists():
                raise ValueError(f"{self.reuse} holds no finished unconstrained model.")
            entry = read_json(other / "entry.json")
            if entry.get("fingerprint") != fp:
                raise ValueError(f"the unconstrained model in {self.reuse} was trained with other "
                                 "data or settings than this preset's.")
            shutil.copyfile(other / "best.eqx", best_path)
            write_json(entry_path, entry)
            self.results["unconstrained"] = {**entry,
                                             "reused_from": os.path.relpath(self.reuse, self.out)}
            self.save_results()
            self.log(f"unconstrained model: reused from {self.reuse} (best step "
                     f"{entry['best_step']}).")
            return load_tree(best_path, self.params0)

        tx = make_optimizer("adam", self.problem, lr=p.pretrain_lr)
        opt_state = tx.init(self.params0)
        params, best = self.params0, self.params0
        prog = {"fingerprint": fp, "step": 0, "validation": [], "best_step": 0,
                "best_mpjpe_mm": None, "timing": {"step_seconds": 0.0, "steps_timed": 0},
                "resumed_from_steps": []}
        if prog_path.exists() and state_path.exists():
            old = read_json(prog_path)
            if old.get("fingerprint") == fp and old["step"] > 0:
                prog = old
                params, opt_state, best = load_tree(state_path, (params, opt_state, best))
                prog["resumed_from_steps"].append(prog["step"])
                self.log(f"unconstrained model: resuming at step {prog['step']}.")

        step_fn = make_step("adam", self.problem, tx)
        dummy_pool = self.pool[:1]  # Adam ignores the pool
        lam = as_lam(None)
        compiled, compile_s = compile_step(step_fn, params, opt_state, self.batch(0, 0),
                                           dummy_pool, lam)
        prog.setdefault("compile_seconds", []).append(round(compile_s, 2))
        holder = {"best": best}

        def checkpoint(step, params, opt_state, stats):
            val = self.evaluator.metrics(params, "validation")["mpjpe_mm"]
            prog["validation"].append({"step": step, "mpjpe_mm": val,
                                       "train_loss_mean": stats.get("loss_mean")})
            best_so_far = prog["best_mpjpe_mm"]
            if val is not None and (best_so_far is None or val < best_so_far):
                prog["best_mpjpe_mm"], prog["best_step"] = val, step
                holder["best"] = params
            prog["step"] = step
            save_tree(state_path, (params, opt_state, holder["best"]))
            write_json(prog_path, prog)
            self.count_checkpoint()

        t0 = time.perf_counter()
        train_loop(compiled, params, opt_state, start=prog["step"], steps=p.pretrain_steps,
                   eval_every=p.pretrain_eval_every,
                   get_batch=lambda t: (self.batch(t, STREAM_PRETRAIN), dummy_pool), lam=lam,
                   timing=prog["timing"], checkpoint=checkpoint, desc="unconstrained (Adam)",
                   progress=self.progress)
        best = holder["best"]
        save_tree(best_path, best)
        timing = prog["timing"]
        self.results["unconstrained"] = {
            "label": METHOD_LABELS["adam"], "config": p.base_dict(), "fingerprint": fp,
            "status": "done", "best_step": prog["best_step"], "validation": prog["validation"],
            "test": self.evaluator.metrics(best, "test"),
            "pool": self.evaluator.metrics(best, "pool"),
            "seconds_per_iter": timing["step_seconds"] / max(timing["steps_timed"], 1),
            "steps_timed": timing["steps_timed"], "compile_seconds": prog["compile_seconds"],
            "resumed_from_steps": prog["resumed_from_steps"],
            "wall_seconds_this_run": round(time.perf_counter() - t0, 2),
        }
        write_json(entry_path, self.results["unconstrained"])
        self.save_results()
        u = self.results["unconstrained"]
        self.log(f"unconstrained model: best step {u['best_step']}, test MPJPE "
                 f"{u['test']['mpjpe_mm']:.1f} mm, median |C| {u['test']['median_abs_c_mm']:.2f} mm")
        return best

    # -- constrained configurations ---------------------------------------
    def constrained(self, spec: MethodSpec, start_params: Any, compiled_steps: dict) -> None:
        p = self.preset
        fp = fingerprint(p.method_dict(spec))
        entry = self.results["methods"].get(spec.id)
        if entry and entry.get("status") in ("done", "diverged") and entry.get("fingerprint") == fp:
            self.log(f"{spec.label}: finished earlier, skipped.")
            return
        folder = self.out / "checkpoints" / spec.id
        folder.mkdir(parents=True, exist_ok=True)
        state_path, prog_path = folder / "state.eqx", folder / "progress.json"

        # full/minres_qlp/matrix_free (the paper's) or schur/dense/per_sample.
        solver = harness.solver_choice(
            spec.system, rtol=p.solver_rtol, rcond=spec.rcond,
            maxiter=p.maxiter(spec) if spec.system == "full" else None).build()
        memory = active = None
        if spec.memory is not None:
            # The memory stores indices into the constraint pool: the step gets
            # the whole pool (the same array every step) and draws its random
            # minibatch (and mines it) from it, in the optimiser state.
            memory = kktopt.memory.multiplier_memory(
                spec.memory, self.pool, decay=1.0 if spec.decay is None else spec.decay)
            active = memory_selector(spec.constraints, batch=p.batch_size, mined=p.mined,
                                     seed=p.seed + spec.seed)
        tx = make_optimizer(spec.method, self.problem, constraints=spec.constraints, lr=spec.lr,
                            damping=spec.damping, mined=p.mined, solver=solver, memory=memory,
                            active=active, **({} if spec.eps is None else {"eps": spec.eps}))
        params, opt_state = start_params, tx.init(start_params)
        base = self.results["unconstrained"]
        prog = {"fingerprint": fp, "step": 0,
                "checkpoints": [{"step": 0, "test": base["test"], "pool": base["pool"],
                                 "train": {}}],
                "timing": {"step_seconds": 0.0, "steps_timed": 0}, "resumed_from_steps": [],
                "compile_seconds": [], "diverged": False}
        old, (params, opt_state) = harness.resume(prog_path, state_path, fp, (params, opt_state))
        if old is not None:
            prog = old
            self.log(f"{spec.label}: resuming at step {prog['step']}.")

        lam = as_lam(spec.lam)
        if spec.family not in compiled_steps:
            # Hyperparameters are injected into the optimiser state, so the step
            # compiled for this family serves all of its configurations.
            step_fn = make_step(spec.method, self.problem, tx, constraints=spec.constraints,
                                mined=p.mined)
            compiled_steps[spec.family] = compile_step(step_fn, params, opt_state,
                                                       self.batch(0, STREAM_LABELED),
                                                       self.constraint_pool(spec, 0), lam)
            prog["compile_seconds"].append(round(compiled_steps[spec.family][1], 2))
        compiled = compiled_steps[spec.family][0]

        record = {"label": spec.label, "family": spec.family, "hyper": spec.hyper_label,
                  "config": p.method_dict(spec), "fingerprint": fp, "status": "running"}

        def update_entry():
            timing = prog["timing"]
            record.update(
                checkpoints=prog["checkpoints"],
                seconds_per_iter=timing["step_seconds"] / max(timing["steps_timed"], 1),
                steps_timed=timing["steps_timed"], compile_seconds=prog["compile_seconds"],
                resumed_from_steps=prog["resumed_from_steps"], diverged=prog["diverged"])
            self.results["methods"][spec.id] = record
            self.save_results()

        class _Diverged(Exception):
            pass

        def checkpoint(step, params, opt_state, stats):
            prog["checkpoints"].append({
                "step": step, "test": self.evaluator.metrics(params, "test"),
                "pool": self.evaluator.metrics(params, "pool"), "train": stats})
            prog["step"] = step
            save_tree(state_path, (params, opt_state))
            if not math.isfinite(stats.get("loss_mean", 0.0)):
                prog["diverged"] = True
            write_json(prog_path, prog)
            update_entry()
            self.count_checkpoint()
            if prog["diverged"]:
                raise _Diverged

        t0 = time.perf_counter()
        try:
            train_loop(compiled, params, opt_state, start=prog["step"], steps=spec.steps,
                       eval_every=spec.eval_every,
                       get_batch=lambda t: (self.batch(t, STREAM_LABELED, spec.seed),
                                            self.constraint_pool(spec, t)),
                       lam=lam, timing=prog["timing"], checkpoint=checkpoint,
                       desc=f"{METHOD_LABELS[spec.method]} {spec.constraints} {spec.hyper_label}",
                       progress=self.progress)
        except _Diverged:
            self.log(f"{spec.label}: diverged (non-finite loss), stopped at step {prog['step']}.")
        # Diverged: its non-finite numbers are null in results.json.
        record["status"] = "diverged" if prog["diverged"] else "done"
        record["wall_seconds_this_run"] = round(time.perf_counter() - t0, 2)
        update_entry()
        last = prog["checkpoints"][-1]
        if last["test"]["mpjpe_mm"] is None:
            self.log(f"{spec.label}: step {last['step']}, diverged (non-finite predictions), "
                     f"{record['seconds_per_iter']:.3f} s/it")
            return
        self.log(f"{spec.label}: step {last['step']}, test MPJPE {last['test']['mpjpe_mm']:.1f} mm, "
                 f"median |C| test {last['test']['median_abs_c_mm']:.2f} mm, "
                 f"{record['seconds_per_iter']:.3f} s/it")


def run(
    preset: ExperimentPreset | str,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    figures: bool = True,
    stop_after_checkpoints: int | None = None,
    log: Callable[[str], None] = print,
    unconstrained_from: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run (or resume) the pose experiment and write its results into `out_dir`.

    Args:
      preset: an `ExperimentPreset` or the name of one of `PRESETS`.
      out_dir: folder of ``results.json``, ``fig2a.png``, ``fig2b.png``,
        ``table.md`` and ``checkpoints/``.
      data_dir: where TFDS builds the data set (default ``out_dir/data``).
      progress: tqdm progress bars.
      figures: write the figures (needs matplotlib).
      stop_after_checkpoints: stop, as if interrupted, once this many
        checkpoints have been saved in this call (to test resumption).
      log: where one-line messages go.
      unconstrained_from: the output folder of an earlier run with the same
        data and unconstrained-model settings (the same ``base_dict``), whose
        unconstrained model is copied instead of trained again (to compare
        other constrained configurations from the same starting point).

    Returns:
      The results (also in ``out_dir/results.json``); ``results["complete"]``
      is False when the run stopped early.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir) if data_dir is not None else out / "data"
    results_path = out / "results.json"
    results = read_json(results_path) if results_path.exists() else {}
    if results.get("schema") not in (None, SCHEMA):
        raise ValueError(f"{results_path} was written by another version ({results['schema']}); "
                         "use another --out folder.")
    ids = {s.id for s in preset.methods}
    results.update(schema=SCHEMA, preset=preset.to_dict(), thresholds_mm=list(THRESHOLDS_MM),
                   machine=machine(), complete=False)
    results["methods"] = {k: v for k, v in results.get("methods", {}).items() if k in ids}
    t0 = time.perf_counter()
    r = _Run(preset, out, results, progress=progress,
             stop_after_checkpoints=stop_after_checkpoints, log=log,
             reuse=None if unconstrained_from is None else Path(unconstrained_from))
    try:
        r.setup(data_dir)
        start = r.pretrain()
        compiled_steps: dict[str, Any] = {}
        for spec in preset.methods:
            r.constrained(spec, start, compiled_steps)
    except Interrupted as e:
        log(f"{e}: rerun the same command to resume.")
        results["wall_seconds_last_call"] = round(time.perf_counter() - t0, 2)
        r.save_results()
        return results
    results["methods"] = {s.id: results["methods"][s.id] for s in preset.methods}  # preset order
    results["complete"] = True
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    results["machine"]["loadavg_1_5_15_end"] = [round(x, 2) for x in load]
    results["wall_seconds_last_call"] = round(time.perf_counter() - t0, 2)
    r.save_results()
    (out / "table.md").write_text(format_table(results, markdown=True) + "\n")
    repeated = len({s.seed for s in preset.methods}) > 1
    if repeated:
        (out / "seeds.md").write_text(format_seed_table(results) + "\n")
    if figures:
        plot_fig2a(results, out / "fig2a.png")
        plot_fig2b(results, out / "fig2b.png")
        if repeated:
            plot_pareto(results, out / "pareto.png")
    return results
