"""Custom artifact types.

Vertex requires TYPE_NAME to match ^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$,
and TFX's Vertex container entrypoint rebuilds a custom artifact by importing its
TYPE_NAME as a Python path: "custom_components.Interactions" is importable because
the package `custom_components` exports these classes.
"""
from tfx.types import artifact


class Interactions(artifact.Artifact):
  """Interaction records a Generator logged to the warehouse.

  Its summary (record_count, event_time, warehouse, logging_policy) is in custom
  properties: Vertex's compiler rejects custom types that declare PROPERTIES.
  """
  TYPE_NAME = "custom_components.Interactions"


class PolicyEvaluation(artifact.Artifact):
  """Off-policy and oracle value estimates of a candidate policy and its baseline."""
  TYPE_NAME = "custom_components.PolicyEvaluation"
