"""kktopt: hard output constraints for deep networks in JAX."""

from kktopt import krylov as krylov

__version__ = "0.1.0"
