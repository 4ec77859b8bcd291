"""Post-hoc output projection of a trained pose model's test predictions.

Takes the unconstrained model of a pose run (``examples/run_pose.py``; its
``checkpoints/unconstrained/best.eqx``), or trains it first with the runner
when the folder holds none (only the unconstrained model: the preset's
constrained methods are skipped), predicts the test set, projects every
prediction onto the six bone-length symmetry constraints of Eq. 15 with
``kktopt.project_outputs`` (nothing retrained) and reports, before and after
projection: test MPJPE, test median |C|, the fraction of constraint values
met at the thresholds of Fig. 2b, the projection's status counts, iterations
and time. Writes ``results.json`` (standard JSON) and ``table.md``.

Run:  python examples/pose/projection.py [--run runs/pose_tiny] [--preset tiny]
          [--out docs/results/pose_projection]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import kktopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/: pose and harness
from harness import load_tree, read_json, write_json  # noqa: E402
from pose import model as pose_model  # noqa: E402
from pose.config import get_preset  # noqa: E402
from pose.constraints import bone_symmetry  # noqa: E402
from pose.metrics import fraction_met, median_abs_constraint, mpjpe  # noqa: E402
from pose.problem import make_problem  # noqa: E402
from pose.run import load_data, run  # noqa: E402
from pose.train import THRESHOLDS_MM  # noqa: E402

BATCH = 128


def trained_model(run_dir: Path, preset_name: str):
    """(preset, params, problem) of the run's unconstrained model; trains it if absent."""
    best = run_dir / "checkpoints" / "unconstrained" / "best.eqx"
    results_path = run_dir / "results.json"
    if best.exists() and results_path.exists():
        preset = get_preset(read_json(results_path)["preset"]["name"])
        print(f"loading the unconstrained model of {run_dir} (preset {preset.name})")
    else:
        preset = dataclasses.replace(get_preset(preset_name), methods=())
        print(f"no finished run in {run_dir}: training the unconstrained model (preset {preset.name})")
        run(preset, run_dir, figures=False)
    params0, problem = make_problem(pose_model.make_model(preset.model, key=preset.seed))
    return preset, load_tree(best, params0), problem


def metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    frac = np.asarray(fraction_met(pred, jnp.asarray(THRESHOLDS_MM)))
    return {"mpjpe_mm": float(mpjpe(pred, target)),
            "median_abs_c_mm": float(median_abs_constraint(pred)),
            "fraction_met": {f"{t:g}": float(f) for t, f in zip(THRESHOLDS_MM, frac)}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/pose_tiny", help="a pose run folder (trained if absent)")
    parser.add_argument("--preset", default="tiny", help="preset to train when --run holds no model")
    parser.add_argument("--out", default="docs/results/pose_projection")
    parser.add_argument("--save-predictions", default=None, metavar="NPZ",
                        help="also write the raw test predictions and true poses (arrays pred, target), "
                             "the input of benchmarks/outputs_cost.py --predictions")
    args = parser.parse_args(argv)
    run_dir, out = Path(args.run), Path(args.out)
    preset, params, problem = trained_model(run_dir, args.preset)
    data = load_data(preset, run_dir / "data")["test"]
    images, target = data["image"], np.asarray(data["joints3d"], np.float32)

    predict = jax.jit(problem.predict)
    pred = np.concatenate([np.asarray(predict(params, jnp.asarray(images[i:i + BATCH], jnp.float32) / 255.0
                                              if images.dtype == np.uint8 else images[i:i + BATCH]))
                           for i in range(0, len(images), BATCH)])
    if args.save_predictions:
        np.savez(args.save_predictions, pred=pred.astype(np.float32), target=target)
    project = jax.jit(lambda y: kktopt.project_outputs(bone_symmetry, y))
    jax.block_until_ready(project(jnp.asarray(pred[:BATCH])))  # compile
    chunks, infos, seconds = [], [], 0.0
    for i in range(0, len(pred), BATCH):
        t0 = time.perf_counter()
        y, info = jax.block_until_ready(project(jnp.asarray(pred[i:i + BATCH])))
        seconds += time.perf_counter() - t0
        chunks.append(np.asarray(y))
        infos.append(jax.tree_util.tree_map(np.asarray, info))
    projected = np.concatenate(chunks)
    status = np.concatenate([f.status for f in infos])
    its = np.concatenate([f.iterations for f in infos])
    dist = np.concatenate([f.distance for f in infos])
    results = {
        "schema": "pose_projection/1",
        "date_utc": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
        "machine": {"platform": f"{platform.system()} {platform.machine()}", "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "jax": jax.__version__,
                    "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]},
        "preset": preset.name, "model": preset.model, "test_size": int(len(pred)),
        "projection": {"call": "kktopt.project_outputs(bone_symmetry, y_hat)", "dtype": "float32",
                       "batch": BATCH, "seconds_total": round(seconds, 4),
                       "ms_per_batch": round(1e3 * seconds / len(chunks), 3),
                       "status_counts": {kktopt.ProjectionStatus(int(s)).name: int((status == s).sum())
                                         for s in np.unique(status)},
                       "iterations_median": float(np.median(its)), "iterations_max": int(its.max()),
                       "distance_moved_median_mm": float(np.median(dist))},
        "before": metrics(pred, target),
        "after": metrics(projected, target),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    ths = [t for t in results["before"]["fraction_met"] if float(t) in (0.1, 1.0, 10.0)]  # all in the JSON
    rows = ["| model | test MPJPE [mm] | test median \\|C\\| [mm] | "
            + " | ".join(f"met <= {t} mm" for t in ths) + " |",
            "|---|---|---|" + "---|" * len(ths)]
    for label, key in (("unconstrained (Adam)", "before"), ("unconstrained + projection", "after")):
        m = results[key]
        rows.append(f"| {label} | {m['mpjpe_mm']:.2f} | {m['median_abs_c_mm']:.2e} | "
                    + " | ".join(f"{m['fraction_met'][t]:.3f}" for t in ths) + " |")
    p = results["projection"]
    rows += ["", f"Preset `{preset.name}`, {len(pred)} test poses; projection {p['ms_per_batch']:.1f} ms per "
                 f"batch of {BATCH} ({p['seconds_total']:.2f} s in all), status {p['status_counts']}, "
                 f"iterations median {p['iterations_median']:.0f} / max {p['iterations_max']}, "
                 f"median distance moved {p['distance_moved_median_mm']:.2f} mm. Fractions at every threshold "
                 "of Fig. 2b are in results.json."]
    (out / "table.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    return results


if __name__ == "__main__":
    main()
