"""Compiles the startup and retraining pipelines for Vertex and checks the job specs, offline."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import yaml
from google.cloud.aiplatform.utils import pipeline_utils
from google.protobuf import json_format
from tfx import v1 as tfx
from tfx.components.example_gen import utils as example_gen_utils
from tfx.dsl.components.common import resolver
from tfx.orchestration.kubeflow.v2 import compiler_utils
from tfx.proto import example_gen_pb2
from tfx.proto import range_config_pb2
from tfx.utils import import_utils

from custom_components import artifacts
from rlops import warehouse as warehouse_lib
from rlops.config import Config, ConfigError, GcpConfig
from tfx_pipeline import pipeline as pipeline_lib
from tfx_pipeline import vertex_runner
from tfx_pipeline import windows

VERTEX_TYPE_NAME = re.compile(r"^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$")
GCP = GcpConfig(project="rlops-test", region="europe-west4", bucket="gs://rlops-test-bucket",
                dataset="rlops_logs", endpoint_name="rlops-endpoint",
                pipeline_image="europe-west4-docker.pkg.dev/rlops-test/rlops/pipeline:1",
                serving_image="europe-west4-docker.pkg.dev/rlops-test/rlops/serving:1")
CONFIG = Config(gcp=GCP)
SPAN = 3
WINDOW = windows.Window(span=SPAN, begin=1_700_000_000.0, end=1_700_003_600.0)
RESOLVER_TASKS = {"latest_blessed_model_resolver-model-blessing-resolver",
                  "latest_blessed_model_resolver-model-resolver"}
TASKS = {
    pipeline_lib.RETRAIN: {"Ingester", "Trainer", "Evaluator", "Pusher"} | RESOLVER_TASKS,
    pipeline_lib.STARTUP: {"Generator", "Ingester", "Trainer", "Evaluator", "Pusher"}
                          | RESOLVER_TASKS,
}
EXECUTORS = {
    "Generator": "custom_components.generator.executor.Executor",
    "Ingester": "tfx.extensions.google_cloud_big_query.example_gen.executor.Executor",
    "Trainer": "custom_components.trainer.executor.Executor",
    "Evaluator": "custom_components.evaluator.executor.Executor",
    "Pusher": "custom_components.pusher.executor.Executor",
}
MODES = [pipeline_lib.STARTUP, pipeline_lib.RETRAIN]


def _no_network(*args, **kwargs):
  raise AssertionError(f"network call while compiling: {args!r:.200}")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  """compiled(mode): the job spec compiled for Vertex, with sockets disabled."""
  specs = {}

  def compile_mode(mode):
    if mode not in specs:
      path = str(tmp_path_factory.mktemp("vertex") / f"{mode}.json")
      with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket, "getaddrinfo", _no_network)
        assert vertex_runner.compile_pipeline(CONFIG, mode, path) == path
      with open(path) as f:
        specs[mode] = json.load(f)
    return specs[mode]

  return compile_mode


def _tasks(spec):
  return spec["pipelineSpec"]["root"]["dag"]["tasks"]


def _container(spec, task):
  label = spec["pipelineSpec"]["components"][task]["executorLabel"]
  return spec["pipelineSpec"]["deploymentSpec"]["executors"][label]["container"]


def _constant(spec, task, name):
  return _tasks(spec)[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]


def _type_titles(node):
  """Every artifact type name in the spec: schema titles and instance schemas' titles."""
  if isinstance(node, dict):
    for key, value in node.items():
      if key == "schemaTitle":
        yield value
      elif key == "instanceSchema":
        yield yaml.safe_load(value)["title"]
      else:
        yield from _type_titles(value)
  elif isinstance(node, list):
    for value in node:
      yield from _type_titles(value)


