"""SqliteExampleGen: the local Ingester, a query-based ExampleGen on the SQLite warehouse."""
from typing import Optional

from tfx.components.example_gen import component
from tfx.components.example_gen import utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.proto import range_config_pb2

from custom_components.ingester import executor


# train:eval = 4:1 by hash: the Ingester's split, locally and on BigQuery.
TRAIN_EVAL_SPLIT = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
    example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=4),
    example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=1),
]))


class SqliteExampleGen(component.QueryBasedExampleGen):
  """Runs `query` (`rlops.warehouse.training_query`) on the SQLite warehouse.

  The local stand-in for BigQueryExampleGen: the same SQL text, one input
  split, output Examples of the given span (a static RangeConfig), split
  train:eval = 4:1 by hash unless `output_config` says otherwise.
  """

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self, query: str, warehouse_path: str, span: int,
               output_config: Optional[example_gen_pb2.Output] = None):
    """Constructs a SqliteExampleGen.

    Args:
      query: The SQL selecting the window's rewarded records.
      warehouse_path: The SQLite warehouse file.
      span: The span number of the Examples.
      output_config: How to split them; None: TRAIN_EVAL_SPLIT.
    """
    super().__init__(
        input_config=utils.make_default_input_config(query),
        output_config=output_config or TRAIN_EVAL_SPLIT,
        custom_config=executor.make_custom_config(warehouse_path),
        range_config=range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
            start_span_number=span, end_span_number=span)))
