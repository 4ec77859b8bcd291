"""Exact constraints at inference: a differentiable per-sample output projection.

* :func:`project_outputs`: ``y = argmin 1/2 ||y - y_hat||_W^2`` s.t.
  ``c(y) = 0``, ``g(y) <= 0``, per sample (Gauss-Newton SQP forward pass,
  implicit KKT backward pass).
* :class:`OutputProjection`: the same as an Equinox layer (one sample).
* :class:`ProjectedModel`: ``x -> projection(model(x))``.
* :class:`ProjectionInfo`, :class:`ProjectionStatus`, :func:`status_message`:
  per-sample diagnostics.
"""

from kktopt.outputs._info import ProjectionInfo as ProjectionInfo
from kktopt.outputs._info import ProjectionStatus as ProjectionStatus
from kktopt.outputs._info import status_message as status_message
from kktopt.outputs._layer import OutputProjection as OutputProjection
from kktopt.outputs._layer import ProjectedModel as ProjectedModel
from kktopt.outputs._project import default_tol as default_tol
from kktopt.outputs._project import project_outputs as project_outputs

__all__ = [
    "OutputProjection",
    "ProjectedModel",
    "ProjectionInfo",
    "ProjectionStatus",
    "default_tol",
    "project_outputs",
    "status_message",
]
