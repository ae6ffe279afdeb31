"""End to end: startup and retraining pipelines with LocalDagRunner, checked from MLMD."""
import json
import os
import time
import uuid

import numpy as np

from cli import main as cli
from rlops import simulation, testing, workdirs
from rlops import warehouse as warehouse_lib
from rlops.config import Config, DataConfig, EnvironmentConfig, PipelineConfig
from tfx_pipeline import local_runner, metadata

STARTUP_NODES = {"Generator", "Ingester", "latest_blessed_model_resolver", "Trainer", "Evaluator",
                 "Pusher"}
RETRAIN_NODES = STARTUP_NODES - {"Generator"}


def _log_shuffled_rewards(config: Config, count: int) -> None:
  """A logging bug: uniform-random interactions whose rewards belong to other records."""
  model = simulation.MovieLensModel.from_config(config)
  rng = np.random.default_rng(5)
  users = rng.integers(0, model.num_users, size=count)
  actions = rng.integers(0, model.num_movies, size=count)
  rewards = rng.permutation(model.reward(users, actions))
  ids = [uuid.uuid4().hex for _ in range(count)]
  now = time.time()
  store = warehouse_lib.Warehouse(workdirs.LocalPaths(config.workdir).warehouse)
  store.insert_predictions([
      {"request_id": rid, "event_time": now, "observation": model.observe([u])[0].tolist(),
       "action": int(a), "propensity": 1.0 / model.num_movies, "model_version": "buggy",
       "source": "test"} for rid, u, a in zip(ids, users, actions)])
  store.insert_feedback([{"request_id": rid, "event_time": now, "reward": float(r)}
                         for rid, r in zip(ids, rewards)])
  store.close()


def _nodes_of_run(store, result) -> set:
  trainer = metadata.producer(store, result["model_id"])
  run = metadata.run_id(store, trainer)
  context = store.get_context_by_type_and_name("pipeline_run", run)
  executions = store.get_executions_by_context(context.id)
  assert all(e.last_known_state == e.COMPLETE for e in executions)
  return {metadata.node_id(store, e) for e in executions}


def test_startup_then_retraining_with_gate_and_lineage(tmp_path, capsys):
  config = Config(data=DataConfig(seed=3), environment=EnvironmentConfig(num_movies=10, rank_k=5),
                  pipeline=PipelineConfig(samples=3000, bootstrap_samples=50),
                  workdir=str(tmp_path / "work"))
  paths = workdirs.LocalPaths(config.workdir)

  startup = local_runner.run(config, "startup")
  store = metadata.connect(paths.metadata)
  assert startup["trained"] and startup["blessed"] and startup["pushed"]
  assert _nodes_of_run(store, startup) == STARTUP_NODES
  assert startup["samples"] + startup["evaluation"]["eval_records"] == 3000
  assert os.path.isdir(startup["pushed_destination"])
  # The learned policy beats the uniform-random logging policy on the true value.
  evaluation = startup["evaluation"]
  assert (evaluation["candidate"]["oracle"]["value"]
          > evaluation["baseline"]["oracle"]["value"] + 0.3)

  time.sleep(1)
  model = simulation.MovieLensModel.from_config(config)
  with_traffic = warehouse_lib.Warehouse(paths.warehouse)
  testing.log_policy_traffic(model, paths.serving, with_traffic, requests=2000)
  with_traffic.close()
  time.sleep(1)
  retrain = local_runner.run(config, "retrain")
  assert retrain["trained"] and retrain["window"]["span"] == startup["window"]["span"] + 1
  assert retrain["window"]["begin"] == startup["window"]["end"]
  assert _nodes_of_run(store, retrain) == RETRAIN_NODES
  trainer = metadata.producer(store, retrain["model_id"])
  assert [m.id for m in metadata.inputs(store, trainer.id)["base_model"]] == [startup["model_id"]]
  assert retrain["evaluation"]["baseline_name"] == f"blessed model {startup['model_id']}"
  assert retrain["warm_started_from_model"] == startup["model_id"]
  assert retrain["blessed"] and retrain["pushed"]
  assert len(os.listdir(paths.serving)) == 2

  # Nothing new since the last trained window: no training, no new Trainer execution.
  again = local_runner.run(config, "retrain")
  assert not again["trained"] and "no new rewarded records" in again["reason"]
  assert len(metadata.artifacts_of_type(store, "Model")) == 2

  # A candidate trained from scratch on shuffled rewards is neither blessed nor pushed.
  time.sleep(1)
  _log_shuffled_rewards(config, 3000)
  time.sleep(1)
  bad = local_runner.run(config.replace(pipeline={"warm_start": False}), "retrain")
  assert bad["trained"] and not bad["blessed"] and not bad["pushed"]
  assert "oracle" in " ".join(r for r in bad["evaluation"]["reasons"] if r.endswith("(worse)"))
  assert len(os.listdir(paths.serving)) == 2
  assert metadata.latest_pushed_model(store).id == retrain["model_id"]

  # Every Trainer trained on its own span.
  spans = [metadata.properties(m)["span"] for m in metadata.artifacts_of_type(store, "Model")]
  assert len(spans) == len(set(spans)) == 3

  chain = metadata.lineage(store, metadata.latest_pushed_model(store))
  assert [link["model"]["id"] for link in chain] == [retrain["model_id"], startup["model_id"]]
  assert chain[1]["generator"]["record_count"] == 3000
  assert chain[0]["generator"] is None and chain[0]["examples"]["span"] == retrain["window"]["span"]

  # The same chain from the command line, as JSON and as a picture.
  graph = tmp_path / "lineage.png"
  assert cli.main(["lineage", "--workdir", config.workdir, "--json", "--graph", str(graph)]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert [link["model"]["id"] for link in printed] == [retrain["model_id"], startup["model_id"]]
  assert graph.stat().st_size > 10_000
