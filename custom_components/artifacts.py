"""Custom artifact types. Vertex requires TYPE_NAME to match
^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$, hence the `rlops.` prefix."""
from tfx.types import artifact


class Interactions(artifact.Artifact):
  """Interaction records a Generator logged to the warehouse (the artifact holds a summary)."""
  TYPE_NAME = "rlops.Interactions"
  PROPERTIES = {
      "record_count": artifact.Property(type=artifact.PropertyType.INT),
      "event_time": artifact.Property(type=artifact.PropertyType.FLOAT),
      "warehouse": artifact.Property(type=artifact.PropertyType.STRING),
  }


class PolicyEvaluation(artifact.Artifact):
  """Off-policy and oracle value estimates of a candidate policy and its baseline."""
  TYPE_NAME = "rlops.PolicyEvaluation"
