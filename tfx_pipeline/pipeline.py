"""The one pipeline definition: startup and retraining variants, run locally or on Vertex."""
from typing import List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from custom_components.evaluator.component import Evaluator
from custom_components.generator.component import Generator
from custom_components.ingester.component import TRAIN_EVAL_SPLIT, SqliteExampleGen
from custom_components.pusher.component import VertexPusher
from custom_components.trainer.component import Trainer
from custom_components import keys
from rlops import warehouse as warehouse_lib
from rlops.config import Config, GcpConfig
from tfx_pipeline import windows
from tfx_pipeline.windows import RETRAIN, STARTUP

LOCAL = "local"
VERTEX = "vertex"

def dataflow_beam_args(gcp: GcpConfig) -> List[str]:
  """Beam on Dataflow with the pipeline image as worker container.

  TFX's guide for custom code with native dependencies (TensorFlow,
  TF-Agents, these components): workers run the image the components run in
  (`--sdk_container_image`, Runner v2) instead of installing a `--setup_file`
  package on every worker. The image's ENTRYPOINT must be Beam's
  `/opt/apache/beam/boot`; Vertex tasks set their own command.
  """
  args = [
      "--runner=DataflowRunner",
      f"--project={gcp.project}",
      f"--region={gcp.region}",
      f"--temp_location={gcp.temp_location}",
      f"--sdk_container_image={gcp.pipeline_image}",
      "--experiments=use_runner_v2",
      f"--machine_type={gcp.dataflow_machine_type}",
      f"--max_num_workers={gcp.dataflow_max_workers}",
  ]
  if gcp.service_account:
    args.append(f"--service_account_email={gcp.service_account}")
  return args


def vertex_pusher_config(gcp: GcpConfig) -> dict:
  """custom_config of TFX's Vertex Pusher: every push deploys to the one endpoint.

  TFX 1.15 looks the endpoint up by display name (`endpoint_name`), creates it
  only when none exists, uploads the model with `serving_image` and deploys it
  there with all the traffic; `VertexPusher` then undeploys the older models.
  """
  serving_args = {
      "project": gcp.project,
      "endpoint_name": gcp.endpoint_name,
      "machine_type": gcp.serving_machine_type,
      "min_replica_count": gcp.serving_min_replicas,
      "max_replica_count": gcp.serving_max_replicas,
      "traffic_percentage": 100,
  }
  if gcp.service_account:
    serving_args["service_account"] = gcp.service_account
  ai_platform = tfx.extensions.google_cloud_ai_platform
  return {
      ai_platform.ENABLE_VERTEX_KEY: True,
      ai_platform.VERTEX_REGION_KEY: gcp.region,
      ai_platform.VERTEX_CONTAINER_IMAGE_URI_KEY: gcp.serving_image,
      ai_platform.SERVING_ARGS_KEY: serving_args,
  }


def _parameter(name: str, ptype: type) -> tfx.dsl.experimental.RuntimeParameter:
  """A Vertex pipeline parameter without default: every submission must set it."""
  return tfx.dsl.experimental.RuntimeParameter(name=name, ptype=ptype)


