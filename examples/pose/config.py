"""Sizes, schedules and hyperparameters of the 3D pose experiment (paper Sec. 5): the presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from harness import fingerprint as fingerprint
from harness.solvers import SYSTEMS, legacy_system

__all__ = [
    "CONSTRAINED_METHODS",
    "CONSTRAINT_BATCHES",
    "HARD_METHODS",
    "METHOD_LABELS",
    "PRESETS",
    "SYSTEMS",
    "ExperimentPreset",
    "MethodSpec",
    "fingerprint",
    "get_preset",
    "with_overrides",
]

METHOD_LABELS: dict[str, str] = {
    "adam": "Adam (unconstrained)",
    "soft-sgd": "Soft-SGD",
    "soft-adam": "Soft-Adam",
    "hard-sgd": "Hard-SGD",
    "hard-adam": "Hard-Adam",
    "gauss-newton": "Gauss-Newton-KKT",
    "adam-project": "Adam+Project",
}
"""Display names of the methods, in the order they are run and tabulated.

``adam-project`` is not in the paper: optax's Adam step projected onto the
linearised constraints in the Euclidean metric, ``optax.chain(optax.adam(lr),
kktopt.project_kkt(...))`` (Hard-Adam, Eq. 12, projects in Adam's metric)."""

# KKT systems of the hard methods (`harness.SYSTEMS`): ``full`` is MINRES-QLP
# on the full KKT system, matrix-free (the paper's Algorithm 1;
# ``full/minres_qlp/matrix_free``); ``schur`` is the m x m system
# ``A D^-1 A^T`` solved exactly by the dense pseudo-inverse on a per-sample
# Jacobian (``schur/dense/per_sample``; SGD and Adam metrics only).

CONSTRAINED_METHODS: tuple[str, ...] = tuple(m for m in METHOD_LABELS if m != "adam")
"""The constrained methods (everything but the unconstrained Adam model)."""

HARD_METHODS: tuple[str, ...] = ("hard-sgd", "hard-adam", "gauss-newton", "adam-project")
"""The methods that solve a KKT system at every step."""

CONSTRAINT_BATCHES: tuple[str, ...] = ("random", "mined")
"""``random``: the whole random pool minibatch is active; ``mined``: its
`ExperimentPreset.mined` most violating samples (Eq. 9)."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One configuration of a constrained method.

    Attributes:
      method: one of `CONSTRAINED_METHODS`.
      constraints: ``"random"`` or ``"mined"`` (see `CONSTRAINT_BATCHES`).
      steps: training iterations, starting from the unconstrained model.
      eval_every: iterations between checkpoints (evaluation and saved state).
      lr: learning rate (SGD and Adam methods; unused by Gauss-Newton).
      lam: soft penalty weight lambda of Eq. 3 (soft methods), per mm^2 of
        squared constraint value, against a loss in mm^2.
      damping: Levenberg-Marquardt damping eta of Eq. 6 (Gauss-Newton).
      eps: Adam's epsilon in the metric of Eq. 12 (Hard-Adam; default 1e-8
        as in optax).
      memory: size of a ``kktopt.memory.multiplier_memory`` (hard methods):
        that many pool samples keep pulling with their accumulated Lagrange
        multipliers after they leave the active set. None: no memory.
      decay: per-step decay of the remembered multipliers (with ``memory``;
        None means 1, no decay).
      system: the KKT system of the hard methods, ``"full"`` (default;
        MINRES-QLP, matrix-free) or ``"schur"`` (dense Schur complement on a
        per-sample Jacobian); Gauss-Newton needs ``"full"``.
      rcond: relative eigenvalue cutoff of the dense pseudo-inverse of the
        ``schur`` system (None: ``kktopt.KKTSolver``'s default, m times the
        machine epsilon). A larger cutoff drops the nearly dependent
        directions of ``A A^T`` (Sec. 6-7 of the paper: ill-conditioned KKT
        systems), so the step meets the well-determined part of the
        linearised constraints and leaves the rest.
      seed: added to the preset's seed for this configuration's minibatches
        (labeled and pool), to repeat a configuration from the same
        unconstrained model with other minibatches. The data and the
        unconstrained model do not change.
      solver: deprecated spelling of ``system`` (``"minres-qlp"`` means
        ``"full"``); None unless given.
    """

    method: str
    constraints: str
    steps: int
    eval_every: int
    lr: float | None = None
    lam: float | None = None
    damping: float | None = None
    eps: float | None = None
    memory: int | None = None
    decay: float | None = None
    system: str = "full"
    rcond: float | None = None
    seed: int = 0
    solver: str | None = None

    def __post_init__(self):
        if self.method not in CONSTRAINED_METHODS:
            raise ValueError(f"method must be one of {CONSTRAINED_METHODS}, got {self.method!r}.")
        if self.constraints not in CONSTRAINT_BATCHES:
            raise ValueError(f"constraints must be one of {CONSTRAINT_BATCHES}, got "
                             f"{self.constraints!r}.")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"steps and eval_every must be >= 1, got {self.steps}, "
                             f"{self.eval_every}.")
        needs = {"soft-sgd": ("lr", "lam"), "soft-adam": ("lr", "lam"), "hard-sgd": ("lr",),
                 "hard-adam": ("lr",), "gauss-newton": ("damping",),
                 "adam-project": ("lr",)}[self.method]
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{self.method} needs {', '.join(missing)} (got {self}).")
        if self.solver is not None:  # the earlier spelling: solver="minres-qlp" | "schur"
            object.__setattr__(self, "system", legacy_system(self.solver, where="solver"))
            object.__setattr__(self, "solver", None)
        if self.system not in SYSTEMS:
            raise ValueError(f"system must be one of {SYSTEMS}, got {self.system!r}.")
        hard = self.method in HARD_METHODS
        if not hard and (self.memory is not None or self.system != "full"):
            raise ValueError(f"memory and system apply to hard methods only, not {self.method}.")
        if self.method == "gauss-newton" and self.system != "full":
            raise ValueError("gauss-newton needs system='full' (its metric has no cheap "
                             "inverse for the Schur complement).")
        if self.memory is not None and self.memory < 1:
            raise ValueError(f"memory must be a positive size, got {self.memory}.")
        if self.decay is not None and self.memory is None:
            raise ValueError("decay needs memory.")
        if self.rcond is not None and self.system != "schur":
            raise ValueError("rcond applies to system='schur' only.")

    @property
    def family(self) -> str:
        """Configurations of one family share one compiled training step."""
        parts = [self.method, self.constraints]
        if self.system != "full":
            parts.append(self.system)
        if self.rcond is not None:  # a static field of the solver
            parts.append(f"rcond{self.rcond:g}")
        if self.memory is not None:
            parts.append(f"mem{self.memory}")
        if self.decay is not None:  # a constant of the compiled step
            parts.append(f"decay{self.decay:g}")
        return "/".join(parts)

    @property
    def hyper_label(self) -> str:
        """``lr=..., lam=...`` or ``eta=...``: what varies within a family."""
        parts = []
        if self.lr is not None and self.method != "gauss-newton":
            parts.append(f"lr={self.lr:g}")
        if self.lam is not None:
            parts.append(f"lam={self.lam:g}")
        if self.damping is not None:
            parts.append(f"eta={self.damping:g}")
        if self.eps is not None:
            parts.append(f"eps={self.eps:g}")
        if self.system != "full":
            parts.append(f"system={self.system}")
        if self.rcond is not None:
            parts.append(f"rcond={self.rcond:g}")
        if self.memory is not None:
            parts.append(f"mem={self.memory}")
        if self.decay is not None:
            parts.append(f"decay={self.decay:g}")
        if self.seed:
            parts.append(f"seed={self.seed}")
        return ", ".join(parts)

    @property
    def id(self) -> str:
        """File-system friendly unique name, e.g. ``hard-sgd_mined_lr1e-08``."""
        hyper = "_".join(p.replace("=", "").replace(", ", "_") for p in self.hyper_label.split(", "))
        return f"{self.method}_{self.constraints}_{hyper}"

    @property
    def label(self) -> str:
        return f"{METHOD_LABELS[self.method]} ({self.constraints}, {self.hyper_label})"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["solver"]  # always None after __post_init__
        return out


