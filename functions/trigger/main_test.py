"""Tests of the Trigger on a real local deployment: threshold and mutual exclusion."""
import threading
import time

from functions.trigger import main as trigger
from rlops import environment, traffic
from rlops import warehouse as warehouse_lib
from rlops.config import Config, DataConfig, EnvironmentConfig, PipelineConfig
from tfx_pipeline import local_runner


def _serve_traffic(config, requests):
  paths = local_runner.LocalPaths(config.workdir)
  store = warehouse_lib.Warehouse(paths.warehouse)
  traffic.log_policy_traffic(environment.MovieLensModel.from_config(config), paths.serving, store,
                             requests, seed=requests)
  store.close()
  time.sleep(1.1)  # Let the second of these records end: windows end at whole seconds.


def test_fires_only_past_its_threshold_and_never_twice_at_once(tmp_path):
  config = Config(data=DataConfig(seed=4), environment=EnvironmentConfig(num_movies=10, rank_k=5),
                  pipeline=PipelineConfig(samples=2000, bootstrap_samples=50),
                  workdir=str(tmp_path / "work"))
  local_runner.run(config, "startup")
  time.sleep(1.1)
  outcome = trigger.maybe_retrain(config, threshold=1)
  assert not outcome["started"] and outcome["new_records"] == 0

  _serve_traffic(config, 1500)
  outcome = trigger.maybe_retrain(config, threshold=1501)
  assert not outcome["started"] and "1500 new rewarded records, fewer than 1501" in outcome["reason"]

  with trigger._exclusive(config.workdir) as held:  # pylint: disable=protected-access
    assert held
    assert trigger.maybe_retrain(config, threshold=1)["reason"] == "a retraining run is in progress"

  outcome = trigger.maybe_retrain(config, threshold=1500)
  assert outcome["started"] and outcome["result"]["trained"] and outcome["new_records"] == 1500

  _serve_traffic(config, 1000)
  outcomes = []
  threads = [threading.Thread(target=lambda: outcomes.append(trigger.maybe_retrain(config, 500)))
             for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=300)
  assert sorted(o["started"] for o in outcomes) == [False, True]
