"""The pose study's table, Pareto figures, learning curves and dominance verdict, from its results.

The verdict's rule (issue 11): a configuration **dominates** a Soft-Adam
configuration on the Soft-Adam front when its mean test MPJPE and its mean
test median |C| are both below that configuration's, each by more than the
larger of the two standard deviations (over seeds) of that metric. The
front is the set of Soft-Adam configurations that no other Soft-Adam
configuration beats on both means.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["dominates", "soft_front", "summarise", "verdict", "write_report"]

_SOFT = "soft-adam"
_COLOURS = {"adam": "black", "soft-adam": "tab:blue", "al-adam": "tab:cyan",
            "hard-sgd": "tab:red", "hard-adam": "tab:orange", "hard-adam-memory": "tab:brown",
            "sqp-adam": "tab:green", "sqp-momentum": "tab:purple", "adam-layer": "tab:pink"}
_MARKERS = {"adam": "s", "soft-adam": "o", "al-adam": "D", "hard-sgd": "v", "hard-adam": "^",
            "hard-adam-memory": "X", "sqp-adam": "P", "sqp-momentum": "*", "adam-layer": "h"}


def _stat(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < len(values) or not vals:
        return None, None  # a diverged seed: the configuration has no mean
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def _threshold_index(thresholds: list[float], value: float) -> int:
    return int(np.argmin([abs(math.log(t / value)) for t in thresholds]))


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration: mean and s.d. over seeds at the last checkpoint."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results.get("runs", {}).values():
        if r.get("checkpoints"):
            groups[r["config_id"]].append(r)
    thresholds = results.get("thresholds_mm", [])
    rows = []
    for cid, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        last = [r["checkpoints"][-1] for r in runs]
        row: dict[str, Any] = {"config_id": cid, "family": runs[0]["family"],
                               "label": runs[0]["label"], "hyper": runs[0]["hyper"],
                               "seeds": [r["seed"] for r in runs],
                               "step": min(c["step"] for c in last),
                               "done": all(r.get("status") == "done" for r in runs),
                               "seconds_per_step": float(np.mean([r["seconds_per_step"]
                                                                  for r in runs]))}
        for split in ("test", "pool"):
            for key in ("mpjpe_mm", "median_abs_c_mm"):
                row[f"{split}_{key}"] = _stat([c[split][key] for c in last])
            for t in (1.0, 3.0, 10.0):
                if thresholds:
                    i = _threshold_index(thresholds, t)
                    row[f"{split}_met_{t:g}mm"] = _stat([
                        None if c[split]["fraction_met"][i] is None else c[split]["fraction_met"][i]
                        for c in last])
        projected = [r.get("projected") for r in runs]
        if all(projected):
            for split in ("test", "pool"):
                for key in ("mpjpe_mm", "median_abs_c_mm", "max_abs_c_mm"):
                    row[f"proj_{split}_{key}"] = _stat([p[split].get(key) for p in projected])
                if thresholds:
                    i = _threshold_index(thresholds, 1.0)
                    row[f"proj_{split}_met_1mm"] = _stat([p[split]["fraction_met"][i]
                                                          for p in projected])
            row["layer_ms_per_batch"] = float(np.mean([p["test"]["layer"]["ms_per_batch"]
                                                       for p in projected if "layer" in p["test"]]
                                                      or [np.nan]))
            row["layer_status"] = _merge_counts([p[s]["layer"]["status_counts"] for p in projected
                                                 for s in ("test", "pool") if "layer" in p[s]])
        for key in ("mpjpe_mm", "median_abs_c_mm"):
            row[f"test_{key}_drift"] = _drift(runs, key)
        for key in ("normal_share", "step_norm_mean", "multiplier_abs_mean_mean",
                    "linearized_residual_mean", "kkt_ok_mean", "loss_mean"):
            if any(key in c["train"] for c in last):  # a diverged seed's None (JSON) or NaN: "diverged"
                row[key] = _stat([c["train"].get(key) for c in last])
        rows.append(row)
    return rows


def _drift(runs: list[dict[str, Any]], key: str, share: float = 0.25
           ) -> tuple[int, float | None] | None:
    """``(from_step, mean change)``: a test metric's change over the last `share` of the run.

    The mean over seeds of (final value - value at the last checkpoint at or
    before ``(1 - share)`` of the steps); None for a diverged seed. How far a
    curve still moves at the end says whether its end point is converged.
    """
    steps = [c["step"] for c in runs[0]["checkpoints"]]
    if len(steps) < 2:
        return None
    target = steps[-1] * (1.0 - share)
    i = max(j for j, st in enumerate(steps) if st <= target)
    changes = []
    for r in runs:
        cks = r["checkpoints"]
        if len(cks) != len(steps):
            return None
        a, b = cks[i]["test"][key], cks[-1]["test"][key]
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            return steps[i], None
        changes.append(b - a)
    return steps[i], float(np.mean(changes))


def _merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for c in counts:
        for k, v in c.items():
            out[k] += v
    return dict(out)


def _mean(row, key):
    return row[key][0]


def _finite(row) -> bool:
    return _mean(row, "test_mpjpe_mm") is not None and _mean(row, "test_median_abs_c_mm") is not None


def soft_front(rows: list[dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """The Soft-Adam configurations no other Soft-Adam configuration beats on both means."""
    e, c = f"{split}_mpjpe_mm", f"{split}_median_abs_c_mm"
    soft = [r for r in rows if r["family"] == _SOFT and _mean(r, e) is not None
            and _mean(r, c) is not None]
    front = [r for r in soft if not any(
        _mean(o, e) <= _mean(r, e) and _mean(o, c) <= _mean(r, c)
        and (_mean(o, e) < _mean(r, e) or _mean(o, c) < _mean(r, c)) for o in soft)]
    return sorted(front, key=lambda r: _mean(r, c))


def dominates(a: dict[str, Any], b: dict[str, Any], split: str = "test") -> bool:
    """`a` beats `b` on both means, each by more than the larger s.d. of that metric."""
    for key in (f"{split}_mpjpe_mm", f"{split}_median_abs_c_mm"):
        (ma, sa), (mb, sb) = a[key], b[key]
        if ma is None or mb is None or not mb - ma > max(sa, sb):
            return False
    return True


def with_projection(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every configuration evaluated with the projection layer at test, as a configuration of its own.

    Its id is the configuration's with ``+projection``; its metrics are those
    of the projected predictions (`pose.study.project`). The layer changes
    nothing in training, so these are new points on the same axes.
    """
    out = []
    for r in rows:
        if "proj_test_mpjpe_mm" not in r or r["family"] == "adam-layer":
            continue  # adam-layer is evaluated through the layer already
        p = {k: v for k, v in r.items() if not k.startswith(("test_", "pool_", "proj_"))}
        for split in ("test", "pool"):
            for key in ("mpjpe_mm", "median_abs_c_mm"):
                p[f"{split}_{key}"] = r[f"proj_{split}_{key}"]
        p["config_id"] = r["config_id"] + "+projection"
        p["family"] = r["family"] + "+projection"
        p["label"] = r.get("label", r["config_id"]) + " + projection at test"
        out.append(p)
    return out


