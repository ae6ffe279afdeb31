"""Tests of the `rlops` command line, as a user runs it."""
import base64
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

from cli import main as cli
from cli import options
from rlops import log_sinks, workdirs
from rlops.config import Config, GcpConfig
from rlops.serving import outbox
from tfx_pipeline import metadata, recorded_vertex_api

RLOPS = str(pathlib.Path(sys.executable).parent / "rlops")


def test_console_script_lists_its_commands():
  result = subprocess.run([RLOPS, "--help"], capture_output=True, text=True, timeout=60, check=True)
  for command in ("demo", "train", "data"):
    assert command in result.stdout


@pytest.mark.parametrize("arguments, message", [
    (["--agent", "linucb", "--num-movies", "20", "--rank-k", "30"],
     "rank_k must be between 1 and num_movies"),
    (["--data", "/no/such/ml-100k"], "data path '/no/such/ml-100k' does not exist"),
    (["--samples", "-5"], "samples must be positive"),
    (["--epsilon", "2"], r"epsilon must be in \[0, 1\]"),
    (["--gate-tolerance", "nan"], "pipeline.gate_tolerance must be a finite number, got nan"),
    (["--seed", "-1"], "environment.seed must be from 0 to"),
    (["--data-seed", "-1"], "data.seed must be from 0 to"),
])
@pytest.mark.parametrize("command", [["train"], ["pipeline", "startup"], ["demo"]])
def test_bad_configuration_fails_before_any_work(tmp_path, capsys, command, arguments, message):
  workdir = tmp_path / "work"
  assert cli.main(command + ["--workdir", str(workdir)] + arguments) == 2
  assert re.search(message, capsys.readouterr().err)
  assert not workdir.exists()


def test_malformed_data_file_is_reported(tmp_path, capsys):
  bad = tmp_path / "u.data"
  bad.write_text("1\t2\t3\n")
  assert cli.main(["train", "--data", str(bad), "--workdir", str(tmp_path / "w")]) == 3
  assert f"{bad}:1: expected 4 tab-separated columns" in capsys.readouterr().err


def test_train_reports_regret_and_reward(tmp_path, capsys):
  ratings = tmp_path / "u.data"
  assert cli.main(["data", "generate", "--seed", "1", "--output", str(ratings)]) == 0
  workdir = tmp_path / "work"
  assert cli.main(["train", "--data", str(ratings), "--samples", "400", "--num-movies", "10",
                   "--rank-k", "5", "--workdir", str(workdir)]) == 0
  output = capsys.readouterr().out
  assert "regret over the last 10%" in output and "greedy policy" in output
  report = json.loads((workdir / "train_report.json").read_text())
  assert report["online"]["samples"] == 400 and report["rank_k"] == 5
  assert report["reconstruction_rmse"] > 0  # rank 5 of 10 movies is not exact
  assert (workdir / "train_regret.png").stat().st_size > 10_000


def test_data_describe(tmp_path, capsys):
  ratings = tmp_path / "u.data"
  cli.main(["data", "generate", "--output", str(ratings)])
  capsys.readouterr()
  assert cli.main(["data", "describe", str(ratings)]) == 0
  stats = json.loads(capsys.readouterr().out)
  assert stats["ratings"] == 100_000 and stats["users"] == 943


def _one_line_reason(capsys, kind: str) -> str:
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith(f"rlops: {kind}: "), err
  return err


@pytest.mark.parametrize("content", ["", "garbage that is not u.data\n"])
def test_a_bad_data_file_is_refused_before_any_work(tmp_path, capsys, content):
  data, workdir = tmp_path / "u.data", tmp_path / "work"
  data.write_text(content)
  assert cli.main(["pipeline", "startup", "--data", str(data), "--workdir", str(workdir)]) == 3
  assert str(data) in _one_line_reason(capsys, "data error")
  assert not workdir.exists()


