"""Lineage of the model a Vertex endpoint serves, from Vertex ML Metadata.

The Vertex counterpart of `metadata.lineage`, in the same shape: from the
endpoint's deployed model (the one holding the traffic) to the Vertex Model,
whose artifact URI is the PushedModel's URI (TFX's Vertex Pusher uploads that
directory), to the Pusher that pushed it and the Model it took, then for each
Model its Trainer's Examples, the run, and the base model it was warm-started
from. Free of TFX; the Vertex AI client is imported only when a `VertexMetadata`
is made, and talks REST.
"""
from typing import Any, Dict, List, Optional, Tuple

# Schema titles TFX's Vertex compiler gives the artifact types. Interactions is
# custom_components.artifacts.Interactions.TYPE_NAME (that module imports TFX).
EXAMPLES_TYPE = "tfx.Examples"
MODEL_TYPE = "tfx.Model"
BLESSING_TYPE = "tfx.ModelBlessing"
PUSHED_MODEL_TYPE = "tfx.PushedModel"
INTERACTIONS_TYPE = "custom_components.Interactions"

# Vertex names each task's execution after its pipeline node.
TRAINER, INGESTER, EVALUATOR, PUSHER, GENERATOR = (
    "Trainer", "Ingester", "Evaluator", "Pusher", "Generator")
# Vertex records an execution's input parameters as metadata "input:<name>".
_INPUT_CONFIG = "input:input_config"


class NotFound(LookupError):
  """What the lineage starts from is not on Vertex."""


def _fields(message) -> Dict[str, Any]:
  """A Vertex Artifact's or Execution's metadata; whole numbers (JSON has only floats) as ints."""
  metadata = type(message).to_dict(message)["metadata"] or {}
  return {key: int(value) if isinstance(value, float) and value.is_integer() else value
          for key, value in metadata.items()}


def _resource_id(name: str) -> str:
  return name.rsplit("/", 1)[-1]


def _node(executions: Dict[str, Any], node: str, artifact) -> Any:
  """The execution of pipeline node `node` among `executions` (by display name)."""
  if node not in executions:
    raise NotFound(f"no {node} execution next to {artifact.name} in Vertex ML Metadata "
                   f"(found: {', '.join(sorted(executions)) or 'none'})")
  return executions[node]


def _pipeline_job_id(uri: str) -> str:
  """The PipelineJob that wrote an output artifact: Vertex writes it to
  `<pipeline root>/<project number>/<job id>/<task>_<task id>/<output key>`."""
  return uri.rstrip("/").split("/")[-3]


