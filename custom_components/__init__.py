"""The pipeline's custom components.

Exports the custom artifact types under their TYPE_NAMEs, which TFX's Vertex
container entrypoint imports as Python paths ("custom_components.Interactions").
They load on first access, so modules that need no TFX (the component keys, the
evaluation reader) import without TFX or TensorFlow.
"""
import importlib

__all__ = ["Interactions", "PolicyEvaluation"]


def __getattr__(name: str):
  if name in __all__:
    return getattr(importlib.import_module("custom_components.artifacts"), name)
  raise AttributeError(f"module 'custom_components' has no attribute {name!r}")
