"""`rlops deploy`: the commands it would run, and the function bundles tested as deployed."""
import concurrent.futures
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from cli import deploy
from functions import testing_utils
from rlops import log_sinks
from rlops import warehouse as warehouse_lib
from rlops.config import AgentConfig, Config, GcpConfig

GCP = GcpConfig(project="my-rlops-project", region="us-central1", bucket="gs://my-rlops-bucket",
                dataset="rlops", endpoint_name="rlops-movielens",
                pipeline_image="us-central1-docker.pkg.dev/my-rlops-project/rlops/pipeline:1",
                serving_image="us-central1-docker.pkg.dev/my-rlops-project/rlops/serving:1")
CONFIG = Config(gcp=GCP).validate()

# Run inside a bundle: imports its entry point as Cloud Functions does, then finds the
# distributions that the bundle's own loaded modules import at module level, by the
# files those imports resolve to. (Imports inside functions are the optional paths:
# local-only TFX, or cloud clients made on first use.)
_INSPECT = """
import ast, importlib.metadata, importlib.util, json, os, sys
import main
entry = getattr(main, sys.argv[1])
import functions
bundle = os.path.realpath(os.getcwd())

def top_levels(dist):  # importlib.metadata.packages_distributions is new in Python 3.10.
  declared = (dist.read_text("top_level.txt") or "").split()
  return declared or {f.parts[0].split(".")[0] for f in dist.files or () if f.parts[0] != ".."}

by_top_level = {}
for dist in importlib.metadata.distributions():
  for top in top_levels(dist):
    by_top_level.setdefault(top, []).append(dist)

def owner(name, origin):
  for dist in by_top_level.get(name.split(".")[0], []):
    if any(os.path.realpath(dist.locate_file(f)) == origin for f in dist.files or ()):
      return dist.metadata["Name"]
  return None

direct = set()
for module in list(sys.modules.values()):
  path = os.path.realpath(getattr(module, "__file__", None) or "/")
  if not path.startswith(bundle + os.sep):
    continue
  for node in ast.parse(open(path).read()).body:
    names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
             [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
    for name in names:
      try:
        spec = importlib.util.find_spec(name)
      except ImportError:
        continue
      distribution = spec and spec.origin and owner(name, os.path.realpath(spec.origin))
      if distribution:
        direct.add(distribution)
print(json.dumps({"callable": callable(entry), "functions_file": functions.__file__,
                  "distributions": sorted(direct)}))
"""


