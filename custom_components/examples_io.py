"""Reads the bandit Examples that the Ingester writes (gzipped TFRecords of tf.Example)."""
import os
from typing import Dict

import numpy as np
import tensorflow as tf
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples


def read_split(examples: Examples, split: str, rank_k: int,
               batch_size: int = 8192) -> Dict[str, np.ndarray]:
  """observation [n, k], action, reward, propensity of one split, as NumPy arrays."""
  split_dir = artifact_utils.get_split_uri([examples], split)
  files = tf.io.gfile.glob(os.path.join(split_dir, "*"))
  if not files:
    raise ValueError(f"no {split} examples under {split_dir}")
  features = {
      "observation": tf.io.FixedLenFeature([rank_k], tf.float32),
      "action": tf.io.FixedLenFeature([], tf.int64),
      "reward": tf.io.FixedLenFeature([], tf.float32),
      "propensity": tf.io.FixedLenFeature([], tf.float32),
  }
  dataset = (tf.data.TFRecordDataset(files, compression_type="GZIP")
             .batch(batch_size)
             .map(lambda records: tf.io.parse_example(records, features)))
  columns = {name: [] for name in features}
  for batch in dataset:
    for name, values in batch.items():
      columns[name].append(values.numpy())
  arrays = {name: np.concatenate(values) for name, values in columns.items()}
  arrays["action"] = arrays["action"].astype(np.int32)
  return arrays


def span_of(examples: Examples) -> int:
  """The span ExampleGen's driver recorded (a custom property on query-based ExampleGens)."""
  if examples.has_custom_property("span"):
    return examples.get_int_custom_property("span")
  return examples.span
