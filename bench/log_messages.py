"""The log messages' JSON in production: orjson against the standard library (the baseline).

A log message travels as JSON twice in production: the endpoint's delivery thread encodes each
batch for Pub/Sub (`log_sinks.encode_message`, on the serving machine), and the Logger function
decodes it (`log_sinks.decode_pubsub_event`) before checking and storing its rows. Both used
the standard library's `json` before; the baseline here is that code, run in the same process on
the same messages. Each repetition builds a fresh message of the outbox's batch (prediction rows
as the endpoint logs them, feedback rows as the Simulator reports them) and times, baseline and
orjson in turn: encoding, decoding, and the Logger's whole work on the message (decode, check,
insert into a fresh SQLite warehouse per variant). Prints the median CPU µs per row and the
ratios; writes a JSON and a PNG. Asserts nothing.

    .venv/bin/python bench/log_messages.py [--rows 500] [--repetitions 40]
"""
import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from tqdm.auto import tqdm  # pylint: disable=wrong-import-position

from rlops import log_sinks, records  # pylint: disable=wrong-import-position

RANK_K = 20
STAGES = ("encode", "decode", "logger")
CODECS: Dict[str, Dict[str, Callable]] = {
    "stdlib json": {"encode": lambda message: json.dumps(message).encode(),
                    "decode": json.loads},
    "orjson": {"encode": log_sinks.encode_message, "decode": log_sinks.decode_json},
}


def message_of(rows: int, rng: np.random.Generator) -> Dict[str, List[Dict[str, Any]]]:
  """A batch as the outbox and the Simulator send it: `rows` predictions and their feedback."""
  now = time.time()
  predictions = [records.Prediction(
      request_id=records.new_request_id(), event_time=now, observation=tuple(observation),
      action=int(action), propensity=0.905, model_version="1700000000",
      source="endpoint").to_row()
                 for observation, action in zip(rng.normal(size=(rows, RANK_K)).tolist(),
                                                rng.integers(20, size=rows))]
  feedback = [records.Feedback(request_id=row["request_id"], event_time=now + 1.0,
                               reward=float(reward)).to_row()
              for row, reward in zip(predictions, rng.integers(1, 6, size=rows))]
  return {"predictions": predictions, "feedback": feedback}


def _cpu_us_per_row(rows: int, call: Callable, *args) -> float:
  start = time.process_time()
  call(*args)
  return 1e6 * (time.process_time() - start) / rows


def _logger(decode: Callable, data: bytes, warehouse: str) -> None:
  """The Logger function's work on a message: decode it, check and store its rows."""
  log_sinks.write_rows(decode(data), warehouse)


def measure(rows: int, repetitions: int, seed: int,
            workdir: str) -> Dict[str, Dict[str, List[float]]]:
  """Per codec and stage, the CPU µs per row of each repetition."""
  rng = np.random.default_rng(seed)
  samples = {codec: {stage: [] for stage in STAGES} for codec in CODECS}
  for repetition in tqdm(range(repetitions), desc="messages", unit="message"):
    message = message_of(rows, rng)
    order = list(CODECS) if repetition % 2 == 0 else list(reversed(CODECS))
    for codec in order:
      encode, decode = CODECS[codec]["encode"], CODECS[codec]["decode"]
      data = encode(message)
      warehouse = os.path.join(workdir, f"{codec.replace(' ', '_')}.sqlite")
      samples[codec]["encode"].append(_cpu_us_per_row(rows, encode, message))
      samples[codec]["decode"].append(_cpu_us_per_row(rows, decode, data))
      samples[codec]["logger"].append(_cpu_us_per_row(rows, _logger, decode, data, warehouse))
  return samples


def plot(medians: Dict[str, Dict[str, float]], path: pathlib.Path) -> pathlib.Path:
  figure, axis = plt.subplots(figsize=(7, 4))
  width = 0.8 / len(medians)
  positions = np.arange(len(STAGES))
  for index, (codec, stages) in enumerate(medians.items()):
    axis.bar(positions + index * width, [stages[stage] for stage in STAGES], width, label=codec)
  axis.set_xticks(positions + width * (len(medians) - 1) / 2)
  axis.set_xticklabels(["encode (endpoint)", "decode (Logger)", "Logger: decode, check, insert"])
  axis.set_ylabel("CPU µs per prediction and its feedback (median)")
  axis.grid(axis="y", alpha=0.3)
  axis.legend()
  axis.set_title("Log messages as JSON: orjson against the standard library")
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rows", type=int, default=500,
                      help="prediction rows per message, each with its feedback "
                           "(default: the outbox's batch, %(default)s)")
  parser.add_argument("--repetitions", type=int, default=40,
                      help="messages per codec (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parent / "results")
  args = parser.parse_args(argv)
  if not (1 <= args.rows <= 100_000 and 1 <= args.repetitions <= 10_000):
    raise SystemExit("need 1 <= --rows <= 100,000 and 1 <= --repetitions <= 10,000")
  with tempfile.TemporaryDirectory() as workdir:
    samples = measure(args.rows, args.repetitions, args.seed, workdir)
  medians = {codec: {stage: statistics.median(values) for stage, values in stages.items()}
             for codec, stages in samples.items()}
  baseline, new = medians["stdlib json"], medians["orjson"]
  print(f"CPU µs per row: a prediction and its feedback; median of {args.repetitions} messages "
        f"of {args.rows} rows")
  print(f"{'':<32} {'stdlib json':>12} {'orjson':>12} {'ratio':>8}")
  for stage, label in zip(STAGES, ("encode (endpoint)", "decode (Logger)",
                                   "Logger: decode, check, insert")):
    print(f"{label:<32} {baseline[stage]:>12.2f} {new[stage]:>12.2f} "
          f"{baseline[stage] / new[stage]:>7.1f}x")
  args.output_dir.mkdir(parents=True, exist_ok=True)
  report = args.output_dir / "log_messages.json"
  report.write_text(json.dumps({"rows": args.rows, "repetitions": args.repetitions,
                                "rank_k": RANK_K, "median_cpu_us_per_row": medians,
                                "samples": samples}, indent=2))
  print(f"report: {report}; plot: {plot(medians, args.output_dir / 'log_messages.png')}")


if __name__ == "__main__":
  main()
