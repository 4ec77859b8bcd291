"""Figures 2a/2b, the summary tables and the seed plot of the pose experiment, from ``results.json``.

Null metrics (a diverged model) are drawn as gaps and tabulated as ``-``.
"""

from __future__ import annotations

import os
from typing import Any

from pose.config import METHOD_LABELS

_COLOURS = {"soft-sgd": "tab:cyan", "soft-adam": "tab:blue", "hard-sgd": "tab:red",
            "hard-adam": "tab:orange", "gauss-newton": "tab:purple",
            "adam-project": "tab:green"}
_MARKERS = {"random": "o", "mined": "^"}
_LINESTYLES = ("-", "--", ":", "-.")


def _system(cfg: dict[str, Any]) -> str:
    """The KKT system of a configuration (also read from results of the earlier ``solver`` key)."""
    if "system" in cfg:
        return cfg["system"]
    return "schur" if cfg.get("solver") == "schur" else "full"


def _num(values):
    """Metric values for plotting: JSON null (a diverged model) as NaN."""
    return [float("nan") if v is None else v for v in values]


def _finished(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in results.get("methods", {}).values() if r.get("checkpoints")]


def _styles(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(colour, marker, line style): configurations of a family get different line styles."""
    seen: dict[str, int] = {}
    out = []
    for r in entries:
        cfg = r["config"]
        family = f"{cfg['method']}/{cfg['constraints']}"
        k = seen.get(family, 0)
        seen[family] = k + 1
        out.append((_COLOURS[cfg["method"]], _MARKERS[cfg["constraints"]],
                    _LINESTYLES[k % len(_LINESTYLES)]))
    return out


def _error_violation_axes(ax, results: dict[str, Any]) -> str:
    """Mark the unconstrained model and label the error-vs-violation axes; returns the preset name."""
    base = results.get("unconstrained", {}).get("test")
    if base:
        ax.plot([base["median_abs_c_mm"]], [base["mpjpe_mm"]], "o", color="black", markersize=13,
                label="Unconstrained (Adam)", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("median constraint violation |C| on test (mm, log scale)")
    ax.set_ylabel("test prediction error, MPJPE (mm)")
    return results.get("preset", {}).get("name", "")


def _finish(fig, ax, path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fig2a(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Test error versus median constraint violation, one dot per checkpoint (paper Fig. 2a)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    entries = _finished(results)
    for r, (colour, marker, ls) in zip(entries, _styles(entries)):
        xs = _num(c["test"]["median_abs_c_mm"] for c in r["checkpoints"])
        ys = _num(c["test"]["mpjpe_mm"] for c in r["checkpoints"])
        ax.plot(xs, ys, color=colour, marker=marker, linestyle=ls, markersize=4, linewidth=1.2,
                label=r["label"], alpha=0.9)
        ax.plot(xs[-1:], ys[-1:], color=colour, marker=marker, markersize=8, linestyle="none",
                markeredgecolor="black")
    preset = _error_violation_axes(ax, results)
    ax.set_title(f"Fig. 2a: error vs. violation ({preset} preset; small dots: checkpoints, "
                 "large: final)", fontsize=9)
    _finish(fig, ax, path)


def plot_fig2b(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Proportion of test constraints met versus threshold, final checkpoints (paper Fig. 2b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = results["thresholds_mm"]
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    base = results.get("unconstrained", {}).get("test")
    if base:
        ax.plot(thresholds, base["fraction_met"], color="black", linewidth=2.5,
                label="Unconstrained (Adam)")
    entries = _finished(results)
    for r, (colour, marker, ls) in zip(entries, _styles(entries)):
        last = r["checkpoints"][-1]
        ax.plot(thresholds, _num(last["test"]["fraction_met"]), color=colour, linestyle=ls,
                marker=marker, markersize=3, markevery=3,
                label=f"{r['label']}, step {last['step']}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("threshold on |C| (mm, log scale)")
    ax.set_ylabel("proportion of test constraints met (|C| <= threshold)")
    preset = results.get("preset", {}).get("name", "")
    ax.set_title(f"Fig. 2b: constraints met vs. threshold ({preset} preset, final checkpoints)",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _median_residual(r: dict[str, Any]) -> float | None:
    """Median over every hard step of a configuration of ``||A dw + c|| / ||c||`` (None: no KKT step).

    Results files of schema ``kktopt.pose_experiment/1`` kept only each
    checkpoint interval's median: for them, the median of those medians.
    """
    import numpy as np

    train = [c.get("train", {}) for c in r["checkpoints"][1:]]
    steps = [v for t in train for v in t.get("solves", {}).get("linearized_residual", [])]
    if not steps:
        steps = [t["linearized_residual_median"] for t in train if t.get("linearized_residual_median") is not None]
    values = [np.nan if v is None else v for v in steps]
    return float(np.median(values)) if values else None


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration (unconstrained first), final checkpoint.

    ``lin_res`` is the median over all the configuration's steps of the
    linearised residual ``||A dw + c|| / ||c||`` (how well its hard steps
    met the linearised constraints; None for soft methods).
    """
    rows = []
    base = results.get("unconstrained", {})
    if base.get("test"):
        rows.append({
            "method": METHOD_LABELS["adam"], "batch": "-", "hyper": f"lr={base['config']['pretrain_lr']:g}",
            "steps": base["best_step"], "mpjpe": base["test"]["mpjpe_mm"],
            "c_test": base["test"]["median_abs_c_mm"], "c_pool": base["pool"]["median_abs_c_mm"],
            "s_it": base.get("seconds_per_iter"), "kkt_it": None})
    soft = [r["seconds_per_iter"] for r in _finished(results)
            if r["config"]["method"].startswith("soft") and r.get("seconds_per_iter")]
    soft_ref = min(soft) if soft else None
    for r in _finished(results):
        cfg, last = r["config"], r["checkpoints"][-1]
        kkt = [c["train"].get("iterations_mean") for c in r["checkpoints"][1:]
               if c.get("train", {}).get("iterations_mean") is not None
               and _system(cfg) == "full"]  # dense Schur: no iterations
        rows.append({
            "method": METHOD_LABELS[cfg["method"]], "batch": cfg["constraints"],
            "hyper": r["hyper"],
            "steps": last["step"], "mpjpe": last["test"]["mpjpe_mm"],
            "c_test": last["test"]["median_abs_c_mm"], "c_pool": last["pool"]["median_abs_c_mm"],
            "s_it": r.get("seconds_per_iter"),
            "vs_soft": (r["seconds_per_iter"] / soft_ref
                        if soft_ref and r.get("seconds_per_iter") else None),
            "kkt_it": sum(kkt) / len(kkt) if kkt else None,
            "lin_res": _median_residual(r)})
    return rows


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The paper-style table: method, constraint batch, lr/lambda, MPJPE, median |C|, s/it,
    KKT iterations and the median linearised residual of the hard steps."""
    head = ["method", "constraint batch", "lr / lambda / eta", "steps", "MPJPE test (mm)",
            "median |C| test (mm)", "median |C| pool (mm)", "s/it", "x fastest soft",
            "MINRES-QLP it.", "median ||A dw + c|| / ||c||"]

    def fmt(row):
        def num(v, f):
            return "-" if v is None else format(v, f)
        return [row["method"], row["batch"], row["hyper"], str(row["steps"]),
                num(row["mpjpe"], ".1f"), num(row["c_test"], ".2f"), num(row["c_pool"], ".2f"),
                num(row["s_it"], ".3f"), num(row.get("vs_soft"), ".1f"),
                num(row.get("kkt_it"), ".1f"), num(row.get("lin_res"), ".1e")]

    body = [fmt(r) for r in table_rows(results)]
    if markdown:
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in head) + " |",
                 "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Repeats over minibatch seeds (``MethodSpec.seed``)
# --------------------------------------------------------------------------


def _without_seed(r: dict[str, Any]) -> str:
    return ", ".join(p for p in r["hyper"].split(", ") if not p.startswith("seed="))


def seed_groups(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Configurations repeated over seeds: mean and spread of their final checkpoints.

    Returns one dict per configuration (its entries differ only in
    ``MethodSpec.seed``), in the order of first appearance, with ``label``,
    ``seeds``, per-seed arrays ``mpjpe``, ``c_test``, ``c_pool``, ``s_it``
    and the per-seed checkpoint curves ``curves`` (lists of (median |C| test,
    MPJPE test)).
    """
    import numpy as np

    groups: dict[str, dict[str, Any]] = {}
    for r in _finished(results):
        cfg = r["config"]
        key = f"{cfg['method']}/{cfg['constraints']}/{_without_seed(r)}"
        g = groups.setdefault(key, {
            "label": f"{METHOD_LABELS[cfg['method']]} ({cfg['constraints']}, {_without_seed(r)})",
            "method": cfg["method"], "seeds": [], "mpjpe": [], "c_test": [], "c_pool": [],
            "s_it": [], "curves": [], "steps": r["checkpoints"][-1]["step"]})
        last = r["checkpoints"][-1]
        g["seeds"].append(cfg.get("seed", 0))
        g["mpjpe"].append(last["test"]["mpjpe_mm"])
        g["c_test"].append(last["test"]["median_abs_c_mm"])
        g["c_pool"].append(last["pool"]["median_abs_c_mm"])
        g["s_it"].append(r["seconds_per_iter"])
        g["curves"].append(list(zip(_num(c["test"]["median_abs_c_mm"] for c in r["checkpoints"]),
                                    _num(c["test"]["mpjpe_mm"] for c in r["checkpoints"]))))
    for g in groups.values():
        for k in ("mpjpe", "c_test", "c_pool", "s_it"):
            g[k] = np.asarray(_num(g[k]), float)
    return list(groups.values())


def format_seed_table(results: dict[str, Any], markdown: bool = True) -> str:
    """Mean ± sample standard deviation over seeds of the final test/pool metrics and s/it.

    ``x Soft-Adam`` divides the mean seconds per iteration by that of the
    first Soft-Adam configuration.
    """
    groups = seed_groups(results)
    soft = next((g for g in groups if g["method"] == "soft-adam"), None)
    ref = float(soft["s_it"].mean()) if soft is not None else None
    head = ["configuration", "seeds", "steps", "MPJPE test (mm)", "median |C| test (mm)",
            "median |C| pool (mm)", "s/it", "x Soft-Adam"]

    def pm(x, f):
        sd = x.std(ddof=1) if len(x) > 1 else 0.0
        if f == "mm":  # two decimals, or three significant digits below 0.1 mm
            f = ".2f" if abs(x.mean()) >= 0.1 else ".3g"
        return f"{x.mean():{f}} ± {sd:{f}}"

    body = [[g["label"], ",".join(str(k) for k in g["seeds"]), str(g["steps"]),
             pm(g["mpjpe"], ".1f"), pm(g["c_test"], "mm"), pm(g["c_pool"], "mm"),
             f"{g['s_it'].mean():.3f}", "-" if ref is None else f"{g['s_it'].mean() / ref:.2f}"]
            for g in groups]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join(["  ".join(h.ljust(w) for h, w in zip(head, widths))]
                     + ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in body])


def plot_pareto(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Error vs. violation over seeds: thin lines per seed, mean final point with spread bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(seed_groups(results)):
        colour = colours[i % len(colours)]
        for curve in g["curves"]:
            xs, ys = zip(*curve)
            ax.plot(xs, ys, color=colour, linewidth=0.8, alpha=0.45, marker=".", markersize=3)
        sd = (lambda x: x.std(ddof=1) if len(x) > 1 else 0.0)
        ax.errorbar([g["c_test"].mean()], [g["mpjpe"].mean()], xerr=[sd(g["c_test"])],
                    yerr=[sd(g["mpjpe"])], color=colour, marker="o", markersize=8,
                    markeredgecolor="black", capsize=3,
                    label=f"{g['label']}: {len(g['seeds'])} seeds, {g['s_it'].mean():.2f} s/it")
    preset = _error_violation_axes(ax, results)
    ax.set_title(f"Error vs. violation over seeds ({preset} preset): lines = checkpoints of one "
                 "seed, dots = mean of final ± 1 s.d.", fontsize=8)
    _finish(fig, ax, path)
