"""Does the loop visibly learn? Issue 11's targets, on the loop reduced to its learning.

Runs `rlops.learning_loop` (startup on a few hundred uniformly logged records,
then rounds of serving with inverse-gap exploration, optimistic gaps
(`rlops.config.LEARNING_LOOP_AGENT`) and warm-started retraining) beside
uniform random and TF-Agents' online LinUCB on the same users, for 20 and 100
movies; then a drift (the movie factors permuted) with
and without the recency mechanism (forgetting factor, and the exploration's
record count restarted when the served reward falls below the model's
prediction). Prints every figure and whether each target is met (it never
fails on a target); writes a JSON and a PNG.

  .venv/bin/python bench/learning_loop.py [--data u.data] [--rounds 6] [--requests 2000]
"""
import argparse
import dataclasses
import json
import pathlib
import warnings
from typing import List, Optional

from rlops import noise  # pylint: disable=g-import-not-at-top

noise.quiet_libraries()  # Before TensorFlow, TF-Agents and Gym are imported, as the CLI.
warnings.filterwarnings("ignore", category=SyntaxWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from rlops import learning_loop, movielens, plots, simulation
from rlops.config import LEARNING_LOOP_AGENT, AgentConfig
# pylint: enable=g-import-not-at-top,wrong-import-position

RANK_K = 20
TARGETS = {20: 0.02, 100: 0.05}  # num_movies: expected regret by the fourth retraining
RECENT = {"forgetting": 0.3, "restart_shortfall": 0.5}


def _round_table(name: str, result: learning_loop.LoopResult, uniform: List[np.ndarray],
                 linucb: Optional[List[np.ndarray]] = None) -> None:
  """Per round: expected and served regret of the loop, the references' served regret."""
  print(f"\n{name}")
  print(f"{'round':>5} {'retrainings':>11} {'expected':>9} {'served':>8} {'uniform':>8} "
        f"{'online linucb':>13} {'shortfall':>9}")
  for index, expected in enumerate(result.expected_regret):
    reference = f"{linucb[index].mean():>13.4f}" if linucb else f"{'-':>13}"
    print(f"{index + 1:>5} {index:>11} {expected:>9.4f} {result.round_regret[index]:>8.4f} "
          f"{uniform[index].mean():>8.4f} {reference} {result.reward_shortfall[index]:>9.3f}")


def _met(flag: bool) -> str:
  return "met" if flag else "NOT met"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=None,
                      help="ml-100k/ folder, its zip, or u.data (default: generated ratings)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--startup", type=int, default=300,
                      help="startup samples (default: %(default)s)")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--requests", type=int, default=2000, help="requests per round")
  parser.add_argument("--drift-at-round", type=int, default=4)
  parser.add_argument("--gamma-scale", type=float, default=LEARNING_LOOP_AGENT["gamma_scale"])
  parser.add_argument("--optimism", type=float, default=LEARNING_LOOP_AGENT["optimism"])
  parser.add_argument("--tikhonov-weight", type=float,
                      default=LEARNING_LOOP_AGENT["tikhonov_weight"])
  parser.add_argument("--movies", default="20,100", help="settings, comma-separated")
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parent / "results")
  args = parser.parse_args()
  ratings = (movielens.load_ratings(args.data) if args.data
             else movielens.generate_ratings(args.seed))
  args.output_dir.mkdir(parents=True, exist_ok=True)
  rule = AgentConfig(**{**LEARNING_LOOP_AGENT, "gamma_scale": args.gamma_scale,
                        "optimism": args.optimism, "tikhonov_weight": args.tikhonov_weight})
  figures, curves, verdicts = {}, {}, []

  for num_movies in (int(m) for m in args.movies.split(",")):
    model = simulation.MovieLensModel(ratings, num_movies, min(RANK_K, num_movies))
    users = learning_loop.served_users(model, args.rounds, args.requests, args.seed)
    worlds = learning_loop.models_per_round(model, args.rounds, None, args.seed)
    result = learning_loop.run(model, rule, args.startup, args.rounds, args.requests,
                               seed=args.seed, progress=True)
    linucb = learning_loop.online_linucb(model, users, worlds, progress=True)
    uniform = learning_loop.uniform_regret(users, worlds)
    _round_table(f"{num_movies} movies, rank {model.rank_k}: startup on {args.startup} uniform "
                 f"samples, {args.requests} requests per round", result, uniform, linucb)
    means = learning_loop.summary(result, users, worlds, linucb)
    by_fourth = result.expected_regret[min(4, args.rounds - 1)]
    falling = result.expected_regret[1] < result.expected_regret[0]
    target = TARGETS.get(num_movies, TARGETS[100])
    verdicts += [
        f"{num_movies} movies: expected regret after 4 retrainings {by_fourth:.4f} <= {target}: "
        f"{_met(by_fourth <= target)}; falling from round 1 ({result.expected_regret[0]:.4f} -> "
        f"{result.expected_regret[1]:.4f}): {_met(falling)}",
        f"{num_movies} movies: mean regret over all {result.served_regret.size} served requests "
        f"{means['loop']:.4f} vs online LinUCB {means['online_linucb']:.4f} (ratio "
        f"{means['loop'] / means['online_linucb']:.2f}), uniform {means['uniform']:.4f}: "
        f"{_met(means['loop'] <= means['online_linucb'])}"]
    figures[f"{num_movies}_movies"] = {"expected_regret": result.expected_regret,
                                       "round_regret": result.round_regret, **means}
    curves[f"{num_movies} movies"] = {"loop": result.cumulative_regret,
                                      "online LinUCB": np.cumsum(np.concatenate(linucb)),
                                      "uniform": np.cumsum(np.concatenate(uniform))}

  model = simulation.MovieLensModel(ratings, 20, RANK_K)
  drift_rounds = args.drift_at_round + 4
  users = learning_loop.served_users(model, drift_rounds, args.requests, args.seed)
  worlds = learning_loop.models_per_round(model, drift_rounds, args.drift_at_round, args.seed)
  recoveries = {}
  for name, settings in (("with recency", RECENT), ("without recency", {})):
    result = learning_loop.run(
        model, dataclasses.replace(rule, forgetting=settings.get("forgetting", 1.0)),
        args.startup, drift_rounds, args.requests, seed=args.seed,
        drift_at_round=args.drift_at_round,
        restart_shortfall=settings.get("restart_shortfall"), progress=True)
    _round_table(f"drift at round {args.drift_at_round}, 20 movies, {name} {settings}", result,
                 learning_loop.uniform_regret(users, worlds))
    recoveries[name] = learning_loop.retrainings_to_recover(result.expected_regret,
                                                            args.drift_at_round)
    figures[f"drift_{name.replace(' ', '_')}"] = {"expected_regret": result.expected_regret,
                                                  "retrainings_to_recover": recoveries[name]}
  with_recency, drift_at = recoveries["with recency"], args.drift_at_round
  verdicts.append(
      f"drift: back within 2x the pre-drift expected regret after {with_recency} retrainings "
      f"with recency (target <= 3: {_met(with_recency is not None and with_recency <= 3)}); "
      f"without: {recoveries['without recency'] or f'more than {drift_rounds - drift_at}'}")

  print("\nTargets")
  for verdict in verdicts:
    print("  " + verdict)
  (args.output_dir / "learning_loop.json").write_text(json.dumps(figures, indent=2))
  path = plots.cumulative_regret(curves, args.output_dir / "learning_loop.png")
  print(f"figures: {args.output_dir / 'learning_loop.json'}, plot: {path}")


if __name__ == "__main__":
  main()
