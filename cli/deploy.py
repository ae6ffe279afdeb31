"""Production deployment: the gcloud commands from an empty project to a running loop,
and the source bundles the Cloud Functions are deployed from.

`rlops deploy --dry-run` prints the commands and writes nothing; without it the
bundles, env-var files and the whole config are written under build/ and the
commands run one by one. Paths in them are absolute. Every resource is looked up
before it is created, so a second deployment creates nothing twice.
"""
import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

import yaml

from rlops import log_sinks
from rlops.config import Config

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Packages a function bundle carries; TFX-free modules only are imported when deployed.
BUNDLED_PACKAGES = ("rlops", "functions", "tfx_pipeline")
LOCK_FILE = "requirements-py310.lock"
RUNTIME = "python310"
APIS = ("aiplatform", "artifactregistry", "bigquery", "cloudbuild", "cloudfunctions",
        "cloudscheduler", "dataflow", "eventarc", "pubsub", "run", "storage")


@dataclasses.dataclass(frozen=True)
class Function:
  """A Cloud Function: its package under functions/, entry point, trigger topic, memory."""
  name: str
  entry_point: str
  topic: str
  memory: str


LOGS_TOPIC = "rlops-logs"
# Where Pub/Sub moves a log message the Logger failed MAX_DELIVERY_ATTEMPTS times, and the
# pull subscription that keeps it (7 days) for `gcloud pubsub subscriptions pull`.
DEAD_LETTER_TOPIC = "rlops-logs-dead-letter"
MAX_DELIVERY_ATTEMPTS = 20
FUNCTIONS = (
    Function("logger", "log_records", LOGS_TOPIC, "512Mi"),
    Function("simulator", "simulate", "rlops-simulator-tick", "1Gi"),
    Function("trigger", "trigger", "rlops-trigger-tick", "1Gi"),
)


@dataclasses.dataclass(frozen=True)
class DeploySettings:
  """What deploying needs beyond the config: schedules, load and the retraining threshold."""
  simulator_schedule: str = "*/5 * * * *"
  simulator_requests: int = 200
  trigger_schedule: str = "*/15 * * * *"
  retrain_threshold: int = 1000
  build_dir: str = str(PROJECT_ROOT / "build")


def _distribution(requirement: str) -> str:
  return requirement.split("[")[0].strip().lower()


def locked_requirements(function: Function) -> List[str]:
  """The function's requirements.txt names, pinned to the lock file's versions."""
  pins = {}
  for line in (PROJECT_ROOT / LOCK_FILE).read_text().splitlines():
    match = re.match(r"^(\S+)==(\S+)", line)
    if match:
      pins[_distribution(match.group(1))] = match.group(2)
  names = [line.strip() for line in
           (PROJECT_ROOT / "functions" / function.name / "requirements.txt")
           .read_text().splitlines()
           if line.strip() and not line.startswith("#")]
  missing = [name for name in names if _distribution(name) not in pins]
  if missing:
    raise ValueError(f"{function.name}: not in {LOCK_FILE}: {missing}")
  return [f"{name}=={pins[_distribution(name)]}" for name in names]


def build_bundle(function: Function, bundle_dir: str) -> str:
  """Writes the directory `gcloud functions deploy --source` uploads; returns its path.

  It holds the project's packages, a `main.py` exposing the entry point at top
  level (where Cloud Functions looks for it) and the pinned requirements.
  """
  target = os.path.join(bundle_dir, function.name)
  shutil.rmtree(target, ignore_errors=True)
  os.makedirs(target)
  for package in BUNDLED_PACKAGES:
    shutil.copytree(PROJECT_ROOT / package, os.path.join(target, package),
                    ignore=shutil.ignore_patterns("*_test.py", "__pycache__", "testing*.py"))
  with open(os.path.join(target, "main.py"), "w") as f:
    f.write(f'"""Cloud Functions entry point of the {function.name}."""\n'
            f"from functions.{function.name}.main import {function.entry_point}  # noqa: F401\n")
  with open(os.path.join(target, "requirements.txt"), "w") as f:
    f.write("\n".join(locked_requirements(function)) + "\n")
  return target


