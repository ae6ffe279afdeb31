"""Off-policy evaluation: the value of a candidate policy estimated from logged bandit records.

A logged record is (context x, action a, propensity p = the logging policy's
probability of a, reward r); the candidate gives pi(.|x) over the K actions.
With importance weights w = pi(a|x) / p:

  IPS    mean(w r)                      unbiased, high variance;
  SNIPS  sum(w r) / sum(w)              self-normalised, slightly biased, steadier;
  DR     mean(sum_a pi(a|x) r_hat(x, a) + w (r - r_hat(x, a)))
                                        unbiased for any r_hat fit without the record
                                        itself, low variance when r_hat is good.
"""
from typing import Dict, Tuple

import numpy as np

ROW_SUM_TOLERANCE = 1e-4


def _as_array(name: str, value, ndim: int) -> np.ndarray:
  """`value` as a non-empty, finite float64 array of `ndim` dimensions."""
  value = np.asarray(value, dtype=np.float64)
  if value.size == 0:
    raise ValueError(f"{name} is empty: there are no records to evaluate")
  if value.ndim != ndim:
    raise ValueError(f"{name} must be {ndim}-D, got shape {value.shape}")
  if not np.all(np.isfinite(value)):
    raise ValueError(f"{name} must be finite")
  return value


def _as_probabilities(name: str, probs) -> np.ndarray:
  """`probs` as an [n, K] array whose rows are probability vectors."""
  probs = _as_array(name, probs, ndim=2)
  if np.any(probs < 0):
    raise ValueError(f"{name} must be non-negative")
  sums = probs.sum(axis=1)
  bad = np.flatnonzero(np.abs(sums - 1) > ROW_SUM_TOLERANCE)
  if bad.size:
    raise ValueError(f"{name} rows must sum to 1 (tolerance {ROW_SUM_TOLERANCE}); "
                     f"{bad.size} do not, e.g. row {bad[0]} sums to {sums[bad[0]]:.6g}")
  return probs


def _as_actions(actions, num_actions: int) -> np.ndarray:
  """`actions` as a non-empty 1-D integer array with values in [0, num_actions)."""
  actions = np.asarray(actions)
  if actions.size == 0:
    raise ValueError("actions is empty: there are no records to evaluate")
  if actions.ndim != 1:
    raise ValueError(f"actions must be 1-D, got shape {actions.shape}")
  if not np.issubdtype(actions.dtype, np.integer):
    raise ValueError(f"actions must be integers, got dtype {actions.dtype}")
  if actions.min() < 0 or actions.max() >= num_actions:
    raise ValueError(f"actions must be in [0, {num_actions}), got values in "
                     f"[{actions.min()}, {actions.max()}]")
  return actions