def test_dry_run_goes_from_an_empty_project_to_a_running_loop(tmp_path, capsys):
  settings = deploy.DeploySettings(build_dir=str(tmp_path / "build"))
  steps = deploy.commands(CONFIG, settings)
  printed = deploy.deploy(CONFIG, settings, dry_run=True)
  assert capsys.readouterr().out.splitlines() == printed == [step.shell() for step in steps]
  assert not os.path.exists(tmp_path / "build")  # A dry run writes nothing.
  files = deploy.paths(settings)
  assert all(os.path.isabs(path) for path in files.values())
  creates = [step.create for step in steps]
  assert sum(c[:4] == ["gcloud", "ai", "endpoints", "create"] for c in creates) == 1
  topics = {c[4] for c in creates if c[:4] == ["gcloud", "pubsub", "topics", "create"]}
  dead_letters = "projects/my-rlops-project/topics/rlops-logs-dead-letter"
  assert topics == {f"projects/my-rlops-project/topics/{f.topic}" for f in deploy.FUNCTIONS} | {
      dead_letters}
  # The Logger's subscription, looked up once the function exists, dead-letters to it.
  update = next(c for c in creates if c[:4] == ["gcloud", "pubsub", "subscriptions", "update"])
  assert update[4] == "${LOGGER_SUBSCRIPTION}" and update[update.index(
      "--dead-letter-topic") + 1] == dead_letters
  assert creates.index(update) > max(i for i, c in enumerate(creates) if c[:3] == [
      "gcloud", "functions", "deploy"])
  functions = [c for c in creates if c[:3] == ["gcloud", "functions", "deploy"]]
  assert len(functions) == len(deploy.FUNCTIONS)
  for function, command in zip(deploy.FUNCTIONS, functions):
    assert f"projects/my-rlops-project/topics/{command[command.index('--trigger-topic') + 1]}" \
        in topics
    assert command[command.index("--entry-point") + 1] == function.entry_point
    assert command[command.index("--env-vars-file") + 1] == files[f"{function.name}_env"]
    assert ("--retry" in command) == (function.name == "logger")
  scheduled = [c[c.index("--topic") + 1] for c in creates
               if c[:3] == ["gcloud", "scheduler", "jobs"]]
  assert set(scheduled) <= topics and len(scheduled) == 2
  # Compile and submit get the one whole configuration.
  rlops = [c for c in creates if c[0] == "rlops"]
  assert [c[1] for c in rlops] == ["bigquery-init", "compile", "submit"]
  assert all(c[c.index("--config") + 1] == files["config"] for c in rlops)
  build = next(c for c in creates if c[:3] == ["gcloud", "builds", "submit"])
  assert "_LOG_TOPIC=projects/my-rlops-project/topics/rlops-logs" in build[
      build.index("--substitutions") + 1]
  # Everything that may exist is looked up first.
  looked_up = {tuple(step.create[:4]) for step in steps if step.exists}
  assert looked_up == {("gcloud", "storage", "buckets", "create"),
                       ("gcloud", "artifacts", "repositories", "create"),
                       ("gcloud", "ai", "endpoints", "create"),
                       ("gcloud", "pubsub", "topics", "create"),
                       ("gcloud", "pubsub", "subscriptions", "create"),
                       ("gcloud", "scheduler", "jobs", "create")}


def test_written_files_hold_the_whole_config_and_env_values_with_commas_and_at_signs(tmp_path):
  config = dataclasses.replace(CONFIG, gcp=dataclasses.replace(
      GCP, service_account="rlops@my-rlops-project.iam.gserviceaccount.com"),
                               agent=AgentConfig(alpha=2.5)).validate()
  settings = deploy.DeploySettings(build_dir=str(tmp_path / "build"))
  deploy.write_files(config, settings)
  files = deploy.paths(settings)
  with open(files["config"]) as f:
    assert Config.from_json(f.read()) == config
  with open(files["trigger_env"]) as f:
    trigger_env = yaml.safe_load(f)
  assert Config.from_json(trigger_env["RLOPS_CONFIG"]) == config
  assert trigger_env["RETRAIN_TEMPLATE"] == "gs://my-rlops-bucket/pipelines/retrain.json"
  functions = [s.create for s in deploy.commands(config, settings)
               if s.create[:3] == ["gcloud", "functions", "deploy"]]
  for command in functions:
    assert command[command.index("--trigger-service-account") + 1] == config.gcp.service_account


# Values of the shape the lookups print, for commands parsed without a project.
_LOOKED_UP = {
    "LOGGER_TRIGGER": "projects/my-rlops-project/locations/us-central1/triggers/rlops-logger-1",
    "LOGGER_SUBSCRIPTION": "projects/my-rlops-project/subscriptions/eventarc-us-central1-"
                           "rlops-logger-1-sub-1",
    "PROJECT_NUMBER": "123456789012",
}


