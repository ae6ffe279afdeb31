"""The pipeline's custom components.

Exports the custom artifact types under their TYPE_NAMEs, which TFX's Vertex
container entrypoint imports as Python paths.
"""
from custom_components.artifacts import Interactions
from custom_components.artifacts import PolicyEvaluation

__all__ = ["Interactions", "PolicyEvaluation"]
