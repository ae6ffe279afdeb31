"""Training loops: online on the simulation, and in large batches from logged data."""
import dataclasses
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from tf_agents.agents import tf_agent
from tf_agents.bandits.agents import linear_bandit_agent
from tf_agents.policies import tf_policy
from tf_agents.trajectories import trajectory
from tqdm.auto import tqdm

from rlops import agents
from rlops.environment import MovieLensEnvironment


def logged_experience(agent: tf_agent.TFAgent, observations, actions,
                      rewards) -> trajectory.Trajectory:
  """The agent's training trajectory, shape [batch, 1], from logged contexts, actions, rewards."""
  rewards = tf.convert_to_tensor(rewards, tf.float32)
  # The agents here emit no policy info: its spec is a structure of empty fields.
  experience = trajectory.single_step(
      observation=tf.convert_to_tensor(observations, tf.float32),
      action=tf.convert_to_tensor(actions, tf.int32),
      policy_info=agent.training_data_spec.policy_info,
      reward=rewards,
      discount=tf.zeros_like(rewards))
  return tf.nest.map_structure(lambda t: tf.expand_dims(t, 1), experience)


def make_train_step(agent: tf_agent.TFAgent) -> Callable:
  """`train_step(observations, actions, rewards) -> loss`, one agent update under tf.function."""

  @tf.function(reduce_retracing=True)
  def train_step(observations, actions, rewards):
    return agent.train(logged_experience(agent, observations, actions, rewards)).loss

  return train_step


def train_on_logged(agent: tf_agent.TFAgent, observations: np.ndarray, actions: np.ndarray,
                    rewards: np.ndarray, batch_size: int = 4096, epochs: int = 1,
                    train_step: Optional[Callable] = None, progress: bool = False) -> float:
  """Trains on logged (context, action, reward) records in large batches; returns the last loss.

  Linear agents accumulate sufficient statistics, so a second epoch would count
  every record twice and shrink their confidence bounds: they get one pass.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be positive, got {epochs}")
  if isinstance(agent, linear_bandit_agent.LinearBanditAgent) and epochs != 1:
    raise ValueError("linear agents train in one pass: a second epoch double-counts each record")
  train_step = train_step or make_train_step(agent)
  num = len(rewards)
  loss = float("nan")
  with tqdm(total=num * epochs, unit="sample", disable=not progress, desc="train") as bar:
    for _ in range(epochs):
      for start in range(0, num, batch_size):
        end = min(start + batch_size, num)
        loss = float(train_step(observations[start:end], actions[start:end], rewards[start:end]))
        bar.update(end - start)
  return loss


def trained_records(previous: float, samples: int, batch_size: int, forgetting: float) -> float:
  """Records a model has learnt from after `train_on_logged` of `samples` more.

  With forgetting, the linear agents' statistics are multiplied by `forgetting`
  before each batch, and so is this count: it is the weight of the data the
  model still holds, which is what the exploration rule should trust.
  """
  count = float(previous)
  for start in range(0, samples, batch_size):
    count = forgetting * count + min(batch_size, samples - start)
  return count


@dataclasses.dataclass
class LearningCurve:
  """Per-sample regret and reward of the policy that acted, in the order of acting."""
  regret: np.ndarray
  reward: np.ndarray
  seconds: float

  def final_regret(self, tail: float = 0.1) -> float:
    """Mean regret over the last `tail` share of the samples."""
    count = max(1, int(round(len(self.regret) * tail)))
    return float(self.regret[-count:].mean())

  def summary(self) -> dict:
    return {
        "samples": int(len(self.regret)),
        "final_regret": self.final_regret(),
        "mean_regret": float(self.regret.mean()),
        "mean_reward": float(self.reward.mean()),
        "samples_per_second": len(self.regret) / max(self.seconds, 1e-9),
    }


def train_online(agent: tf_agent.TFAgent, environment: MovieLensEnvironment, num_samples: int,
                 act: Callable, progress: bool = False) -> LearningCurve:
  """Acts with `act(observations) -> actions` and trains the agent after every batch."""
  batch_size = environment.batch_size
  train_step = make_train_step(agent)
  num_batches = max(1, num_samples // batch_size)
  regrets = np.empty((num_batches, batch_size), np.float32)
  rewards = np.empty((num_batches, batch_size), np.float32)
  time_step = environment.reset()
  start = time.perf_counter()
  for index in tqdm(range(num_batches), unit="batch", disable=not progress, desc="simulate"):
    observation = time_step.observation
    actions = act(observation).numpy()
    time_step = environment.step(actions)
    rewards[index] = time_step.reward
    regrets[index] = environment.compute_optimal_reward() - time_step.reward
    train_step(observation, actions, time_step.reward)
  return LearningCurve(regret=regrets.ravel(), reward=rewards.ravel(),
                       seconds=time.perf_counter() - start)


def evaluate_policy(policy: tf_policy.TFPolicy, model, users: np.ndarray) -> dict:
  """Expected regret and reward of `policy` on the given users, against the model's oracle."""
  actions = policy.action(agents.restart(model.observe(users))).action.numpy()
  reward = model.reward(users, actions)
  regret = model.optimal_rewards[users] - reward
  # An action is optimal when its reward ties the best one (ratings tie often at full rank).
  return {"regret": float(regret.mean()), "reward": float(reward.mean()),
          "optimal_action_share": float((regret <= 1e-5).mean())}
