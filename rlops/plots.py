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


def lineage_graph(chain, path) -> str:
  """The lineage of a model as a picture: for each model of `chain` (newest first, as
  `tfx_pipeline.metadata.lineage` gives it), the Examples it was trained on, the
  Generator run behind them, and the warm-start links between the models."""
  figure, axis = plt.subplots(figsize=(3.2 * len(chain) + 1, 4.2))
  boxes = {"boxstyle": "round,pad=0.4", "linewidth": 1}
  arrow = {"arrowstyle": "->", "color": "0.3"}
  for column, link in enumerate(reversed(chain)):
    model, outcome, examples = link["model"], link["outcome"], link["examples"]
    state = "pushed" if outcome.get("pushed") else "blessed" if outcome.get("blessed") else "not blessed"
    axis.text(column, 2, f"Model {model['id']}\n{model.get('agent')}, {state}", ha="center",
              va="center", bbox={**boxes, "facecolor": "#cfe8cf" if outcome.get("pushed") else "#eee"})
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
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def _save(figure, axis, title: str, path):
  axis.set_title(title)
  axis.grid(alpha=0.3)
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path
