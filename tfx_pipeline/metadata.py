"""Questions the runners and the CLI ask ML Metadata: spans trained, run outcomes, lineage."""
from typing import Any, Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from custom_components import keys
from custom_components.evaluator import evaluation as evaluation_io
from tfx_pipeline import windows

_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
_INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)


def connect(path: str) -> metadata_store.MetadataStore:
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
  return metadata_store.MetadataStore(config)


def _value(proto_value) -> Any:
  return (getattr(proto_value, proto_value.WhichOneof("value"))
          if proto_value.WhichOneof("value") else None)


def properties(artifact) -> Dict[str, Any]:
  values = {key: _value(value) for key, value in artifact.properties.items()}
  values.update({key: _value(value) for key, value in artifact.custom_properties.items()})
  return values


def artifacts_of_type(store, type_name: str) -> List[metadata_store_pb2.Artifact]:
  try:
    return sorted(store.get_artifacts_by_type(type_name), key=lambda a: a.id)
  except Exception:  # pylint: disable=broad-except
    return []  # The type is registered only once such an artifact exists.


def last_trained_window(store) -> Optional[windows.TrainedWindow]:
  """The newest window any Trainer trained on, blessed or not (each window is trained on
  once); None before the first training."""
  trained = [(values["window_end"], values["span"]) for values in
             map(properties, artifacts_of_type(store, "Model")) if "window_end" in values]
  if not trained:
    return None
  end, span = max(trained)
  return windows.TrainedWindow(span=int(span), end=float(end))


def producer(store, artifact_id: int) -> Optional[metadata_store_pb2.Execution]:
  for event in store.get_events_by_artifact_ids([artifact_id]):
    if event.type in _OUTPUT_EVENTS:
      return store.get_executions_by_id([event.execution_id])[0]
  return None


def _artifacts_of_execution(store, execution_id: int,
                            event_types) -> Dict[str, List[metadata_store_pb2.Artifact]]:
  """Artifacts by key (input or output, by `event_types`) of one execution."""
  by_key: Dict[str, List[int]] = {}
  for event in store.get_events_by_execution_ids([execution_id]):
    if event.type in event_types:
      key = event.path.steps[0].key if event.path.steps else ""
      by_key.setdefault(key, []).append(event.artifact_id)
  return {key: store.get_artifacts_by_id(ids) for key, ids in by_key.items()}


def inputs(store, execution_id: int):
  return _artifacts_of_execution(store, execution_id, _INPUT_EVENTS)


def outputs(store, execution_id: int):
  return _artifacts_of_execution(store, execution_id, _OUTPUT_EVENTS)


def _consumers(store, artifact_id: int) -> List[metadata_store_pb2.Execution]:
  ids = [e.execution_id for e in store.get_events_by_artifact_ids([artifact_id])
         if e.type in _INPUT_EVENTS]
  return store.get_executions_by_id(ids) if ids else []


def node_id(store, execution) -> str:
  """The pipeline node (component id) of an execution."""
  for context in store.get_contexts_by_execution(execution.id):
    if context.type_id == store.get_context_type("node").id:
      return context.name.split(".")[-1]
  return ""


def run_id(store, execution) -> str:
  for context in store.get_contexts_by_execution(execution.id):
    if context.type_id == store.get_context_type("pipeline_run").id:
      return context.name
  return ""


def model_outcome(store, model: metadata_store_pb2.Artifact) -> Dict[str, Any]:
  """What happened to a trained model: its evaluation, blessing and push."""
  outcome: Dict[str, Any] = {"model_id": model.id, "model_uri": model.uri, **properties(model)}
  trainer = producer(store, model.id)
  base = inputs(store, trainer.id).get(keys.BASE_MODEL_KEY) if trainer else None
  outcome["warm_started_from_model"] = (
      base[0].id if base and outcome.get("warm_started_from") else None)
  for execution in _consumers(store, model.id):
    outs = outputs(store, execution.id)
    if keys.EVALUATION_KEY in outs and keys.BLESSING_KEY in outs:
      outcome["evaluation"] = evaluation_io.read(outs[keys.EVALUATION_KEY][0].uri)
      outcome["blessed"] = bool(properties(outs[keys.BLESSING_KEY][0]).get("blessed"))
    if keys.PUSHED_MODEL_KEY in outs:
      pushed = properties(outs[keys.PUSHED_MODEL_KEY][0])
      outcome["pushed"] = bool(pushed.get("pushed"))
      outcome["pushed_destination"] = (pushed.get("pushed_destination") if outcome["pushed"]
                                       else None)
  return outcome


def latest_pushed_model(store) -> Optional[metadata_store_pb2.Artifact]:
  """The Model behind the newest successful push."""
  for pushed in reversed(artifacts_of_type(store, "PushedModel")):
    if properties(pushed).get("pushed"):
      pusher = producer(store, pushed.id)
      return inputs(store, pusher.id)[keys.MODEL_KEY][0]
  return None


def lineage(store, model: metadata_store_pb2.Artifact) -> List[Dict[str, Any]]:
  """The model's upstream chain, newest first: for each model, its examples (span and
  query), the run that produced them (and its Generator, if any), then the model it
  was warm-started from, down to the first."""
  chain = []
  while model is not None:
    trainer = producer(store, model.id)
    trainer_inputs = inputs(store, trainer.id)
    examples = trainer_inputs[keys.EXAMPLES_KEY][0]
    example_gen = producer(store, examples.id)
    run = run_id(store, example_gen)
    generators = [execution for execution in _executions_of_run(store, run)
                  if node_id(store, execution) == "Generator"]
    link = {
        "model": {"id": model.id, "uri": model.uri, **properties(model)},
        "outcome": {k: v for k, v in model_outcome(store, model).items()
                    if k in ("blessed", "pushed", "pushed_destination")},
        "examples": {"id": examples.id, "uri": examples.uri,
                     "span": properties(examples).get("span")},
        "query": (_value(example_gen.properties["input_config"])
                  if "input_config" in example_gen.properties else None),
        "pipeline_run": run,
        "generator": None,
    }
    if generators:
      interactions = outputs(store, generators[0].id).get(keys.INTERACTIONS_KEY, [])
      link["generator"] = {"execution_id": generators[0].id,
                           **(properties(interactions[0]) if interactions else {})}
    chain.append(link)
    base = trainer_inputs.get(keys.BASE_MODEL_KEY)
    model = base[0] if base else None
  return chain


def _executions_of_run(store, run: str) -> List[metadata_store_pb2.Execution]:
  context = store.get_context_by_type_and_name("pipeline_run", run)
  return store.get_executions_by_context(context.id) if context else []
