"""Typed configuration: the one source of truth, validated before any work starts."""
import dataclasses
import json
import math
import os
import re
import typing
from typing import Any, Optional, Tuple, Type, TypeVar, Union

AGENT_NAMES = ("linucb", "lints", "neural_epsilon_greedy")
EXPLORATION_RULES = ("inverse_gap", "epsilon_greedy")
Section = TypeVar("Section")


class ConfigError(ValueError):
  """A configuration value is invalid; raised before any work starts."""


# Largest seed: TensorFlow, NumPy and Beam all take it.
MAX_SEED = 2**31 - 1


def _of_type(value: Any, hint: Any) -> bool:
  """Whether `value` is of the type hint of a configuration field: an int for int (not a bool),
  a finite number for float, a tuple of such values for Tuple[X, ...], None for Optional."""
  if typing.get_origin(hint) is Union:
    return any(_of_type(value, arg) for arg in typing.get_args(hint))
  if typing.get_origin(hint) is tuple:
    return isinstance(value, tuple) and all(_of_type(item, typing.get_args(hint)[0])
                                            for item in value)
  if hint is float:
    return _finite(value)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, hint)


def _describe(hint: Any) -> str:
  if typing.get_origin(hint) is Union:
    return " or ".join(_describe(arg) for arg in typing.get_args(hint))
  if typing.get_origin(hint) is tuple:
    return "a list of " + {float: "finite numbers", int: "integers",
                           str: "strings"}[typing.get_args(hint)[0]]
  return {float: "a finite number", int: "an integer", str: "a string", bool: "true or false",
          type(None): "null"}[hint]


def check_types(section: Any) -> None:
  """Raises ConfigError unless every field of the configuration section holds its type."""
  name = type(section).__name__[:-len("Config")].lower()
  for field, hint in typing.get_type_hints(type(section)).items():
    value = getattr(section, field)
    if not _of_type(value, hint):
      raise ConfigError(f"{name}.{field} must be {_describe(hint)}, got {value!r}")


