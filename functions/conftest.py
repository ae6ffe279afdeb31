"""Fixtures of the function tests."""
import pytest

from functions import testing_utils

EMULATOR_PROJECT = "rlops-test"


@pytest.fixture(scope="module")
def pubsub_emulator(tmp_path_factory):
  """The host:port of a Pub/Sub emulator of project EMULATOR_PROJECT, one per test module,
  with PUBSUB_EMULATOR_HOST pointing to it (skips where the emulator is absent)."""
  directory = str(tmp_path_factory.mktemp("pubsub"))
  with testing_utils.pubsub_emulator(directory, EMULATOR_PROJECT) as host, \
      pytest.MonkeyPatch.context() as patch:
    patch.setenv("PUBSUB_EMULATOR_HOST", host)
    yield host
