"""The closed loop in one process, without pipelines or servers: serve, log, retrain.

What `rlops demo` does across a pipeline, an endpoint and a warehouse, reduced
to its learning: a startup model trained on uniformly logged records, then
rounds in which the serving policy (the exploration rule over the model's
estimated rewards) answers simulated users and the model is warm-started on
the round's logged records. Every figure is on the simulation's true rewards:
the exact expected regret of the serving policy over all users, and the
regret of each served request. The references see the same users in the same
order: uniform random, and TF-Agents' online LinUCB (`train_eval_movielens.py`:
alpha 10, trained after every batch of 8).
"""
import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from rlops import agents, exploration, model_io, simulation, training
from rlops.config import AgentConfig

REFERENCE_BATCH_SIZE = 8
REFERENCE_ALPHA = 10.0


@dataclasses.dataclass
class LoopResult:
  """Per round: the serving policy's exact expected regret, the served requests' regret."""
  expected_regret: List[float]
  served_regret: np.ndarray  # [rounds, requests_per_round]
  # Mean reward the model predicted for its own choices minus the mean served reward.
  reward_shortfall: List[float]

  @property
  def round_regret(self) -> List[float]:
    return [float(row.mean()) for row in self.served_regret]

  @property
  def cumulative_regret(self) -> np.ndarray:
    return np.cumsum(self.served_regret.ravel())


def expected_regret(agent, rule: AgentConfig, trained_records: float,
                    model: simulation.MovieLensModel) -> float:
  """Exact expected regret over all users of the agent's serving policy under `rule`."""
  probabilities = agents.exploration_probabilities(agent, rule, trained_records,
                                                   tf.constant(model.user_vectors))
  return exploration.expected_regret(probabilities.numpy(), model.approx_ratings)


def served_users(model: simulation.MovieLensModel, rounds: int, requests_per_round: int,
                 seed: int) -> np.ndarray:
  """[rounds, requests_per_round] user rows, the same for the loop and its references."""
  return np.random.default_rng(seed).integers(0, model.num_users, size=(rounds, requests_per_round))


def models_per_round(model: simulation.MovieLensModel, rounds: int,
                     drift_at_round: Optional[int], seed: int) -> List[simulation.MovieLensModel]:
  """The simulation each round (1-based) runs on: drifted from `drift_at_round` on."""
  if drift_at_round is None:
    return [model] * rounds
  drifted = model.drifted(seed)
  return [drifted if index + 1 >= drift_at_round else model for index in range(rounds)]