class VertexMetadata:
  """Vertex AI's endpoint, model and metadata services of one project and region."""

  def __init__(self, project: str, region: str, *, api_endpoint: Optional[str] = None,
               credentials=None):
    """
    Args:
      project: Project id.
      region: Region of the endpoint and of the pipeline runs.
      api_endpoint: Host (or http(s):// URL) of the Vertex AI API (default: the regional
        endpoint REGION-aiplatform.googleapis.com).
      credentials: google.auth credentials (default: application default credentials).
    """
    # pylint: disable=import-outside-toplevel
    from google.api_core import client_options
    from google.cloud import aiplatform_v1
    options = client_options.ClientOptions(
        api_endpoint=api_endpoint or f"{region}-aiplatform.googleapis.com")
    clients = {"transport": "rest", "client_options": options, "credentials": credentials}
    self._endpoints = aiplatform_v1.EndpointServiceClient(**clients)
    self._models = aiplatform_v1.ModelServiceClient(**clients)
    self._metadata = aiplatform_v1.MetadataServiceClient(**clients)
    self._location = f"projects/{project}/locations/{region}"
    self._store = f"{self._location}/metadataStores/default"
    self._executions_artifacts: Dict[str, Tuple[Dict[str, List[Any]], Dict[str, List[Any]]]] = {}

  def serving_model(self, endpoint_name: str) -> str:
    """Resource name of the Vertex Model holding the most traffic of the endpoint."""
    endpoints = list(self._endpoints.list_endpoints(request={
        "parent": self._location, "filter": f'display_name="{endpoint_name}"'}))
    if not endpoints:
      raise NotFound(f"no endpoint named {endpoint_name} in {self._location}: the first "
                     "push creates it")
    endpoint = endpoints[0]
    if not endpoint.deployed_models:
      raise NotFound(f"endpoint {endpoint_name} ({endpoint.name}) has no deployed model")
    serving = max(endpoint.deployed_models,
                  key=lambda deployed: endpoint.traffic_split.get(deployed.id, 0))
    return serving.model

  def pushed_model(self, model_name: str):
    """The PushedModel artifact uploaded as the Vertex Model `model_name`."""
    uri = self._models.get_model(name=model_name).artifact_uri
    pushed = list(self._metadata.list_artifacts(request={
        "parent": self._store, "filter": f'schema_title="{PUSHED_MODEL_TYPE}" AND uri="{uri}"'}))
    if not pushed:
      raise NotFound(f"model {model_name} ({uri}) is no PushedModel in {self._store}: "
                     "it was not pushed by a pipeline run of this project and region")
    return pushed[0]

  def _neighbours(self, artifact) -> Tuple[Dict[str, Any], Dict[str, List[Any]]]:
    """The executions that output the artifact and those that take it, by node."""
    graph = self._metadata.query_artifact_lineage_subgraph(
        request={"artifact": artifact.name, "max_hops": 1})
    executions = {execution.name: execution for execution in graph.executions}
    producers, consumers = {}, {}
    for event in graph.events:
      if event.artifact != artifact.name:
        continue
      execution = executions[event.execution]
      if event.type_ == event.Type.OUTPUT:
        producers[execution.display_name] = execution
      else:
        consumers.setdefault(execution.display_name, []).append(execution)
    return producers, consumers

  def _artifacts(self, execution) -> Tuple[Dict[str, List[Any]], Dict[str, List[Any]]]:
    """An execution's input and output artifacts, by schema title; asked once."""
    if execution.name not in self._executions_artifacts:
      graph = self._metadata.query_execution_inputs_and_outputs(execution=execution.name)
      artifacts = {artifact.name: artifact for artifact in graph.artifacts}
      inputs, outputs = {}, {}
      for event in graph.events:
        artifact = artifacts[event.artifact]
        side = outputs if event.type_ == event.Type.OUTPUT else inputs
        side.setdefault(artifact.schema_title, []).append(artifact)
      self._executions_artifacts[execution.name] = inputs, outputs
    return self._executions_artifacts[execution.name]

  def _outcome(self, model, consumers) -> Dict[str, Any]:
    """Whether the model's Evaluator blessed it and its Pusher pushed it, and where to."""
    outcome: Dict[str, Any] = {}
    for evaluator in consumers.get(EVALUATOR, []):  # later runs' Evaluators take it as baseline
      for blessing in self._artifacts(evaluator)[1].get(BLESSING_TYPE, []):
        if _fields(blessing).get("current_model_id") == model.name:
          outcome["blessed"] = bool(_fields(blessing).get("blessed"))
    for pusher in consumers.get(PUSHER, []):
      for pushed in self._artifacts(pusher)[1].get(PUSHED_MODEL_TYPE, []):
        outcome["pushed"] = bool(_fields(pushed).get("pushed"))
        outcome["pushed_destination"] = (_fields(pushed).get("pushed_destination")
                                         if outcome["pushed"] else None)
    return outcome

  def _generator(self, run_context: str) -> Optional[Dict[str, Any]]:
    """The run's Generator execution and the Interactions it logged; None in a retraining."""
    generators = list(self._metadata.list_executions(request={
        "parent": self._store,
        "filter": f'in_context("{run_context}") AND display_name="{GENERATOR}"'}))
    if not generators:
      return None
    interactions = self._artifacts(generators[0])[1].get(INTERACTIONS_TYPE, [])
    return {"execution_id": _resource_id(generators[0].name),
            **(_fields(interactions[0]) if interactions else {})}

  def lineage(self, endpoint_name: str) -> List[Dict[str, Any]]:
    """The upstream chain of the model the endpoint serves, newest first, as
    `metadata.lineage` gives it; artifact and execution ids are Vertex's."""
    pushed = self.pushed_model(self.serving_model(endpoint_name))
    pusher = _node(self._neighbours(pushed)[0], PUSHER, pushed)
    model = self._artifacts(pusher)[0][MODEL_TYPE][0]
    chain = []
    while model is not None:
      producers, consumers = self._neighbours(model)
      trainer_inputs = self._artifacts(_node(producers, TRAINER, model))[0]
      examples = trainer_inputs[EXAMPLES_TYPE][0]
      ingester = _node(self._neighbours(examples)[0], INGESTER, examples)
      job_id = _pipeline_job_id(examples.uri)
      store = ingester.name.rsplit("/executions/", 1)[0]
      model_fields = _fields(model)
      chain.append({
          "model": {"id": _resource_id(model.name), "name": model.name, "uri": model.uri,
                    **model_fields},
          "outcome": self._outcome(model, consumers),
          # Vertex runs no ExampleGen driver: the Examples carry span 0, the Trainer the run's.
          "examples": {"id": _resource_id(examples.name), "uri": examples.uri,
                       "span": model_fields.get("span")},
          "query": _fields(ingester).get(_INPUT_CONFIG),
          "pipeline_run": job_id,
          "generator": self._generator(f"{store}/contexts/{job_id}"),
      })
      base = trainer_inputs.get(MODEL_TYPE)
      model = base[0] if base else None
    return chain
