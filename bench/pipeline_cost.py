"""Startup-pipeline cost and pushed-policy quality, beside a plain script doing the same work.

The plain script generates the same number of uniform-random interactions with NumPy, trains
the same agent in the same batches, and measures the greedy regret: the ratio of wall times is
what TFX, Beam, MLMD and the artifact I/O cost. Prints figures; asserts nothing.

    .venv/bin/python bench/pipeline_cost.py [--samples 20000]
"""
import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=wrong-import-position

from rlops import agents, model_io, simulation, training  # pylint: disable=wrong-import-position
from rlops.config import Config, EnvironmentConfig, PipelineConfig  # pylint: disable=wrong-import-position
from tfx_pipeline import local_runner  # pylint: disable=wrong-import-position

SETTINGS = {"default": EnvironmentConfig(num_movies=20, rank_k=20),
            "harder": EnvironmentConfig(num_movies=100, rank_k=20)}


def plain_script(config: Config) -> dict:
  start = time.perf_counter()
  model = simulation.MovieLensModel.from_config(config)
  rng = np.random.default_rng(0)
  users = rng.integers(0, model.num_users, size=config.pipeline.samples)
  actions = rng.integers(0, model.num_movies, size=config.pipeline.samples).astype(np.int32)
  agent = model_io.new_agent(config.agent, model.num_movies, model.rank_k)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions),
                           batch_size=config.pipeline.train_batch_size)
  greedy = training.evaluate_policy(agents.greedy_policy(agent), model, np.arange(model.num_users))
  return {"seconds": time.perf_counter() - start, "greedy_regret": greedy["regret"]}


def pipeline_run(config: Config) -> dict:
  start = time.perf_counter()
  result = local_runner.run(config, "startup")
  seconds = time.perf_counter() - start
  model = simulation.MovieLensModel.from_config(config)
  agent, _ = model_io.load_agent(os.path.join(result["pushed_destination"]))
  greedy = training.evaluate_policy(agents.greedy_policy(agent), model, np.arange(model.num_users))
  return {"seconds": seconds, "greedy_regret": greedy["regret"], "blessed": result["blessed"],
          "serving_oracle_regret": result["evaluation"]["candidate"]["oracle_regret"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--samples", type=int, default=20_000)
  args = parser.parse_args()
  figures = {}
  for name, env in SETTINGS.items():
    with tempfile.TemporaryDirectory() as workdir:
      config = Config(environment=env, pipeline=PipelineConfig(samples=args.samples),
                      workdir=workdir).validate()
      figures[name] = {"plain": plain_script(config), "pipeline": pipeline_run(config)}
  print(f"\nstartup pipeline vs plain script, {args.samples} generated samples, LinUCB")
  print(f"{'setting':10s} {'pipeline s':>11s} {'plain s':>8s} {'ratio':>6s} "
        f"{'pushed greedy regret':>21s} {'plain greedy regret':>20s} {'serving regret':>15s}")
  for name, f in figures.items():
    p, s = f["pipeline"], f["plain"]
    print(f"{name:10s} {p['seconds']:11.1f} {s['seconds']:8.1f} {p['seconds'] / s['seconds']:6.1f} "
          f"{p['greedy_regret']:21.3f} {s['greedy_regret']:20.3f} "
          f"{p['serving_oracle_regret']:15.3f}")
  print(json.dumps(figures, indent=2))


if __name__ == "__main__":
  main()
