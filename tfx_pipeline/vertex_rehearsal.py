"""Runs a compiled Vertex pipeline job spec task by task, as Vertex Pipelines would, on local files.

Each container task runs its compiled command (TFX's container entrypoint,
`kubeflow_v2_run_executor`) in a process of its own with the ExecutorInput JSON that
Vertex sends for a schema 2.0.0 pipeline: input and output artifacts typed by
their instance schemas, named like Vertex ML Metadata artifacts, with output
URIs under `<pipeline root>/<project number>/<job id>/<task>_<task id>/`;
parameters from the task's constants and the job's parameter values. Resolver
tasks run their artifact queries against `VertexMetadata`, the artifacts the
rehearsal's tasks have output so far.

What differs from Vertex, on purpose: Beam runs in process (DirectRunner)
instead of on Dataflow, the pipeline root is a local directory, Google's
network clients are `google_cloud_fakes` (installed by a `sitecustomize`
module), and task processes are forked from one interpreter that imported TFX
once (`task_forker`) rather than started from scratch in a container.
"""
import json
import os
import re
import select
import subprocess
import sys
import uuid
from typing import Any, Dict, List, Mapping

import yaml

from tfx_pipeline import google_cloud_fakes

ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
PROJECT_NUMBER = "123456789012"
TASK_TIMEOUT_SECONDS = 600
# Dataflow options Beam's DirectRunner does not take; --project stays (BigQueryExampleGen reads it).
_DATAFLOW_ONLY = ("--runner=", "--region=", "--temp_location=", "--sdk_container_image=",
                  "--experiments=", "--machine_type=", "--max_num_workers=",
                  "--service_account_email=")
_LOCAL_BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory",
                    "--direct_num_workers=1"]
_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.artifacts\['([^']+)'\]\.metadata\['([^']+)'\]\}\}")
_SITECUSTOMIZE = ("from tfx_pipeline import google_cloud_fakes\n"
                  "google_cloud_fakes.install()\n")


class TaskFailed(RuntimeError):
  pass


class VertexMetadata:
  """The artifacts of every task run so far, as Vertex ML Metadata would hold them."""

  def __init__(self, location: str):
    self._location = location
    self.artifacts: List[Dict[str, Any]] = []

  def new_name(self) -> str:
    return f"{self._location}/metadataStores/default/artifacts/{uuid.uuid4().int % 10**19}"

  def add(self, schema_title: str, runtime_artifact: Mapping[str, Any]) -> None:
    self.artifacts.append({"schema_title": schema_title, "state": "LIVE", **runtime_artifact})

  def query(self, artifact_filter: str) -> List[Dict[str, Any]]:
    """The newest artifact matching a resolver's filter (conjunctions of the clauses TFX emits)."""
    clauses = artifact_filter.split(" AND ")
    matches = [a for a in self.artifacts if all(_matches(a, clause) for clause in clauses)]
    return matches[-1:]


def _matches(artifact: Mapping[str, Any], clause: str) -> bool:
  field, value = clause.split("=", 1)
  if field.startswith("metadata.") and field.endswith(".number_value"):
    number = artifact.get("metadata", {}).get(field[len("metadata."):-len(".number_value")])
    return isinstance(number, (int, float)) and number == float(value)
  if field in ("schema_title", "name"):
    return artifact[field] == json.loads(value)
  if field == "state":
    return artifact["state"] == value
  raise ValueError(f"resolver filter clause not supported by the rehearsal: {clause!r}")


def _title(artifact_type: Mapping[str, str]) -> str:
  if "schemaTitle" in artifact_type:
    return artifact_type["schemaTitle"]
  return yaml.safe_load(artifact_type["instanceSchema"])["title"]


def _task_order(tasks: Mapping[str, Any]) -> List[str]:
  """Task names, each after the tasks it depends on or takes artifacts from."""
  needs = {name: set(task.get("dependentTasks", [])) | {
      source["taskOutputArtifact"]["producerTask"]
      for source in task.get("inputs", {}).get("artifacts", {}).values()}
           for name, task in tasks.items()}
  order = []
  while needs:
    ready = sorted(name for name, before in needs.items() if before <= set(order))
    if not ready:
      raise ValueError(f"the tasks {sorted(needs)} depend on each other")
    order += ready
    for name in ready:
      del needs[name]
  return order


