"""Tests of the `rlops` command line, as a user runs it."""
import json
import re
import pathlib
import subprocess
import sys

import pytest

from cli import main as cli

RLOPS = str(pathlib.Path(sys.executable).parent / "rlops")


def test_console_script_lists_its_commands():
  result = subprocess.run([RLOPS, "--help"], capture_output=True, text=True, timeout=60, check=True)
  for command in ("demo", "train", "data"):
    assert command in result.stdout


@pytest.mark.parametrize("arguments, message", [
    (["--agent", "linucb", "--num-movies", "20", "--rank-k", "30"], "rank_k must be between 1 and num_movies"),
    (["--data", "/no/such/ml-100k"], "data path '/no/such/ml-100k' does not exist"),
    (["--samples", "-5"], "samples must be positive"),
    (["--epsilon", "2"], r"epsilon must be in \[0, 1\]"),
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
  assert cli.main(["train", "--data", str(bad), "--workdir", str(tmp_path / "w")]) == 1
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


def test_replay_dead_letters_delivers_rows_the_warehouse_now_accepts(tmp_path, capsys):
  row = {"request_id": "r1", "event_time": 1.0, "observation": [0.5], "action": 1,
         "propensity": 0.5, "model_version": "1", "source": "endpoint"}
  dead = tmp_path / "outbox-0.jsonl.dead.jsonl"
  dead.write_text(json.dumps({"row": row, "reason": "warehouse was read-only"}) + "\n"
                  + json.dumps({"row": {**row, "request_id": "r2", "propensity": 2.0},
                                "reason": "propensity must be in (0, 1]"}) + "\n")
  assert cli.main(["replay-dead-letters", "--workdir", str(tmp_path)]) == 1
  assert json.loads(capsys.readouterr().out) == {str(dead): {"delivered": 1, "rejected": 1}}
  assert [json.loads(line)["row"]["request_id"] for line in dead.read_text().splitlines()] == [
      "r2"]