def _check_lengths(**arrays: np.ndarray) -> None:
  """Raises unless every array has one row per record."""
  lengths = {name: len(value) for name, value in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError("inputs must have one row per record, got lengths " +
                     ", ".join(f"{name}={length}" for name, length in lengths.items()))


def _importance_weights(target_probs, actions, propensities,
                        rewards) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Validated (target_probs, actions, rewards, w) with w = pi(a_i|x_i) / p_i."""
  target_probs = _as_probabilities("target_probs", target_probs)
  actions = _as_actions(actions, target_probs.shape[1])
  propensities = _as_array("propensities", propensities, ndim=1)
  rewards = _as_array("rewards", rewards, ndim=1)
  _check_lengths(target_probs=target_probs, actions=actions, propensities=propensities,
                 rewards=rewards)
  if np.any((propensities <= 0) | (propensities > 1)):
    raise ValueError("propensities must be in (0, 1]")
  weights = target_probs[np.arange(len(actions)), actions] / propensities
  return target_probs, actions, rewards, weights


def _require_overlap(weights: np.ndarray) -> None:
  """Raises if the target gives probability 0 to every logged action."""
  if not np.any(weights > 0):
    raise ValueError("the target policy gives probability 0 to every logged action: "
                     "SNIPS is undefined")


def _snips_ratio(weighted_rewards: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """sum(w r) / sum(w) over the last axis; NaN where every weight is zero."""
  total = weights.sum(axis=-1)
  return np.divide(weighted_rewards.sum(axis=-1), total, out=np.full_like(total, np.nan),
                   where=total > 0)


def ips(target_probs, actions, propensities, rewards) -> float:
  """Inverse propensity scoring: mean_i w_i r_i."""
  _, _, rewards, weights = _importance_weights(target_probs, actions, propensities, rewards)
  return float(np.mean(weights * rewards))


def snips(target_probs, actions, propensities, rewards) -> float:
  """Self-normalised IPS: sum_i w_i r_i / sum_i w_i.

  Raises:
    ValueError: also when the target gives probability 0 to every logged action.
  """
  _, _, rewards, weights = _importance_weights(target_probs, actions, propensities, rewards)
  _require_overlap(weights)
  return float(_snips_ratio(weights * rewards, weights))


def fit_reward_model(observations, actions, rewards, num_actions: int, ridge: float = 1.0,
                     folds: int = 2, seed: int = 0) -> np.ndarray:
  """Cross-fitted r_hat(x_i, a), [n, num_actions], from per-arm ridge regressions.

  Records are split at random into `folds` folds; a record's estimates come from
  models fit on the other folds only, so its own reward never informs them. Each
  arm's model is a ridge regression on [x, 1] of the reward minus the training
  folds' mean reward: the intercept is shrunk towards that pooled mean, and an
  arm with no training records falls back to it. All arms' normal equations
  are built by one matrix product per fold (memory ~ n * (d + 1)^2 floats).
  """
  if num_actions < 1:
    raise ValueError(f"num_actions must be positive, got {num_actions}")
  observations = _as_array("observations", observations, ndim=2)
  actions = _as_actions(actions, num_actions)
  rewards = _as_array("rewards", rewards, ndim=1)
  _check_lengths(observations=observations, actions=actions, rewards=rewards)
  if not ridge > 0:
    raise ValueError(f"ridge must be positive, got {ridge}")
  num = len(actions)
  if not 2 <= folds <= num:
    raise ValueError(f"folds must be between 2 and the number of records ({num}), got {folds}")
  features = np.hstack([observations, np.ones((num, 1))])
  width = features.shape[1]
  outer = (features[:, :, None] * features[:, None, :]).reshape(num, width * width)
  arms = np.eye(num_actions)[actions]
  penalty = ridge * np.eye(width)
  fold = np.random.default_rng(seed).permutation(num) % folds
  estimates = np.empty((num, num_actions))
  for held_out in range(folds):
    train = fold != held_out
    mean = rewards[train].mean()
    train_arms = arms * train[:, None]
    gram = (train_arms.T @ outer).reshape(num_actions, width, width) + penalty
    moment = train_arms.T @ (features * (rewards - mean)[:, None])
    coefficients = np.linalg.solve(gram, moment[..., None])[..., 0]
    estimates[~train] = mean + features[~train] @ coefficients.T
  return estimates


def _doubly_robust_terms(target_probs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                         weights: np.ndarray, reward_estimates) -> np.ndarray:
  """Per-record DR terms, whose mean is the DR estimate."""
  reward_estimates = np.asarray(reward_estimates, dtype=np.float64)
  if reward_estimates.shape != target_probs.shape:
    raise ValueError(f"reward_estimates must have the shape of target_probs "
                     f"{target_probs.shape}, got {reward_estimates.shape}")
  if not np.all(np.isfinite(reward_estimates)):
    raise ValueError("reward_estimates must be finite")
  logged = reward_estimates[np.arange(len(actions)), actions]
  return (target_probs * reward_estimates).sum(axis=1) + weights * (rewards - logged)


def doubly_robust(target_probs, actions, propensities, rewards, reward_estimates) -> float:
  """Doubly robust: mean_i [sum_a pi(a|x_i) r_hat(x_i, a) + w_i (r_i - r_hat(x_i, a_i))]."""
  target_probs, actions, rewards, weights = _importance_weights(
      target_probs, actions, propensities, rewards)
  return float(np.mean(
      _doubly_robust_terms(target_probs, actions, rewards, weights, reward_estimates)))


def _estimates(terms: np.ndarray) -> Dict[str, np.ndarray]:
  """IPS, SNIPS and DR over the last axis of stacked per-record (w r, w, DR term)."""
  weighted_rewards, weights, dr_terms = terms
  return {"ips": weighted_rewards.mean(axis=-1),
          "snips": _snips_ratio(weighted_rewards, weights),
          "dr": dr_terms.mean(axis=-1)}


def estimate_policy_value(target_probs, observations, actions, propensities, rewards,
                          num_actions: int, bootstrap_samples: int = 200,
                          confidence: float = 0.95, seed: int = 0) -> Dict:
  """IPS, SNIPS and DR estimates with bootstrap percentile intervals.

  The intervals resample records with replacement, all replicates at once
  (memory ~ 3 * bootstrap_samples * n floats). DR's reward model is cross-fit
  once on all records and held fixed across replicates: refitting on a
  resample would put copies of a record in different folds, so its own reward
  would inform its estimate, and would cost a fit per replicate. The intervals
  therefore leave out the reward model's own fitting noise. Replicates in which
  SNIPS is undefined (all weights zero) are left out of its interval.

  Returns:
    {"ips" | "snips" | "dr": {"value", "low", "high"}, "records": n,
     "effective_sample_size": (sum w)^2 / sum w^2}.
  """
  target_probs, actions, rewards, weights = _importance_weights(
      target_probs, actions, propensities, rewards)
  if target_probs.shape[1] != num_actions:
    raise ValueError(f"target_probs has {target_probs.shape[1]} actions, "
                     f"num_actions is {num_actions}")
  if bootstrap_samples < 1:
    raise ValueError(f"bootstrap_samples must be positive, got {bootstrap_samples}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  _require_overlap(weights)
  reward_estimates = fit_reward_model(observations, actions, rewards, num_actions, seed=seed)
  terms = np.stack([weights * rewards, weights, _doubly_robust_terms(
      target_probs, actions, rewards, weights, reward_estimates)])
  num = len(actions)
  index = np.random.default_rng(seed).integers(num, size=(bootstrap_samples, num))
  replicates = _estimates(terms[:, index])
  tail = (1 - confidence) / 2
  result = {}
  for name, value in _estimates(terms).items():
    low, high = np.nanquantile(replicates[name], [tail, 1 - tail])
    result[name] = {"value": float(value), "low": float(low), "high": float(high)}
  result["records"] = num
  result["effective_sample_size"] = float(weights.sum() ** 2 / np.sum(weights ** 2))
  return result


def estimate_difference(candidate_probs, baseline_probs, observations, actions, propensities,
                        rewards, num_actions: int, bootstrap_samples: int = 200,
                        confidence: float = 0.95, seed: int = 0) -> Dict:
  """Candidate minus baseline value, IPS, SNIPS and DR, with paired bootstrap intervals.

  Both policies are scored on the same records, and each replicate resamples the
  same records for both, so the noise the two estimates share (records on which
  both policies agree, the reward model's errors) cancels in the difference:
  two equally good policies get an interval around 0 even when each value
  estimate alone is uncertain.

  Args:
    candidate_probs: [n, K] probabilities of the candidate policy.
    baseline_probs: [n, K] probabilities of the baseline, or None for the
      logging policy itself, whose per-record value is the logged reward.
    observations, actions, propensities, rewards: The logged records.
    num_actions: K.
    bootstrap_samples: Replicates of the interval.
    confidence: Coverage of the percentile interval.
    seed: Seeds the reward model's folds and the resampling.

  Returns:
    {"ips" | "snips" | "dr": {"value", "low", "high"}}.
  """
  candidate_probs, actions, rewards, weights = _importance_weights(
      candidate_probs, actions, propensities, rewards)
  if candidate_probs.shape[1] != num_actions:
    raise ValueError(f"candidate_probs has {candidate_probs.shape[1]} actions, "
                     f"num_actions is {num_actions}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  _require_overlap(weights)
  reward_estimates = fit_reward_model(observations, actions, rewards, num_actions, seed=seed)
  candidate_terms = np.stack([weights * rewards, weights, _doubly_robust_terms(
      candidate_probs, actions, rewards, weights, reward_estimates)])
  if baseline_probs is None:
    baseline_terms = np.stack([rewards, np.ones_like(rewards), rewards])
  else:
    baseline_probs, _, _, baseline_weights = _importance_weights(
        baseline_probs, actions, propensities, rewards)
    _require_overlap(baseline_weights)
    baseline_terms = np.stack([baseline_weights * rewards, baseline_weights, _doubly_robust_terms(
        baseline_probs, actions, rewards, baseline_weights, reward_estimates)])
  index = np.random.default_rng(seed).integers(len(actions), size=(bootstrap_samples, len(actions)))
  candidate, baseline = _estimates(candidate_terms), _estimates(baseline_terms)
  candidate_replicates = _estimates(candidate_terms[:, index])
  baseline_replicates = _estimates(baseline_terms[:, index])
  tail = (1 - confidence) / 2
  result = {}
  for name in candidate:
    low, high = np.nanquantile(candidate_replicates[name] - baseline_replicates[name],
                               [tail, 1 - tail])
    result[name] = {"value": float(candidate[name] - baseline[name]),
                    "low": float(low), "high": float(high)}
  return result


def policy_value(action_probs, expected_rewards) -> float:
  """True value with the full reward table known: mean_i sum_a pi(a|x_i) E[r | x_i, a]."""
  action_probs = _as_probabilities("action_probs", action_probs)
  expected_rewards = np.asarray(expected_rewards, dtype=np.float64)
  if expected_rewards.shape != action_probs.shape:
    raise ValueError(f"expected_rewards must have the shape of action_probs "
                     f"{action_probs.shape}, got {expected_rewards.shape}")
  return float(np.mean((action_probs * expected_rewards).sum(axis=1)))
