"""Offline comparison of learning settings on logged records (`rlops evaluate`).

Each candidate setting (agent, alpha, exploration rule and its parameters,
forgetting) is trained in one pass on the older part of the logged records and
its serving policy is estimated on the newer part with the gate's off-policy
estimators and bootstrap intervals, and its paired difference with the policy
that logged those records.
"""
import dataclasses
from typing import Any, Dict, List, Sequence

import numpy as np
from tqdm.auto import tqdm

from rlops import agents, model_io, off_policy, training
from rlops.config import AgentConfig, ConfigError


def parse_setting(text: str, base: AgentConfig) -> AgentConfig:
  """An AgentConfig from "name=lints,alpha=0.5,exploration=inverse_gap" over `base`, validated."""
  fields = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, separator, value = item.partition("=")
    if not separator or key not in AgentConfig.__dataclass_fields__:
      raise ConfigError(f"setting {item!r}: expected FIELD=VALUE with an AgentConfig field")
    current = getattr(base, key)
    try:
      if current is None or isinstance(current, float):
        fields[key] = None if value == "none" else float(value)
      elif isinstance(current, int):
        fields[key] = int(value)
      elif isinstance(current, tuple):
        fields[key] = tuple(int(size) for size in value.split("x"))
      else:
        fields[key] = value
    except ValueError as error:
      raise ConfigError(f"setting {item!r}: {error}") from error
  setting = dataclasses.replace(base, **fields)
  setting.validate()
  return setting


def split_by_time(records: Dict[str, np.ndarray], newer_share: float):
  """(older, newer) records by event time; the newer part holds `newer_share` of them."""
  if not 0 < newer_share < 1:
    raise ValueError(f"newer_share must be in (0, 1), got {newer_share}")
  order = np.argsort(records["event_time"], kind="stable")
  cut = int(round(len(order) * (1 - newer_share)))
  if cut < 1 or cut >= len(order):
    raise ValueError(f"{len(order)} records are too few to split")
  older, newer = order[:cut], order[cut:]
  return ({name: values[older] for name, values in records.items()},
          {name: values[newer] for name, values in records.items()})


def compare(records: Dict[str, np.ndarray], settings: Sequence[AgentConfig], num_movies: int,
            rank_k: int, newer_share: float = 0.3, bootstrap_samples: int = 200,
            seed: int = 0, progress: bool = False) -> List[Dict[str, Any]]:
  """One row per setting, best DR estimate first.

  Args:
    records: Logged records with "event_time", "observation", "action",
      "propensity" and "reward" (`Warehouse.rewarded_records`).
    settings: Candidate agent settings.
    num_movies: K.
    rank_k: Context size.
    newer_share: Share of the newest records the settings are estimated on.
    bootstrap_samples: Replicates of the intervals.
    seed: Seeds the reward model and the bootstrap.
    progress: Show a progress bar.

  Returns:
    Rows {"setting", "estimates" (ips, snips, dr with intervals),
    "versus_logging" (paired differences with the logging policy), "train_records",
    "eval_records"}.
  """
  older, newer = split_by_time(records, newer_share)
  rows = []
  for setting in tqdm(settings, unit="setting", disable=not progress, desc="evaluate"):
    agent = model_io.new_agent(setting, num_movies, rank_k)
    training.train_on_logged(agent, older["observation"], older["action"], older["reward"])
    policy = agents.serving_policy(agent, setting, len(older["reward"]))
    probabilities = model_io.probabilities(policy, newer["observation"])
    logged = (newer["observation"], newer["action"], newer["propensity"], newer["reward"])
    rows.append({
        "setting": dataclasses.asdict(setting),
        "estimates": off_policy.estimate_policy_value(
            probabilities, *logged, num_actions=num_movies,
            bootstrap_samples=bootstrap_samples, seed=seed),
        "versus_logging": off_policy.estimate_difference(
            probabilities, None, *logged, num_actions=num_movies,
            bootstrap_samples=bootstrap_samples, seed=seed),
        "train_records": int(len(older["reward"])),
        "eval_records": int(len(newer["reward"])),
    })
  return sorted(rows, key=lambda row: -row["estimates"]["dr"]["value"])


def tuple_or(value):
  """JSON lists back as the tuples of the config."""
  return tuple(value) if isinstance(value, list) else value


def describe(setting: Dict[str, Any], base: AgentConfig) -> str:
  """The fields of `setting` that differ from `base`, as "field=value,..." ("defaults" if none)."""
  changed = [f"{name}={'x'.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"
             for name, value in setting.items() if tuple_or(value) != getattr(base, name)]
  return ",".join(changed) or "defaults"
