"""Results files: standard JSON, written atomically.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which strict
JSON readers reject. Here every non-finite number becomes ``null``; the code
that produced it records why next to it (a ``status`` such as
``"diverged"``), so a reader never has to guess what a missing number means.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def to_json(data: Any) -> Any:
    """A copy of `data` that ``json.dumps(..., allow_nan=False)`` accepts.

    Non-finite floats (``nan``, ``inf``) become None; numpy scalars and
    arrays become Python numbers and lists; tuples become lists.

    Example:
      >>> to_json({"a": float("nan"), "b": [1.0, float("inf")], "c": (2, 3)})
      {'a': None, 'b': [1.0, None], 'c': [2, 3]}
    """
    if isinstance(data, dict):
        return {str(k): to_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [to_json(v) for v in data]
    if isinstance(data, np.ndarray):
        return to_json(data.tolist())
    if isinstance(data, np.generic):
        data = data.item()
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as standard JSON (see `to_json`), atomically.

    The file is written next to `path` and renamed over it, so a run killed
    while writing never leaves a half-written file behind.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(to_json(data), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path) as f:
        return json.load(f)


def fingerprint(config: dict[str, Any]) -> str:
    """A short hash of a configuration dict (tells stale checkpoints and results apart).

    Example:
      >>> fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
      True
    """
    text = json.dumps(to_json(config), sort_keys=True, allow_nan=False)
    return hashlib.sha1(text.encode()).hexdigest()[:12]
