"""Compiles the pipeline for Vertex Pipelines, and fills the parameters of each run.

The compiled startup and retraining pipelines (`compile_pipeline`) do not
change from run to run: the data window is a set of pipeline parameters
without defaults, which every submission must set, e.g.

  job = aiplatform.PipelineJob(
      display_name=..., job_id=job_id(name, "retrain", window), template_path="retrain.json",
      pipeline_root=gcp.pipeline_root,
      parameter_values=pipeline_parameters(window, gcp=gcp, mode="retrain"),
      enable_caching=False, project=gcp.project, location=gcp.region)
  job.submit(service_account=gcp.service_account)

(`job_request` gives exactly these arguments.)

The parameters (names in `tfx_pipeline.windows`):
  input_config  str    example_gen_pb2.Input as JSON: one split whose pattern is
                       `warehouse.training_query(begin, end, gcp.table_prefix)`.
  range_config  str    range_config_pb2.RangeConfig as JSON: static range [span, span].
                       Recorded with the Ingester's execution only: Vertex runs no
                       ExampleGen driver, so the Examples carry no `span` there.
  window_end    float  The window's end, recorded by the Trainer.
  span          int    The window's span, recorded by the Trainer (the Examples carry 0 on
                       Vertex).
  event_time    float  Startup only: the Generator's record time, end - 1.

Only `compile_pipeline` imports TFX: a submitter (the Trigger function) fills
the parameters with this module, `rlops.config` and `rlops.warehouse` alone.
The Vertex AI calls below import `aiplatform` only when made, and take a
stand-in module so tests can assert on the exact requests.
"""
import json
import os
from typing import Any, Dict, List, Optional

from rlops import warehouse as warehouse_lib
from rlops.config import Config, ConfigError, GcpConfig
from tfx_pipeline import windows
from tfx_pipeline.windows import STARTUP

# The split name TFX gives the single split of a query (utils.make_default_input_config).
_SINGLE_SPLIT = "single_split"


def pipeline_parameters(window: windows.Window, *, gcp: GcpConfig, mode: str) -> Dict[str, Any]:
  """The values a submission of the compiled `mode` pipeline sets: exactly its parameters.

  Args:
    window: The records to train on.
    gcp: Names the BigQuery tables the query reads.
    mode: "startup" or "retrain".
  """
  windows.check_mode(mode)
  if mode == STARTUP and window.end - 1 < window.begin:
    raise ValueError(f"the startup window must be at least a second long, got {window}")
  query = warehouse_lib.training_query(window.begin, window.end, table_prefix=gcp.table_prefix)
  values = {
      windows.INPUT_CONFIG_PARAMETER: json.dumps(
          {"splits": [{"name": _SINGLE_SPLIT, "pattern": query}]}),
      windows.RANGE_CONFIG_PARAMETER: json.dumps(
          {"static_range": {"start_span_number": window.span, "end_span_number": window.span}}),
      windows.WINDOW_END_PARAMETER: window.end,
      windows.SPAN_PARAMETER: window.span,
  }
  if mode == STARTUP:
    values[windows.EVENT_TIME_PARAMETER] = window.end - 1
  return values


def compile_pipeline(config: Config, mode: str, output_path: str) -> str:
  """Writes the Vertex pipeline job spec of `mode` to output_path (.json or .yaml); returns it.

  Compiling makes no network call. Raises ConfigError for a config without a
  valid `gcp` section, before anything is compiled.
  """
  config.validate()
  if config.gcp is None:
    raise ConfigError("compiling for Vertex needs the gcp section of the config")
  # Imported here, so that submitters importing this module need no TFX.
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  from tfx_pipeline import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  experimental = tfx.orchestration.experimental
  if not hasattr(experimental, "KubeflowV2DagRunner"):
    raise ImportError("compiling for Vertex needs the kfp package (pip install 'tfx[kfp]'): "
                      "without it tfx.v1.orchestration.experimental has no KubeflowV2DagRunner")
  pipeline = pipeline_lib.create_pipeline(
      config, mode, pipeline_root=config.gcp.pipeline_root, warehouse=config.gcp.warehouse,
      target=pipeline_lib.VERTEX)
  output_dir, output_filename = os.path.split(os.path.abspath(output_path))
  runner = experimental.KubeflowV2DagRunner(
      config=experimental.KubeflowV2DagRunnerConfig(
          display_name=f"{config.pipeline.name}-{mode}", default_image=config.gcp.pipeline_image),
      output_dir=output_dir, output_filename=output_filename)
  runner.run(pipeline)
  return os.path.join(output_dir, output_filename)