def _check_seed(section: str, seed: int) -> None:
  if not 0 <= seed <= MAX_SEED:
    raise ConfigError(f"{section}.seed must be from 0 to {MAX_SEED}, got {seed}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the ratings come from.

  Attributes:
    path: An `ml-100k/` folder, its zip, or a `u.data` file. None: the seeded
      MovieLens-100K-shaped generator.
    seed: Seed of the generated ratings (ignored when `path` is set).
  """
  path: Optional[str] = None
  seed: int = 0

  def validate(self) -> None:
    check_types(self)
    _check_seed("data", self.seed)
    if self.path is not None and not os.access(self.path, os.R_OK):
      raise ConfigError(f"data path {self.path!r} does not exist or is not readable")


@dataclasses.dataclass(frozen=True)
class EnvironmentConfig:
  """The MovieLens contextual bandit: K = num_movies arms, contexts of size rank_k."""
  num_movies: int = 20
  rank_k: int = 20
  batch_size: int = 8
  seed: int = 0

  def validate(self) -> None:
    check_types(self)
    _check_seed("environment", self.seed)
    if self.num_movies < 2:
      raise ConfigError(f"num_movies must be at least 2, got {self.num_movies}")
    if not 1 <= self.rank_k <= self.num_movies:
      raise ConfigError(
          f"rank_k must be between 1 and num_movies ({self.num_movies}), got {self.rank_k}")
    if self.batch_size < 1:
      raise ConfigError(f"batch_size must be positive, got {self.batch_size}")


# Widest layer of the neural agent's reward network.
MAX_HIDDEN_UNITS = 100_000


def _finite(value: Any) -> bool:
  """Whether `value` is a finite int or float (not a bool, not NaN)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  """The TF-Agents bandit agent and the exploration of its serving policy.

  Attributes:
    name: One of AGENT_NAMES.
    alpha: Exploration weight of LinUCB's bonus and LinTS's posterior scale;
      None: 10 for LinUCB, 1 for LinTS (TF-Agents' MovieLens example).
    tikhonov_weight: Ridge regularisation of the linear agents.
    epsilon: Exploration of the neural agent in training, and of the serving
      policy under the epsilon_greedy rule: the greedy arm has propensity
      1 - epsilon + epsilon / K, every other arm epsilon / K.
    hidden_units: Layers of the neural agent's reward network.
    learning_rate: Adam learning rate of the neural agent.
    exploration: The serving policy's rule, one of EXPLORATION_RULES (see
      `rlops.exploration`): inverse_gap explores less as the model learns.
      `rlops demo` serves LEARNING_LOOP_AGENT's settings.
    gamma_scale: inverse_gap's gamma = gamma_scale * sqrt(records trained on).
    optimism: inverse_gap with a linear agent: each arm's gap to the greedy
      arm is measured to its ridge mean plus `optimism` times the width
      sqrt(x' A^-1 x) of that mean, never below 0. Arms the model knows little
      about are then still tried (with at most 1 / K each) until their data
      rule them out, while the greedy arm stays the best mean. 0: plain gaps.
    propensity_floor: Least probability of any arm in serving, in [0, 1 / K].
    forgetting: Linear agents' forgetting factor in (0, 1]: before each
      training batch their statistics are multiplied by it, so older data
      weigh less; 1 keeps everything.
    drift_shortfall: When the served reward falls this far (reward units) below
      what the serving model predicted for its own choices, the Trigger retrains
      without waiting for enough records, and the Trainer restarts the
      exploration's record count. None: never.
  """
  name: str = "linucb"
  alpha: Optional[float] = None
  tikhonov_weight: float = 0.001
  epsilon: float = 0.05
  hidden_units: Tuple[int, ...] = (50, 50, 50)
  learning_rate: float = 0.005
  exploration: str = "epsilon_greedy"
  gamma_scale: float = 20.0
  optimism: float = 0.0
  propensity_floor: float = 0.0
  forgetting: float = 1.0
  drift_shortfall: Optional[float] = 0.5

  @property
  def effective_alpha(self) -> float:
    if self.alpha is not None:
      return self.alpha
    return 1.0 if self.name == "lints" else 10.0

  @property
  def is_linear(self) -> bool:
    return self.name in ("linucb", "lints")

  def validate(self) -> None:
    check_types(self)
    if self.name not in AGENT_NAMES:
      raise ConfigError(f"unknown agent {self.name!r}; choose one of {', '.join(AGENT_NAMES)}")
    # Numbers are finite (`check_types`): NaN, which fails every comparison, is refused there.
    if self.alpha is not None and self.alpha < 0:
      raise ConfigError(f"alpha must be non-negative, got {self.alpha}")
    if self.tikhonov_weight <= 0:
      raise ConfigError(f"tikhonov_weight must be positive, got {self.tikhonov_weight}")
    if not 0.0 <= self.epsilon <= 1.0:
      raise ConfigError(f"epsilon must be in [0, 1], got {self.epsilon}")
    if not self.hidden_units or not all(1 <= units <= MAX_HIDDEN_UNITS
                                        for units in self.hidden_units):
      raise ConfigError(f"hidden_units must be layer sizes from 1 to {MAX_HIDDEN_UNITS}, got "
                        f"{self.hidden_units!r:.100}")
    if self.learning_rate <= 0:
      raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
    if self.exploration not in EXPLORATION_RULES:
      raise ConfigError(f"unknown exploration rule {self.exploration!r}; choose one of "
                        f"{', '.join(EXPLORATION_RULES)}")
    if self.gamma_scale <= 0:
      raise ConfigError(f"gamma_scale must be positive, got {self.gamma_scale}")
    if self.optimism < 0:
      raise ConfigError(f"optimism must be non-negative, got {self.optimism}")
    if self.optimism and not (self.is_linear and self.exploration == "inverse_gap"):
      raise ConfigError("optimism needs a linear agent (linucb, lints) and the inverse_gap "
                        f"rule, got {self.name} with {self.exploration}")
    if not 0.0 <= self.propensity_floor < 1.0:
      raise ConfigError(f"propensity_floor must be in [0, 1), got {self.propensity_floor}")
    if not 0.0 < self.forgetting <= 1.0:
      raise ConfigError(f"forgetting must be in (0, 1], got {self.forgetting}")
    if self.drift_shortfall is not None and self.drift_shortfall <= 0:
      raise ConfigError(f"drift_shortfall must be positive, got {self.drift_shortfall}")

  def validate_for(self, environment: EnvironmentConfig) -> None:
    """`validate`, and what the settings need of the environment's K arms."""
    self.validate()
    if self.propensity_floor * environment.num_movies > 1.0:
      raise ConfigError(f"propensity_floor must be at most 1 / num_movies "
                        f"({1 / environment.num_movies:.4g}), got {self.propensity_floor}")


# The agent settings of the learning loop (`rlops demo`, bench/learning_loop.py), as
# AgentConfig fields: inverse-gap exploration with optimistic gaps, whose cost falls as the
# model learns, on a ridge weak enough to learn from a cold start. AgentConfig's own
# defaults stay TF-Agents' LinUCB served epsilon-greedy.
LEARNING_LOOP_AGENT = {"exploration": "inverse_gap", "gamma_scale": 160.0, "optimism": 1.0,
                       "tikhonov_weight": 0.1}

GATE_METRICS = ("dr", "snips", "ips", "oracle")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The TFX pipelines: generation, training and the evaluation gate.

  Attributes:
    name: Pipeline name; startup and retraining runs share it, and so their lineage.
    samples: Interactions the startup Generator logs with the uniform-random policy.
    train_batch_size: Records per agent update in the Trainer.
    epochs: Passes over the data for the neural agent (linear agents take one).
    warm_start: Start from the latest blessed model's agent checkpoint.
    gate_metrics: Value estimates on which a candidate must not be worse than the
      current blessed model by more than `gate_tolerance` (reward units);
      "oracle" is the true value in the simulation.
    gate_tolerance: Allowed shortfall, in reward units.
    bootstrap_samples: Bootstrap replicates for the estimates' intervals.
    feedback_lateness: Seconds a training window ends before the Trigger's now, so
      predictions whose feedback may still be arriving wait for the next window.
  """
  name: str = "rlops-movielens"
  samples: int = 20_000
  train_batch_size: int = 4096
  epochs: int = 1
  warm_start: bool = True
  gate_metrics: Tuple[str, ...] = ("dr", "oracle")
  gate_tolerance: float = 0.05
  bootstrap_samples: int = 200
  feedback_lateness: float = 0.0

  def validate(self) -> None:
    check_types(self)
    if self.samples < 1:
      raise ConfigError(f"samples must be positive, got {self.samples}")
    if self.train_batch_size < 1 or self.epochs < 1:
      raise ConfigError("train_batch_size and epochs must be positive")
    unknown = set(self.gate_metrics) - set(GATE_METRICS)
    if not self.gate_metrics or unknown:
      raise ConfigError(f"gate_metrics must be among {', '.join(GATE_METRICS)}, "
                        f"got {self.gate_metrics}")
    if self.gate_tolerance < 0:
      raise ConfigError(f"gate_tolerance must be non-negative, got {self.gate_tolerance}")
    if not self.feedback_lateness >= 0:
      raise ConfigError(f"feedback_lateness must be non-negative, got {self.feedback_lateness}")
    if self.bootstrap_samples < 10:
      raise ConfigError(f"bootstrap_samples must be at least 10, got {self.bootstrap_samples}")


# Google Cloud naming rules, checked before anything is compiled or submitted.
_PROJECT_RE = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION_RE = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_BUCKET_RE = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]+)*")
_DATASET_RE = re.compile(r"[A-Za-z0-9_]{1,1024}")
_ENDPOINT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_MACHINE_TYPE_RE = re.compile(r"[a-z0-9]+-[a-z0-9-]+")
# Vertex Pipelines' rule for pipeline (and so MLMD context) names.
_VERTEX_PIPELINE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


@dataclasses.dataclass(frozen=True)
class GcpConfig:
  """Production on Google Cloud: Vertex Pipelines, Dataflow, BigQuery, one Vertex endpoint.

  Attributes:
    project: Project id, e.g. "my-project".
    region: Region of Vertex AI, Dataflow and the endpoint, e.g. "us-central1".
    bucket: "gs://bucket" (optionally with a path) for pipeline root and Dataflow temp files.
    dataset: BigQuery dataset holding the `predictions` and `feedback` tables.
    endpoint_name: Display name of the one long-lived Vertex endpoint every push
      deploys to (created by the first push if missing).
    pipeline_image: Image of the pipeline's components and of the Dataflow workers.
    serving_image: Custom serving container image the pushed models run in.
    service_account: Runs Dataflow workers and the deployed model; None: the defaults.
    dataflow_machine_type: Dataflow worker machine type.
    dataflow_max_workers: Dataflow autoscaling limit.
    serving_machine_type: Machine type of the endpoint's replicas.
    serving_min_replicas: Fewest replicas of a deployed model.
    serving_max_replicas: Most replicas of a deployed model.
    trainer_cpu_limit: vCPUs of the Vertex custom job the Trainer task runs as.
    trainer_memory_limit: Memory (GiB) of that custom job.
  """
  project: str
  region: str
  bucket: str
  dataset: str
  endpoint_name: str
  pipeline_image: str
  serving_image: str
  service_account: Optional[str] = None
  dataflow_machine_type: str = "e2-standard-4"
  dataflow_max_workers: int = 4
  serving_machine_type: str = "n1-standard-2"
  serving_min_replicas: int = 1
  serving_max_replicas: int = 2
  trainer_cpu_limit: float = 8.0
  trainer_memory_limit: float = 32.0

  @property
  def pipeline_root(self) -> str:
    return f"{self.bucket.rstrip('/')}/pipeline_root"

  @property
  def temp_location(self) -> str:
    return f"{self.bucket.rstrip('/')}/tmp"

  @property
  def table_prefix(self) -> str:
    """Prefix of the warehouse tables in BigQuery SQL: "`project.dataset`."."""
    return f"`{self.project}.{self.dataset}`."

  @property
  def warehouse(self) -> str:
    """The BigQuery warehouse as the Generator's `warehouse` string: "bq://project.dataset"."""
    return f"bq://{self.project}.{self.dataset}"

  def validate(self) -> None:
    check_types(self)
    if not _PROJECT_RE.fullmatch(self.project):
      raise ConfigError(f"gcp.project must be a project id (6-30 lowercase letters, digits, "
                        f"hyphens, starting with a letter), got {self.project!r}")
    if not _REGION_RE.fullmatch(self.region):
      raise ConfigError(f"gcp.region must be a region like 'us-central1', got {self.region!r}")
    if not _BUCKET_RE.fullmatch(self.bucket.rstrip("/")):
      raise ConfigError(f"gcp.bucket must start with gs:// and name a bucket, got {self.bucket!r}")
    if not _DATASET_RE.fullmatch(self.dataset):
      raise ConfigError(f"gcp.dataset must be a BigQuery dataset name (letters, digits, "
                        f"underscores), got {self.dataset!r}")
    if not _ENDPOINT_RE.fullmatch(self.endpoint_name):
      raise ConfigError(f"gcp.endpoint_name must be 1-128 letters, digits, '-' or '_', "
                        f"got {self.endpoint_name!r}")
    for field in ("pipeline_image", "serving_image"):
      image = getattr(self, field)
      if not image or any(c.isspace() for c in image):
        raise ConfigError(f"gcp.{field} must be a container image reference, got {image!r}")
    if self.service_account is not None and "@" not in self.service_account:
      raise ConfigError(f"gcp.service_account must be an email, got {self.service_account!r}")
    for field in ("dataflow_machine_type", "serving_machine_type"):
      if not _MACHINE_TYPE_RE.fullmatch(getattr(self, field)):
        raise ConfigError(f"gcp.{field} must be a machine type like 'n1-standard-2', "
                          f"got {getattr(self, field)!r}")
    if self.dataflow_max_workers < 1:
      raise ConfigError(f"gcp.dataflow_max_workers must be positive, "
                        f"got {self.dataflow_max_workers}")
    if self.trainer_cpu_limit <= 0 or self.trainer_memory_limit <= 0:
      raise ConfigError("gcp.trainer_cpu_limit and gcp.trainer_memory_limit must be positive")
    if not 1 <= self.serving_min_replicas <= self.serving_max_replicas:
      raise ConfigError("gcp.serving replicas need 1 <= min <= max, got "
                        f"{self.serving_min_replicas} and {self.serving_max_replicas}")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run needs; `validate()` is called by every entry point first."""
  data: DataConfig = DataConfig()
  environment: EnvironmentConfig = EnvironmentConfig()
  agent: AgentConfig = AgentConfig()
  pipeline: PipelineConfig = PipelineConfig()
  workdir: str = "rlops-work"
  # Production on Google Cloud; None: local only.
  gcp: Optional[GcpConfig] = None

  def validate(self) -> "Config":
    if not isinstance(self.workdir, str) or not self.workdir:
      raise ConfigError(f"workdir must be a folder's path, got {self.workdir!r}")
    self.data.validate()
    self.environment.validate()
    self.agent.validate_for(self.environment)
    self.pipeline.validate()
    if self.agent.is_linear and self.pipeline.epochs != 1:
      raise ConfigError("linear agents train in one pass over the data: epochs must be 1")
    if self.gcp is not None:
      self.gcp.validate()
      if not _VERTEX_PIPELINE_NAME_RE.fullmatch(self.pipeline.name):
        raise ConfigError("on Vertex the pipeline name must be lowercase letters, digits and "
                          f"hyphens, got {self.pipeline.name!r}")
    return self

  def to_json(self) -> str:
    return section_to_json(self)

  @classmethod
  def from_json(cls, text: str) -> "Config":
    fields = json.loads(text)
    if not isinstance(fields, dict):
      raise ConfigError(f"a configuration is a JSON object, got {text[:100]!r}")
    unknown = sorted(set(fields) - {field.name for field in dataclasses.fields(cls)})
    if unknown:
      raise ConfigError(f"unknown configuration section(s): {', '.join(unknown)}")
    return cls(data=_section(DataConfig, fields["data"]),
               environment=_section(EnvironmentConfig, fields["environment"]),
               agent=_section(AgentConfig, fields["agent"]),
               pipeline=_section(PipelineConfig, fields["pipeline"]),
               workdir=fields["workdir"],
               gcp=_section(GcpConfig, fields["gcp"]) if fields.get("gcp") else None)

  def replace(self, **sections) -> "Config":
    """A copy with some fields of some sections replaced: replace(agent={"name": "lints"})."""
    changes = {}
    for section, fields in sections.items():
      if isinstance(fields, dict):
        changes[section] = dataclasses.replace(getattr(self, section), **fields)
      else:
        changes[section] = fields
    return dataclasses.replace(self, **changes)


def section_to_json(section: Any) -> str:
  """A configuration section (or the whole Config) as JSON, keys sorted."""
  return json.dumps(dataclasses.asdict(section), sort_keys=True)


def _section(cls: Type[Section], fields: Any) -> Section:
  section = cls.__name__[:-len("Config")].lower()
  if not isinstance(fields, dict):
    raise ConfigError(f"{section} must be a JSON object, got {fields!r:.100}")
  unknown = sorted(set(fields) - {field.name for field in dataclasses.fields(cls)})
  if unknown:
    raise ConfigError(f"unknown {section} setting(s): {', '.join(unknown)}")
  # JSON has no tuples: the sections' sequence fields are all tuples.
  return cls(**{name: tuple(value) if isinstance(value, list) else value
                for name, value in fields.items()})


def section_from_json(cls: Type[Section], text: str) -> Section:
  """The section of class `cls` that `section_to_json` wrote, validated."""
  section = _section(cls, json.loads(text))
  section.validate()
  return section