def create_pipeline(config: Config, mode: str, window: Optional[windows.Window] = None, *,
                    pipeline_root: str, warehouse: str, push_directory: Optional[str] = None,
                    target: str = LOCAL,
                    metadata_connection_config: Optional[
                        metadata_store_pb2.ConnectionConfig] = None,
                    beam_pipeline_args: Optional[List[str]] = None) -> tfx.dsl.Pipeline:
  """Startup: Generator, Ingester, Trainer, Evaluator, Pusher. Retrain: Ingester,
  resolver, Trainer (warm-started), Evaluator, Pusher.

  The Ingester reads the window's span: the rewarded records logged in
  [window.begin, window.end), Unix seconds. The bounds are literals in the
  query text, so the text changes with the data (query-based ExampleGens have
  no input fingerprint) and the Trainer records the window's end in MLMD.

  target LOCAL: SQLite warehouse file, Pusher to `push_directory`, Beam in
  process. target VERTEX (needs `config.gcp`): BigQueryExampleGen on the
  dataset, the Generator writes to `warehouse` ("bq://project.dataset"), the
  Vertex Pusher deploys to the one endpoint, Beam on Dataflow. The window is
  then not known when compiling: leave it None; each run sets the pipeline
  parameters `windows.*_PARAMETER` (the query, the span, the window's end and
  the Generator's event time).
  """
  windows.check_mode(mode)
  if target == LOCAL:
    if window is None or push_directory is None:
      raise ValueError("a local pipeline needs a window and a push_directory")
  elif target == VERTEX:
    if config.gcp is None:
      raise ValueError("a Vertex pipeline needs config.gcp")
    if window is not None or metadata_connection_config is not None:
      raise ValueError("a Vertex pipeline takes its window from pipeline parameters at run time "
                       "and its metadata from Vertex ML Metadata: pass neither")
  else:
    raise ValueError(f"target must be {LOCAL!r} or {VERTEX!r}, got {target!r}")

  if target == LOCAL:
    ingester = SqliteExampleGen(query=warehouse_lib.training_query(window.begin, window.end),
                                warehouse_path=warehouse, span=window.span,
                                output_config=TRAIN_EVAL_SPLIT)
    # Stamped just before the window's end, so the Ingester of this run reads them.
    event_time, trained_window_end, span = window.end - 1, window.end, window.span
  else:
    ingester = tfx.extensions.google_cloud_big_query.BigQueryExampleGen(
        input_config=_parameter(windows.INPUT_CONFIG_PARAMETER, str),
        output_config=TRAIN_EVAL_SPLIT,
        range_config=_parameter(windows.RANGE_CONFIG_PARAMETER, str))
    event_time = _parameter(windows.EVENT_TIME_PARAMETER, float)
    trained_window_end = _parameter(windows.WINDOW_END_PARAMETER, float)
    # Vertex runs no ExampleGen driver: the Examples carry span 0, the run gets the span here.
    span = _parameter(windows.SPAN_PARAMETER, int)
  ingester = ingester.with_id("Ingester")

  components = []
  if mode == STARTUP:
    generator = Generator(data=config.data, environment=config.environment,
                          samples=config.pipeline.samples, event_time=event_time,
                          warehouse=warehouse)
    ingester.add_upstream_node(generator)
    components.append(generator)
  latest_blessed = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
  ).with_id("latest_blessed_model_resolver")
  examples = ingester.outputs[keys.EXAMPLES_KEY]
  trainer = Trainer(examples=examples, agent=config.agent, environment=config.environment,
                    train_batch_size=config.pipeline.train_batch_size,
                    epochs=config.pipeline.epochs, warm_start=config.pipeline.warm_start,
                    span=span, window_end=trained_window_end,
                    base_model=latest_blessed.outputs[keys.MODEL_KEY] if mode == RETRAIN else None)
  if target == VERTEX:
    # Vertex runs each task as a custom job; the Trainer's gets its own machine size.
    from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=g-import-not-at-top
    trainer.with_platform_config(
        pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            cpu_limit=config.gcp.trainer_cpu_limit, memory_limit=config.gcp.trainer_memory_limit))
  evaluator = Evaluator(examples=examples, model=trainer.outputs[keys.MODEL_KEY],
                        baseline_model=latest_blessed.outputs[keys.MODEL_KEY], data=config.data,
                        environment=config.environment,
                        gate_metrics=config.pipeline.gate_metrics,
                        gate_tolerance=config.pipeline.gate_tolerance,
                        bootstrap_samples=config.pipeline.bootstrap_samples,
                        seed=config.environment.seed)
  if target == LOCAL:
    pusher = tfx.components.Pusher(
        model=trainer.outputs[keys.MODEL_KEY], model_blessing=evaluator.outputs[keys.BLESSING_KEY],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=push_directory)))
  else:
    pusher = VertexPusher(
        model=trainer.outputs[keys.MODEL_KEY], model_blessing=evaluator.outputs[keys.BLESSING_KEY],
        custom_config=vertex_pusher_config(config.gcp)).with_id("Pusher")
  components += [ingester, latest_blessed, trainer, evaluator, pusher]
  if beam_pipeline_args is None:
    beam_pipeline_args = (["--direct_running_mode=in_memory"] if target == LOCAL
                          else dataflow_beam_args(config.gcp))
  return tfx.dsl.Pipeline(
      pipeline_name=config.pipeline.name,
      pipeline_root=pipeline_root,
      components=components,
      enable_cache=False,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args)
