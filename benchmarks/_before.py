"""Import an earlier version of kktopt beside the current one, for before/after benchmarks.

``load_kktopt(rev)`` extracts the ``kktopt/`` package of git revision
``rev`` (``git archive``) into a temporary folder under another module name
(``kktopt_before`` by default, every ``kktopt`` in its sources renamed), and
imports it. Both versions then run in one process, so a benchmark can time
them in the same interleaved rounds: "before" and "after" under the same
load, compiled by the same jax.
"""

from __future__ import annotations

import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_kktopt(rev: str, name: str = "kktopt_before"):
    """The package ``kktopt`` as it was at git revision ``rev``, imported as ``name``."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "kktopt"],
            check=True, capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        raise SystemExit(
            f"--before {rev}: cannot read kktopt/ at that revision with git archive "
            f"({detail.decode(errors='replace').strip() or err}); pass a commit of this repository."
        ) from None
    root = Path(tempfile.mkdtemp(prefix="kktopt-before-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    (root / "kktopt").rename(root / name)
    pattern = re.compile(r"\bkktopt\b")
    for path in (root / name).rglob("*.py"):
        path.write_text(pattern.sub(name, path.read_text()))
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(root))
