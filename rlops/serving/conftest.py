"""Fixtures of the serving tests: one trained LinUCB model per test session and worker."""
import os

import numpy as np
import pytest

from rlops import log_sinks, model_io, testing, training
from rlops.config import AgentConfig
from rlops.serving import app as app_lib
from rlops.serving import testing as serving_testing

EPSILON = 0.5


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
  """A LinUCB model directory trained on uniformly logged records of the small model."""
  model = testing.small_model()
  rng = np.random.default_rng(0)
  users = rng.integers(0, model.num_users, size=3000)
  actions = rng.integers(0, model.num_movies, size=3000).astype(np.int32)
  config = AgentConfig(name="linucb", epsilon=EPSILON)
  agent = model_io.new_agent(config, model.num_movies, model.rank_k)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions))
  directory = str(tmp_path_factory.mktemp("model") / "trained")
  model_io.save(agent, config, model.num_movies, model.rank_k, directory, {})
  return directory


@pytest.fixture
def serving(tmp_path, trained_model):
  """The serving base directory with version 1 pushed."""
  os.makedirs(tmp_path / "serving")
  serving_testing.push(trained_model, str(tmp_path / "serving"), 1)
  return str(tmp_path / "serving")


@pytest.fixture
def make_app(tmp_path):
  """create_app on tmp_path/serving, the outbox and a SQLite warehouse under tmp_path."""

  def make(sink=None, **kwargs):
    sink = sink or log_sinks.InProcessSink(str(tmp_path / "warehouse.sqlite"))
    kwargs.setdefault("poll_seconds", 0.05)
    return app_lib.create_app(str(tmp_path / "serving"), sink,
                              outbox_path=str(tmp_path / "outbox.jsonl"), **kwargs)

  return make
