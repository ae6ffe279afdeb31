"""The gate's result as it is stored in a PolicyEvaluation artifact: written by the
Evaluator's executor, read by metadata queries (which need no executor)."""
import json
import os
from typing import Any, Dict

from tfx.utils import io_utils

EVALUATION_FILE = "evaluation.json"


def write(uri: str, result: Dict[str, Any]) -> None:
  """Writes the gate's result under the PolicyEvaluation artifact's `uri`."""
  io_utils.write_string_file(os.path.join(uri, EVALUATION_FILE),
                             json.dumps(result, indent=2, sort_keys=True))


def read(uri: str) -> Dict[str, Any]:
  """The gate's result stored under the PolicyEvaluation artifact's `uri`."""
  return json.loads(io_utils.read_string_file(os.path.join(uri, EVALUATION_FILE)))
