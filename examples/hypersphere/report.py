"""Figures and table of the hypersphere experiment: Fig. 3 (d = 2 illustration), Fig. 4 and the README table (from metrics.json)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from hypersphere.config import ALL_METHODS as METHODS
from hypersphere.illustration import illustration_2d

__all__ = ["COLOURS", "FLOOR", "curves", "format_table", "plot_fig3", "plot_fig4"]

FLOOR = 1e-16  # |C| values below this (exact zeros included) are drawn at it on log axes

COLOURS = {
    "soft": "tab:blue",
    "hard": "tab:red",
    "hard-fixed": "tab:green",
    "hard-all": "tab:purple",
    "hard-memory": "tab:orange",
    "hard-alpha": "tab:brown",
    "sqp-momentum": "tab:olive",
    "auglag": "tab:cyan",
}


def plot_fig3(path: str | os.PathLike, seed: int = 0) -> None:
    """Write Fig. 3 (d = 2 illustration, see :func:`illustration_2d`) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ill = illustration_2d(seed)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), dpi=80)
    theta = np.linspace(0, 2 * np.pi, 4000)

    def circles(ax, which, **kw):
        for i in which:
            c = ill.centres[i]
            ax.plot(c[0] + ill.radius * np.cos(theta), c[1] + ill.radius * np.sin(theta), **kw)

    def lines(ax, span):
        t = np.linspace(-span, span, 2)
        for i, ls in enumerate(("--", ":")):
            a = ill.normals[i]
            foot = ill.w - ill.offsets[i] * a  # a . (v - w) = -C_i
            tang = np.array([-a[1], a[0]])
            ax.plot(foot[0] + t * tang[0], foot[1] + t * tang[1], ls, color="k", lw=1,
                    label=f"linearisation of circle {i + 1} at w")

    # (a) one KKT step with circles 1 and 2 active.
    ax = axes[0]
    circles(ax, [0], color="tab:orange", lw=1, label="circle 1")
    circles(ax, [1], color="tab:cyan", lw=1, label="circle 2")
    span = 1.5 * np.linalg.norm(ill.kkt_step - ill.w) + 2
    lines(ax, span)
    ax.plot(*ill.w, "ko", ms=5, label="current w")
    ax.annotate("", xy=ill.kkt_step, xytext=ill.w, arrowprops=dict(arrowstyle="->", color="tab:red"))
    ax.plot(*ill.kkt_step, "o", color="tab:red", ms=5, label="w after the KKT step (Eq. 5)")
    mid = 0.5 * (ill.w + ill.kkt_step)
    half = 0.6 * np.abs(ill.kkt_step - ill.w).max() + 1.5
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_aspect("equal")
    ax.set_title(f"(a) two nearly identical circles (centres {np.linalg.norm(ill.centres[1] - ill.centres[0]):.2f} apart)",
                 fontsize=9)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.legend(fontsize=7, loc="best")

    # (b) paths.
    ax = axes[1]
    circles(ax, range(len(ill.centres)), color="0.6", lw=0.8)
    ax.plot([], [], color="0.6", lw=0.8, label=f"{len(ill.centres)} circles, r = {ill.radius:g}")
    pc, pf = ill.path_changing, ill.path_fixed
    ax.plot(pc[:, 0], pc[:, 1], "-o", color="tab:red", ms=3, lw=1, label="hard, random active pair")
    ax.plot(pf[:, 0], pf[:, 1], "-s", color="tab:green", ms=3, lw=1, label="hard, fixed pair (circles 1, 2)")
    ax.plot(*ill.x0, "k*", ms=9, label="start (x0)")
    allp = np.concatenate([pc, pf])
    lo, hi = allp.min(0), allp.max(0)
    pad = 0.15 * (hi - lo).max() + 0.5
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_title(f"(b) {len(pc) - 1} hard steps (Eq. 5, SGD lr 0.05)", fontsize=9)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.legend(fontsize=7, loc="best")

    # (c) violations along the paths.
    ax = axes[2]
    steps = np.arange(len(pc))
    floor = 1e-16
    ax.semilogy(steps, np.maximum(ill.violations_fixed[:, :2].max(1), floor), "-s", color="tab:green", ms=3,
                label="fixed pair: max |C| of circles 1, 2")
    ax.semilogy(steps, np.maximum(np.median(ill.violations_fixed, 1), floor), "--", color="tab:green",
                label=f"fixed pair: median |C| of all {len(ill.centres)}")
    ax.semilogy(steps, np.maximum(np.median(ill.violations_changing, 1), floor), "--", color="tab:red",
                label=f"random pair: median |C| of all {len(ill.centres)}")
    ax.set_xlabel("hard step")
    ax.set_ylabel("|C_i| = | ||w - c_i|| - r |")
    ax.set_title("(c) constraint violation along the paths", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, which="both")
    fig.suptitle("Fig. 3 (d = 2): hard steps on nearly identical circles", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curves(result, extra):
    """(name, label, linestyle, metrics) of every method to draw, the main result first."""
    out = [(name, name, "-", result["methods"][name]) for name in METHODS if name in result["methods"]]
    for other in extra:
        for name in METHODS:
            if name in other["methods"]:
                label = f"{name} (separate {other['config']['iters']}-step run)"
                out.append((name, label, "--", other["methods"][name]))
    return out


def plot_fig4(result: dict[str, Any], path: str | os.PathLike, extra: Sequence[dict[str, Any]] = ()) -> None:
    """Write Fig. 4 from the content of metrics.json: (a) median |C|, (b) active change.

    ``extra``: contents of other metrics.json files (e.g. a shorter run of an
    expensive method) whose methods are drawn dashed; their settings must be
    those of ``result`` except ``iters``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    for other in extra:
        differ = sorted(k for k in cfg if k != "iters" and other["config"].get(k) != cfg[k])
        if differ:
            raise ValueError(f"extra results differ from the main run in {', '.join(differ)}.")
    drawn = curves(result, extra)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=80)
    ax = axes[0]
    for name, label, ls, m in drawn:
        y = np.maximum(np.asarray(m["median_abs_c"]), FLOOR)
        ax.plot(np.arange(len(y)), y, ls, color=COLOURS[name], lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"median |C_i| over all {cfg['constraints']} constraints (floor {FLOOR:g})")
    ax.set_title("(a) constraint violation", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")

    ax = axes[1]
    typical = []
    for name, label, ls, m in drawn:
        if name == "soft":
            continue
        y = np.asarray(m["active_change"])
        if y.size > 1 and np.any(y[1:] != 0):
            typical.append(float(np.median(np.abs(y[1:][y[1:] != 0]))))
        ax.plot(np.arange(1, len(y) + 1), y, ls, color=COLOURS[name], lw=0.8, label=label)
    ax.axhline(0, color="k", lw=0.6)
    # Linear up to a decade below the largest typical change (that of the
    # random active sets); rounding-level changes of the converged methods
    # then draw as 0.
    lin = max(FLOOR, 10.0 ** (np.floor(np.log10(max(typical))) - 1)) if typical else 1.0
    ax.set_yscale("symlog", linthresh=lin, linscale=0.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("median |active C| after step − before")
    ax.set_title("(b) change of the active constraints (> 0: worse)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"Fig. 4: d = {cfg['dim']:g}, {cfg['constraints']} spheres (r = {cfg['radius']:g}), "
        f"{cfg['active']} random active, lambda = {cfg['lam']:g}, centres '{cfg['centre_spread']}'",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(result: dict[str, Any], markdown: bool = True) -> str:
    """The README table from the content of metrics.json, one row per method.

    Columns: the KKT solver, median |C| over all constraints after the last
    step and its median over the last 100 steps, the share of steps that did
    not worsen their active constraints, s/step (and its ratio to ``soft``),
    and what the hard steps achieved (`harness.summarise_solves`): the median
    linearised residual ``||A dw + c|| / ||c||`` and ``||A dw + c||`` itself
    (the ratio is rounding noise once ``||c||`` is, for a method converged
    onto its active constraints), the median KKT iterations and the stop
    codes with their counts.
    """
    def num(v, f):
        return "-" if v is None else format(v, f)

    head = ["method", "KKT solver", "median |C| after the last step", "median over the last 100 steps",
            "steps with active change <= 0", "s / step", "x soft", "median ||A dw + c|| / ||c||",
            "median ||A dw + c||", "KKT it. (median)", "stop codes"]
    methods = result["methods"]
    soft = methods.get("soft", {}).get("seconds_per_iter")
    body = []
    for name in METHODS:
        if name not in methods:
            continue
        m = methods[name]
        c = [np.nan if v is None else v for v in m["median_abs_c"]]
        s = m.get("solver_summary") or {}
        codes = ", ".join(f"{k}: {v}" for k, v in s.get("istop_counts", {}).items()) or "-"
        body.append([
            f"`{name}`", m.get("kkt_solver") or "-", num(c[-1], ".2e"),
            num(float(np.median(c[-100:])), ".2e"),
            f"{100 * m['active_change_nonpositive_fraction']:.1f} %",
            num(m.get("seconds_per_iter"), ".3f"),
            num(m["seconds_per_iter"] / soft if soft and m.get("seconds_per_iter") else None, ".1f"),
            num(s.get("linearized_residual_median"), ".1e"), num(s.get("residual_norm_median"), ".1e"),
            num(s.get("iterations_median"), ".0f"), codes,
        ])
    if markdown:
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join(["  ".join(h.ljust(w) for h, w in zip(head, widths))]
                     + ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in body])
