"""Custom artifact types. Vertex requires TYPE_NAME to match
^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$, hence the `rlops.` prefix."""
from tfx.types import artifact


class Interactions(artifact.Artifact):
  """Interaction records a Generator logged to the warehouse.

  Its summary (record_count, event_time, warehouse, logging_policy) is in custom
  properties: Vertex's compiler rejects custom types that declare PROPERTIES.
  """
  TYPE_NAME = "rlops.Interactions"


class PolicyEvaluation(artifact.Artifact):
  """Off-policy and oracle value estimates of a candidate policy and its baseline."""
  TYPE_NAME = "rlops.PolicyEvaluation"
