"""The closed loop on one machine: startup pipeline, endpoint, simulated traffic with
feedback, triggered retraining and hot swaps, round after round."""
import json
import os
import time
from typing import Any, Dict, List

import httpx

from functions.trigger import main as trigger
from rlops import log_sinks, model_io, plots, simulation, traffic, workdirs
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
  probabilities = model_io.probabilities(model_io.load_serving_policy(directory), model.user_vectors)
  return float((model.optimal_rewards - (probabilities * model.approx_ratings).sum(axis=1)).mean())


def _decision(outcome: Dict[str, Any]) -> str:
  if not outcome["started"]:
    return f"not run ({outcome['reason']})"
  result = outcome["result"]
  return ("blessed, pushed " + os.path.basename(result["pushed_destination"])
          if result.get("pushed") else "not blessed")


def run_demo(config: Config, rounds: int, requests_per_round: int, threshold: int) -> Dict[str, Any]:
  """Runs the loop; returns the startup outcome and one row per round."""
  paths = workdirs.LocalPaths(config.workdir)
  startup = local_runner.run(config, "startup")
  model = simulation.MovieLensModel.from_config(config)
  sink = log_sinks.InProcessSink(paths.warehouse)
  app = serving_app.create_app(paths.serving, sink, outbox_path=os.path.join(config.workdir, "outbox.jsonl"),
                          poll_seconds=0.5, seed=config.environment.seed)
  rows: List[Dict[str, Any]] = []
  with server.ServerThread(app) as endpoint:
    for index in range(rounds):
      if startup.get("pushed") or rows:
        _wait_for_version(endpoint.url, model_io.latest_version(paths.serving))
      served = traffic.run_simulation(f"{endpoint.url}/predict", model, requests_per_round, sink,
                                        seed=config.environment.seed + index, progress=True)
      if not app.state.logger.flush(timeout=60.0):
        raise TimeoutError("prediction logs were not delivered within 60 s")
      time.sleep(1.1)  # Windows end at whole seconds: let this round's last second end.
      outcome = trigger.maybe_retrain(config, threshold)
      for version, stats in served["versions"].items():
        stats["expected_regret"] = expected_regret(model, os.path.join(paths.serving, version))
      rows.append({"round": index + 1, "versions": served["versions"], "requests": served["requests"],
                   "errors": served["errors"], "mean_reward": served["mean_reward"],
                   "regret": served["mean_regret"],
                   "expected_regret": max(s["expected_regret"] for s in served["versions"].values()),
                   "retraining": _decision(outcome),
                   "new_records": outcome.get("new_records")})
  report = {"startup": {k: startup.get(k) for k in ("model_id", "blessed", "pushed_destination")},
            "rounds": rows, "config": json.loads(config.to_json())}
  with open(os.path.join(config.workdir, "demo_report.json"), "w") as f:
    json.dump(report, f, indent=2)
  plots.rounds(rows, os.path.join(config.workdir, "demo_rounds.png"))
  return report


def print_table(report: Dict[str, Any]) -> None:
  print("\nregret: mean over the round's requests; expected: the serving policy's exact expected "
        "regret over all users")
  print(f"{'round':>5}  {'serving version(s)':24s} {'requests':>8}  {'mean reward':>11}  "
        f"{'regret':>7}  {'expected':>8}  retraining after the round")
  for row in report["rounds"]:
    versions = ", ".join(row["versions"]) or "-"
    print(f"{row['round']:>5}  {versions:24s} {row['requests']:>8}  {row['mean_reward']:>11.3f}  "
          f"{row['regret']:>7.3f}  {row['expected_regret']:>8.3f}  {row['retraining']}")