_LOOKUP_RE = re.compile(r"\$\{([A-Z_]+)\}")
_EXPANDABLE_RE = re.compile(r"[\w@.:/=${}-]+")


@dataclasses.dataclass(frozen=True)
class Step:
  """A command, and for a resource that may exist already the command that tells:
  `create` runs only when `exists` fails or prints nothing (describe-or-create).

  `lookups` name values known only once earlier steps ran (a name Eventarc chose,
  the project number): each (NAME, command) runs in order, and `${NAME}` in the
  later commands stands for what it printed.
  """
  create: List[str]
  exists: Optional[List[str]] = None
  lookups: Tuple[Tuple[str, List[str]], ...] = ()

  def shell(self) -> str:
    """The step as one shell line."""
    line = " && ".join(f'{name}="$({_shell_join(argv)})"' for name, argv in self.lookups)
    line += " && " if line else ""
    if self.exists is None:
      return line + _shell_join(self.create)
    return line + f'{{ [ -n "$({_shell_join(self.exists)} 2>/dev/null)" ] || ' \
        f'{_shell_join(self.create)}; }}'


def _shell_join(argv: List[str]) -> str:
  """shlex.join, but arguments holding `${NAME}` are double-quoted so the shell expands them."""
  words = []
  for word in argv:
    if _LOOKUP_RE.search(word):
      if not _EXPANDABLE_RE.fullmatch(word):
        raise ValueError(f"cannot quote {word!r} for expansion")
      words.append(f'"{word}"')
    else:
      words.append(shlex.quote(word))
  return " ".join(words)


def expand(argv: List[str], values: Dict[str, str]) -> List[str]:
  """`argv` with each `${NAME}` replaced by its value."""
  return [_LOOKUP_RE.sub(lambda match: values[match.group(1)], word) for word in argv]


def paths(settings: DeploySettings) -> Dict[str, str]:
  """Absolute paths of the files a deployment writes under `settings.build_dir`."""
  build = pathlib.Path(settings.build_dir).resolve()
  return {"bundles": str(build / "functions"), "pipelines": str(build / "pipelines"),
          "config": str(build / "deploy" / "rlops-config.json"),
          **{f"{function.name}_env": str(build / "deploy" / f"{function.name}.env.yaml")
             for function in FUNCTIONS}}


def env_vars(config: Config, settings: DeploySettings) -> Dict[str, Dict[str, str]]:
  """Each function's environment variables, deployed from a YAML file (`--env-vars-file`):
  values such as the config JSON hold commas and '@', which `--set-env-vars` splits on."""
  gcp = config.gcp
  return {
      # Rows outside what the served model produces are rejected alone (rlops.log_sinks).
      "logger": {"RLOPS_WAREHOUSE": gcp.warehouse,
                 log_sinks.ROW_LIMITS_ENV: log_sinks.RowLimits.of(config.environment).to_json()},
      "simulator": {"RLOPS_CONFIG": config.to_json(), "RLOPS_LOG_TOPIC": _topic(gcp, LOGS_TOPIC),
                    "SIMULATOR_REQUESTS": str(settings.simulator_requests)},
      "trigger": {"RLOPS_CONFIG": config.to_json(),
                  "RETRAIN_THRESHOLD": str(settings.retrain_threshold),
                  "RETRAIN_TEMPLATE": retrain_template(config)},
  }


def retrain_template(config: Config) -> str:
  return f"{config.gcp.bucket.rstrip('/')}/pipelines/retrain.json"


def _topic(gcp, name: str) -> str:
  """A topic's full resource name: gcloud resolves a bare name against its own project."""
  return f"projects/{gcp.project}/topics/{name}"


def _subscription(gcp, name: str) -> str:
  return f"projects/{gcp.project}/subscriptions/{name}"