@dataclasses.dataclass(frozen=True)
class ExperimentPreset:
    """Everything that defines a run of the pose experiment.

    Attributes:
      name: preset name.
      model: `pose.model` preset (``tiny``, ``small`` or ``paper``).
      image_size: image side in pixels (must match the model preset).
      train_size: labeled set D (the same for every method).
      pool_size: unlabeled constraint pool C.
      validation_size: validation split, to keep the best unconstrained model.
      test_size: test split (held-out subjects).
      pool_eval_size: pool samples evaluated at every checkpoint (the first
        ones of the pool; the whole pool when larger than it).
      batch_size: labeled minibatch and pool minibatch (paper: 128).
      mined: samples kept from a pool minibatch by mining (paper: 16).
      pretrain_steps: Adam iterations of the unconstrained model.
      pretrain_lr: its learning rate.
      pretrain_eval_every: iterations between validations (best kept).
      solver_rtol: relative tolerance of the KKT solves (MINRES-QLP of the
        ``full`` system; the dense ``schur`` solve uses it only to tell a
        solution from a least-squares one).
      maxiter_random: its iteration limit with random constraint batches
        (``batch_size`` samples, 6 constraints each, active).
      maxiter_mined: its iteration limit with mined batches (``mined``
        samples active). kktopt's default, 4 m + 20 for m active
        constraints, lets MINRES-QLP converge; a lower limit trades accuracy
        of the linearised constraints for time (recorded per checkpoint as
        ``linearized_residual_median`` and its distribution, ``||A dw + c|| / ||c||``).
      methods: the constrained configurations, run in this order.
      seed: seed of the data, the initial weights and the minibatches.
      notes: how the hyperparameters were chosen, for the record.
    """

    name: str
    model: str
    image_size: int
    train_size: int
    pool_size: int
    validation_size: int
    test_size: int
    pool_eval_size: int
    pretrain_steps: int
    pretrain_eval_every: int
    solver_rtol: float
    maxiter_random: int
    maxiter_mined: int
    methods: tuple[MethodSpec, ...]
    batch_size: int = 128
    mined: int = 16
    pretrain_lr: float = 1e-3
    seed: int = 0
    notes: str = ""

    def __post_init__(self):
        if self.mined > self.batch_size:
            raise ValueError(f"mined ({self.mined}) must be <= batch_size ({self.batch_size}).")
        ids = [m.id for m in self.methods]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate method configurations in preset {self.name!r}: {ids}.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["methods"] = [m.to_dict() for m in self.methods]
        return d

    def data_dict(self) -> dict[str, Any]:
        """What the synthetic data set depends on."""
        return {"image_size": self.image_size, "train_size": self.train_size,
                "pool_size": self.pool_size, "validation_size": self.validation_size,
                "test_size": self.test_size, "seed": self.seed}

    def base_dict(self) -> dict[str, Any]:
        """What the unconstrained model depends on."""
        return {**self.data_dict(), "model": self.model, "batch_size": self.batch_size,
                "pretrain_steps": self.pretrain_steps, "pretrain_lr": self.pretrain_lr,
                "pretrain_eval_every": self.pretrain_eval_every,
                "pool_eval_size": self.pool_eval_size}

    def method_dict(self, spec: MethodSpec) -> dict[str, Any]:
        """What the result of one constrained configuration depends on."""
        return {**self.base_dict(), "mined": self.mined, "solver_rtol": self.solver_rtol,
                "solver_maxiter": self.maxiter(spec), **spec.to_dict()}

    def maxiter(self, spec: MethodSpec) -> int:
        """MINRES-QLP's iteration limit for `spec`'s constraint batch."""
        return self.maxiter_random if spec.constraints == "random" else self.maxiter_mined


