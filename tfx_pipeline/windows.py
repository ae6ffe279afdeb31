"""Data windows: which logged records a run trains on, the names runs are made of, and
one way to start a retraining for a window.

No TFX import at module level: the Triggers (also the deployed Cloud Function) use it.
A window is the span number and the half-open range [begin, end) of event times, in
Unix seconds, of the rewarded records it covers. Windows follow one another: the next
one begins where the last trained one ended and ends at the last whole second, so the
records of a second still under way go to the window after.
"""
import dataclasses
import datetime
import math
import time
from typing import Any, Dict, Optional

from rlops.config import Config

STARTUP = "startup"
RETRAIN = "retrain"
MODES = (STARTUP, RETRAIN)

# Vertex pipeline parameters, set by every submission (`vertex_runner.pipeline_parameters`).
INPUT_CONFIG_PARAMETER = "input_config"
RANGE_CONFIG_PARAMETER = "range_config"
WINDOW_END_PARAMETER = "window_end"
SPAN_PARAMETER = "span"
EVENT_TIME_PARAMETER = "event_time"


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"mode must be {STARTUP!r} or {RETRAIN!r}, got {mode!r}")
  return mode


def iso(seconds: float) -> str:
  """Unix seconds as a UTC ISO 8601 time, for people."""
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
      timespec="seconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Window:
  """Span `span`: the records logged in [begin, end), Unix seconds."""
  span: int
  begin: float
  end: float

  def __post_init__(self):
    if isinstance(self.span, bool) or not isinstance(self.span, int) or self.span < 1:
      raise ValueError(f"a span is a positive integer, got {self.span!r}")
    if not (math.isfinite(self.begin) and math.isfinite(self.end) and self.begin < self.end):
      raise ValueError(f"a window needs finite begin < end, got [{self.begin}, {self.end})")

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  def __str__(self) -> str:
    return f"span {self.span}: [{iso(self.begin)}, {iso(self.end)})"


@dataclasses.dataclass(frozen=True)
class TrainedWindow:
  """The newest window a Trainer trained on: its span and end, as recorded in metadata."""
  span: int
  end: float


def next_window(last: Optional[TrainedWindow], now: Optional[float] = None,
                lateness: float = 0.0) -> Optional[Window]:
  """The window after `last` (None: the first, from 0), ending at the last whole second
  before `now - lateness`; None when no whole second has passed since `last` ended.

  `lateness` (seconds, `PipelineConfig.feedback_lateness`) leaves the newest
  predictions, whose feedback may still be on its way, to the next window.
  """
  if lateness < 0:
    raise ValueError(f"lateness must be non-negative, got {lateness}")
  now = time.time() if now is None else now
  span, begin = (last.span, float(last.end)) if last else (0, 0.0)
  end = float(math.floor(now - lateness))
  if end <= begin:
    return None
  return Window(span=span + 1, begin=begin, end=end)


def submit_retraining(config: Config, window: Window, **vertex_options) -> Dict[str, Any]:
  """Starts the retraining pipeline on exactly `window`: locally it runs to the end with
  LocalDagRunner; with `config.gcp` it is submitted to Vertex Pipelines.

  Args:
    config: The validated configuration.
    window: The records to train on, as the caller counted them.
    **vertex_options: With `config.gcp`: `template_path` (the compiled retraining
      pipeline), optionally `enable_caching` and `aiplatform` (the module, or a
      stand-in in tests).
  Returns:
    Locally, the run's outcome (`local_runner.run`); on Vertex, {"job": resource name}.
  """
  # Imported on use: the local runner needs TFX, which the deployed Trigger lacks.
  if config.gcp is None:
    from tfx_pipeline import local_runner  # pylint: disable=import-outside-toplevel
    return local_runner.run(config, RETRAIN, window)
  from tfx_pipeline import vertex_runner  # pylint: disable=import-outside-toplevel
  request = vertex_runner.job_request(config.gcp, config.pipeline.name,
                                      vertex_options["template_path"], RETRAIN, window,
                                      enable_caching=vertex_options.get("enable_caching", False))
  return {"job": vertex_runner.submit(request, vertex_options.get("aiplatform"))}
