"""PNG plots of learning curves."""
import pathlib
from typing import Dict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
  window = max(1, min(window, len(values)))
  cumulative = np.cumsum(np.insert(np.asarray(values, np.float64), 0, 0.0))
  return (cumulative[window:] - cumulative[:-window]) / window


def learning_curves(curves: Dict[str, "object"], path: pathlib.Path,
                    title: str = "") -> pathlib.Path:
  """Plots the moving-average regret per sample of each named `LearningCurve`."""
  figure, axis = plt.subplots(figsize=(8, 4.5))
  for name, curve in curves.items():
    window = max(1, len(curve.regret) // 50)
    smooth = moving_average(curve.regret, window)
    axis.plot(np.arange(len(smooth)) + window, smooth, label=name)
  axis.set_xlabel("samples")
  axis.set_ylabel("regret (moving average)")
  return _save(figure, axis, title, path)


def _gate_label(retraining: str) -> str:
  """The retraining after a round, in a few words: pushed, not blessed, or not run."""
  if retraining.startswith("blessed"):
    return "retrained: pushed"
  return "retrained: not blessed" if retraining.startswith("not blessed") else "no retraining"


def rounds(rows, path) -> str:
  """Per demo round: the served reward (with the versions that served it) above, the regret
  (sampled and exact expected) below, each round labelled with its retraining's outcome."""
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
  numbers = [row["round"] for row in rows]
  top.plot(numbers, [row["mean_reward"] for row in rows], marker="o", label="mean reward")
  for row in rows:
    top.annotate("serving " + ", ".join(row["versions"]), (row["round"], row["mean_reward"]),
                 textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
  top.set_ylabel("reward")
  top.set_title("served policy per round")
  bottom.plot(numbers, [row["regret"] for row in rows], marker="s", label="regret vs oracle")
  bottom.plot(numbers, [row["expected_regret"] for row in rows], marker="^", linestyle="--",
              label="expected regret of the serving policy")
  for row in rows:
    bottom.annotate(_gate_label(row["retraining"]), (row["round"], row["expected_regret"]),
                    textcoords="offset points", xytext=(0, 10), ha="center", fontsize=7)
  bottom.set_ylabel("regret")
  bottom.set_xlabel("round")
  bottom.set_xticks(numbers)
  for axis in (top, bottom):
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  return _write(figure, path)


def lineage_graph(chain, path) -> str:
  """The lineage of a model as a picture: for each model of `chain` (newest first, as
  `tfx_pipeline.metadata.lineage` gives it), the Examples it was trained on, the
  Generator run behind them, and the warm-start links between the models."""
  figure, axis = plt.subplots(figsize=(3.2 * len(chain) + 1, 4.2))
  boxes = {"boxstyle": "round,pad=0.4", "linewidth": 1}
  arrow = {"arrowstyle": "->", "color": "0.3"}
  for column, link in enumerate(reversed(chain)):
    model, outcome, examples = link["model"], link["outcome"], link["examples"]
    state = ("pushed" if outcome.get("pushed")
             else "blessed" if outcome.get("blessed") else "not blessed")
    axis.text(column, 2, f"Model {model['id']}\n{model.get('agent')}, {state}", ha="center",
              va="center",
              bbox={**boxes, "facecolor": "#cfe8cf" if outcome.get("pushed") else "#eee"})
    axis.text(column, 1, f"Examples {examples['id']}\nspan {examples['span']}", ha="center",
              va="center", bbox={**boxes, "facecolor": "#dde6f5"})
    axis.annotate("", xy=(column, 1.75), xytext=(column, 1.25), arrowprops=arrow)
    if link["generator"]:
      generator = link["generator"]
      axis.text(column, 0, f"Generator run {generator['execution_id']}\n"
                f"{generator.get('record_count')} records", ha="center", va="center",
                bbox={**boxes, "facecolor": "#f5e6cc"})
      axis.annotate("", xy=(column, 0.75), xytext=(column, 0.25), arrowprops=arrow)
    if column:
      axis.annotate("warm start", xy=(column - 0.3, 2), xytext=(column - 0.7, 2), ha="center",
                    va="bottom", arrowprops=arrow, fontsize=8)
  axis.set_xlim(-0.6, len(chain) - 0.4)
  axis.set_ylim(-0.6, 2.6)
  axis.axis("off")
  axis.set_title("lineage from ML Metadata (oldest left)")
  return _write(figure, path)


def cumulative_regret(settings: Dict[str, Dict[str, np.ndarray]], path) -> str:
  """One panel per setting: cumulative regret over served requests of each named policy."""
  figure, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
  for axis, (setting, curves) in zip(axes[0], settings.items()):
    for name, curve in curves.items():
      axis.plot(np.arange(1, len(curve) + 1), curve, label=name)
    axis.set_xlabel("served requests")
    axis.set_ylabel("cumulative regret")
    axis.set_title(setting)
    axis.grid(alpha=0.3)
    axis.legend()
  return _write(figure, path)


def learning_rounds(rows, references: Dict[str, Dict[str, list]], path) -> str:
  """Per-round expected regret and cumulative regret of the loop beside reference policies.

  Args:
    rows: Demo rounds with "round", "expected_regret", "regret" and "cumulative_regret".
    references: name: {"regret": per-round mean regret, "cumulative_regret": per round}.
    path: Where the PNG goes.
  """
  figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  numbers = [row["round"] for row in rows]
  left.plot(numbers, [row["expected_regret"] for row in rows], marker="^",
            label="serving policy, exact expected")
  left.plot(numbers, [row["regret"] for row in rows], marker="o", label="served requests")
  right.plot(numbers, [row["cumulative_regret"] for row in rows], marker="o", label="loop")
  for name, reference in references.items():
    left.plot(numbers, reference["regret"], linestyle="--", label=name)
    right.plot(numbers, reference["cumulative_regret"], linestyle="--", label=name)
  left.set_ylabel("regret per request")
  right.set_ylabel("cumulative regret")
  for axis, title in ((right, "cumulative regret, same users"), (left, "regret per round")):
    axis.set_xlabel("round")
    axis.set_xticks(numbers)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
  return _write(figure, path)


def offline_comparison(rows, labels, path) -> str:
  """DR estimate of each setting with its bootstrap interval, best first."""
  figure, axis = plt.subplots(figsize=(8, 0.5 * len(rows) + 2))
  values = [row["estimates"]["dr"]["value"] for row in rows]
  errors = [[value - row["estimates"]["dr"]["low"] for value, row in zip(values, rows)],
            [row["estimates"]["dr"]["high"] - value for value, row in zip(values, rows)]]
  positions = np.arange(len(rows))[::-1]
  axis.errorbar(values, positions, xerr=errors, fmt="o", capsize=4, label="DR, 95% interval")
  axis.set_yticks(positions)
  axis.set_yticklabels(labels, fontsize=8)
  axis.set_xlabel("estimated value on the newer records (reward)")
  return _save(figure, axis, "learning settings, offline", path)


def _save(figure, axis, title: str, path):
  axis.set_title(title)
  axis.grid(alpha=0.3)
  axis.legend()
  return _write(figure, path)


def _write(figure, path):
  """Writes the figure as a PNG at `path` and frees it; returns `path`."""
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path
