"""Progress bars of long runs (tqdm, an optional dependency of the examples)."""

from __future__ import annotations

from typing import Any


def progress(total: int, *, desc: str, enabled: bool = True, initial: int = 0) -> Any:
    """A ``tqdm.auto.tqdm`` bar (a context manager) over `total` steps.

    Args:
      total: number of steps.
      desc: label shown before the bar.
      enabled: False disables the bar (nothing is printed), e.g. in tests.
      initial: steps already done (a resumed run).

    Returns:
      The bar; call ``.update()`` per step and ``.set_postfix(...)`` for live
      numbers.
    """
    try:
        from tqdm.auto import tqdm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("The experiments show progress with tqdm: "
                          "pip install 'kktopt[examples]' (or pass progress=False).") from err
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=True,
                dynamic_ncols=True)
