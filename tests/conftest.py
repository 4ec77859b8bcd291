"""Shared test configuration.

Accuracy tests run in float64 through the ``x64`` fixture (a context manager,
so the rest of the suite keeps JAX's float32 defaults).
"""

import os

# Tests compile hundreds of small XLA programs and run each for milliseconds:
# the backend's optimisation passes dominate the suite's time (measured 1.7x
# faster at level 0 on 2 cores). Numerics are unchanged; set before JAX
# creates its CPU backend, appended to any flags the caller passes.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
