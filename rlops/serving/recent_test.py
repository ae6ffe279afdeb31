"""Tests of the table of served request ids: reserve, fill, release, eviction, worker processes."""
import hashlib
import multiprocessing

import pytest

from rlops.serving import recent

KEY = recent.observation_key([0.5, -1.0, 2.0, 0.25])
OTHER_KEY = recent.observation_key([0.5, -1.0, 2.0, 0.5])


def _prediction(request_id: str, action: int = 3) -> dict:
  return {"action": action, "propensity": 0.125, "request_id": request_id, "model_version": "7"}


def _served(table: recent.RecentPredictions, request_id: str, key: bytes = KEY,
            action: int = 3) -> dict:
  assert table.reserve(request_id, key) is None
  table.fill(key, _prediction(request_id, action))
  return _prediction(request_id, action)


def test_an_id_is_reserved_then_served_once_or_refused():
  table = recent.RecentPredictions(64)
  assert table.reserve("a", KEY) is None
  with pytest.raises(recent.ReusedRequestId, match="'a' is being served by a concurrent request"):
    table.reserve("a", KEY)
  table.fill(KEY, _prediction("a"))
  assert table.reserve("a", KEY) == _prediction("a") and len(table) == 1
  with pytest.raises(recent.ReusedRequestId, match="already served for another observation"):
    table.reserve("a", OTHER_KEY)
  table.release("a")  # Served: a release does not forget it.
  assert table.reserve("a", KEY) == _prediction("a")


def test_a_released_id_is_new_again():
  table = recent.RecentPredictions(64)
  assert table.reserve("unlogged", KEY) is None
  table.release("unlogged")
  assert len(table) == 0
  assert table.reserve("unlogged", OTHER_KEY) is None


def test_a_refused_instance_releases_the_ids_its_request_reserved():
  table = recent.RecentPredictions(64)
  served = _served(table, "served")
  with pytest.raises(recent.ReusedRequestId, match="'served' was already served"):
    table.reserve_all(["new", "served"], [KEY, OTHER_KEY])
  assert table.reserve_all(["served", "new"], [KEY, KEY]) == [served, None]


def test_the_table_holds_capacity_entries_and_replaces_the_least_recently_written():
  table = recent.RecentPredictions(60)
  assert table.capacity == 64  # Whole sets of 8.
  for i in range(640):
    _served(table, f"id-{i}", action=i % 10)
  assert len(table) == 64
  assert table.reserve("id-639", KEY) == _prediction("id-639", 9)
  assert table.reserve("id-0", KEY) is None  # Replaced long ago: new again.


def test_a_client_cannot_compute_ids_that_evict_a_served_one():
  table = recent.RecentPredictions(100_000)
  sets = table.capacity // recent.WAYS
  served = _served(table, "victim")

  def unkeyed_set(request_id: str) -> int:  # How the set was chosen before it was keyed.
    digest = hashlib.blake2b(request_id.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") % sets

  target = unkeyed_set("victim")
  attackers = [name for name in (f"attacker-{i}" for i in range(3_000_000))
               if unkeyed_set(name) == target][:recent.WAYS]
  assert len(attackers) == recent.WAYS
  for name in attackers:
    _served(table, name)
  assert table.reserve("victim", KEY) == served
  with pytest.raises(recent.ReusedRequestId, match="already served for another observation"):
    table.reserve("victim", OTHER_KEY)


def test_the_table_is_refilled_from_logged_rows():
  table = recent.RecentPredictions(64)
  rows = [{**_prediction("logged-1"), "observation": [0.5, -1.0, 2.0, 0.25]},
          {**_prediction("logged-2", 5), "observation": [0.5, -1.0, 2.0, 0.5]},
          {"request_id": "no-observation", "action": 1},
          {**_prediction("bad-observation"), "observation": "0.5,-1.0"},
          {**_prediction("long-version"), "model_version": "v" * 65, "observation": [1.0]}]
  table.add_logged(rows)
  assert len(table) == 2
  assert table.reserve("logged-1", KEY) == _prediction("logged-1")
  assert table.reserve("logged-2", OTHER_KEY) == _prediction("logged-2", 5)
  with pytest.raises(ValueError, match="longer than 64 bytes"):
    table.fill(KEY, {**_prediction("long"), "model_version": "v" * 65})


def _other_worker(table: recent.RecentPredictions, answers) -> None:
  """What another worker process gets for the ids the test process reserved or served."""

  def outcome(request_id, key):
    try:
      return table.reserve(request_id, key)
    except recent.ReusedRequestId as error:
      return str(error)

  answers.put([outcome("served", KEY), outcome("served", OTHER_KEY), outcome("pending", KEY),
               outcome("theirs", KEY)])
  table.fill(KEY, _prediction("theirs", 4))


def test_worker_processes_share_the_table():
  context = multiprocessing.get_context("spawn")
  table = recent.RecentPredictions(1000, context)
  served = _served(table, "served")
  assert table.reserve("pending", KEY) is None
  answers = context.Queue()
  process = context.Process(target=_other_worker, args=(table, answers))
  process.start()
  try:
    repeated, other_observation, pending, theirs = answers.get(timeout=60)
    process.join(timeout=60)
    assert process.exitcode == 0
  finally:
    if process.is_alive():
      process.kill()
  assert repeated == served and theirs is None
  assert "already served for another observation" in other_observation
  assert "is being served by a concurrent request; retry" in pending
  assert table.reserve("theirs", KEY) == _prediction("theirs", 4)
  assert len(table) == 2