RUNNING_STATES = ("PIPELINE_STATE_QUEUED", "PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING")
SUCCEEDED_STATE = "PIPELINE_STATE_SUCCEEDED"


def _aiplatform(module):
  """`module` (a stand-in in tests), else google.cloud.aiplatform, imported on first use."""
  if module is not None:
    return module
  from google.cloud import aiplatform  # pylint: disable=import-outside-toplevel
  return aiplatform


def display_name(pipeline_name: str, mode: str) -> str:
  return f"{pipeline_name}-{mode}"


def job_id(pipeline_name: str, mode: str, window: windows.Window) -> str:
  """The one PipelineJob id of a window's run: Vertex refuses a second job with it."""
  return f"{display_name(pipeline_name, mode)}-{window.span}-{int(window.begin)}-{int(window.end)}"


def job_request(gcp: GcpConfig, pipeline_name: str, template_path: str, mode: str,
                window: windows.Window, enable_caching: bool = False) -> Dict[str, Any]:
  """The arguments of `aiplatform.PipelineJob(...)` and `.submit(...)` for one run."""
  return {
      "job": {
          "display_name": display_name(pipeline_name, mode),
          "job_id": job_id(pipeline_name, mode, window),
          "template_path": template_path,
          "pipeline_root": gcp.pipeline_root,
          "parameter_values": pipeline_parameters(window, gcp=gcp, mode=mode),
          "enable_caching": enable_caching,
          "project": gcp.project,
          "location": gcp.region,
          "labels": {"rlops-mode": mode, "rlops-span": str(window.span)},
      },
      "submit": {"service_account": gcp.service_account},
  }


def submit(request: Dict[str, Any], aiplatform=None) -> str:
  """Submits a `job_request`; returns the job's resource name."""
  job = _aiplatform(aiplatform).PipelineJob(**request["job"])
  job.submit(**request["submit"])
  return job.resource_name


def _jobs(gcp: GcpConfig, pipeline_name: str, states, aiplatform) -> list:
  """This pipeline's runs, startup and retraining, in one of `states`."""
  names = " OR ".join(f'display_name="{display_name(pipeline_name, mode)}"'
                      for mode in windows.MODES)
  in_state = " OR ".join(f'state="{state}"' for state in states)
  return _aiplatform(aiplatform).PipelineJob.list(
      filter=f"({names}) AND ({in_state})", project=gcp.project, location=gcp.region)


def running_jobs(gcp: GcpConfig, pipeline_name: str, aiplatform=None) -> List[str]:
  """Resource names of this pipeline's runs (startup or retraining) queued or running."""
  return [job.resource_name for job in _jobs(gcp, pipeline_name, RUNNING_STATES, aiplatform)]


def last_trained_window(gcp: GcpConfig, pipeline_name: str,
                        aiplatform=None) -> Optional[windows.TrainedWindow]:
  """The window of this pipeline's newest successful run; None before the first.

  Read from the runs' own parameters, `span` (int) and `window_end` (double):
  exact, where artifact properties come back from Vertex ML Metadata as floats.
  A window counts as trained once its run succeeded, blessed or not: the gate
  rejected a model, not the data, and the next window does not read it again.
  """
  trained = []
  for job in _jobs(gcp, pipeline_name, [SUCCEEDED_STATE], aiplatform):
    parameters = job.runtime_config.parameters
    trained.append((parameters[windows.WINDOW_END_PARAMETER].double_value,
                    int(parameters[windows.SPAN_PARAMETER].int_value)))
  if not trained:
    return None
  end, span = max(trained)
  return windows.TrainedWindow(span=span, end=end)


def describe(request: Dict[str, Any]) -> str:
  """`request` as the JSON `--dry-run` prints."""
  return json.dumps(request, indent=2, sort_keys=True)