@pytest.mark.parametrize("mode", MODES)
def test_every_component_runs_its_executor_in_the_pipeline_image(compiled, mode):
  spec = compiled(mode)
  assert set(_tasks(spec)) == TASKS[mode]
  assert spec["pipelineSpec"]["pipelineInfo"]["name"] == CONFIG.pipeline.name
  assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://rlops-test-bucket/pipeline_root"
  for task in TASKS[mode] - RESOLVER_TASKS:
    container = _container(spec, task)
    assert container["image"] == GCP.pipeline_image
    assert container["command"] == [
        "python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
    assert container["args"][:2] == ["--executor_class_path", EXECUTORS[task]]


@pytest.mark.parametrize("mode", MODES)
def test_beam_runs_on_dataflow_with_the_pipeline_image_as_workers(compiled, mode):
  args = _container(compiled(mode), "Ingester")["args"]
  for arg in ("--runner=DataflowRunner", "--project=rlops-test", "--region=europe-west4",
              "--temp_location=gs://rlops-test-bucket/tmp",
              f"--sdk_container_image={GCP.pipeline_image}", "--experiments=use_runner_v2"):
    assert arg in args
  if mode == pipeline_lib.STARTUP:
    assert "--runner=DataflowRunner" in _container(compiled(mode), "Generator")["args"]


@pytest.mark.parametrize("mode", MODES)
def test_pipeline_parameters_are_exactly_what_a_submission_sets(compiled, mode):
  spec = compiled(mode)
  declared = spec["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
  values = vertex_runner.pipeline_parameters(WINDOW, gcp=GCP, mode=mode)
  assert set(declared) == set(values)
  ir_types = {str: "STRING", float: "DOUBLE", int: "INT"}
  for name, value in values.items():
    assert declared[name] == {"type": ir_types[type(value)]}  # No default: must be set.
  bindings = {("Ingester", "input_config"): windows.INPUT_CONFIG_PARAMETER,
              ("Ingester", "range_config"): windows.RANGE_CONFIG_PARAMETER,
              ("Trainer", "window_end"): windows.WINDOW_END_PARAMETER,
              ("Trainer", "span"): windows.SPAN_PARAMETER}
  if mode == pipeline_lib.STARTUP:
    bindings[("Generator", "event_time")] = windows.EVENT_TIME_PARAMETER
  for (task, exec_property), parameter in bindings.items():
    assert _tasks(spec)[task]["inputs"]["parameters"][exec_property] == {
        "componentInputParameter": parameter}
  # What aiplatform.PipelineJob does with them client-side, before submitting.
  runtime_config = pipeline_utils.PipelineRuntimeConfigBuilder.from_job_spec_json(spec)
  runtime_config.update_runtime_parameters(values)
  ir_values = {str: lambda v: {"stringValue": v}, float: lambda v: {"doubleValue": v},
               int: lambda v: {"intValue": v}}
  assert runtime_config.build()["parameters"] == {
      name: ir_values[type(value)](value) for name, value in values.items()}


def test_query_parameter_is_the_warehouse_training_query_on_bigquery():
  values = vertex_runner.pipeline_parameters(WINDOW, gcp=GCP, mode=pipeline_lib.STARTUP)
  query = warehouse_lib.training_query(WINDOW.begin, WINDOW.end,
                                       table_prefix="`rlops-test.rlops_logs`.")
  assert "FROM `rlops-test.rlops_logs`.predictions WHERE" in query
  input_config = json_format.Parse(values["input_config"], example_gen_pb2.Input())
  assert input_config == example_gen_utils.make_default_input_config(query)
  range_config = json_format.Parse(values["range_config"], range_config_pb2.RangeConfig())
  assert range_config == range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
      start_span_number=SPAN, end_span_number=SPAN))
  assert values["window_end"] == WINDOW.end
  assert values["span"] == SPAN
  # The Generator's records fall inside the window the same run reads.
  assert WINDOW.begin <= values["event_time"] < WINDOW.end
  assert "event_time" not in vertex_runner.pipeline_parameters(WINDOW, gcp=GCP,
                                                               mode=pipeline_lib.RETRAIN)


@pytest.mark.parametrize("span, begin, end", [
    (1, 10.0, 10.0), (1, 10.0, float("inf")), (-1, 10.0, 20.0), (True, 10.0, 20.0),
    (1.5, 10.0, 20.0)])
def test_bad_windows_are_refused(span, begin, end):
  with pytest.raises(ValueError):
    windows.Window(span=span, begin=begin, end=end)


@pytest.mark.parametrize("window, mode", [
    (windows.Window(span=1, begin=10.0, end=10.5), pipeline_lib.STARTUP),
    (WINDOW, "nightly"),
])
def test_pipeline_parameters_reject_bad_windows(window, mode):
  with pytest.raises(ValueError):
    vertex_runner.pipeline_parameters(window, gcp=GCP, mode=mode)


def test_ingester_splits_train_eval_4_to_1(compiled):
  output_config = json_format.Parse(
      _constant(compiled(pipeline_lib.RETRAIN), "Ingester", "output_config")["stringValue"],
      example_gen_pb2.Output())
  assert [(s.name, s.hash_buckets) for s in output_config.split_config.splits] == [
      ("train", 4), ("eval", 1)]


