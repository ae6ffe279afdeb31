"""`rlops deploy`: the commands it would run, and the function bundles tested as deployed."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from functions import testing_utils
from cli import deploy
from rlops import log_sinks
from rlops import warehouse as warehouse_lib
from rlops.config import Config, GcpConfig

GCP = GcpConfig(project="my-rlops-project", region="us-central1", bucket="gs://my-rlops-bucket",
                dataset="rlops", endpoint_name="rlops-movielens",
                pipeline_image="us-central1-docker.pkg.dev/my-rlops-project/rlops/pipeline:1",
                serving_image="us-central1-docker.pkg.dev/my-rlops-project/rlops/serving:1")
CONFIG = Config(gcp=GCP).validate()

# Run inside a bundle: imports its entry point as Cloud Functions does, then finds the
# distributions that the bundle's own loaded modules import at module level, by the
# files those imports resolve to. (Imports inside functions are the optional paths:
# local-only TFX, or cloud clients made on first use.)
_INSPECT = """
import ast, importlib.metadata, importlib.util, json, os, sys
import main
entry = getattr(main, sys.argv[1])
import functions
bundle = os.path.realpath(os.getcwd())

def top_levels(dist):  # importlib.metadata.packages_distributions is new in Python 3.10.
  declared = (dist.read_text("top_level.txt") or "").split()
  return declared or {f.parts[0].split(".")[0] for f in dist.files or () if f.parts[0] != ".."}

by_top_level = {}
for dist in importlib.metadata.distributions():
  for top in top_levels(dist):
    by_top_level.setdefault(top, []).append(dist)

def owner(name, origin):
  for dist in by_top_level.get(name.split(".")[0], []):
    if any(os.path.realpath(dist.locate_file(f)) == origin for f in dist.files or ()):
      return dist.metadata["Name"]
  return None

direct = set()
for module in list(sys.modules.values()):
  path = os.path.realpath(getattr(module, "__file__", None) or "/")
  if not path.startswith(bundle + os.sep):
    continue
  for node in ast.parse(open(path).read()).body:
    names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
             [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
    for name in names:
      try:
        spec = importlib.util.find_spec(name)
      except ImportError:
        continue
      distribution = spec and spec.origin and owner(name, os.path.realpath(spec.origin))
      if distribution:
        direct.add(distribution)
print(json.dumps({"callable": callable(entry), "functions_file": functions.__file__,
                  "distributions": sorted(direct)}))
"""


def test_dry_run_goes_from_an_empty_project_to_a_running_loop(tmp_path):
  settings = deploy.DeploySettings(gcp_config_path="gcp.json", bundle_dir=str(tmp_path / "b"))
  steps = deploy.commands(CONFIG, settings)
  text = [shlex.join(step) for step in steps]
  assert sum("ai endpoints create" in line for line in text) == 1  # one long-lived endpoint
  created_topics = {step[4] for step in steps if step[:4] == ["gcloud", "pubsub", "topics", "create"]}
  functions = [step for step in steps if step[:3] == ["gcloud", "functions", "deploy"]]
  assert len(functions) == len(deploy.FUNCTIONS)
  for function, step in zip(deploy.FUNCTIONS, functions):
    assert step[step.index("--trigger-topic") + 1] == function.topic in created_topics
    assert step[step.index("--entry-point") + 1] == function.entry_point
    env = dict(item.split("=", 1) for item in step[step.index("--set-env-vars") + 1][4:].split("@"))
    if "RLOPS_CONFIG" in env:
      assert Config.from_json(env["RLOPS_CONFIG"]) == CONFIG
  scheduled = [step[step.index("--topic") + 1] for step in steps if step[:3] == ["gcloud", "scheduler", "jobs"]]
  assert set(scheduled) <= created_topics and len(scheduled) == 2
  logger_env = functions[0][functions[0].index("--set-env-vars") + 1]
  assert "RLOPS_WAREHOUSE=bq://my-rlops-project.rlops" in logger_env
  template = [s for s in steps if s[:3] == ["gcloud", "storage", "cp"]][0][4]
  assert f"RETRAIN_TEMPLATE={template}" in functions[2][functions[2].index("--set-env-vars") + 1]
  build = [s for s in steps if s[:3] == ["gcloud", "builds", "submit"]][0]
  assert "_LOG_TOPIC=projects/my-rlops-project/topics/rlops-logs" in build[build.index("--substitutions") + 1]


@pytest.mark.parametrize("function", deploy.FUNCTIONS, ids=lambda f: f.name)
def test_bundle_imports_its_entry_point_with_only_its_requirements(tmp_path, function):
  bundle = deploy.build_bundle(function, str(tmp_path))
  requirements = open(os.path.join(bundle, "requirements.txt")).read().split()
  assert all("==" in line for line in requirements)
  result = subprocess.run([sys.executable, "-c", _INSPECT, function.entry_point], cwd=bundle,
                          env={**os.environ, "PYTHONPATH": bundle}, capture_output=True, text=True,
                          timeout=120, check=True)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["callable"] and report["functions_file"].startswith(bundle)
  declared = {deploy._distribution(line.split("==")[0]) for line in requirements}  # pylint: disable=protected-access
  missing = {d.lower().replace("_", "-") for d in report["distributions"]} - declared
  assert not missing, f"{function.name}'s code imports distributions its requirements lack: {missing}"
  assert {"functions-framework", "numpy"} <= {d.lower() for d in report["distributions"]}


def test_logger_bundle_served_as_deployed_writes_the_warehouse(tmp_path):
  bundle = deploy.build_bundle(deploy.FUNCTIONS[0], str(tmp_path / "bundle"))
  path = str(tmp_path / "warehouse.sqlite")
  env = {"RLOPS_WAREHOUSE": path, "PYTHONPATH": bundle}
  with testing_utils.functions_framework(os.path.join(bundle, "main.py"), "log_records", env) as url:
    log_sinks.CloudEventSink(url).deliver({
        "predictions": [{"request_id": "a", "event_time": 1.0, "observation": [0.1], "action": 0,
                         "propensity": 1.0, "model_version": "1", "source": "endpoint"}],
        "feedback": [{"request_id": "a", "event_time": 2.0, "reward": 3.0}]})
  assert warehouse_lib.Warehouse(path).count_rewarded() == 1
