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


def resume(prog_path: str | os.PathLike, state_path: str | os.PathLike, fingerprint: str,
           like: Any) -> tuple[dict | None, Any]:
    """An interrupted run's progress and state, if both were saved for the same settings.

    Returns ``(progress, tree)``: the JSON progress record and the tree saved
    with it (structure of `like`) when ``progress["fingerprint"]`` matches and
    it got past step 0, with the step appended to its ``resumed_from_steps``;
    otherwise ``(None, like)``.
    """
    from harness.results import read_json
    prog_path, state_path = Path(prog_path), Path(state_path)
    if not (prog_path.exists() and state_path.exists()):
        return None, like
    old = read_json(prog_path)
    if old.get("fingerprint") != fingerprint or old.get("step", 0) <= 0:
        return None, like
    old.setdefault("resumed_from_steps", []).append(old["step"])
    return old, load_tree(state_path, like)
