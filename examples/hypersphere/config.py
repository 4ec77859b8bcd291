"""Settings of the hypersphere experiment (paper Sec. 6.2): the five methods and one run's configuration."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from harness.solvers import SolverChoice, legacy_system, solver_choice

__all__ = ["ALL_METHODS", "AUTO_SOLVERS", "EXTRA_METHODS", "METHODS", "HypersphereConfig"]

METHODS: tuple[str, ...] = ("soft", "hard", "hard-fixed", "hard-all", "hard-memory")
"""The paper's five methods, in the order they are run and plotted (the default run)."""

EXTRA_METHODS: tuple[str, ...] = ("hard-alpha", "sqp-momentum", "auglag")
"""Methods beyond the paper, run when named (``--methods``): ``hard`` with the
feedback gain ``alpha`` (``A dw = -alpha c``), ``kktopt.sqp_momentum`` (heavy
ball on projected gradients, Piermarini et al. 2026) on ``hard``'s random
sets, and ``kktopt.augmented_lagrangian`` (one multiplier per sphere, dual
step = penalty) before ``optax.sgd`` on the same random sets."""

ALL_METHODS: tuple[str, ...] = METHODS + EXTRA_METHODS
"""Every method, in the order they are run and plotted."""

AUTO_SOLVERS: dict[tuple[str, str], tuple[str, str]] = {
    ("schur", "hard-fixed"): ("dense", "matrix_free"),
    ("schur", "hard-all"): ("dense", "matrix_free"),
}
"""Per-method solver choices (``(system, method) -> (solver method, jacobian)``)
used when the configuration names no solver method or Jacobian; the others
take their system's default (``dense``/``per_sample`` for ``schur``).
``hard-fixed`` and ``hard-all`` project onto the same rows at every step and
keep their dense factorisation for ``reuse`` steps (``KKTSolver(reuse=...)``):
a step with the kept factor needs no Jacobian, so the matrix-free one (formed
only when the solver refactors) is cheaper than a per-sample Jacobian formed
at every step: ``hard-all`` 0.49 against 0.62 s per step, ``hard-fixed`` 0.093
against 0.114 (``benchmarks/hypersphere_steps.py``, RESULTS.md, "Hypersphere
timing")."""


