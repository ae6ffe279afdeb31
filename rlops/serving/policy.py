"""The serving rule: epsilon-greedy over a model's greedy arm, with exact propensities."""
import dataclasses
from typing import Any, Callable, Dict, Tuple

import numpy as np
import tensorflow as tf

from rlops import agents, model_io


@dataclasses.dataclass(frozen=True)
class ServingModel:
  """One loaded version: its greedy rule and the exact epsilon-greedy propensities."""
  version: str
  agent: str
  num_actions: int
  rank_k: int
  epsilon: float
  greedy: Callable[[np.ndarray], np.ndarray]

  @property
  def greedy_propensity(self) -> float:
    return 1.0 - self.epsilon + self.epsilon / self.num_actions

  @property
  def other_propensity(self) -> float:
    return self.epsilon / self.num_actions

  def act(self, observations: np.ndarray,
          rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(actions, propensities) for a [n, rank_k] float32 batch."""
    greedy = self.greedy(observations)
    count = len(greedy)
    explore = rng.random(count) < self.epsilon
    actions = np.where(explore, rng.integers(0, self.num_actions, size=count), greedy)
    propensities = np.where(actions == greedy, self.greedy_propensity, self.other_propensity)
    return actions, propensities

  def describe(self) -> Dict[str, Any]:
    return {"version": self.version, "agent": self.agent, "num_actions": self.num_actions,
            "rank_k": self.rank_k, "epsilon": self.epsilon}


def load_model(directory: str, version: str) -> ServingModel:
  """Builds the serving rule of the model in `directory` once, from its agent checkpoint.

  Raises:
    ValueError: The metadata fails the configuration's validation.
    AssertionError: The checkpoint does not match the agent of the metadata.
  """
  agent, metadata = model_io.load_agent(directory)
  config = model_io.agent_config_of(metadata)
  rank_k = int(metadata["rank_k"])
  if config.is_linear:
    theta_t = agents.linear_arms(agent).theta.numpy().T

    def greedy(observations):
      return np.argmax(observations @ theta_t, axis=1)
  else:
    policy = agents.greedy_policy(agent)
    act = tf.function(lambda x: policy.action(agents.restart(x)).action,
                      input_signature=[tf.TensorSpec([None, rank_k], tf.float32)])

    def greedy(observations):
      return act(observations).numpy()
  model = ServingModel(version=version, agent=config.name, num_actions=int(metadata["num_movies"]),
                       rank_k=rank_k, epsilon=float(metadata["epsilon"]), greedy=greedy)
  model.greedy(np.zeros((1, rank_k), np.float32))  # Traces the neural rule before serving.
  return model
