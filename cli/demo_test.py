"""`rlops demo`, short: the whole loop over HTTP, with the data it leaves checked."""
import json

import numpy as np
import pytest
import tensorflow as tf

from cli import main as cli
from rlops import simulation, testing, workdirs
from rlops import warehouse as warehouse_lib
from rlops.config import Config, DataConfig, EnvironmentConfig


def test_short_demo_serves_the_retrained_model_and_logs_every_prediction(tmp_path, capsys):
  workdir = tmp_path / "work"
  assert cli.main(["demo", "--workdir", str(workdir), "--samples", "3000", "--num-movies", "10",
                   "--rank-k", "5", "--data-seed", "6", "--rounds", "2", "--requests", "600",
                   "--threshold", "500"]) == 0
  output = capsys.readouterr().out
  assert "retraining after the round" in output and (workdir / "demo_rounds.png").exists()
  assert (workdir / "demo_learning.png").exists()
  # The rounds in TensorBoard: served reward and regret, the retraining's estimates and gate.
  tags = {}
  for events in (workdir / "tensorboard").glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  assert tags["served/expected_regret"] == [1, 2]
  assert tags["gate/blessed"] == [1, 2] and "estimates/dr_low" in tags
  report = json.loads((workdir / "demo_report.json").read_text())
  first, second = report["rounds"]
  assert second["cumulative_regret"] == pytest.approx(
      first["regret"] * 600 + second["regret"] * 600, rel=1e-6)
  assert set(report["references"]) == {"uniform random", "online LinUCB (TF-Agents)"}
  assert first["errors"] == second["errors"] == 0
  assert first["retraining"].startswith("blessed, pushed ")
  retrained_version = first["retraining"].split()[-1]
  assert list(second["versions"]) == [retrained_version]  # the hot swap happened before round 2
  # No jump in regret after the blessed swap (exact expectation, not the sampled mean).
  assert second["expected_regret"] <= first["expected_regret"] + 0.02

  # Every served prediction was logged once, and its feedback is the reward of exactly the
  # user whose context was sent, for exactly the movie returned.
  config = Config(data=DataConfig(seed=6), environment=EnvironmentConfig(num_movies=10, rank_k=5))
  model = simulation.MovieLensModel.from_config(config)
  store = warehouse_lib.Warehouse(workdirs.LocalPaths(str(workdir)).warehouse)
  records = store.rewarded_records()
  served = records["model_version"] != "uniform-random"
  assert served.sum() == sum(v["count"] for row in report["rounds"]
                             for v in row["versions"].values())
  users = testing.users_of(model, records["observation"][served])
  np.testing.assert_allclose(records["reward"][served],
                             model.reward(users, records["action"][served]),
                             rtol=1e-5, atol=1e-5)