@pytest.mark.parametrize("arguments, reason", [
    (["--num-movies", "2000"], "has ratings of 1682 movies: --num-movies 2000 needs as many"),
    (["--data", "FIVE_MOVIES", "--rank-k", "5"], "has ratings of 5 movies: --num-movies 20"),
])
def test_more_movies_than_the_data_rates_is_refused(tmp_path, capsys, arguments, reason):
  five = tmp_path / "u.data"
  five.write_text("".join(f"{user}\t{movie}\t4\t0\n" for user in range(1, 30)
                          for movie in range(1, 6)))
  arguments = [str(five) if a == "FIVE_MOVIES" else a for a in arguments]
  workdir = tmp_path / "work"
  assert cli.main(["pipeline", "startup", "--workdir", str(workdir), *arguments]) == 2
  assert reason in _one_line_reason(capsys, "configuration error")
  assert not workdir.exists()


def test_serving_with_another_count_of_workers_than_left_rows_undelivered_is_refused(
    tmp_path, capsys):
  model = tmp_path / "model"
  model.mkdir()
  (model / "rlops_model.json").write_text("{}")  # Only its presence is checked before serving.
  workdir = tmp_path / "work"
  workdir.mkdir()
  (workdir / "outbox-0.jsonl").write_text('{"request_id": "a"}\n')  # Worker 0's, undelivered.
  (workdir / "outbox.jsonl.dead.jsonl").write_text('{"row": {}}\n')  # Not an outbox.
  (workdir / "outbox-1.jsonl").write_text('{"request_id": "b"}\n{"request_id": "c"}\n')
  (workdir / "outbox-1.jsonl.offset").write_text("20\n")  # Its first row is delivered.
  assert cli.main(["serve", "--workdir", str(workdir), "--model", str(model),
                   "--workers", "1"]) == 4
  reason = _one_line_reason(capsys, "workdir error")
  assert "outbox-0.jsonl holds 1 undelivered" in reason and "--workers 1" in reason
  (workdir / "outbox-0.jsonl.offset").write_text("20\n")
  assert cli.main(["serve", "--workdir", str(workdir), "--model", str(model)]) == 4
  assert "outbox-1.jsonl holds 1 undelivered" in _one_line_reason(capsys, "workdir error")


def test_an_outbox_a_server_cannot_log_to_is_refused_before_serving(tmp_path, capsys):
  model = tmp_path / "model"
  model.mkdir()
  (model / "rlops_model.json").write_text("{}")  # Only its presence is checked before serving.
  workdir = tmp_path / "work"
  workdir.mkdir()
  running = outbox.OutboxLogger(str(workdir / "outbox-1.jsonl"), log_sinks.InProcessSink(
      str(workdir / "warehouse.sqlite")))  # A server still logging to outbox-1.
  try:
    assert cli.main(["serve", "--workdir", str(workdir), "--model", str(model),
                     "--workers", "2"]) == 4
    reason = _one_line_reason(capsys, "workdir error")
    assert "outbox-1.jsonl is in use by another server process" in reason
  finally:
    running.close()
  (workdir / "outbox.jsonl.offset").mkdir()
  assert cli.main(["serve", "--workdir", str(workdir), "--model", str(model)]) == 4
  assert "cannot log to" in _one_line_reason(capsys, "workdir error")


@pytest.mark.parametrize("content, reason", [
    ("{not json", "Expecting property name"),
    ('{"bogus": 1}', "unknown configuration section(s): bogus"),
])
def test_a_damaged_workdir_configuration_is_a_workdir_error(tmp_path, capsys, content, reason):
  workdir = tmp_path / "work"
  options.remember(Config(workdir=str(workdir)))
  with open(workdirs.LocalPaths(str(workdir)).config, "w") as f:
    f.write(content)
  assert cli.main(["pipeline", "retrain", "--workdir", str(workdir)]) == 4
  message = _one_line_reason(capsys, "workdir error")
  assert "is damaged" in message and reason in message


