"""The model watcher: serves the newest valid pushed version and hot-swaps off the request path."""
import os
import threading
import time
from typing import Dict, List, Optional, Tuple

import absl.logging
import tensorflow as tf

from rlops import model_io
from rlops.serving import policy

# A refused folder whose files have not changed is tried again at most this often: loading
# builds the agent again (memory a neural agent does not give back), and a fixed folder has
# changed files, which are tried at once.
MAX_RETRY_SECONDS = 3600.0


def _fingerprint(directory: str) -> Tuple[Tuple[str, int, int], ...]:
  """(path, size, modification time) of each file under `directory`: what writing one changes."""
  entries = []
  for root, _, files in tf.io.gfile.walk(directory):
    for name in files:
      stat = tf.io.gfile.stat(os.path.join(root, name))
      entries.append((os.path.join(root, name), stat.length, stat.mtime_nsec))
  return tuple(sorted(entries))


class ModelWatcher:
  """Serves the newest loadable version under `model_uri` and swaps to newer ones.

  `model_uri` is one model directory (it holds the metadata file and serves as
  the version its metadata records) or Pusher's base directory of numbered versions
  (`model_io.versions`). A numbered folder is a candidate once its metadata file
  exists. A version is validated as it loads (metadata by the configuration's
  own rules, every checkpointed variable matched); one that fails is skipped,
  reported in `rejected` and the logs, and tried again as soon as one of its files
  changes (Pusher copies files in place, so a folder can be incomplete for a
  while), else with exponential backoff up to MAX_RETRY_SECONDS, while the current
  model keeps serving. A refused folder that is gone is no longer reported.
  """

  def __init__(self, model_uri: str, poll_seconds: float):
    self.model_uri = model_uri.rstrip("/")
    self.poll_seconds = poll_seconds
    self.current: Optional[policy.ServingModel] = None
    self.load_failures = 0
    self.rejected: Dict[str, str] = {}  # version -> why it does not serve
    self._newest_number = -1
    # version -> (retry time, delay, the fingerprint of its files when it failed)
    self._retry: Dict[str, Tuple[float, float, tuple]] = {}
    self._loaded = threading.Event()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="rlops-model-watcher", daemon=True)

  def _candidates(self) -> List[Tuple[Optional[str], str]]:
    """(version, directory) of loadable versions newer than the current one, newest first;
    version None: the one model directory, whose version is in its metadata."""
    if tf.io.gfile.exists(os.path.join(self.model_uri, model_io.METADATA_FILE)):
      return [] if self.current else [(None, self.model_uri)]
    if not tf.io.gfile.isdir(self.model_uri):
      return []
    newer = [version for version in reversed(model_io.versions(self.model_uri))
             if int(version) > self._newest_number]
    directories = [(version, os.path.join(self.model_uri, version)) for version in newer]
    return [(version, directory) for version, directory in directories
            if tf.io.gfile.exists(os.path.join(directory, model_io.METADATA_FILE))]

  def poll(self) -> None:
    """Loads the newest candidate not waiting for a retry, and swaps it in."""
    now = time.monotonic()
    candidates = [(version or directory, version, directory)  # name: as `rejected` says
                  for version, directory in self._candidates()]
    names = {name for name, _, _ in candidates}
    self._retry = {name: retry for name, retry in self._retry.items() if name in names}
    self.rejected = {name: reason for name, reason in self.rejected.items() if name in names}
    for name, version, directory in candidates:
      fingerprint = _fingerprint(directory)
      retry_time, delay, failed_as = self._retry.get(name, (0.0, 0.0, None))
      unchanged = fingerprint == failed_as
      if unchanged and retry_time > now:
        continue
      try:
        model = policy.load_model(directory, version)
      except Exception as error:  # pylint: disable=broad-except
        self.load_failures += 1
        delay = min(2 * delay, MAX_RETRY_SECONDS) if unchanged else self.poll_seconds
        self._retry[name] = (now + delay, delay, fingerprint)
        self.rejected[name] = f"{type(error).__name__}: {error}"[:500]
        absl.logging.warning("model version %s from %s does not serve (retry in %.1f s): %s",
                             name, directory, delay, self.rejected[name])
        continue
      self.current = model
      if version is not None:
        self._newest_number = int(version)
      self._retry = {v: retry for v, retry in self._retry.items()
                     if model_io.VERSION_RE.fullmatch(v) and int(v) > self._newest_number}
      self.rejected = {v: reason for v, reason in self.rejected.items() if v in self._retry}
      self._loaded.set()
      absl.logging.info("serving model version %s (%s)", model.version, model.agent)
      return

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        self.poll()
      except Exception as error:  # pylint: disable=broad-except
        absl.logging.warning("cannot list model versions under %s: %s", self.model_uri, error)
      self._stop.wait(self.poll_seconds)

  def wait(self, timeout: Optional[float] = None) -> bool:
    """Waits until a model is loaded; returns whether one is."""
    return self._loaded.wait(timeout)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()
