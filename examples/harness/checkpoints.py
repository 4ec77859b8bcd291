"""Training-state checkpoints: Equinox leaf serialisation, written atomically.

A checkpoint holds the arrays of any pytree (parameters, optimiser state,
anything else); restoring it needs a pytree of the same structure (`like`),
typically the freshly initialised state of the same configuration. Which
checkpoint belongs to which configuration is the caller's business (the
experiments keep a `harness.results.fingerprint` of the settings next to it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import equinox as eqx


def save_tree(path: str | os.PathLike, tree: Any) -> None:
    """``eqx.tree_serialise_leaves(path, tree)``, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    eqx.tree_serialise_leaves(tmp, tree)
    os.replace(tmp, path)


def load_tree(path: str | os.PathLike, like: Any) -> Any:
    """The pytree saved by `save_tree`, with the structure of `like`."""
    return eqx.tree_deserialise_leaves(path, like)
