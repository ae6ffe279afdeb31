"""The closed loop on one machine: startup pipeline, endpoint, simulated traffic with
feedback, triggered retraining and hot swaps, round after round."""
import json
import os
import time
from typing import Any, Dict, List, Optional

import httpx
import numpy as np
import tensorflow as tf

from functions.trigger import main as trigger
from rlops import (exploration, learning_loop, log_sinks, model_io, plots, simulation, traffic,
                   workdirs)
from rlops.config import Config
from rlops.serving import app as serving_app
from rlops.serving import server
from tfx_pipeline import local_runner


def _wait_for_version(url: str, version: str, timeout: float = 60.0) -> None:
  deadline = time.monotonic() + timeout
  while httpx.get(f"{url}/version", timeout=5.0).json().get("version") != version:
    if time.monotonic() > deadline:
      raise TimeoutError(f"the endpoint did not swap to version {version} in {timeout:.0f} s")
    time.sleep(0.2)


def expected_regret(model: simulation.MovieLensModel, directory: str) -> float:
  """The serving policy's exact expected regret over all simulated users (no sampling noise)."""
  probabilities = model_io.probabilities(model_io.load_serving_policy(directory),
                                         model.user_vectors)
  return exploration.expected_regret(probabilities, model.approx_ratings)


def _decision(outcome: Dict[str, Any]) -> str:
  if not outcome["started"]:
    return f"not run ({outcome['reason']})"
  result = outcome["result"]
  return ("blessed, pushed " + os.path.basename(result["pushed_destination"])
          if result.get("pushed") else "not blessed")


def _references(model: simulation.MovieLensModel, users: List[np.ndarray],
                worlds: List[simulation.MovieLensModel]) -> Dict[str, Dict[str, List[float]]]:
  """Per-round and cumulative regret of uniform random and online LinUCB on the same users."""
  references = {}
  for name, regret in (("uniform random", learning_loop.uniform_regret(users, worlds)),
                       ("online LinUCB (TF-Agents)",
                        learning_loop.online_linucb(model, users, worlds, progress=True))):
    references[name] = {"regret": [float(row.mean()) for row in regret],
                        "cumulative_regret": np.cumsum([row.sum() for row in regret]).tolist()}
  return references


def _write_round(writer, row: Dict[str, Any], outcome: Dict[str, Any]) -> None:
  """The round's served reward and regret, and its retraining's estimates and gate decision,
  as TensorBoard scalars at step = round."""
  step = row["round"]
  with writer.as_default(step=step):
    for name in ("mean_reward", "regret", "expected_regret", "cumulative_regret"):
      tf.summary.scalar(f"served/{name}", row[name])
    result = outcome.get("result") or {}
    if result.get("trained"):
      tf.summary.scalar("gate/blessed", float(bool(result.get("blessed"))))
      for metric, estimate in result["evaluation"]["candidate"].items():
        if isinstance(estimate, dict) and "value" in estimate:
          for bound in ("value", "low", "high"):
            if bound in estimate:
              tf.summary.scalar(f"estimates/{metric}_{bound}", estimate[bound])
  writer.flush()


def run_demo(config: Config, rounds: int, requests_per_round: int, threshold: int,
             drift_at_round: Optional[int] = None) -> Dict[str, Any]:
  """Runs the loop; returns the startup outcome, one row per round and the references.

  Args:
    config: The validated config.
    rounds: Rounds of traffic, each followed by a retraining check.
    requests_per_round: Simulated requests (one user each) per round.
    threshold: New rewarded records that trigger a retraining.
    drift_at_round: First round (1-based) whose users' preferences have shifted
      (the movie factors permuted); None: no drift.
  """
  paths = workdirs.LocalPaths(config.workdir)
  startup = local_runner.run(config, "startup")
  model = simulation.MovieLensModel.from_config(config)
  seed = config.environment.seed
  users = [learning_loop.served_users(model, 1, requests_per_round, seed + index)[0]
           for index in range(rounds)]
  worlds = learning_loop.models_per_round(model, rounds, drift_at_round, seed)
  sink = log_sinks.InProcessSink(paths.warehouse, log_sinks.RowLimits.of(config.environment))
  app = serving_app.create_app(paths.serving, sink, outbox_path=paths.outbox, poll_seconds=0.5,
                               seed=config.environment.seed)
  rows: List[Dict[str, Any]] = []
  cumulative = 0.0
  writer = tf.summary.create_file_writer(paths.tensorboard)
  with server.ServerThread(app) as endpoint:
    for index, world in enumerate(worlds):
      if startup.get("pushed") or rows:
        _wait_for_version(endpoint.url, model_io.latest_version(paths.serving))
      served = traffic.run_simulation(f"{endpoint.url}/predict", world, requests_per_round, sink,
                                      seed=seed + index, progress=True,
                                      user_rows=users[index][:, None],
                                      undelivered_path=paths.undelivered_feedback)
      cumulative += served["mean_regret"] * served["predictions"]
      if not app.state.logger.flush(timeout=60.0):
        raise TimeoutError("prediction logs were not delivered within 60 s")
      time.sleep(1.1)  # Windows end at whole seconds: let this round's last second end.
      outcome = trigger.maybe_retrain(config, threshold)
      for version, stats in served["versions"].items():
        stats["expected_regret"] = expected_regret(world, os.path.join(paths.serving, version))
      rows.append({"round": index + 1, "versions": served["versions"],
                   "requests": served["requests"],
                   "errors": served["errors"], "mean_reward": served["mean_reward"],
                   "regret": served["mean_regret"], "cumulative_regret": cumulative,
                   "expected_regret": max(s["expected_regret"]
                                          for s in served["versions"].values()),
                   "drifted": world is not model,
                   "retraining": _decision(outcome), "trigger": outcome["reason"],
                   "new_records": outcome.get("new_records")})
      _write_round(writer, rows[-1], outcome)
  references = _references(model, users, worlds)
  report = {"startup": {k: startup.get(k) for k in ("model_id", "blessed", "pushed_destination")},
            "rounds": rows, "references": references, "drift_at_round": drift_at_round,
            "config": json.loads(config.to_json())}
  with open(os.path.join(config.workdir, "demo_report.json"), "w") as f:
    json.dump(report, f, indent=2)
  plots.rounds(rows, os.path.join(config.workdir, "demo_rounds.png"))
  plots.learning_rounds(rows, references, os.path.join(config.workdir, "demo_learning.png"))
  return report


def print_table(report: Dict[str, Any]) -> None:
  print("\nregret: mean over the round's requests; expected: the serving policy's exact expected "
        "regret over all users")
  print(f"{'round':>5}  {'serving version(s)':24s} {'requests':>8}  {'mean reward':>11}  "
        f"{'regret':>7}  {'expected':>8}  {'cumulative':>10}  retraining after the round")
  for row in report["rounds"]:
    versions = ", ".join(row["versions"]) or "-"
    drift = " (drifted)" if row["drifted"] else ""
    print(f"{row['round']:>5}  {versions:24s} {row['requests']:>8}  {row['mean_reward']:>11.3f}  "
          f"{row['regret']:>7.3f}  {row['expected_regret']:>8.3f}  "
          f"{row['cumulative_regret']:>10.1f}"
          f"  {row['retraining']}{drift}")
    if row["trigger"].startswith("early"):
      print(f"{'':>7}trigger: {row['trigger']}")
  for name, reference in report["references"].items():
    print(f"  {name}, same users: regret per round "
          f"{', '.join(f'{value:.3f}' for value in reference['regret'])}; cumulative "
          f"{reference['cumulative_regret'][-1]:.1f}")
