"""The Logger's SQLite inserts as the table grows: random (uuid4) against time-ordered (UUIDv7) ids.

Inserts the same prediction rows, in the Logger's batches, through `Warehouse.insert_predictions`
into two fresh warehouses whose only difference is how request ids are made: uuid4 hex (the
baseline, what the endpoint minted before) and `records.new_request_id` (UUIDv7). Batches go
to the two in turn, so drift of the shared machine falls on both alike. Prints the CPU and wall
time per row and the bytes SQLite writes per row (WAL frames and checkpoints, from
/proc/self/io) at each tenth of the run, with the ratios of the baseline to UUIDv7; writes a
JSON and a PNG. Asserts nothing.

    .venv/bin/python bench/warehouse_inserts.py [--rows 200000] [--batch 500]
"""
import argparse
import json
import os
import pathlib
import tempfile
import time
import uuid
from typing import Callable, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from tqdm.auto import tqdm  # pylint: disable=wrong-import-position

from rlops import records, warehouse  # pylint: disable=wrong-import-position

RANK_K = 20
KINDS: Dict[str, Callable[[], str]] = {"uuid4": lambda: uuid.uuid4().hex,
                                       "uuid7": records.new_request_id}
SEGMENTS = 10


def batch_of(new_id: Callable[[], str], observations: np.ndarray) -> List[records.Prediction]:
  """Predictions as the endpoint appends them: checked records, ids minted now."""
  now = time.time()
  return [records.Prediction(request_id=new_id(), event_time=now, observation=tuple(row),
                             action=3, propensity=0.905, model_version="1700000000",
                             source="endpoint") for row in observations.tolist()]


def written_bytes() -> int:
  """Bytes this process has passed to write calls so far (WAL frames, checkpoints)."""
  with open("/proc/self/io") as f:
    return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def measure(rows: int, batch: int, seed: int, workdir: str) -> Dict[str, List[Dict[str, float]]]:
  """Per kind, per tenth of the run: rows in the table at its end, CPU and wall µs per row,
  and bytes written per row."""
  rng = np.random.default_rng(seed)
  stores = {kind: warehouse.Warehouse(os.path.join(workdir, f"{kind}.sqlite")) for kind in KINDS}
  totals = {kind: {"cpu": 0.0, "wall": 0.0, "written": 0, "rows": 0} for kind in KINDS}
  segments: Dict[str, List[Dict[str, float]]] = {kind: [] for kind in KINDS}
  batches = rows // batch
  per_segment = max(1, batches // SEGMENTS)
  for index in tqdm(range(batches), desc="insert batches", unit="batch"):
    observations = rng.normal(size=(batch, RANK_K)).round(6)
    for kind, new_id in KINDS.items():
      predictions = batch_of(new_id, observations)
      written, cpu, wall = written_bytes(), time.process_time(), time.perf_counter()
      stores[kind].insert_predictions(predictions)
      total = totals[kind]
      total["cpu"] += time.process_time() - cpu
      total["wall"] += time.perf_counter() - wall
      total["written"] += written_bytes() - written
      total["rows"] += batch
    if (index + 1) % per_segment == 0:
      for kind, total in totals.items():
        segments[kind].append({"table_rows": (index + 1) * batch,
                               "cpu_us_per_row": 1e6 * total["cpu"] / total["rows"],
                               "wall_us_per_row": 1e6 * total["wall"] / total["rows"],
                               "written_bytes_per_row": total["written"] / total["rows"]})
        totals[kind] = {"cpu": 0.0, "wall": 0.0, "written": 0, "rows": 0}
  for store in stores.values():
    store.close()
  return segments


def plot(segments: Dict[str, List[Dict[str, float]]], path: pathlib.Path) -> pathlib.Path:
  figure, axes = plt.subplots(1, 2, figsize=(10, 4))
  for kind, points in segments.items():
    table_rows = [point["table_rows"] for point in points]
    axes[0].plot(table_rows, [point["cpu_us_per_row"] for point in points], marker="o", label=kind)
    axes[1].plot(table_rows, [point["written_bytes_per_row"] for point in points], marker="o",
                 label=kind)
  axes[0].set_ylabel("CPU µs per inserted row")
  axes[1].set_ylabel("bytes written per inserted row")
  for axis in axes:
    axis.set_xlabel("rows in the table (thousands)")
    axis.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:g}")
    axis.grid(alpha=0.3)
    axis.legend()
  figure.suptitle("Warehouse.insert_predictions, random against time-ordered request ids")
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rows", type=int, default=200_000,
                      help="rows inserted into each warehouse (default: %(default)s)")
  parser.add_argument("--batch", type=int, default=500,
                      help="rows per insert, the outbox's batch (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parent / "results")
  args = parser.parse_args(argv)
  if not 1 <= args.batch <= args.rows <= 5_000_000:
    raise SystemExit("need 1 <= --batch <= --rows <= 5,000,000")
  with tempfile.TemporaryDirectory() as workdir:
    segments = measure(args.rows, args.batch, args.seed, workdir)
  print(f"{'rows in table':>14} " + " ".join(
      f"{kind + ' ' + name:>20}" for name in ("CPU us/row", "written B/row") for kind in KINDS)
        + f" {'CPU uuid4/uuid7':>16} {'bytes uuid4/uuid7':>18}")
  for base, ordered in zip(segments["uuid4"], segments["uuid7"]):
    print(f"{base['table_rows']:>14,} {base['cpu_us_per_row']:>20.2f} "
          f"{ordered['cpu_us_per_row']:>20.2f} {base['written_bytes_per_row']:>20.0f} "
          f"{ordered['written_bytes_per_row']:>20.0f} "
          f"{base['cpu_us_per_row'] / ordered['cpu_us_per_row']:>15.2f}x "
          f"{base['written_bytes_per_row'] / max(ordered['written_bytes_per_row'], 1):>17.2f}x")
  args.output_dir.mkdir(parents=True, exist_ok=True)
  report = args.output_dir / "warehouse_inserts.json"
  report.write_text(json.dumps({"rows": args.rows, "batch": args.batch, "rank_k": RANK_K,
                                "segments": segments}, indent=2))
  print(f"report: {report}; plot: {plot(segments, args.output_dir / 'warehouse_inserts.png')}")


if __name__ == "__main__":
  main()