def _logger_dead_letter_steps(gcp, dead_letters: str) -> List[Step]:
  """The Logger's subscription (Eventarc's, named once the function is deployed) moves a
  message that failed MAX_DELIVERY_ATTEMPTS times to the dead-letter topic; Pub/Sub's
  service agent may publish there and acknowledge the original."""
  project, location = ["--project", gcp.project], ["--location", gcp.region]
  subscription = [
      ("LOGGER_TRIGGER", ["gcloud", "functions", "describe", "rlops-logger", "--gen2",
                          "--region", gcp.region, "--format", "value(eventTrigger.trigger)",
                          *project]),
      ("LOGGER_SUBSCRIPTION", ["gcloud", "eventarc", "triggers", "describe", "${LOGGER_TRIGGER}",
                               *location, "--format", "value(transport.pubsub.subscription)",
                               *project])]
  agent = [("PROJECT_NUMBER", ["gcloud", "projects", "describe", gcp.project,
                               "--format", "value(projectNumber)"])]
  member = "serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
  return [
      Step(["gcloud", "pubsub", "subscriptions", "update", "${LOGGER_SUBSCRIPTION}",
            "--dead-letter-topic", dead_letters,
            "--max-delivery-attempts", str(MAX_DELIVERY_ATTEMPTS), *project],
           lookups=tuple(subscription)),
      Step(["gcloud", "pubsub", "topics", "add-iam-policy-binding", dead_letters, "--member",
            member, "--role", "roles/pubsub.publisher", *project], lookups=tuple(agent)),
      Step(["gcloud", "pubsub", "subscriptions", "add-iam-policy-binding",
            "${LOGGER_SUBSCRIPTION}", "--member", member, "--role", "roles/pubsub.subscriber",
            *project], lookups=tuple(subscription + agent)),
  ]


