"""The serving rule: the model's exploration rule over its estimated rewards, with exact
propensities from `rlops.exploration.probabilities` (the function the Evaluator and the
regret computations use too)."""
import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from rlops import agents, exploration, model_io, records
from rlops.config import AgentConfig
from rlops.serving import recent


@dataclasses.dataclass(frozen=True)
class ServingModel:
  """One loaded version: its reward estimates and its exploration rule."""
  version: str
  agent: str
  num_actions: int
  rank_k: int
  rule: AgentConfig
  trained_records: float
  # observations -> ([n, K] estimated rewards, [n, K] upper bounds or None), as
  # agents.exploration_probabilities computes them.
  estimates: Callable[[np.ndarray], Tuple[np.ndarray, Optional[np.ndarray]]]

  def probabilities(self, observations: np.ndarray) -> np.ndarray:
    """[n, K] exact action probabilities for a [n, rank_k] float32 batch."""
    estimated_rewards, upper_bounds = self.estimates(observations)
    return exploration.probabilities(estimated_rewards, self.rule, self.trained_records,
                                     upper_bounds)

  def act(self, observations: np.ndarray,
          rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(actions, propensities) for a [n, rank_k] float32 batch, sampled from the rule."""
    probabilities = self.probabilities(observations)
    draws = rng.random((len(probabilities), 1))
    actions = np.minimum((probabilities.cumsum(axis=1) < draws).sum(axis=1),
                         self.num_actions - 1)
    return actions, probabilities[np.arange(len(actions)), actions]

  def describe(self) -> Dict[str, Any]:
    return {"version": self.version, "agent": self.agent, "num_actions": self.num_actions,
            "rank_k": self.rank_k, "exploration": self.rule.exploration,
            "epsilon": self.rule.epsilon, "optimism": self.rule.optimism,
            "trained_records": self.trained_records}


def load_model(directory: str, version: Optional[str]) -> ServingModel:
  """Builds the serving rule of the model in `directory` once, from its agent checkpoint.

  Args:
    directory: The model directory.
    version: What it serves as: Pusher's version folder name; None for the
      `model_version` of its metadata (a directory served alone, as on Vertex,
      whose path says nothing of the model).

  Raises:
    ValueError: The metadata fails the configuration's validation, or the version
      cannot be stored in a prediction row or is longer than the table of served
      request ids holds.
    AssertionError: The checkpoint does not match the agent of the metadata.
  """
  agent, metadata = model_io.load_agent(directory)
  if version is None:
    version = model_io.model_version_of(metadata)
  problem = records.text_problem(version)
  if problem:
    raise ValueError(f"model_version {version!r:.100} {problem}: its rows could not be stored")
  if len(version.encode()) > recent.MAX_MODEL_VERSION_BYTES:
    raise ValueError(f"model_version {version[:80]!r} is longer than "
                     f"{recent.MAX_MODEL_VERSION_BYTES} bytes")
  config = model_io.agent_config_of(metadata)
  rank_k = int(metadata["rank_k"])
  if config.is_linear:
    arms = agents.linear_arms(agent)
    theta_t = arms.theta.numpy().T
    inverse_cov = arms.inverse_cov.numpy() if config.optimism else None

    def estimates(observations):  # agents.linear_scores in NumPy.
      means = observations @ theta_t
      if inverse_cov is None:
        return means, None
      variances = np.einsum("bi,kij,bj->bk", observations, inverse_cov, observations)
      return means, means + config.optimism * np.sqrt(np.maximum(variances, 0.0))
  else:
    estimate = tf.function(agents.estimated_rewards_fn(agent),
                           input_signature=[tf.TensorSpec([None, rank_k], tf.float32)])

    def estimates(observations):
      return estimate(observations).numpy(), None
  model = ServingModel(version=version, agent=config.name, num_actions=int(metadata["num_movies"]),
                       rank_k=rank_k, rule=config,
                       trained_records=model_io.trained_records_of(metadata),
                       estimates=estimates)
  # Traces the neural rule before serving, and proves the model gives a distribution.
  probabilities = model.probabilities(np.zeros((1, rank_k), np.float32))
  if not (probabilities.shape == (1, model.num_actions) and np.isfinite(probabilities).all()
          and (probabilities >= 0).all()
          and abs(probabilities.sum() - 1.0) < 1e-6):
    raise ValueError(f"the model gives no distribution over its actions: {probabilities!r:.200}")
  return model
