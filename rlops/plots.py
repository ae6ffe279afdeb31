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


def learning_curves(curves: Dict[str, "object"], path: pathlib.Path, title: str = "") -> pathlib.Path:
  """Plots the moving-average regret per sample of each named `LearningCurve`."""
  figure, axis = plt.subplots(figsize=(8, 4.5))
  for name, curve in curves.items():
    window = max(1, len(curve.regret) // 50)
    smooth = moving_average(curve.regret, window)
    axis.plot(np.arange(len(smooth)) + window, smooth, label=name)
  axis.set_xlabel("samples")
  axis.set_ylabel("regret (moving average)")
  return _save(figure, axis, title, path)


def rounds(rows, path) -> str:
  """Mean reward and regret of the served policy per demo round, with the versions served."""
  figure, axis = plt.subplots(figsize=(8, 4.5))
  numbers = [row["round"] for row in rows]
  axis.plot(numbers, [row["mean_reward"] for row in rows], marker="o", label="mean reward")
  axis.plot(numbers, [row["regret"] for row in rows], marker="s", label="regret vs oracle")
  axis.plot(numbers, [row["expected_regret"] for row in rows], marker="^", linestyle="--",
            label="expected regret of the serving policy")
  for row in rows:
    axis.annotate("v" + ",".join(v[-4:] for v in row["versions"]), (row["round"], row["mean_reward"]),
                  textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
  axis.set_xlabel("round")
  axis.set_xticks(numbers)
  return _save(figure, axis, "served policy per round (labels: model versions, last digits)", path)


def _save(figure, axis, title: str, path):
  axis.set_title(title)
  axis.grid(alpha=0.3)
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path