def _grid(method: str, constraints: str, steps: int, eval_every: int, **values) -> list[MethodSpec]:
    """MethodSpecs for every combination of the given hyperparameter lists."""
    names = list(values)
    combos: list[dict[str, Any]] = [{}]
    for n in names:
        vs = values[n] if isinstance(values[n], (list, tuple)) else [values[n]]
        combos = [{**c, n: v} for c in combos for v in vs]
    return [MethodSpec(method, constraints, steps, eval_every, **c) for c in combos]


# Learning rates are for the loss of Eq. 14 in mm^2 (sum over the 17 joints of
# the squared distance, mean over the minibatch); lambda multiplies the sum of
# squared constraint values (mm^2) over the active samples, as in Eq. 3; eta
# is in the units of J^T J for residuals in mm (1/2 ||r||^2 = the loss).
#
# How the CPU values were chosen (probes of 5-20 iterations from the `small`
# unconstrained model, 64x64, 2048 labeled images):
# * SGD: lr 1e-8 decreases the loss, 1e-7 diverges. Soft-SGD with lam 1
#   diverges at lr 1e-8 (the penalty sums over 768 constraint values where the
#   loss averages over 128 samples); lam 0.003-0.02 is stable.
# * Soft-Adam: lr 1e-3 (the paper's) first throws the fine-tuned model off
#   (MPJPE 83 -> 107 mm in 20 steps); lr 1e-4 is stable; lam 0.1 trades little
#   error for violation, lam 1 halves the violation for 2 mm of error.
# * Hard-SGD: lr 1e-8 and 3e-8 both raise the error; 1e-8 lowers the
#   violation most.
# * Hard-Adam: with optax's eps = 1e-8 the metric of Eq. 12 is degenerate here
#   (70% of the loss gradient entries are exactly 0, from inactive ReLUs, so
#   D has entries 1e11 times smaller than the others) and the first step
#   throws the predictions metres away; eps = 1 (mm^2 gradient units) keeps it
#   finite. lr 1e-4 as for Soft-Adam.
# * Gauss-Newton: J^T J has a Rayleigh quotient of 1.2e8 along the gradient
#   and 1.3e4 along a random direction; eta 1e4-1e7 (below SGD's stable step
#   1/lr = 1e8) raise the violation, eta 1e8 lowers it.
# * MINRES-QLP (rtol 1e-6): with mined batches (m = 96) it converges in about
#   185 iterations; 100 leave ||A dw + c|| / ||c|| near 0.4%. With random
#   batches (m = 768) an iteration costs 8 times more and 30 leave about 50%:
#   full solves (hundreds of iterations) do not fit a CPU budget.

