"""Test fixtures for executors: Examples artifacts written the way the Ingester writes them."""
import os

import numpy as np
import tensorflow as tf
from tfx.types import standard_artifacts

from custom_components.ingester.executor import row_to_example


def logged_records(model, count: int, seed: int = 0) -> dict:
  """Uniform-random interactions with the model: contexts, actions, propensities, rewards."""
  rng = np.random.default_rng(seed)
  users = rng.integers(0, model.num_users, size=count)
  actions = rng.integers(0, model.num_movies, size=count).astype(np.int32)
  return {"users": users, "observation": model.observe(users), "action": actions,
          "propensity": np.full(count, 1.0 / model.num_movies, np.float32),
          "reward": model.reward(users, actions)}


def write_examples(uri: str, splits: dict, span: int = 1) -> standard_artifacts.Examples:
  """An Examples artifact at `uri` with one gzipped TFRecord file per split."""
  examples = standard_artifacts.Examples()
  examples.uri = uri
  examples.split_names = '["' + '", "'.join(splits) + '"]'
  examples.set_int_custom_property("span", span)
  for split, records in splits.items():
    directory = os.path.join(uri, f"Split-{split}")
    tf.io.gfile.makedirs(directory)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(directory, "data.gz"), options) as writer:
      for index in range(len(records["reward"])):
        writer.write(row_to_example({
            "request_id": f"r{index}", "event_time": 1.0,
            "observation": records["observation"][index].tolist(),
            "action": int(records["action"][index]),
            "propensity": float(records["propensity"][index]),
            "model_version": "test", "reward": float(records["reward"][index]),
        }).SerializeToString())
  return examples
