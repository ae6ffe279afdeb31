"""Exploration rules with exact propensities: one function for serving, evaluation and regret.

`probabilities` maps a model's [n, K] estimated rewards to the [n, K] action
probabilities of the serving policy. It runs on NumPy arrays (the endpoint,
the demo) and on tf tensors (the TF-Agents serving policy, inside
tf.function and SavedModels) with the same code.

Rules:
  inverse_gap     Inverse-gap weighting (SquareCB; Foster & Rakhlin 2020): every
                  non-greedy arm a gets 1 / (K + gamma * (r_best - r_a)), the
                  greedy arm the rest, with gamma = gamma_scale * sqrt(n) for a
                  model trained on n records: exploration shrinks as it learns,
                  and clearly bad arms are tried least. With upper bounds
                  (the rule's `optimism`), each gap is measured to the arm's
                  upper bound, never below 0.
  epsilon_greedy  Every arm epsilon / K, the greedy arm 1 - epsilon on top.
The propensity floor is the least probability of any arm (at most 1 / K).
"""
import math

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from rlops.config import EXPLORATION_RULES


def gamma(gamma_scale: float, trained_records: float) -> float:
  """Inverse-gap weighting's learning rate for a model trained on `trained_records` records."""
  return gamma_scale * math.sqrt(max(float(trained_records), 1.0))


def probabilities(estimated_rewards, rule, trained_records: float, upper_bounds=None):
  """[n, K] exact action probabilities of the exploration `rule` over estimated rewards.

  Args:
    estimated_rewards: [n, K] NumPy array or tf tensor, the model's estimated
      reward of each arm for each context.
    rule: The agent's exploration settings (`rlops.config.AgentConfig`): its
      `exploration` (one of EXPLORATION_RULES), `epsilon`, `gamma_scale` and `propensity_floor`.
    trained_records: Records the model was trained on (inverse_gap's gamma).
    upper_bounds: [n, K] optimistic estimates of the same kind, or None: the
      estimates themselves (inverse_gap only).

  Returns:
    [n, K] probabilities, rows summing to 1, of the input's kind (float64 for
    NumPy input, the input's dtype for tensors). Ties for the best arm go to
    the lowest index, as argmax does.
  """
  if rule.exploration not in EXPLORATION_RULES:
    raise ValueError(f"unknown exploration rule {rule.exploration!r}; "
                     f"choose one of {', '.join(EXPLORATION_RULES)}")
  # An ndarray first: tf.is_tensor costs more than the NumPy rule on the endpoint's one row.
  if not isinstance(estimated_rewards, np.ndarray) and tf.is_tensor(estimated_rewards):
    xp, rewards, upper = tnp, estimated_rewards, upper_bounds
  else:
    xp, rewards = np, np.asarray(estimated_rewards, np.float64)
    upper = None if upper_bounds is None else np.asarray(upper_bounds, np.float64)
  num_actions = int(rewards.shape[-1])
  greedy = xp.equal(xp.expand_dims(xp.argmax(rewards, axis=-1), -1), xp.arange(num_actions))
  if rule.exploration == "inverse_gap":
    gap = xp.maximum(xp.max(rewards, axis=-1, keepdims=True)
                     - (rewards if upper is None else upper), 0.0)
    others = 1.0 / (num_actions + gamma(rule.gamma_scale, trained_records) * gap)
  else:
    others = xp.full_like(rewards, rule.epsilon / num_actions)
  others = xp.where(greedy, xp.zeros_like(rewards),
                    xp.maximum(others, rule.propensity_floor))
  return xp.where(greedy, 1.0 - xp.sum(others, axis=-1, keepdims=True), others)


def expected_regret(action_probabilities: np.ndarray, true_rewards: np.ndarray) -> float:
  """Mean over contexts of the best true reward minus the policy's expected true reward."""
  true_rewards = np.asarray(true_rewards, np.float64)
  return float(np.mean(true_rewards.max(axis=1)
                       - (np.asarray(action_probabilities) * true_rewards).sum(axis=1)))