def verdict(rows: list[dict[str, Any]], split: str = "test") -> dict[str, Any]:
    """Which configurations dominate which Soft-Adam front configurations (and the reverse).

    The candidates are every non-Soft-Adam configuration and, where the runs
    were evaluated with the projection layer, every configuration (Soft-Adam
    included) + projection at test; the front is Soft-Adam's without it.
    """
    front = soft_front(rows, split)
    others = [r for r in rows + with_projection(rows) if r["family"] != _SOFT and _finite(r)]
    wins = {r["config_id"]: [f["config_id"] for f in front if dominates(r, f, split)]
            for r in others}
    losses = {r["config_id"]: [f["config_id"] for f in front if dominates(f, r, split)]
              for r in others}
    return {"split": split, "front": [f["config_id"] for f in front],
            "dominating": {k: v for k, v in wins.items() if v},
            "dominated_by_front": {k: v for k, v in losses.items() if v},
            "neither": sorted(k for k in wins if not wins[k] and not losses[k])}


def _fmt(stat, digits=1, scale=1.0):
    if stat is None:
        return "-"
    if stat[0] is None:
        return "diverged"
    m, s = stat
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _hyper(h: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(h.items()))


def _in_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by family (the study's order), then configuration."""
    order = list(_COLOURS)
    return sorted(rows, key=lambda r: (order.index(r["family"]) if r["family"] in order else 99,
                                       r["config_id"]))


def format_table(rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    u = results.get("unconstrained", {})
    lines = [
        "| method | hyperparameters | test MPJPE (mm) | test median abs C (mm) | pool MPJPE (mm) "
        "| pool median abs C (mm) | test met at 1 mm (%) | normal share "
        "| last-quarter change of test MPJPE / median abs C (mm) | s/step per run |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    if u.get("test"):
        lines.append(f"| Unconstrained (start) | - | {u['test']['mpjpe_mm']:.1f} | "
                     f"{u['test']['median_abs_c_mm']:.2f} | {u['pool']['mpjpe_mm']:.1f} | "
                     f"{u['pool']['median_abs_c_mm']:.2f} | - | - | - | - |")
    for r in _in_order(rows):
        lines.append(
            f"| {r['label']} | {_hyper(r['hyper'])} | {_fmt(r['test_mpjpe_mm'])} | "
            f"{_fmt(r['test_median_abs_c_mm'], 2)} | {_fmt(r['pool_mpjpe_mm'])} | "
            f"{_fmt(r['pool_median_abs_c_mm'], 2)} | {_fmt(r.get('test_met_1mm'), 1, 100)} | "
            f"{_fmt(r.get('normal_share'), 3)} | {_fmt_drift(r)} | {r['seconds_per_step']:.3f} |")
    return "\n".join(lines)


def _fmt_drift(r: dict[str, Any]) -> str:
    e, c = r.get("test_mpjpe_mm_drift"), r.get("test_median_abs_c_mm_drift")
    if e is None or c is None:
        return "-"
    if e[1] is None or c[1] is None:
        return "diverged"
    return f"{e[1]:+.1f} / {c[1]:+.2f} (from {e[0]})"


def format_projection_table(rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    """Each configuration's final model with the output-projection layer at test (issue 12)."""
    lines = ["| method | hyperparameters | test MPJPE raw (mm) | test MPJPE projected (mm) | "
             "test median abs C projected (mm) | test max abs C projected (mm) | "
             "test met at 1 mm projected (%) | layer ms / batch of 128 | layer status (test + pool) |",
             "|---|---|---|---|---|---|---|---|---|"]
    u = results.get("unconstrained", {})
    if u.get("projected"):
        p = u["projected"]["test"]
        lines.append(f"| Unconstrained (start) | - | {u['test']['mpjpe_mm']:.1f} | {p['mpjpe_mm']:.1f} | "
                     f"{p['median_abs_c_mm']:.1e} | {p['max_abs_c_mm']:.1e} | - | "
                     f"{p['layer']['ms_per_batch']:.1f} | {p['layer']['status_counts']} |")
    for r in _in_order(rows):
        if "proj_test_mpjpe_mm" not in r:
            continue
        m, c, x = r["proj_test_mpjpe_mm"], r["proj_test_median_abs_c_mm"], r["proj_test_max_abs_c_mm"]
        lines.append(
            f"| {r['label']} | {_hyper(r['hyper'])} | {_fmt(r['test_mpjpe_mm'])} | {_fmt(m)} | "
            f"{'diverged' if c[0] is None else f'{c[0]:.1e}'} | "
            f"{'diverged' if x[0] is None else f'{x[0]:.1e}'} | "
            f"{_fmt(r.get('proj_test_met_1mm'), 1, 100)} | {r['layer_ms_per_batch']:.1f} | "
            f"{r['layer_status']} |")
    return "\n".join(lines)


def plot_projection(rows: list[dict[str, Any]], results: dict[str, Any], path) -> None:
    """Test MPJPE against test median |C|: every configuration raw (filled) and projected (hollow)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6.5))
    seen = set()
    for r in rows:
        if "proj_test_mpjpe_mm" not in r or r["proj_test_mpjpe_mm"][0] is None or not _finite(r):
            continue
        fam = r["family"]
        colour, marker = _COLOURS.get(fam, "grey"), _MARKERS.get(fam, "o")
        x0, y0 = r["test_median_abs_c_mm"][0], r["test_mpjpe_mm"][0]
        x1, y1 = max(r["proj_test_median_abs_c_mm"][0], 1e-7), r["proj_test_mpjpe_mm"][0]
        ax.plot([x0, x1], [y0, y1], "-", color=colour, alpha=0.25, linewidth=0.8)
        ax.plot([x0], [y0], marker, color=colour, markersize=7,
                label=None if fam in seen else r["label"])
        ax.plot([x1], [y1], marker, color=colour, mfc="none", markersize=8)
        seen.add(fam)
    u = results.get("unconstrained", {})
    if u.get("projected"):
        ax.plot([u["test"]["median_abs_c_mm"]], [u["test"]["mpjpe_mm"]], "o", color="black",
                mfc="none", markersize=14, label="Unconstrained (start)")
        p = u["projected"]["test"]
        ax.plot([max(p["median_abs_c_mm"], 1e-7)], [p["mpjpe_mm"]], "o", color="black",
                markersize=9, label="Unconstrained + projection")
    ax.set_xscale("log")
    ax.set_xlabel("median constraint violation |C| on test (mm, log scale)")
    ax.set_ylabel("test prediction error, MPJPE (mm)")
    ax.set_title("Pose study with the output-projection layer at test: filled = network, "
                 "hollow = projected", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_verdict(v: dict[str, Any]) -> str:
    lines = [f"Soft-Adam front ({v['split']}): " + ", ".join(v["front"])]
    if v["dominating"]:
        for k, fs in v["dominating"].items():
            lines.append(f"- {k} dominates {', '.join(fs)}")
    else:
        lines.append("- No configuration dominates a configuration of the Soft-Adam front.")
    if v["dominated_by_front"]:
        lines.append(f"- Dominated by a front configuration: {len(v['dominated_by_front'])} "
                     f"configurations ({', '.join(sorted(v['dominated_by_front']))})")
    if v["neither"]:
        lines.append(f"- Neither: {', '.join(v['neither'])}")
    return "\n".join(lines)


def plot_pareto(rows: list[dict[str, Any]], results: dict[str, Any], path, split: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    e, c = f"{split}_mpjpe_mm", f"{split}_median_abs_c_mm"
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    u = results.get("unconstrained", {}).get(split)
    if u:
        ax.plot([u["median_abs_c_mm"]], [u["mpjpe_mm"]], "o", color="black", mfc="none",
                markersize=14, label="Unconstrained (start)", zorder=6)
    seen = set()
    for r in rows:
        if not _finite(r) or r[e][0] is None:
            continue
        fam = r["family"]
        ax.errorbar(r[c][0], r[e][0], xerr=r[c][1], yerr=r[e][1],
                    fmt=_MARKERS.get(fam, "o"), color=_COLOURS.get(fam, "grey"), markersize=7,
                    capsize=2, alpha=0.85, label=None if fam in seen else r["label"])
        seen.add(fam)
    front = soft_front(rows, split)
    if front:
        ax.plot([f[c][0] for f in front], [f[e][0] for f in front], "-", color="tab:blue",
                linewidth=1.5, label="Soft-Adam front", zorder=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"median constraint violation |C| on {split} (mm, log scale)")
    ax.set_ylabel(f"{split} prediction error, MPJPE (mm)")
    name = results.get("study", {}).get("name", "")
    ax.set_title(f"Pose study ({name}, {split}): mean ± s.d. over seeds, one marker per configuration")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results: dict[str, Any], rows: list[dict[str, Any]], path) -> None:
    """Test MPJPE and median |C| against step: one panel pair per family, a line per configuration.

    Mean over seeds. A configuration with a non-finite seed, or one whose
    MPJPE leaves the range of the finite runs (above 3x the starting error),
    is drawn up to its last sane checkpoint and marked "diverged".
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by_family: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in results.get("runs", {}).values():
        if r.get("checkpoints"):
            by_family[r["family"]][r["config_id"]].append(r)
    order = [f for f in _COLOURS if f in by_family] + sorted(set(by_family) - set(_COLOURS))
    if not order:
        return
    u = results.get("unconstrained", {}).get("test", {})
    start = u.get("mpjpe_mm")
    cap = 3.0 * start if start else math.inf
    cols = 3
    nrows = -(-len(order) // cols)
    fig, axes = plt.subplots(2 * nrows, cols, figsize=(5.2 * cols, 3.0 * 2 * nrows), squeeze=False)
    for n, fam in enumerate(order):
        ax_e = axes[2 * (n // cols), n % cols]
        ax_c = axes[2 * (n // cols) + 1, n % cols]
        cmap = plt.get_cmap("viridis")
        configs = sorted(by_family[fam].items(),
                         key=lambda kv: tuple(sorted(kv[1][0]["hyper"].items())))
        for k, (cid, runs) in enumerate(configs):
            steps = [c["step"] for c in runs[0]["checkpoints"]]
            runs = [r for r in runs if len(r["checkpoints"]) >= len(steps)]
            vals = {key: np.array([[np.nan if c["test"][key] is None else c["test"][key]
                                    for c in r["checkpoints"][:len(steps)]] for r in runs], float)
                    for key in ("mpjpe_mm", "median_abs_c_mm")}
            finite = np.isfinite(vals["mpjpe_mm"])
            bad = ~finite.all(axis=0) | (np.where(finite, vals["mpjpe_mm"], 0.0).max(axis=0) > cap)
            last = len(steps) if not bad.any() else int(np.argmax(bad))
            label = _hyper(runs[0]["hyper"]) + (" (diverged)" if bad.any() else "")
            colour = cmap(k / max(len(configs) - 1, 1))
            for ax, key in ((ax_e, "mpjpe_mm"), (ax_c, "median_abs_c_mm")):
                if last > 0:
                    ax.plot(steps[:last], vals[key][:, :last].mean(axis=0), "-o", markersize=2.5,
                            color=colour, linewidth=1.2, label=label if ax is ax_e else None)
                if bad.any() and last > 0:
                    ax.plot([steps[last - 1]], [vals[key][:, last - 1].mean()], "x",
                            color=colour, markersize=9)
        ax_e.set_title(configs[0][1][0]["label"], fontsize=10)
        ax_e.set_ylabel("test MPJPE (mm)")
        ax_c.set_ylabel("test median |C| (mm)")
        ax_c.set_yscale("log")
        ax_c.set_xlabel("iteration")
        ax_e.legend(fontsize=6.5, loc="best")
        for ax in (ax_e, ax_c):
            ax.grid(True, which="both", alpha=0.3)
    for n in range(len(order), nrows * cols):
        axes[2 * (n // cols), n % cols].axis("off")
        axes[2 * (n // cols) + 1, n % cols].axis("off")
    name = results.get("study", {}).get("name", "")
    fig.suptitle(f"Pose study ({name}): test learning curves, mean over seeds, one line per "
                 "configuration (x: diverged after this checkpoint)")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: dict[str, Any], out, *, figures: bool = True) -> dict[str, Any]:
    """Write ``study.md`` (table and verdicts) and the figures; returns the verdicts."""
    out = Path(out)
    rows = summarise(results)
    verdicts = {s: verdict(rows, s) for s in ("test", "pool")}
    text = ["# Pose study", "",
            f"Study `{results.get('study', {}).get('name')}` on the data and unconstrained model "
            f"of `{results.get('study', {}).get('base')}`; mean ± s.d. over seeds "
            f"{list(results.get('study', {}).get('seeds', []))} after "
            f"{results.get('study', {}).get('steps')} iterations.", "",
            format_table(rows, results), "", "## Verdict (test)", "", format_verdict(verdicts["test"]),
            "", "## Verdict (pool)", "", format_verdict(verdicts["pool"]), "",
            "## With the output-projection layer at test", "",
            format_projection_table(rows, results), ""]
    (out / "study.md").write_text("\n".join(text))
    if figures:
        plot_pareto(rows, results, out / "pareto_test.png", "test")
        plot_pareto(rows, results, out / "pareto_pool.png", "pool")
        plot_curves(results, rows, out / "curves.png")
        if any("proj_test_mpjpe_mm" in r for r in rows):
            plot_projection(rows, results, out / "pareto_projection.png")
    return verdicts