def test_pusher_deploys_to_the_one_endpoint_in_the_serving_image(compiled):
  custom_config = json.loads(
      _constant(compiled(pipeline_lib.RETRAIN), "Pusher", "custom_config")["stringValue"])
  # The keys TFX 1.15's Vertex Pusher executor reads.
  assert custom_config["ai_platform_enable_vertex"] is True
  assert custom_config["ai_platform_vertex_region"] == "europe-west4"
  assert custom_config["ai_platform_vertex_container_image_uri"] == GCP.serving_image
  serving_args = custom_config["ai_platform_serving_args"]
  assert serving_args["endpoint_name"] == "rlops-endpoint"
  assert serving_args["project"] == "rlops-test"
  assert serving_args["traffic_percentage"] == 100


@pytest.mark.parametrize("mode", MODES)
def test_artifact_type_names_pass_vertex_rule(compiled, mode):
  titles = set(_type_titles(compiled(mode)))
  assert "custom_components.PolicyEvaluation" in titles
  if mode == pipeline_lib.STARTUP:
    assert "custom_components.Interactions" in titles
  assert [title for title in titles if not VERTEX_TYPE_NAME.match(title)] == []


@pytest.mark.parametrize("artifact_type", [artifacts.Interactions, artifacts.PolicyEvaluation])
def test_custom_artifact_types_compile_for_vertex_and_import_by_title(artifact_type):
  # Vertex's compiler rejects custom artifact types that declare PROPERTIES.
  assert not artifact_type.PROPERTIES
  assert VERTEX_TYPE_NAME.match(artifact_type.TYPE_NAME)
  spec = compiler_utils.build_output_artifact_spec(tfx.dsl.Channel(type=artifact_type))
  assert yaml.safe_load(spec.artifact_type.instance_schema)["title"] == artifact_type.TYPE_NAME
  # What TFX's Vertex container entrypoint does with the title.
  assert import_utils.import_class_by_path(artifact_type.TYPE_NAME) is artifact_type


def test_resolver_is_latest_blessed_model(compiled):
  dsl = pipeline_lib.create_pipeline(CONFIG, pipeline_lib.RETRAIN, pipeline_root=GCP.pipeline_root,
                                     warehouse=GCP.warehouse, target=pipeline_lib.VERTEX)
  resolvers = [node for node in dsl.components if isinstance(node, resolver.Resolver)]
  assert [node.exec_properties[resolver.RESOLVER_STRATEGY_CLASS] for node in resolvers] == [
      tfx.dsl.experimental.LatestBlessedModelStrategy]
  executors = compiled(pipeline_lib.RETRAIN)["pipelineSpec"]["deploymentSpec"]["executors"]
  blessing_query = executors["latest_blessed_model_resolver-model-blessing-resolver_executor"]
  model_query = executors["latest_blessed_model_resolver-model-resolver_executor"]
  assert "metadata.blessed.number_value=1" in json.dumps(blessing_query)
  assert "current_model_id" in json.dumps(model_query)


@pytest.mark.parametrize("changes, message", [
    ({"bucket": "my-bucket"}, "gs://"),
    ({"bucket": "s3://my-bucket"}, "gs://"),
    ({"region": "US Central"}, "region"),
    ({"project": ""}, "project"),
    ({"dataset": "logs.v1"}, "dataset"),
    ({"endpoint_name": ""}, "endpoint_name"),
    ({"pipeline_image": ""}, "pipeline_image"),
    ({"serving_image": "gcr.io/p/serving image"}, "serving_image"),
    ({"service_account": "robot"}, "service_account"),
    ({"serving_min_replicas": 3}, "replicas"),
])
def test_bad_gcp_config_fails_before_compiling(tmp_path, changes, message):
  config = Config(gcp=GcpConfig(**{**vars(GCP), **changes}))
  path = tmp_path / "pipeline.json"
  with pytest.raises(ConfigError, match=message):
    vertex_runner.compile_pipeline(config, pipeline_lib.RETRAIN, str(path))
  assert not path.exists()