def run(model: simulation.MovieLensModel, rule: AgentConfig, startup_samples: int,
        rounds: int, requests_per_round: int, seed: int = 0,
        drift_at_round: Optional[int] = None, train_batch_size: int = 4096,
        restart_shortfall: Optional[float] = None, progress: bool = False) -> LoopResult:
  """Startup on `startup_samples` uniformly logged records, then serve-and-retrain rounds.

  Args:
    model: The simulation.
    rule: Agent and exploration settings (forgetting included).
    startup_samples: Uniformly logged records of the startup model.
    rounds: Serving rounds; the model is retrained after each.
    requests_per_round: Users served per round.
    seed: Seeds users, actions and the drift.
    drift_at_round: First round (1-based) served on the drifted simulation; None: no drift.
    train_batch_size: Records per agent update (forgetting applies per update).
    restart_shortfall: When the round's mean served reward falls this far below
      what the model predicted for its own choices (the Trigger's early signal),
      the exploration's count of records restarts at 0: the next round explores
      as a fresh model would. None: never.
    progress: Show a progress bar.
  """
  rng = np.random.default_rng(seed + 1)
  users = rng.integers(0, model.num_users, size=startup_samples)
  actions = rng.integers(0, model.num_movies, size=startup_samples).astype(np.int32)
  agent = model_io.new_agent(rule, model.num_movies, model.rank_k)
  train_step = training.make_train_step(agent)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions),
                           batch_size=train_batch_size, train_step=train_step)
  forgetting = rule.forgetting if rule.is_linear else 1.0
  records = training.trained_records(0, startup_samples, train_batch_size, forgetting)
  schedule = served_users(model, rounds, requests_per_round, seed)
  simulations = models_per_round(model, rounds, drift_at_round, seed)
  expected, served, shortfall = [], np.empty(schedule.shape), []
  estimate = agents.estimated_rewards_fn(agent)
  for index in tqdm(range(rounds), unit="round", disable=not progress, desc="loop"):
    world = simulations[index]
    expected.append(expected_regret(agent, rule, records, world))
    round_users = schedule[index]
    observations = world.observe(round_users)
    estimates = estimate(tf.constant(observations)).numpy()
    probabilities = agents.exploration_probabilities(agent, rule, records,
                                                     tf.constant(observations)).numpy()
    cumulative = probabilities.cumsum(axis=1)
    draws = rng.random((len(round_users), 1))
    actions = np.minimum((cumulative < draws).sum(axis=1), world.num_movies - 1).astype(np.int32)
    rewards = world.reward(round_users, actions)
    served[index] = world.optimal_rewards[round_users] - rewards
    shortfall.append(float(estimates[np.arange(len(actions)), actions].mean() - rewards.mean()))
    training.train_on_logged(agent, observations, actions, rewards,
                             batch_size=train_batch_size, train_step=train_step)
    records = training.trained_records(records, len(actions), train_batch_size, forgetting)
    if restart_shortfall is not None and shortfall[-1] > restart_shortfall:
      records = 0.0
  return LoopResult(expected_regret=expected, served_regret=served, reward_shortfall=shortfall)


def online_linucb(model: simulation.MovieLensModel, users: Sequence[np.ndarray],
                  simulations: Sequence[simulation.MovieLensModel],
                  progress: bool = False) -> List[np.ndarray]:
  """Per round, the regret of TF-Agents' online LinUCB on the round's users, batch 8."""
  agent = model_io.new_agent(AgentConfig(name="linucb", alpha=REFERENCE_ALPHA),
                             model.num_movies, model.rank_k)
  act = agents.exploring_action_fn(agent, AgentConfig(name="linucb", alpha=REFERENCE_ALPHA))
  train_step = training.make_train_step(agent)
  regret = [np.empty(len(row)) for row in users]
  steps = [(index, start) for index, row in enumerate(users)
           for start in range(0, len(row), REFERENCE_BATCH_SIZE)]
  for index, start in tqdm(steps, unit="batch", disable=not progress, desc="online linucb"):
    world = simulations[index]
    batch = users[index][start:start + REFERENCE_BATCH_SIZE]
    observations = world.observe(batch)
    actions = act(tf.constant(observations)).numpy()
    rewards = world.reward(batch, actions)
    regret[index][start:start + len(batch)] = world.optimal_rewards[batch] - rewards
    train_step(observations, actions, rewards)
  return regret


def uniform_regret(users: Sequence[np.ndarray],
                   simulations: Sequence[simulation.MovieLensModel]) -> List[np.ndarray]:
  """Per round, the expected regret of uniformly random choices for the round's users."""
  return [world.optimal_rewards[row] - world.approx_ratings[row].mean(axis=1)
          for world, row in zip(simulations, users)]


def retrainings_to_recover(expected: List[float], drift_at_round: int) -> Optional[int]:
  """Retrainings after the drift until the expected regret is within 2x its pre-drift level."""
  before = expected[drift_at_round - 2]
  for retrainings, value in enumerate(expected[drift_at_round - 1:]):
    if value <= 2 * before:
      return retrainings
  return None


def summary(result: LoopResult, users: Sequence[np.ndarray],
            simulations: Sequence[simulation.MovieLensModel],
            linucb: Sequence[np.ndarray]) -> Dict[str, float]:
  """Mean regret over all served requests of the loop and of the references."""
  return {"loop": float(result.served_regret.mean()),
          "online_linucb": float(np.concatenate(linucb).mean()),
          "uniform": float(np.concatenate(uniform_regret(users, simulations)).mean())}