@pytest.mark.parametrize("change, reason", [
    ({"pipeline": {"samples": True}}, "pipeline.samples must be an integer, got True"),
    ({"environment": {"num_movies": 20.5}}, "environment.num_movies must be an integer"),
    ({"agent": {"hidden_units": [50, "x"]}}, "agent.hidden_units must be a list of integers"),
    ({"pipeline": {"feedback_lateness": float("inf")}}, "feedback_lateness must be a finite"),
    ({"bogus": {}}, "unknown configuration section(s): bogus"),
    ({"agent": {"bogus": 1}}, "unknown agent setting(s): bogus"),
    ({"workdir": ""}, "workdir must be a folder's path"),
])
def test_a_config_file_of_wrong_types_is_refused_before_any_work(tmp_path, capsys, change,
                                                                  reason):
  fields = json.loads(Config().to_json())
  for section, value in change.items():
    fields[section] = {**fields[section], **value} if isinstance(value, dict) and isinstance(
        fields.get(section), dict) else value
  path = tmp_path / "config.json"
  path.write_text(json.dumps(fields))
  assert cli.main(["compile", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
  assert reason in _one_line_reason(capsys, "configuration error")
  assert not (tmp_path / "out").exists()


def test_arguments_of_serve_evaluate_and_replay_are_checked_before_any_work(tmp_path, capsys):
  model = tmp_path / "model"
  model.mkdir()
  (model / "rlops_model.json").write_text("{}")  # Only its presence is checked before serving.
  workdir = tmp_path / "work"
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    for port in (taken.getsockname()[1], 70000):
      assert cli.main(["serve", "--workdir", str(workdir), "--model", str(model),
                       "--port", str(port)]) == 2
      assert f"cannot listen on 127.0.0.1:{port}" in _one_line_reason(capsys,
                                                                      "configuration error")
  assert cli.main(["simulate", "--workdir", str(workdir), "--url", "http://127.0.0.1:9/predict",
                   "--rate", "nan"]) == 2
  assert "--rate finite" in _one_line_reason(capsys, "configuration error")
  config = model / "config.json"
  config.write_text(Config(gcp=GcpConfig(
      project="rlops-prod", region="us-central1", bucket="gs://rlops-prod-bucket",
      dataset="rlops_logs", endpoint_name="rlops-endpoint", pipeline_image="r/pipeline:1",
      serving_image="r/serving:1")).to_json())
  assert cli.main(["compile", "--config", str(config), "--output", str(tmp_path)]) == 2
  assert "--output must name a JSON file" in _one_line_reason(capsys, "configuration error")
  assert cli.main(["serve", "--workdir", str(workdir), "--model", str(model),
                   "--logger-url", "notaurl"]) == 2
  assert "--logger-url must be an http(s) URL" in _one_line_reason(capsys, "configuration error")
  assert cli.main(["lineage", "--workdir", str(workdir), "--graph", str(tmp_path / "g")]) == 2
  assert "--graph must be a .png file" in _one_line_reason(capsys, "configuration error")
  assert cli.main(["data", "generate", "--seed", "-1", "--output", str(model / "u.data")]) == 2
  assert "--seed must be from 0" in _one_line_reason(capsys, "configuration error")
  under_a_file = model / "rlops_model.json" / "u.data"
  assert cli.main(["data", "generate", "--output", str(under_a_file)]) == 2
  assert "cannot write --output" in _one_line_reason(capsys, "configuration error")
  assert cli.main(["evaluate", "--workdir", str(workdir), "--newer-share", "nan"]) == 2
  assert "--newer-share must be in (0, 1)" in _one_line_reason(capsys, "configuration error")
  assert cli.main(["evaluate", "--workdir", str(workdir)]) == 4
  assert "no warehouse at" in _one_line_reason(capsys, "workdir error")
  folder = tmp_path / "letters"
  folder.mkdir()
  assert cli.main(["replay-dead-letters", "--workdir", str(workdir), str(folder)]) == 2
  assert "is not a dead-letter file" in _one_line_reason(capsys, "configuration error")
  assert folder.is_dir()  # Not claimed (renamed).
  assert sorted(os.listdir(tmp_path)) == ["letters", "model"]


def test_a_model_of_another_shape_than_the_workdirs_is_not_served_into_it(tmp_path, capsys):
  model = tmp_path / "model"
  model.mkdir()
  (model / "rlops_model.json").write_text('{"num_movies": 10, "rank_k": 10}')
  assert cli.main(["serve", "--workdir", str(tmp_path / "work"), "--model", str(model)]) == 2
  reason = _one_line_reason(capsys, "configuration error")
  assert "has 10 movies at rank 10" in reason and "20 at rank 20" in reason


def test_workdir_state_is_checked_before_any_work(tmp_path, capsys):
  fresh = tmp_path / "fresh"
  assert cli.main(["pipeline", "retrain", "--workdir", str(fresh)]) == 4
  assert "has no startup run" in _one_line_reason(capsys, "workdir error")
  assert cli.main(["serve", "--workdir", str(fresh), "--model", str(tmp_path / "nothing")]) == 4
  assert "no model at" in _one_line_reason(capsys, "workdir error")
  assert not fresh.exists()

  a_file = tmp_path / "a-file"
  a_file.write_text("")
  assert cli.main(["pipeline", "startup", "--workdir", str(a_file / "work")]) == 4
  assert "is not a folder" in _one_line_reason(capsys, "workdir error")

  used = tmp_path / "used"
  options.remember(Config(workdir=str(used)))
  assert cli.main(["pipeline", "startup", "--workdir", str(used)]) == 4
  assert "--force" in _one_line_reason(capsys, "workdir error")
  assert cli.main(["pipeline", "retrain", "--workdir", str(used), "--agent", "lints"]) == 2
  assert "--agent lints (it has linucb)" in _one_line_reason(capsys, "configuration error")
  assert os.listdir(used) == [os.path.basename(workdirs.LocalPaths(str(used)).config)]


def test_lineage_and_submit_arguments_are_checked(tmp_path, capsys):
  assert cli.main(["lineage", "--workdir", str(tmp_path), "--model", "abc"]) == 4
  assert "no pipeline metadata" in _one_line_reason(capsys, "workdir error")
  metadata.connect(str(tmp_path / "metadata.sqlite"))
  assert cli.main(["lineage", "--workdir", str(tmp_path), "--model", "abc"]) == 2
  assert "--model is 'latest' or a Model artifact id" in _one_line_reason(
      capsys, "configuration error")
  assert cli.main(["lineage", "--workdir", str(tmp_path), "--model", "2"]) == 4
  assert "no Model artifact with id 2" in _one_line_reason(capsys, "workdir error")

  gcp = ["--project", "my-rlops-project", "--region", "us-central1", "--bucket", "gs://b-rlops",
         "--dataset", "rlops", "--endpoint-name", "rlops", "--pipeline-image", "r/pipeline:1",
         "--serving-image", "r/serving:1", "--workdir", str(tmp_path / "w")]
  assert cli.main(["submit", "retrain", "--template", "t.json", "--dry-run", "--window-begin",
                   "100", "--window-end", "50", *gcp]) == 2
  assert "a window needs finite begin < end" in _one_line_reason(capsys, "configuration error")
  assert cli.main(["submit", "startup", "--template", "t.json", "--dry-run",
                   "--workdir", str(tmp_path / "w")]) == 2
  assert "missing gcp setting(s): --project, --region" in _one_line_reason(
      capsys, "configuration error")


def _service_account_key(path: pathlib.Path, email: str) -> None:
  """A service account key file, for application default credentials."""
  from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
  from cryptography.hazmat.primitives.asymmetric import rsa  # pylint: disable=import-outside-toplevel
  key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
      serialization.NoEncryption())
  path.write_text(json.dumps({
      "type": "service_account", "project_id": "rlops-prod", "private_key_id": "1",
      "private_key": key.decode(), "client_email": email, "client_id": "1",
      "token_uri": "https://oauth2.googleapis.com/token"}))


def test_lineage_of_the_model_a_vertex_endpoint_serves(tmp_path, capsys, monkeypatch):
  with pytest.raises(SystemExit):
    cli.main(["lineage", "--help"])
  assert "from Vertex ML Metadata" in capsys.readouterr().out
  email = "lineage-reader@rlops-prod.iam.gserviceaccount.com"
  _service_account_key(tmp_path / "key.json", email)
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
  gcp = GcpConfig(project="rlops-prod", region="us-central1", bucket="gs://rlops-prod-bucket",
                  dataset="rlops_logs", endpoint_name="rlops-endpoint",
                  pipeline_image="r/pipeline:1", serving_image="r/serving:1")
  config = tmp_path / "config.json"
  config.write_text(Config(gcp=gcp).to_json())
  missing = tmp_path / "missing.json"
  missing.write_text(Config(gcp=GcpConfig(**{**gcp.__dict__, "endpoint_name": "gone"})).to_json())
  responses = recorded_vertex_api.recorded_lineage()
  no_endpoint = ('GET /v1/projects/rlops-prod/locations/us-central1/endpoints'
                 '?filter=display_name="gone"')
  graph = tmp_path / "lineage.png"
  with recorded_vertex_api.RecordedVertexApi({**responses, no_endpoint: {}}) as api:
    vertex = ["--vertex-api-endpoint", api.url]
    assert cli.main(["lineage", "--config", str(config), *vertex, "--json",
                     "--graph", str(graph)]) == 0
    assert api.requests == list(responses)
    chain = json.loads(capsys.readouterr().out)
    assert cli.main(["lineage", "--config", str(config), *vertex]) == 0
    text = capsys.readouterr().out
    assert cli.main(["lineage", "--config", str(missing), *vertex]) == 4
    assert "no endpoint named gone in projects/rlops-prod/locations/us-central1" in (
        _one_line_reason(capsys, "workdir error"))
    assert cli.main(["lineage", "--config", str(config), *vertex, "--model", "7103"]) == 2
    assert "on Vertex, --model is 'latest'" in _one_line_reason(capsys, "configuration error")
  assert [link["pipeline_run"] for link in chain] == [
      "rlops-movielens-retrain-2-1714564800-1714651200",
      "rlops-movielens-startup-1-0-1714564800"]
  assert [link["model"]["id"] for link in chain] == ["7203", "7103"]
  assert graph.stat().st_size > 10_000
  assert "warm-started from:\n  model 7103 (linucb, 2000 records)" in text
  assert "generator execution 3101: 2000 records by uniform_random" in text
  # Application default credentials on the wire: a JWT the service account signed.
  claims = api.authorizations[0].split(".")[1]
  assert json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["iss"] == email
  # Without credentials: the one-line reason, before any request.
  monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
  monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud-login"))
  monkeypatch.setenv("NO_GCE_CHECK", "True")  # Not on Google Cloud: no metadata server.
  for command in (["lineage"], ["bigquery-init"]):
    assert cli.main([*command, "--config", str(config)]) == 2
    assert "gcloud auth application-default login" in _one_line_reason(capsys,
                                                                       "configuration error")


def test_version():
  result = subprocess.run([RLOPS, "--version"], capture_output=True, text=True, timeout=60,
                          check=True)
  assert re.fullmatch(r"rlops \d+\.\d+\.\d+\n", result.stdout)


def test_replay_dead_letters_delivers_rows_the_warehouse_now_accepts(tmp_path, capsys):
  row = {"request_id": "r1", "event_time": 1.0, "observation": [0.5] * 20, "action": 1,
         "propensity": 0.5, "model_version": "1", "source": "endpoint"}
  dead = tmp_path / "outbox-0.jsonl.dead.jsonl"
  dead.write_text(json.dumps({"row": row, "reason": "warehouse was read-only"}) + "\n"
                  + json.dumps({"row": {**row, "request_id": "r2", "propensity": 2.0},
                                "reason": "propensity must be in (0, 1]"}) + "\n"
                  # Outside the limits of the workdir's models (20 movies, rank 20).
                  + json.dumps({"row": {**row, "request_id": "r3", "observation": [0.5]},
                                "reason": "warehouse was read-only"}) + "\n")
  # Left renamed by a replay that was killed: taken up, though its dead-letter file is gone.
  (tmp_path / "outbox-1.jsonl.dead.jsonl.claimed-12").write_text(
      json.dumps({"row": {**row, "request_id": "r4"}, "reason": "was refused"}) + "\n")
  assert cli.main(["replay-dead-letters", "--workdir", str(tmp_path)]) == 1
  assert json.loads(capsys.readouterr().out) == {
      str(dead): {"delivered": 1, "rejected": 2, "unreplayable": 0},
      str(tmp_path / "outbox-1.jsonl.dead.jsonl"): {"delivered": 1, "rejected": 0,
                                                    "unreplayable": 0}}
  assert [json.loads(line)["row"]["request_id"] for line in dead.read_text().splitlines()] == [
      "r2", "r3"]
  assert "observation has 1 values" in dead.read_text().splitlines()[1]
  assert not list(tmp_path.glob("*.claimed-*"))