def local_beam_args(container_args: List[str]) -> List[str]:
  """The compiled Beam arguments with Dataflow replaced by the in-process DirectRunner."""
  return [arg for arg in container_args if not arg.startswith(_DATAFLOW_ONLY)] + _LOCAL_BEAM_ARGS


def _parameter_value(value: Any, parameter_type: str) -> Dict[str, Any]:
  """A job parameter value as pipeline_spec Value JSON for a schema 2.0.0 parameter type."""
  if parameter_type == "STRING":
    return {"stringValue": str(value)}
  if parameter_type == "INT":
    return {"intValue": str(int(value))}
  if parameter_type == "DOUBLE":
    return {"doubleValue": float(value)}
  raise ValueError(f"parameter type {parameter_type!r} is not in schema 2.0.0")


class Rehearsal:
  """Runs compiled pipeline jobs one after another against one `VertexMetadata`.

  A context manager: the task forker runs from entry to exit.

  Args:
    workdir: Local directory holding the fakes' files and, under `pipeline_root`,
      the runs' outputs.
    warehouse_path: SQLite file standing in for the BigQuery dataset.
    region: The Vertex region.
    preload: Modules the task forker imports before the first task (executors).
  """

  def __init__(self, workdir: str, warehouse_path: str, region: str, preload=()):
    self.workdir = os.path.abspath(workdir)
    self.pipeline_root = os.path.join(self.workdir, "pipeline_root")
    self.requests_path = os.path.join(self.workdir, "google_requests.jsonl")
    self.aiplatform_state_path = os.path.join(self.workdir, "aiplatform_state.json")
    self.metadata = VertexMetadata(f"projects/{PROJECT_NUMBER}/locations/{region}")
    site_dir = os.path.join(self.workdir, "site")
    os.makedirs(site_dir, exist_ok=True)
    with open(os.path.join(site_dir, "sitecustomize.py"), "w") as f:
      f.write(_SITECUSTOMIZE)
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    self._env = dict(os.environ)
    self._env.update({
        "PYTHONPATH": os.pathsep.join(
            [site_dir, repository] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        google_cloud_fakes.WAREHOUSE_ENV: os.path.abspath(warehouse_path),
        google_cloud_fakes.AIPLATFORM_STATE_ENV: self.aiplatform_state_path,
        google_cloud_fakes.REQUESTS_ENV: self.requests_path,
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    self._preload = [ENTRYPOINT] + list(preload)
    self._forker = None
    self._task_count = 0

  def __enter__(self) -> "Rehearsal":
    self._forker = subprocess.Popen(
        [sys.executable, "-m", "tfx_pipeline.task_forker"] + self._preload, env=self._env,
        cwd=self.workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self._forker.stdin.close()
    try:
      self._forker.wait(timeout=TASK_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
      self._forker.kill()
      self._forker.wait()

  def _run_command(self, task_name: str, module: str, args: List[str]) -> None:
    """Runs `python -m module args` as a task process; raises TaskFailed with its log."""
    self._task_count += 1
    log_path = os.path.join(self.workdir, f"task-{self._task_count:02d}-{task_name}.log")
    self._forker.stdin.write(json.dumps({"module": module, "args": args, "log": log_path}) + "\n")
    self._forker.stdin.flush()
    ready, _, _ = select.select([self._forker.stdout], [], [], TASK_TIMEOUT_SECONDS)
    if not ready:
      self._forker.kill()
      raise TaskFailed(f"{task_name} did not end within {TASK_TIMEOUT_SECONDS} s")
    answer = self._forker.stdout.readline()
    if not answer:
      raise TaskFailed(f"the task forker ended before {task_name} did")
    exit_code = json.loads(answer)["exit_code"]
    if exit_code != 0:
      with open(log_path) as log:
        raise TaskFailed(f"{task_name} exited with {exit_code}:\n{log.read()[-6000:]}")

  def requests(self) -> List[Dict[str, Any]]:
    """Every request to Google's clients so far."""
    return google_cloud_fakes.read_requests(self.requests_path)

  def run_job(self, spec: Mapping[str, Any], parameter_values: Mapping[str, Any],
              job_id: str) -> Dict[str, Dict[str, List[Dict[str, Any]]]]:
    """Runs every task of `spec` (a compiled job spec) in order; returns {task: outputs}.

    Raises:
      TaskFailed: A task's process failed; its log is in the message.
    """
    pipeline_spec = spec["pipelineSpec"]
    root_parameters = pipeline_spec["root"].get("inputDefinitions", {}).get("parameters", {})
    if set(parameter_values) != set(root_parameters):
      raise ValueError(f"the job sets {sorted(parameter_values)}, the pipeline takes "
                       f"{sorted(root_parameters)}")
    job_parameters = {name: _parameter_value(value, root_parameters[name]["type"])
                      for name, value in parameter_values.items()}
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    outputs = {}
    for name in _task_order(tasks):
      task = tasks[name]
      component = pipeline_spec["components"][task["componentRef"]["name"]]
      executor = pipeline_spec["deploymentSpec"]["executors"][component["executorLabel"]]
      inputs = {key: outputs[source["taskOutputArtifact"]["producerTask"]][
                    source["taskOutputArtifact"]["outputArtifactKey"]]
                for key, source in task.get("inputs", {}).get("artifacts", {}).items()}
      if "resolver" in executor:
        outputs[name] = self._resolve(executor["resolver"], inputs)
      else:
        outputs[name] = self._run_container(
            name, job_id, executor["container"], component, task, inputs, job_parameters)
    return outputs

  def _resolve(self, resolver: Mapping[str, Any],
               inputs: Mapping[str, List[Dict[str, Any]]]) -> Dict[str, List[Dict[str, Any]]]:
    resolved = {}
    for key, query in resolver["outputArtifactQueries"].items():
      unresolved = [False]

      def fill(match, unresolved=unresolved):
        artifacts = inputs.get(match.group(1)) or []
        if not artifacts:
          unresolved[0] = True
          return ""
        return str(artifacts[0].get("metadata", {}).get(match.group(2), ""))

      artifact_filter = _PLACEHOLDER.sub(fill, query["filter"])
      resolved[key] = [] if unresolved[0] else [
          {k: v for k, v in artifact.items() if k not in ("schema_title", "state")}
          for artifact in self.metadata.query(artifact_filter)]
    return resolved

  def executor_input(self, task_name: str, job_id: str, component: Mapping[str, Any],
                     task: Mapping[str, Any], inputs: Mapping[str, List[Dict[str, Any]]],
                     job_parameters: Mapping[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The ExecutorInput JSON Vertex sends to the task's container."""
    task_root = os.path.join(self.pipeline_root, PROJECT_NUMBER, job_id,
                             f"{task_name}_{uuid.uuid4().int % 10**19}")
    input_types = component.get("inputDefinitions", {}).get("artifacts", {})
    parameters = {}
    for key, source in task.get("inputs", {}).get("parameters", {}).items():
      if "componentInputParameter" in source:
        parameters[key] = job_parameters[source["componentInputParameter"]]
      else:
        parameters[key] = source["runtimeValue"]["constantValue"]
    output_artifacts = {}
    for key, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items():
      output_artifacts[key] = {"artifacts": [{
          "name": self.metadata.new_name(), "type": definition["artifactType"],
          "uri": os.path.join(task_root, key), "metadata": {}}]}
    return {
        "inputs": {
            "parameters": parameters,
            "artifacts": {key: {"artifacts": [
                {"name": a["name"], "type": input_types[key]["artifactType"], "uri": a["uri"],
                 "metadata": a.get("metadata", {})} for a in artifacts]}
                          for key, artifacts in inputs.items()},
        },
        "outputs": {"artifacts": output_artifacts,
                    "outputFile": os.path.join(task_root, "executor_output.json")},
    }

  def _run_container(self, task_name, job_id, container, component, task, inputs,
                     job_parameters) -> Dict[str, List[Dict[str, Any]]]:
    executor_input = self.executor_input(task_name, job_id, component, task, inputs,
                                         job_parameters)
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in container["args"]]
    if container["command"] != ["python", "-m", ENTRYPOINT]:
      raise ValueError(f"{task_name}: not TFX's container entrypoint: {container['command']}")
    self._run_command(task_name, ENTRYPOINT, args[:4] + local_beam_args(args[4:]))
    with open(executor_input["outputs"]["outputFile"]) as f:
      executor_output = json.load(f)
    outputs = {}
    for key, artifact_list in executor_output.get("artifacts", {}).items():
      outputs[key] = artifact_list["artifacts"]
      definition = component["outputDefinitions"]["artifacts"][key]["artifactType"]
      for artifact in outputs[key]:
        self.metadata.add(_title(definition), artifact)
    return outputs
