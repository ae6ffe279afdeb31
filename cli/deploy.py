"""Production deployment: the gcloud/bq commands from an empty project to a running loop,
and the source bundles the Cloud Functions are deployed from.

`rlops deploy --dry-run` prints the commands; without it they run one by one. Paths
in them are relative to the project root, where they run.
"""
import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import subprocess
from typing import Dict, List

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
  gcp_config_path: str = "gcp.json"
  bundle_dir: str = "build/functions"
  pipelines_dir: str = "build/pipelines"


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
           (PROJECT_ROOT / "functions" / function.name / "requirements.txt").read_text().splitlines()
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


def config_flags(config: Config, gcp_config_path: str) -> List[str]:
  """The rlops options that reproduce `config` in the compile and submit commands."""
  return ["--agent", config.agent.name, "--epsilon", str(config.agent.epsilon),
          "--num-movies", str(config.environment.num_movies),
          "--rank-k", str(config.environment.rank_k), "--seed", str(config.environment.seed),
          "--data-seed", str(config.data.seed), "--samples", str(config.pipeline.samples),
          "--gate-tolerance", str(config.pipeline.gate_tolerance),
          "--gcp-config", gcp_config_path]


def _env(values: Dict[str, str]) -> str:
  # gcloud's alternate delimiter syntax: values (the config JSON) contain commas.
  return "^@^" + "@".join(f"{key}={value}" for key, value in values.items())


def commands(config: Config, settings: DeploySettings) -> List[List[str]]:
  """Every command, in order, from an empty project to a running loop."""
  gcp = config.gcp
  project, region = ["--project", gcp.project], ["--region", gcp.region]
  topic = lambda name: f"projects/{gcp.project}/topics/{name}"  # pylint: disable=unnecessary-lambda-assignment
  config_json = config.to_json()
  flags = config_flags(config, settings.gcp_config_path)
  env = {
      "logger": {"RLOPS_WAREHOUSE": gcp.warehouse},
      "simulator": {"RLOPS_CONFIG": config_json, "RLOPS_LOG_TOPIC": topic(LOGS_TOPIC),
                    "SIMULATOR_REQUESTS": str(settings.simulator_requests)},
      "trigger": {"RLOPS_CONFIG": config_json, "RETRAIN_THRESHOLD": str(settings.retrain_threshold),
                  "RETRAIN_TEMPLATE": f"{gcp.bucket.rstrip('/')}/pipelines/retrain.json"},
  }
  repository = gcp.serving_image.rsplit("/", 1)[0]
  steps: List[List[str]] = [
      ["gcloud", "services", "enable", *[f"{api}.googleapis.com" for api in APIS], *project],
      ["gcloud", "storage", "buckets", "create", "gs://" + gcp.bucket[len("gs://"):].split("/")[0],
       "--location", gcp.region, *project],
      ["gcloud", "artifacts", "repositories", "create", repository.rsplit("/", 1)[1],
       "--repository-format", "docker", "--location", gcp.region, *project],
      ["gcloud", "builds", "submit", "--config", "containers/cloudbuild.yaml", "--substitutions",
       f"_PIPELINE_IMAGE={gcp.pipeline_image},_SERVING_IMAGE={gcp.serving_image},"
       f"_LOG_TOPIC={topic(LOGS_TOPIC)}", ".", *project],
      ["bq", "--project_id", gcp.project, "--location", gcp.region, "mk", "--dataset",
       f"{gcp.project}:{gcp.dataset}"],
      ["rlops", "bigquery-init", "--gcp-config", settings.gcp_config_path],
      ["gcloud", "ai", "endpoints", "create", "--display-name", gcp.endpoint_name, *region, *project],
  ]
  steps += [["gcloud", "pubsub", "topics", "create", f.topic, *project] for f in FUNCTIONS]
  for function in FUNCTIONS:
    steps.append(["gcloud", "functions", "deploy", f"rlops-{function.name}", "--gen2",
                  "--runtime", RUNTIME, *region,
                  "--source", os.path.join(settings.bundle_dir, function.name),
                  "--entry-point", function.entry_point, "--trigger-topic", function.topic,
                  "--memory", function.memory, "--set-env-vars", _env(env[function.name]),
                  *(["--service-account", gcp.service_account] if gcp.service_account else []),
                  *project])
  steps += [
      ["rlops", "compile", "both", *flags,
       "--output", os.path.join(settings.pipelines_dir, "rlops.json")],
      ["gcloud", "storage", "cp", os.path.join(settings.pipelines_dir, "rlops-retrain.json"),
       env["trigger"]["RETRAIN_TEMPLATE"], *project],
      ["rlops", "submit", "startup", *flags,
       "--template", os.path.join(settings.pipelines_dir, "rlops-startup.json")],
      ["gcloud", "scheduler", "jobs", "create", "pubsub", "rlops-simulator", "--location", gcp.region,
       "--schedule", settings.simulator_schedule, "--topic", FUNCTIONS[1].topic,
       "--message-body", "{}", *project],
      ["gcloud", "scheduler", "jobs", "create", "pubsub", "rlops-trigger", "--location", gcp.region,
       "--schedule", settings.trigger_schedule, "--topic", FUNCTIONS[2].topic,
       "--message-body", "{}", *project],
  ]
  return steps


def deploy(config: Config, settings: DeploySettings, dry_run: bool) -> List[str]:
  """Builds the function bundles, then prints (dry run) or runs every command."""
  for function in FUNCTIONS:
    build_bundle(function, str(PROJECT_ROOT / settings.bundle_dir))
  printed = [f"cd {shlex.quote(str(PROJECT_ROOT))}"]
  print(printed[0])
  for command in commands(config, settings):
    printed.append(shlex.join(command))
    print(printed[-1], flush=True)
    if not dry_run:
      subprocess.run(command, check=True, cwd=PROJECT_ROOT)
  return printed