def test_compiling_needs_gcp_config_and_a_vertex_pipeline_name(tmp_path):
  with pytest.raises(ConfigError, match="gcp"):
    vertex_runner.compile_pipeline(Config(), pipeline_lib.RETRAIN, str(tmp_path / "p.json"))
  with pytest.raises(ConfigError, match="pipeline name"):
    vertex_runner.compile_pipeline(CONFIG.replace(pipeline={"name": "RL_ops"}),
                                   pipeline_lib.RETRAIN, str(tmp_path / "p.json"))


def test_missing_kfp_fails_clearly(monkeypatch, tmp_path):
  # What tfx.v1.orchestration.experimental looks like when kfp is not installed.
  monkeypatch.delattr(tfx.orchestration.experimental, "KubeflowV2DagRunner")
  with pytest.raises(ImportError, match="kfp"):
    vertex_runner.compile_pipeline(CONFIG, pipeline_lib.RETRAIN, str(tmp_path / "p.json"))


def test_gcp_config_round_trips_and_derives_names():
  assert Config.from_json(CONFIG.to_json()) == CONFIG
  assert Config.from_json(Config().to_json()) == Config()
  legacy = json.loads(Config().to_json())
  del legacy["gcp"]  # Configs serialised before the gcp section existed still load.
  assert Config.from_json(json.dumps(legacy)) == Config()
  assert GCP.pipeline_root == "gs://rlops-test-bucket/pipeline_root"
  assert GCP.table_prefix == "`rlops-test.rlops_logs`."
  assert GCP.warehouse == "bq://rlops-test.rlops_logs"


def test_submitters_need_no_tfx():
  code = ("import json, sys\n"
          "from rlops.config import GcpConfig\n"
          "from tfx_pipeline import vertex_runner\n"
          f"gcp = GcpConfig(**{vars(GCP)!r})\n"
          "from tfx_pipeline import windows\n"
          f"values = vertex_runner.pipeline_parameters(windows.{WINDOW!r}, gcp=gcp, "
          "mode='retrain')\n"
          "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tfx', 'tensorflow', 'kfp'))))\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          check=True, timeout=60)
  assert json.loads(result.stdout) == []


def test_local_variant_keeps_sqlite_query_and_filesystem_push(tmp_path):
  dsl = pipeline_lib.create_pipeline(
      Config(), pipeline_lib.STARTUP, windows.Window(span=2, begin=100.0, end=200.0),
      pipeline_root=str(tmp_path / "root"), warehouse=str(tmp_path / "w.sqlite"),
      push_directory=str(tmp_path / "serving"))
  nodes = {node.id: node for node in dsl.components}
  input_config = json_format.Parse(nodes["Ingester"].exec_properties["input_config"],
                                   example_gen_pb2.Input())
  assert input_config.splits[0].pattern == warehouse_lib.training_query(100.0, 200.0)
  assert nodes["Trainer"].exec_properties["window_end"] == 200.0
  assert nodes["Trainer"].exec_properties["span"] == 2
  assert nodes["Generator"].exec_properties["event_time"] == 199.0
  assert type(nodes["Pusher"]) is tfx.components.Pusher  # pylint: disable=unidiomatic-typecheck
  with pytest.raises(ValueError, match="window"):
    pipeline_lib.create_pipeline(CONFIG, pipeline_lib.RETRAIN,
                                 windows.Window(span=2, begin=100.0, end=200.0),
                                 pipeline_root=GCP.pipeline_root,
                                 warehouse=GCP.warehouse, target=pipeline_lib.VERTEX)


@pytest.mark.parametrize("mode", MODES)
def test_trainer_custom_job_gets_its_machine_size(compiled, mode):
  resources = _container(compiled(mode), "Trainer")["resources"]
  assert resources["cpuLimit"] == CONFIG.gcp.trainer_cpu_limit
  assert resources["memoryLimit"] == CONFIG.gcp.trainer_memory_limit


def test_a_window_has_one_job_id_that_vertex_accepts():
  request = vertex_runner.job_request(GCP, CONFIG.pipeline.name, "gs://b/retrain.json",
                                      pipeline_lib.RETRAIN, WINDOW)
  job_id = request["job"]["job_id"]
  assert job_id == f"rlops-movielens-retrain-{SPAN}-1700000000-1700003600"
  assert re.fullmatch(r"[a-z][-a-z0-9]{0,127}", job_id)  # Vertex's rule for job ids.
  assert vertex_runner.job_request(GCP, CONFIG.pipeline.name, "other.json", pipeline_lib.RETRAIN,
                                   WINDOW)["job"]["job_id"] == job_id