_TINY = ExperimentPreset(
    name="tiny", model="tiny", image_size=32,
    train_size=256, pool_size=512, validation_size=128, test_size=128, pool_eval_size=256,
    pretrain_steps=40, pretrain_eval_every=20, pretrain_lr=3e-3,
    solver_rtol=1e-6, maxiter_random=8, maxiter_mined=8,
    methods=tuple(
        _grid("soft-adam", "random", 4, 2, lr=1e-4, lam=1.0)
        + _grid("hard-sgd", "mined", 4, 2, lr=1e-8)
        + _grid("hard-adam", "mined", 4, 2, lr=1e-4, eps=1.0)
        + _grid("gauss-newton", "mined", 4, 2, damping=1e8)),
    notes="For the tests: a few seconds of training per method; the numbers mean nothing.",
)

_DEMO = ExperimentPreset(
    name="demo", model="small", image_size=64,
    train_size=1024, pool_size=3072, validation_size=256, test_size=512, pool_eval_size=512,
    pretrain_steps=300, pretrain_eval_every=50, pretrain_lr=2e-3,
    solver_rtol=1e-6, maxiter_random=30, maxiter_mined=100,
    methods=tuple(
        _grid("soft-sgd", "random", 40, 10, lr=1e-8, lam=0.01)
        + _grid("soft-adam", "random", 40, 10, lr=1e-4, lam=0.1)
        + _grid("hard-sgd", "mined", 12, 3, lr=1e-8)
        + _grid("hard-adam", "mined", 12, 3, lr=1e-4, eps=1.0)
        + _grid("gauss-newton", "mined", 6, 2, damping=1e8)),
    notes=("Every method once, values from the CPU probes (see examples/pose/config.py); "
           "hard methods get fewer iterations than soft ones (they cost 3-10 times more)."),
)

_SMALL = ExperimentPreset(
    name="small", model="small", image_size=64,
    train_size=2048, pool_size=4096, validation_size=512, test_size=1024, pool_eval_size=1024,
    pretrain_steps=400, pretrain_eval_every=50, pretrain_lr=2e-3,
    solver_rtol=1e-6, maxiter_random=30, maxiter_mined=100,
    methods=tuple(
        _grid("soft-sgd", "random", 80, 16, lr=1e-8, lam=0.01)
        + _grid("soft-adam", "random", 80, 16, lr=1e-4, lam=[0.1, 1.0])
        + _grid("hard-sgd", "mined", 25, 5, lr=1e-8)
        + _grid("hard-sgd", "random", 6, 2, lr=1e-8)
        + _grid("hard-adam", "mined", 25, 5, lr=1e-4, eps=1.0)
        + _grid("gauss-newton", "mined", 8, 2, damping=1e8)),
    notes=("Values from the CPU probes (see examples/pose/config.py); two lambdas for Soft-Adam; "
           "Hard-SGD with mined and with random batches; hard methods get fewer iterations "
           "than soft ones (they cost 3-10 times more)."),
)

