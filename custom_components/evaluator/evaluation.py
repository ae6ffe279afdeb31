"""The gate's result as it is stored in a PolicyEvaluation artifact: written by the
Evaluator's executor, read by metadata queries (which need no executor, nor TFX)."""
import json
import os
from typing import Any, Dict

EVALUATION_FILE = "evaluation.json"


def write(uri: str, result: Dict[str, Any]) -> None:
  """Writes the gate's result under the PolicyEvaluation artifact's `uri` (any filesystem
  TensorFlow reads, gs:// included)."""
  from tfx.utils import io_utils  # pylint: disable=import-outside-toplevel
  io_utils.write_string_file(os.path.join(uri, EVALUATION_FILE),
                             json.dumps(result, indent=2, sort_keys=True))


def read(uri: str) -> Dict[str, Any]:
  """The gate's result stored under a local PolicyEvaluation artifact's `uri`."""
  with open(os.path.join(uri, EVALUATION_FILE)) as f:
    return json.load(f)