def commands(config: Config, settings: DeploySettings) -> List[Step]:
  """Every step, in order, from an empty project to a running loop; a second run creates
  nothing anew (the functions and images are redeployed as they are)."""
  gcp = config.gcp
  project, region, location = (["--project", gcp.project], ["--region", gcp.region],
                               ["--location", gcp.region])
  files = paths(settings)
  account = gcp.service_account
  repository = gcp.serving_image.split("/")[2]  # REGION-docker.pkg.dev/PROJECT/REPOSITORY/...
  bucket = "gs://" + gcp.bucket[len("gs://"):].split("/")[0]
  quiet = ["--format", "value(name)"]
  steps = [
      Step(["gcloud", "services", "enable", *[f"{api}.googleapis.com" for api in APIS], *project]),
      Step(["gcloud", "storage", "buckets", "create", bucket, *location, *project],
           exists=["gcloud", "storage", "buckets", "describe", bucket, *quiet, *project]),
      Step(["gcloud", "artifacts", "repositories", "create", repository, "--repository-format",
            "docker", *location, *project],
           exists=["gcloud", "artifacts", "repositories", "describe", repository, *location,
                   *quiet, *project]),
      Step(["gcloud", "builds", "submit", "--config", str(PROJECT_ROOT / "containers" /
                                                          "cloudbuild.yaml"),
            "--substitutions", f"_PIPELINE_IMAGE={gcp.pipeline_image},"
            f"_SERVING_IMAGE={gcp.serving_image},_LOG_TOPIC={_topic(gcp, LOGS_TOPIC)}",
            *(["--service-account", f"projects/{gcp.project}/serviceAccounts/{account}"]
              if account else []),
            str(PROJECT_ROOT), *project]),
      # The dataset (in the region) and tables, each unless it exists; with the
      # application-default credentials (`gcloud auth application-default login`).
      Step(["rlops", "bigquery-init", "--config", files["config"]]),
      Step(["gcloud", "ai", "endpoints", "create", "--display-name", gcp.endpoint_name, *region,
            *project],
           exists=["gcloud", "ai", "endpoints", "list", "--filter",
                   f"display_name={gcp.endpoint_name}", *quiet, *region, *project]),
  ]
  steps += [Step(["gcloud", "pubsub", "topics", "create", _topic(gcp, f.topic), *project],
                 exists=["gcloud", "pubsub", "topics", "describe", _topic(gcp, f.topic), *quiet,
                         *project]) for f in FUNCTIONS]
  dead_letters = _topic(gcp, DEAD_LETTER_TOPIC)
  steps += [
      Step(["gcloud", "pubsub", "topics", "create", dead_letters, *project],
           exists=["gcloud", "pubsub", "topics", "describe", dead_letters, *quiet, *project]),
      Step(["gcloud", "pubsub", "subscriptions", "create", _subscription(gcp, DEAD_LETTER_TOPIC),
            "--topic", dead_letters, "--message-retention-duration", "7d", *project],
           exists=["gcloud", "pubsub", "subscriptions", "describe",
                   _subscription(gcp, DEAD_LETTER_TOPIC), *quiet, *project]),
  ]
  for function in FUNCTIONS:
    steps.append(Step([
        "gcloud", "functions", "deploy", f"rlops-{function.name}", "--gen2", "--runtime", RUNTIME,
        *region, "--source", os.path.join(files["bundles"], function.name),
        "--entry-point", function.entry_point, "--trigger-topic", function.topic,
        "--memory", function.memory, "--env-vars-file", files[f"{function.name}_env"],
        # The Logger acknowledges a message only once it is in BigQuery: retried on failure.
        *(["--retry"] if function.name == "logger" else []),
        *(["--service-account", account, "--trigger-service-account", account]
          if account else []),
        *project]))
  steps += _logger_dead_letter_steps(gcp, dead_letters)
  steps += [
      Step(["rlops", "compile", "both", "--config", files["config"],
            "--output", os.path.join(files["pipelines"], "rlops.json")]),
      Step(["gcloud", "storage", "cp", os.path.join(files["pipelines"], "rlops-retrain.json"),
            retrain_template(config), *project]),
      # Submits nothing once this pipeline has a run, queued, running or succeeded.
      Step(["rlops", "submit", "startup", "--config", files["config"],
            "--template", os.path.join(files["pipelines"], "rlops-startup.json")]),
  ]
  for name, schedule, function in (("rlops-simulator", settings.simulator_schedule, FUNCTIONS[1]),
                                   ("rlops-trigger", settings.trigger_schedule, FUNCTIONS[2])):
    steps.append(Step(
        ["gcloud", "scheduler", "jobs", "create", "pubsub", name, *location, "--schedule",
         schedule, "--topic", _topic(gcp, function.topic), "--message-body", "{}", *project],
        exists=["gcloud", "scheduler", "jobs", "describe", name, *location, *quiet, *project]))
  return steps


def write_files(config: Config, settings: DeploySettings) -> None:
  """Writes the function bundles, their env-var files and the whole config."""
  files = paths(settings)
  for function in FUNCTIONS:
    build_bundle(function, files["bundles"])
  os.makedirs(os.path.dirname(files["config"]), exist_ok=True)
  with open(files["config"], "w") as f:
    f.write(config.to_json())
  for name, values in env_vars(config, settings).items():
    with open(files[f"{name}_env"], "w") as f:
      yaml.safe_dump(values, f, default_flow_style=False)


def deploy(config: Config, settings: DeploySettings, dry_run: bool) -> List[str]:
  """Prints every step; without `dry_run` writes the files first and runs the steps.

  A dry run writes nothing. A step whose resource exists is skipped.
  """
  if not dry_run:
    write_files(config, settings)
  printed = []
  for step in commands(config, settings):
    printed.append(step.shell())
    print(printed[-1], flush=True)
    if dry_run:
      continue
    values = {}
    for name, argv in step.lookups:
      values[name] = subprocess.run(expand(argv, values), cwd=PROJECT_ROOT, capture_output=True,
                                    text=True, check=True).stdout.strip()
      if not values[name]:
        raise RuntimeError(f"{shlex.join(expand(argv, values))} printed nothing for {name}")
    if step.exists is not None:
      found = subprocess.run(expand(step.exists, values), cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=False)
      if found.returncode == 0 and found.stdout.strip():
        continue
    subprocess.run(expand(step.create, values), check=True, cwd=PROJECT_ROOT)
  return printed
