"""`rlops evaluate`: settings ranked on the warehouse's records, the best written as config."""
import numpy as np

from cli import main as cli
from rlops import testing, warehouse, workdirs
from rlops.config import Config


def test_ranks_settings_from_the_warehouse_and_writes_the_best(tmp_path, capsys):
  model = testing.small_model()
  rng = np.random.default_rng(2)
  users = rng.integers(0, model.num_users, size=600)
  actions = rng.integers(0, model.num_movies, size=600)
  store = warehouse.Warehouse(workdirs.LocalPaths(str(tmp_path)).warehouse)
  store.insert_predictions([
      {"request_id": f"r{i}", "event_time": 1000.0 + i, "observation": model.observe(users[i]),
       "action": int(actions[i]), "propensity": 1 / model.num_movies,
       "model_version": "uniform-random", "source": "test"} for i in range(600)])
  store.insert_feedback([{"request_id": f"r{i}", "event_time": 2000.0 + i,
                          "reward": float(model.reward(users[i], actions[i]))} for i in range(600)])
  store.close()
  best = tmp_path / "best.json"
  assert cli.main(["evaluate", "--workdir", str(tmp_path), "--num-movies", "10", "--rank-k", "4",
                   "--setting", "tikhonov_weight=1e9", "--setting", "alpha=1",
                   "--write-config", str(best)]) == 0
  output = capsys.readouterr().out
  assert "trained on the older 420 records, estimated on the newer 180" in output
  assert (tmp_path / "evaluate.png").exists() and (tmp_path / "evaluate_report.json").exists()
  # A huge ridge penalty cannot learn: the other setting is best.
  assert Config.from_json(best.read_text()).agent.tikhonov_weight == 0.001