_PAPER = ExperimentPreset(
    name="paper", model="paper", image_size=128,
    train_size=16384, pool_size=65536, validation_size=4096, test_size=16384,
    pool_eval_size=4096,
    pretrain_steps=12800, pretrain_eval_every=640, pretrain_lr=1e-3,  # 100 epochs of D
    solver_rtol=1e-6, maxiter_random=4 * 768 + 20, maxiter_mined=4 * 96 + 20,  # kktopt's defaults
    methods=tuple(
        _grid("soft-sgd", "random", 2000, 200, lr=[1e-8, 3e-8], lam=[0.003, 0.01])
        + _grid("soft-adam", "random", 2000, 200, lr=[1e-3, 1e-4], lam=[0.01, 0.1, 1.0])
        + _grid("soft-adam", "mined", 2000, 200, lr=1e-4, lam=1.0)
        + _grid("hard-sgd", "random", 500, 50, lr=[1e-8, 3e-8])
        + _grid("hard-sgd", "mined", 500, 50, lr=[1e-8, 3e-8])
        + _grid("hard-adam", "random", 500, 50, lr=1e-4, eps=1.0)
        + _grid("hard-adam", "mined", 500, 50, lr=1e-4, eps=1.0)
        + _grid("gauss-newton", "mined", 200, 20, damping=1e8)),
    notes=("Paper sizes (128x128, Eq. 13 with 2048/1024 dense units, 100 epochs of Adam, "
           "minibatch 128, 16 mined samples, MINRES-QLP to convergence), for a GPU. Grids "
           "centred on the CPU values, which were not tuned for this model."),
)


# "Making hard constraints win" (issue 6): both presets below have the data and
# the unconstrained-model settings of `small` (the same `base_dict`), so they
# can reuse its unconstrained model:
#   python examples/run_pose.py --preset small-probes --out runs/pose-probes \
#       --data-dir runs/pose-small/data --unconstrained-from runs/pose-small
# * small-probes: one seed, 20 iterations of each candidate. Multiplier memory
#   (256 samples; decay 1, 0.9, 0.5) made Hard-SGD and Adam+Project diverge or
#   drift away; Adam+Project (Euclidean projection of Adam's step) raised the
#   error 1.5-3x; the exact Schur solve (2.4x cheaper than 100 MINRES-QLP
#   iterations) met the constraints best but raised the error most; truncating
#   the pseudo-inverse of A A^T at rcond 1e-3 gave the best error/violation
#   compromise of the new hard steps (rcond 1e-2 and 1e-1 leave |C| where it
#   was). Hard-Adam (Eq. 12, eps 1) with the exact Schur solve lowered the
#   violation as much as Hard-SGD with a smaller error increase (with 100
#   MINRES-QLP iterations in `small` it left the violation where it was).
# * small-seeds: Soft-Adam with its stronger lambda (the lowest violation of
#   the soft settings of `small`), the paper's Hard-SGD (mined, MINRES-QLP)
#   and the two best new hard steps, 40 iterations each, minibatch seeds 0, 1, 2.

_PROBE_STEPS, _PROBE_EVERY = 20, 5
_SMALL_PROBES = dataclasses.replace(
    _SMALL, name="small-probes",
    methods=tuple(
        _grid("hard-sgd", "mined", _PROBE_STEPS, _PROBE_EVERY, lr=1e-8, system="schur",
              rcond=[None, 1e-1, 1e-2, 3e-3, 1e-3])
        + _grid("hard-sgd", "mined", _PROBE_STEPS, _PROBE_EVERY, lr=1e-8, system="schur",
                memory=256, decay=[None, 0.9, 0.5])
        + _grid("adam-project", "mined", _PROBE_STEPS, _PROBE_EVERY, lr=1e-4, system="schur",
                rcond=[None, 1e-2, 1e-3])
        + _grid("adam-project", "mined", _PROBE_STEPS, _PROBE_EVERY, lr=1e-4, system="schur",
                memory=256)
        + _grid("hard-adam", "mined", _PROBE_STEPS, _PROBE_EVERY, lr=1e-4, eps=1.0,
                system="schur", rcond=[1e-3, None])),
    notes="Candidates for a hard configuration that beats Soft-Adam (see examples/pose/config.py).",
)