def _gcloud_verdict(argv, config_dir):
  """gcloud's answer to a command without credentials: 'parsed' once it got past parsing."""
  result = subprocess.run(
      argv, capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
      env={**os.environ, "CLOUDSDK_CONFIG": str(config_dir), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"})
  if result.returncode == 1 and "do not currently have an active account" in result.stderr:
    return "parsed"
  return f"exit {result.returncode}: {result.stderr.strip()[:400]}"


@pytest.mark.skipif(shutil.which("gcloud") is None,
                    reason="the Cloud CLI (gcloud) is not installed")
def test_every_gcloud_command_parses(tmp_path):
  """gcloud rejects bad syntax (exit 2) before it asks for credentials: with an empty
  configuration directory every well-formed command stops at the missing account."""
  settings = deploy.DeploySettings(build_dir=str(tmp_path / "build"))
  config = dataclasses.replace(CONFIG, gcp=dataclasses.replace(
      GCP, service_account="rlops@my-rlops-project.iam.gserviceaccount.com")).validate()
  deploy.write_files(config, settings)  # --env-vars-file is read while parsing.
  argvs = []
  for step in deploy.commands(config, settings):
    assert {name for name, _ in step.lookups} <= set(_LOOKED_UP)
    argvs += [deploy.expand(argv, _LOOKED_UP)
              for argv in (step.exists, step.create, *(argv for _, argv in step.lookups))
              if argv and argv[0] == "gcloud"]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    verdicts = list(pool.map(lambda argv: _gcloud_verdict(argv, tmp_path / "gcloud"), argvs))
  assert {shlex.join(a): v for a, v in zip(argvs, verdicts) if v != "parsed"} == {}
  assert len(argvs) >= 15


@pytest.mark.parametrize("function", deploy.FUNCTIONS, ids=lambda f: f.name)
def test_bundle_imports_its_entry_point_with_only_its_requirements(tmp_path, function):
  bundle = deploy.build_bundle(function, str(tmp_path))
  with open(os.path.join(bundle, "requirements.txt")) as f:
    requirements = f.read().split()
  assert all("==" in line for line in requirements)
  result = subprocess.run([sys.executable, "-c", _INSPECT, function.entry_point], cwd=bundle,
                          env={**os.environ, "PYTHONPATH": bundle}, capture_output=True, text=True,
                          timeout=120, check=True)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["callable"] and report["functions_file"].startswith(bundle)
  declared = {deploy._distribution(line.split("==")[0]) for line in requirements}  # pylint: disable=protected-access
  missing = {d.lower().replace("_", "-") for d in report["distributions"]} - declared
  assert not missing, f"{function.name} imports distributions its requirements lack: {missing}"
  assert {"functions-framework", "numpy"} <= {d.lower() for d in report["distributions"]}


def test_logger_bundle_served_as_deployed_writes_the_warehouse(tmp_path):
  bundle = deploy.build_bundle(deploy.FUNCTIONS[0], str(tmp_path / "bundle"))
  path = str(tmp_path / "warehouse.sqlite")
  env = {"RLOPS_WAREHOUSE": path, "PYTHONPATH": bundle}
  main_py = os.path.join(bundle, "main.py")
  with testing_utils.functions_framework(main_py, "log_records", env) as url:
    log_sinks.CloudEventSink(url).deliver({
        "predictions": [{"request_id": "a", "event_time": 1.0, "observation": [0.1], "action": 0,
                         "propensity": 1.0, "model_version": "1", "source": "endpoint"}],
        "feedback": [{"request_id": "a", "event_time": 2.0, "reward": 3.0}]})
  assert warehouse_lib.Warehouse(path).count_rewarded() == 1


# A stand-in for the Cloud CLI that keeps the project's resources in a JSON file and logs
# every call: describe finds what create made, create fails on what exists, as gcloud does.
_FAKE_GCLOUD = r"""
import json, os, sys
state_path, log_path = os.environ["FAKE_GCLOUD_STATE"], os.environ["FAKE_GCLOUD_LOG"]
state = json.load(open(state_path)) if os.path.exists(state_path) else {}
argv, words, flags = sys.argv[1:], [], {}
while argv:
  token = argv.pop(0)
  if token.startswith("--"):
    name, _, value = token.partition("=")
    flags[name] = value or (None if name in ("--gen2", "--retry") else argv.pop(0))
  else:
    words.append(token)
if words[0] == "ai":  # Endpoints are found by display name.
  words.append(flags.get("--display-name") or flags["--filter"].split("=", 1)[1])
verb, key = words[-2], " ".join(words[:-2] + words[-1:])
if words[:3] == ["scheduler", "jobs", "create"]:
  verb, key = "create", " ".join(["scheduler", "jobs", words[-1]])
outcome, status = verb, 0
if verb == "create":
  if key in state:
    outcome, status = "exists", 1
  else:
    state[key] = words[-1]
elif verb in ("describe", "list"):
  if words[0] == "projects":
    print("123456789012")
  elif key in state:
    print(state[key])
  else:
    outcome, status = "not found", 1
elif words[:2] == ["functions", "deploy"]:
  trigger = f"projects/p/locations/r/triggers/{words[2]}-1"
  state[f"functions {words[2]}"] = trigger
  state[f"eventarc triggers {trigger}"] = f"projects/p/subscriptions/eventarc-{words[2]}-sub"
json.dump(state, open(state_path, "w"))
with open(log_path, "a") as log:
  log.write(json.dumps({"command": words, "outcome": outcome, "status": status}) + "\n")
sys.exit(status)
"""


def _fake_cloud(tmp_path, monkeypatch):
  """PATH with the stand-in gcloud, and an `rlops` that only logs (its commands run for
  real elsewhere: compile, submit and bigquery-init have tests of their own)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(f"#!{sys.executable}\n{_FAKE_GCLOUD}")
  (bin_dir / "rlops").write_text(
      f"#!{sys.executable}\nimport json, os, sys\n"
      "open(os.environ['FAKE_GCLOUD_LOG'], 'a').write(json.dumps({'command': ['rlops', "
      "*sys.argv[1:]], 'outcome': 'ran', 'status': 0}) + '\\n')\n")
  for executable in bin_dir.iterdir():
    executable.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_GCLOUD_STATE", str(tmp_path / "state.json"))
  monkeypatch.setenv("FAKE_GCLOUD_LOG", str(tmp_path / "calls.jsonl"))
  return tmp_path / "calls.jsonl", tmp_path / "state.json"


def _calls(log_path):
  calls = [json.loads(line) for line in log_path.read_text().splitlines()]
  log_path.unlink()
  return calls


def test_a_second_deployment_creates_nothing_and_printed_lines_run_the_same(tmp_path,
                                                                            monkeypatch, capsys):
  log_path, state_path = _fake_cloud(tmp_path, monkeypatch)
  settings = deploy.DeploySettings(build_dir=str(tmp_path / "build"))
  deploy.deploy(CONFIG, settings, dry_run=False)
  first = _calls(log_path)
  created = [" ".join(c["command"]) for c in first if c["outcome"] == "create"]
  # Bucket, repository, endpoint, 4 topics, 1 subscription, 2 scheduler jobs.
  assert len(created) == 10, created
  state = json.loads(state_path.read_text())
  update = next(c["command"] for c in first if c["command"][:3] == [
      "pubsub", "subscriptions", "update"])
  assert update[3] == "projects/p/subscriptions/eventarc-rlops-logger-sub"  # Looked up.

  deploy.deploy(CONFIG, settings, dry_run=False)
  second = _calls(log_path)
  assert [c for c in second if c["outcome"] == "create" or c["status"]] == []
  assert json.loads(state_path.read_text()) == state
  # The printed lines, run by a shell, do what deploy did.
  printed = deploy.deploy(CONFIG, settings, dry_run=True)
  capsys.readouterr()
  for line in printed:
    subprocess.run(["bash", "-e", "-o", "pipefail", "-c", line], check=True, timeout=60)
  assert [c["command"] for c in _calls(log_path) if c["status"] == 0] == [
      c["command"] for c in second]
