"""Plumbing shared by the paper's experiments (``examples/pose``, ``examples/hypersphere``).

* `harness.results`: standard JSON results (no ``NaN`` literals: non-finite
  numbers are written as ``null``), atomic writes, configuration
  fingerprints.
* `harness.checkpoints`: training state saved and restored with Equinox's
  leaf serialisation, atomically.
* `harness.steps`: the compiled training step (ahead-of-time, timed) and the
  lookup of `kktopt.KKTInfo` in an optax state.
* `harness.progress`: the tqdm progress bar of long runs.
* `harness.solvers`: the KKT solver named by ``system``, ``method`` and
  ``jacobian``, spelled as kktopt spells them.
* `harness.solves`: what each hard step achieved (linearised residual,
  iterations, stop code) and its distribution over many steps.

Only public kktopt names are used here, as a user's training script would.
The experiments import this package as ``harness`` with ``examples/`` on
``sys.path`` (the entry scripts in ``examples/`` have it there by default;
pytest adds it through ``pythonpath`` in ``pyproject.toml``).
"""

from harness.checkpoints import load_tree as load_tree
from harness.checkpoints import resume as resume
from harness.checkpoints import save_tree as save_tree
from harness.progress import progress as progress
from harness.results import fingerprint as fingerprint
from harness.results import read_json as read_json
from harness.results import to_json as to_json
from harness.results import write_json as write_json
from harness.solvers import JACOBIANS as JACOBIANS
from harness.solvers import METHODS as METHODS
from harness.solvers import SYSTEMS as SYSTEMS
from harness.solvers import SolverChoice as SolverChoice
from harness.solvers import solver_choice as solver_choice
from harness.solves import SOLVE_KEYS as SOLVE_KEYS
from harness.solves import solve_record as solve_record
from harness.solves import summarise_solves as summarise_solves
from harness.steps import compile_step as compile_step
from harness.steps import host_scalars as host_scalars
from harness.steps import kkt_info as kkt_info

__all__ = [
    "JACOBIANS",
    "METHODS",
    "SOLVE_KEYS",
    "SYSTEMS",
    "SolverChoice",
    "compile_step",
    "fingerprint",
    "host_scalars",
    "kkt_info",
    "load_tree",
    "progress",
    "read_json",
    "resume",
    "save_tree",
    "solve_record",
    "solver_choice",
    "summarise_solves",
    "to_json",
    "write_json",
]
