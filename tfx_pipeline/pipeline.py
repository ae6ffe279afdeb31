"""The one pipeline definition: startup and retraining variants, run locally or on Vertex."""
from typing import List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from custom_components.evaluator.component import Evaluator
from custom_components.generator.component import Generator
from custom_components.ingester.component import SqliteExampleGen
from custom_components.trainer.component import Trainer
from rlops import warehouse as warehouse_lib
from rlops.config import Config

STARTUP = "startup"
RETRAIN = "retrain"


def create_pipeline(config: Config, mode: str, span: int, window_begin: float, window_end: float, *,
                    pipeline_root: str, warehouse: str, push_directory: str,
                    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
                    beam_pipeline_args: Optional[List[str]] = None) -> tfx.dsl.Pipeline:
  """Startup: Generator, Ingester, Trainer, Evaluator, Pusher. Retrain: Ingester,
  resolver, Trainer (warm-started), Evaluator, Pusher.

  The Ingester reads span number `span`: the rewarded records logged in
  [window_begin, window_end), Unix seconds. The bounds are literals in the
  query text, so the text changes with the data (query-based ExampleGens have
  no input fingerprint) and the Trainer records the window's end in MLMD.
  """
  if mode not in (STARTUP, RETRAIN):
    raise ValueError(f"mode must be {STARTUP!r} or {RETRAIN!r}, got {mode!r}")
  ingester = SqliteExampleGen(query=warehouse_lib.training_query(window_begin, window_end),
                              warehouse_path=warehouse, span=span).with_id("Ingester")
  components = []
  if mode == STARTUP:
    # Stamped just before the span's end, so the Ingester of this run reads them.
    generator = Generator(config, event_time=window_end - 1, warehouse=warehouse)
    ingester.add_upstream_node(generator)
    components.append(generator)
  latest_blessed = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
  ).with_id("latest_blessed_model_resolver")
  trainer = Trainer(examples=ingester.outputs["examples"], config=config, window_end=window_end,
                    base_model=latest_blessed.outputs["model"] if mode == RETRAIN else None)
  evaluator = Evaluator(examples=ingester.outputs["examples"], model=trainer.outputs["model"],
                        baseline_model=latest_blessed.outputs["model"], config=config)
  pusher = tfx.components.Pusher(
      model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(base_directory=push_directory)))
  components += [ingester, latest_blessed, trainer, evaluator, pusher]
  return tfx.dsl.Pipeline(
      pipeline_name=config.pipeline.name,
      pipeline_root=pipeline_root,
      components=components,
      enable_cache=False,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args or ["--direct_running_mode=in_memory"])