_SEEDS = (0, 1, 2)
_SMALL_SEEDS = dataclasses.replace(
    _SMALL, name="small-seeds",
    methods=tuple(
        _grid("soft-adam", "random", 40, 8, lr=1e-4, lam=1.0, seed=list(_SEEDS))
        + _grid("hard-sgd", "mined", 40, 8, lr=1e-8, seed=list(_SEEDS))
        + _grid("hard-sgd", "mined", 40, 8, lr=1e-8, system="schur", rcond=1e-3,
                seed=list(_SEEDS))
        + _grid("hard-adam", "mined", 40, 8, lr=1e-4, eps=1.0, system="schur",
                seed=list(_SEEDS))),
    notes=("Three minibatch seeds of Soft-Adam (lambda 1), Hard-SGD (mined, MINRES-QLP), "
           "Hard-SGD (mined, Schur, rcond 1e-3) and Hard-Adam (mined, exact Schur) from the "
           "small unconstrained model."),
)

# small-timing: the configurations of small-seeds (seed 0) back to back in one
# process, 20 iterations each, for seconds-per-iteration ratios measured under
# the same machine load (the load of a shared machine changes from run to run).
_SMALL_TIMING = dataclasses.replace(
    _SMALL, name="small-timing",
    methods=tuple(
        _grid("soft-adam", "random", 20, 20, lr=1e-4, lam=1.0)
        + _grid("hard-adam", "mined", 20, 20, lr=1e-4, eps=1.0, system="schur")
        + _grid("hard-sgd", "mined", 20, 20, lr=1e-8, system="schur", rcond=1e-3)
        + _grid("hard-sgd", "mined", 20, 20, lr=1e-8)),
    notes="Seconds per iteration of the small-seeds configurations under one load.",
)

PRESETS: dict[str, ExperimentPreset] = {
    p.name: p for p in (_TINY, _DEMO, _SMALL, _PAPER, _SMALL_PROBES, _SMALL_SEEDS,
                        _SMALL_TIMING)}
"""The presets by name: ``tiny`` (tests), ``demo`` (README, < 10 min on a
2-core CPU), ``small`` (< 15 min on a 2-core CPU), ``paper`` (paper sizes,
for a GPU), and ``small-probes`` / ``small-seeds`` / ``small-timing``
(hard-constraint variants, a three-seed comparison and a timing run on the
data and unconstrained model of ``small``)."""


def get_preset(name: str) -> ExperimentPreset:
    """The preset called `name` (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]


def with_overrides(
    preset: ExperimentPreset,
    *,
    methods: Sequence[str] | None = None,
    lr: Mapping[str, Sequence[float]] | None = None,
    lam: Mapping[str, Sequence[float]] | None = None,
    damping: Mapping[str, Sequence[float]] | None = None,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
) -> ExperimentPreset:
    """A copy of `preset` with some methods kept and some hyperparameter grids replaced.

    Args:
      preset: the preset to change.
      methods: keep only these methods (names of `CONSTRAINED_METHODS`).
      lr: ``{method: [values]}``; the key ``"*"`` means every method with a
        learning rate. Each (method, constraint batch) of the preset is then
        run once per value, its other hyperparameters taken from the preset's
        first configuration of that pair.
      lam: likewise for the soft penalty weight lambda.
      damping: likewise for the Gauss-Newton damping eta.
      seed: a different seed (data, initial weights, minibatches).
      seeds: run every configuration once per value, as ``MethodSpec.seed``
        (other minibatches of the constrained methods from the same data
        and unconstrained model).

    Returns:
      The new preset.
    """
    specs = list(preset.methods)
    if methods is not None:
        unknown = set(methods) - set(CONSTRAINED_METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose among {CONSTRAINED_METHODS}.")
        specs = [s for s in specs if s.method in methods]
        if not specs:
            raise ValueError(f"preset {preset.name!r} has no configuration of {list(methods)}.")
    for field, grid in (("lr", lr), ("lam", lam), ("damping", damping)):
        for key, values in (grid or {}).items():
            if key != "*" and key not in CONSTRAINED_METHODS:
                raise ValueError(f"unknown method {key!r} in the {field} override.")
            new: list[MethodSpec] = []
            done: set[str] = set()
            for s in specs:
                applies = (key in ("*", s.method)) and getattr(s, field) is not None
                if field == "lr" and s.method == "gauss-newton":
                    applies = False
                if not applies:
                    new.append(s)
                elif s.family not in done:
                    done.add(s.family)
                    new.extend(dataclasses.replace(s, **{field: float(v)}) for v in values)
            specs = new
    if seeds is not None:
        specs = [dataclasses.replace(s, seed=int(k)) for s in specs for k in seeds]
    changes: dict[str, Any] = {"methods": tuple(specs)}
    if seed is not None:
        changes["seed"] = seed
    return dataclasses.replace(preset, **changes)
