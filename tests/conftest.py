"""Shared test configuration.

Accuracy tests run in float64 through the ``x64`` fixture (a context manager,
so the rest of the suite keeps JAX's float32 defaults).
"""

import jax
import pytest


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