@dataclasses.dataclass(frozen=True)
class HypersphereConfig:
    """Settings of one run (the defaults are the paper's Fig. 4).

    Attributes:
      dim: dimension d of w.
      constraints: number m of spheres (centres).
      active: number of random active constraints per step of ``hard``, and
        the size of ``hard-fixed``'s fixed set.
      iters: optimisation steps per method.
      lam: soft penalty weight lambda of Eq. 17.
      seed: seeds the centres, x0 and the random active sets.
      radius: sphere radius r.
      centre_variance: the paper's 0.01.
      centre_spread: ``"matched"`` (per-coordinate variance
        ``centre_variance * 2 / dim``, the d = 2 geometry in any dimension) or
        ``"literal"`` (per-coordinate variance ``centre_variance``); see the
        module docstring.
      start_distance: ``||x0||``; x0 is uniform on that sphere around the
        origin (the mean of the centres), so it lies about
        ``start_distance - radius`` outside the spheres. Every method starts
        at w = x0, the unconstrained minimiser.
      soft_lr: SGD learning rate of ``soft``; default ``1 / (1 + 2 lam m)``,
        half the stability bound (see :meth:`default_soft_lr`).
      hard_lr: SGD learning rate before the projection (eta = 1 / hard_lr in
        Eq. 5); default 1.0 by the same rule as the soft one: half of SGD's
        stability bound 2 / L on the objective the SGD step sees, here
        R = 1/2 ||w - x0||^2 with L = 1 (the projection, not the step size,
        takes care of the constraints). ``hard_lr = soft_lr`` makes the hard
        steps almost pure projections.
      system: the KKT system of the hard steps, ``"schur"`` (default: the
        k x k Schur complement, with ``method="dense"``, the minimum-norm
        pseudo-inverse, and ``jacobian="per_sample"``, one k x d Jacobian
        per step) or ``"full"`` (``method="minres_qlp"`` on the full KKT
        system, ``jacobian="matrix_free"``: the paper's choice). Both solve
        the same Eq. 5; see the README for the costs.
      method: the solver method, for every hard method; one of
        ``harness.METHODS[system]``. None (and ``jacobian`` None): each hard
        method takes its choice in `AUTO_SOLVERS`, else the system's default
        above.
      jacobian: ``"matrix_free"`` or ``"per_sample"`` (None: as for
        ``method``).
      rtol: the iterative methods' relative tolerance (not used by
        ``"dense"``); None: the library's default for the dtype (1e-4 in
        float32, 1e-8 in float64).
      dtype: ``"float64"`` (default) or ``"float32"`` (half the memory
        traffic, but |C| is resolved only to about 1e-6 at d = 1e6, the
        rounding of ``||w - c_i||^2`` summed over 1e6 coordinates, and the
        200 nearly dependent rows of ``hard-all`` are beyond its precision:
        ``A A^T`` has a condition number of about 2e6).
      memory: number of remembered samples of ``hard-memory``'s
        :func:`kktopt.memory.multiplier_memory` (default all m).
      reuse: ``hard-fixed`` and ``hard-all`` project onto the same rows at
        every step: with the dense Schur solve they keep its factorisation
        for up to ``reuse`` steps (``kktopt.KKTSolver(reuse=...)``: a step
        solves with the lagged factor and refines on its true rows, and
        refactors when the rounds miss them). 0 factors at every step.
      alpha: the feedback gain of ``hard-alpha`` (``A dw = -alpha c``).
      momentum: the heavy-ball coefficient of ``sqp-momentum``.
      penalty: the augmented-Lagrangian penalty rho of ``auglag`` (also its
        dual step size); default ``2 lam``, the quadratic weight of ``soft``'s
        penalty per constraint. Its SGD learning rate is ``1 / (1 + penalty *
        active)``, half the stability bound of the penalty on ``active``
        nearly parallel rows.
      solver: deprecated spelling of ``system`` (``"krylov"`` means
        ``"full"``); None unless given.
    """

    dim: int = 1_000_000
    constraints: int = 200
    active: int = 20
    iters: int = 500
    lam: float = 100.0
    seed: int = 0
    radius: float = 10.0
    centre_variance: float = 0.01
    centre_spread: Literal["matched", "literal"] = "matched"
    start_distance: float = 15.0
    soft_lr: float | None = None
    hard_lr: float = 1.0
    system: Literal["schur", "full"] = "schur"
    method: str | None = None
    jacobian: str | None = None
    rtol: float | None = None
    dtype: Literal["float64", "float32"] = "float64"
    memory: int = 200
    reuse: int = 100
    alpha: float = 0.5
    momentum: float = 0.9
    penalty: float | None = None
    solver: str | None = None

    def __post_init__(self):
        for name in ("dim", "constraints", "active", "iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.active > self.constraints:
            raise ValueError(
                f"active ({self.active}) cannot exceed the number of constraints ({self.constraints})."
            )
        if self.centre_spread not in ("matched", "literal"):
            raise ValueError(f"centre_spread must be 'matched' or 'literal', got {self.centre_spread!r}.")
        if self.solver is not None:  # the earlier spelling: solver="krylov" | "schur"
            object.__setattr__(self, "system", legacy_system(self.solver, where="solver"))
            object.__setattr__(self, "solver", None)
        self.solver_choice()  # validates system, method and jacobian
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}.")
        for name in ("lam", "radius", "centre_variance", "start_distance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if self.soft_lr is not None and not self.soft_lr > 0:
            raise ValueError(f"soft_lr must be positive (or None for the default), got {self.soft_lr!r}.")
        if not self.hard_lr > 0:
            raise ValueError(f"hard_lr must be positive, got {self.hard_lr!r}.")
        if not isinstance(self.memory, int) or self.memory < 0:
            raise ValueError(f"memory must be an integer >= 0, got {self.memory!r}.")
        if isinstance(self.reuse, bool) or not isinstance(self.reuse, int) or self.reuse < 0:
            raise ValueError(f"reuse must be an integer >= 0, got {self.reuse!r}.")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}.")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}.")
        if self.penalty is not None and not self.penalty > 0:
            raise ValueError(f"penalty must be positive (or None for 2 lam), got {self.penalty!r}.")
        if self.rtol is not None and not 0 <= self.rtol < 1:
            raise ValueError(f"rtol must be in [0, 1), got {self.rtol!r}.")

    def solver_choice(self, method: str | None = None) -> SolverChoice:
        """The KKT solver of the hard methods (`harness.SolverChoice`), or of one of them.

        With ``method`` (one of `METHODS`) and neither ``self.method`` nor
        ``self.jacobian`` given, the choice measured fastest for it on the
        chosen system (see `AUTO_SOLVERS`); otherwise the system's defaults
        with the given method and Jacobian, for every hard method.
        """
        meth, jac = self.method, self.jacobian
        if method is not None and meth is None and jac is None:
            meth, jac = AUTO_SOLVERS.get((self.system, method), (None, None))
        choice = solver_choice(self.system, meth, jac, rtol=self.rtol)
        if choice.method != "dense":
            return choice
        # rtol is the iterative methods' (the dense solve is exact); the
        # methods with the same rows at every step keep their factor.
        rows = {"hard-fixed": self.active, "hard-all": self.constraints}.get(method)
        if rows is not None and self.reuse:
            choice = choice._replace(reuse=self.reuse, reuse_rows=rows)
        return choice._replace(rtol=None)

    def solvers(self) -> dict[str, str]:
        """``{hard method: "system/method/jacobian"}``: the solver each hard method uses."""
        return {m: self.solver_choice(m).label() for m in METHODS if m != "soft"}

    def default_soft_lr(self) -> float:
        """``1 / (1 + 2 lam m)``: half of SGD's stability bound on Eq. 17.

        Near the spheres every ``a_i = (w - c_i) / ||w - c_i||`` is almost the
        same unit vector, so the Hessian of the soft objective has the
        eigenvalue ``1 + 2 lam sum_i ||a_i||^2 = 1 + 2 lam m`` in that
        (radial) direction, and SGD is stable only for ``lr < 2 / (1 + 2 lam
        m)`` (= 5.0e-5 for lam = 100, m = 200). Half of it removes the radial
        error in about one step.
        """
        return 1.0 / (1.0 + 2.0 * self.lam * self.constraints)

    @property
    def resolved_soft_lr(self) -> float:
        return self.default_soft_lr() if self.soft_lr is None else float(self.soft_lr)

    @property
    def resolved_penalty(self) -> float:
        """``auglag``'s penalty rho (default ``2 lam``)."""
        return 2.0 * self.lam if self.penalty is None else float(self.penalty)

    @property
    def auglag_lr(self) -> float:
        """``auglag``'s SGD learning rate, ``1 / (1 + rho active)`` (see `soft_lr`'s rule)."""
        return 1.0 / (1.0 + self.resolved_penalty * self.active)

    @property
    def coordinate_variance(self) -> float:
        """The per-coordinate variance of the centres."""
        if self.centre_spread == "literal":
            return self.centre_variance
        return self.centre_variance * 2.0 / self.dim

    def to_dict(self) -> dict[str, Any]:
        """The settings, with the learning rates resolved (the ``config`` of metrics.json)."""
        out = dataclasses.asdict(self)
        del out["solver"]  # always None after __post_init__
        choice = self.solver_choice()  # None: the system's default, resolved
        out["method"], out["jacobian"] = choice.method, choice.jacobian
        out["solvers"] = self.solvers()  # what each hard method uses
        out["soft_lr"] = self.resolved_soft_lr
        out["penalty"] = self.resolved_penalty
        out["coordinate_variance"] = self.coordinate_variance
        return out
