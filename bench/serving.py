"""Serving latency and throughput: policy calls in process, and the endpoint over HTTP.

Policy calls, for 20 and 100 movies (rank 20): trains LinUCB with `train_on_logged`
on uniformly logged records, saves it with `model_io.save`, and times one-context
calls of TF-Agents' own LinUCB policy (`agent.policy`: UCB, a linear solve per arm
and call) and of the saved serving policy (`policy/`), both PolicySaver
SavedModels loaded with `tf.saved_model.load`, beside the server's
`ServingModel.act` (NumPy) on the same contexts.

Endpoint: serves the 20-movie model from server processes on 127.0.0.1 and drives
them from a separate load-generator process (asyncio on uvloop, raw HTTP/1.1 over
keep-alive connections): open loop at a fixed rate, then closed loop at the same
concurrency, for each variant (all run at once; the idle ones wait):
  baseline  the server as it was before the serving split (`rlops/server.py` at
            BASELINE_COMMIT, read with git), one process, uvicorn on asyncio and h11,
            logging on: the configuration the issue measured.
  on        `rlops.serving` as `rlops serve --workers WORKERS` runs it: processes on one
            port (SO_REUSEPORT) sharing one table of served request ids, uvloop and
            httptools, each with its own outbox delivering with InProcessSink to one
            temporary SQLite warehouse; the requests of an event-loop iteration are logged
            in one outbox write (group commit).
  none      as `on` without an outbox: `outbox.OutboxLogger` is replaced by a stand-in
            that drops rows (`create_app` has no switch for this).
  on1       as `on` with one process.
  pubsub    as `on`, each outbox delivering with PubSubSink to a Pub/Sub topic (Google's
            emulator on loopback, on the same CPUs), as the Vertex endpoint does: the
            Logger that writes the warehouse from the topic runs off the serving machine
            there and is not run here; the rows on the topic are counted at the end.
  outbox    as `on`, each outbox delivering to a sink that drops the messages: the
            endpoint's own part of logging, its sink's work (the Logger's, Pub/Sub's) left out.
Prints figures as ratios against baselines measured in the same run, each
closed-loop ratio with a 90% bootstrap interval over the rounds (how far this
machine's noise leaves it open), and whether each target is met (it never fails
on a target); and each variant's server CPU time per request (all its processes
and threads, from /proc, delivering its log included, and apart the threads
other than the event loop's, which deliver the log): where logging's cost goes
apart from throughput. Writes a JSON of the figures and a PNG of the latency
distributions. Needs the Cloud CLI's Pub/Sub emulator (`gcloud beta emulators pubsub`), whose
CPU per request of the pubsub rounds is printed too: on Vertex it is not the serving machine's.

  .venv/bin/python bench/serving.py [--seconds 10] [--rate 500] [--concurrency 16] [--blocks 3]
"""
import argparse
import asyncio
import collections
import contextlib
import importlib.util
import itertools
import json
import multiprocessing
import os
import pathlib
import socket
import sqlite3
import subprocess
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

from rlops import noise  # pylint: disable=g-import-not-at-top

noise.quiet_libraries()  # Before TensorFlow, TF-Agents and Gym are imported, as the CLI.
# As the rlops CLI: autograph's code from TF-Agents' policies compares with
# literals, and Google client libraries warn about the Python version.
warnings.filterwarnings("ignore", category=SyntaxWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

# pylint: disable=g-import-not-at-top,wrong-import-position
import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from tf_agents.policies import policy_saver
from tf_agents.trajectories import time_step as ts
from tqdm.auto import tqdm

from functions import testing_utils
from rlops import log_sinks, model_io, movielens, simulation, training
from rlops.config import AgentConfig
from rlops.serving import policy as serving_policy
from rlops.serving import recent

# pylint: enable=g-import-not-at-top,wrong-import-position

MOVIES = (20, 100)
RANK_K = 20
LOGGED_SAMPLES = 20_000
TRAIN_BATCH_SIZE = 5_000  # Divides LOGGED_SAMPLES: one trace of the train step.
NUM_CONTEXTS = 200
SERVING_MOVIES = 20
# One-context policy calls: each variant stops at whichever bound comes first.
POLICY_WARMUP_CALLS = 5
POLICY_MAX_CALLS = 2_000
POLICY_MAX_SECONDS = 4.0
# The server before the serving split: the baseline of the throughput target.
BASELINE_COMMIT = "0a5dd25"
WORKERS = 2
# Load generation.
WARMUP_REQUESTS = 5  # Per connection, before the timed window; logged like the others.
MAX_REQUESTS = 500_000  # Bound of one closed-loop run.
REQUEST_TIMEOUT_SECONDS = 10.0
GRACE_SECONDS = 10.0  # No request starts later than this after the window.
STARTUP_SECONDS = 600.0  # Eight processes import TensorFlow at once on a shared machine.
FLUSH_SECONDS = 60.0
# A round is slower after some variants than after others (by up to 12% after a saturating
# one): each variant runs five times in a block, right after each other variant once (the
# block is a cycle through every ordered pair of variants, rounds of a variant at least four
# apart), so what a round leaves behind falls on all alike; the block is repeated (--blocks)
# so that drift does too.
CLOSED_LOOP_BLOCK = ("baseline", "on1", "none", "pubsub", "baseline", "on", "on1", "pubsub",
                     "none", "baseline", "outbox", "pubsub", "on", "none", "outbox", "on1",
                     "baseline", "none", "on", "pubsub", "on1", "outbox", "on", "baseline",
                     "pubsub", "outbox", "none", "on1", "on", "outbox")
# The Pub/Sub emulator's project and topic the pubsub variant publishes to.
PUBSUB_PROJECT = "rlops-bench"
PUBSUB_TOPIC = f"projects/{PUBSUB_PROJECT}/topics/rlops-logs"
PUBSUB_SUBSCRIPTION = f"projects/{PUBSUB_PROJECT}/subscriptions/rlops-bench-count"
PUBSUB_PULL_MESSAGES = 10  # Up to 500 rows each: a pull answer stays under gRPC's 4 MB.
# Targets of the issue.
P99_TARGET_MS = 10.0
THROUGHPUT_GAIN_TARGET = 3.0
THROUGHPUT_LOSS_TARGET = 0.10
# Closed-loop throughput ratios printed, each with a bootstrap interval over the rounds.
RATIOS = (("on", "baseline"), ("on1", "baseline"), ("on", "on1"), ("on", "none"),
          ("pubsub", "none"), ("outbox", "none"))
BOOTSTRAP_RESAMPLES = 10_000
VARIANTS = {
    "baseline": "rlops/server.py before the split, 1 process, uvicorn asyncio + h11, logging on",
    "on": f"rlops.serving, {WORKERS} processes sharing the served-id table, uvloop + httptools, "
          "predict route in the parser callbacks, outbox per process (one write per event-loop "
          "iteration), InProcessSink to SQLite",
    "none": "as on, no outbox (rows dropped)",
    "on1": "as on, 1 process",
    "pubsub": "as on, PubSubSink to a topic of the Pub/Sub emulator (the Logger not run)",
    "outbox": "as on, the outboxes' sink drops the messages",
}


class DiscardSink(log_sinks.EncodingSink):
  """A LogSink that drops every message."""

  def deliver_encoded(self, data: bytes) -> None:
    del data


class NoOutbox:
  """Stands in for `outbox.OutboxLogger`: `append` counts the rows and drops them."""
  failures = 0
  pending = 0
  dead_letters = 0

  def __init__(self, outbox_path: str, sink: log_sinks.LogSink, **kwargs):
    del outbox_path, sink, kwargs
    self.delivered = 0

  def append(self, rows: List[Dict[str, Any]]) -> None:
    self.delivered += len(rows)

  def rows_on_disk(self):
    return iter(())

  def start(self) -> None:
    pass

  def close(self) -> None:
    pass


def baseline_module(workdir: str):
  """rlops/server.py at BASELINE_COMMIT, imported from a copy read with git."""
  root = pathlib.Path(__file__).resolve().parent.parent
  source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:rlops/server.py"], cwd=root,
                          check=True, capture_output=True, text=True).stdout
  path = os.path.join(workdir, "baseline_server.py")
  with open(path, "w") as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("baseline_server", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def server_process(variant: str, index: int, port: int, model_dir: str, workdir: str,
                   served: Optional[recent.RecentPredictions]) -> None:
  """Child process: one server of `variant` on 127.0.0.1:port until SIGTERM."""
  import uvicorn  # pylint: disable=import-outside-toplevel

  from rlops.serving import app as app_lib  # pylint: disable=import-outside-toplevel
  from rlops.serving import outbox, server  # pylint: disable=import-outside-toplevel
  directory = os.path.join(workdir, variant)
  sink = log_sinks.InProcessSink(os.path.join(directory, "warehouse.sqlite"))
  outbox_path = os.path.join(directory, f"outbox-{index}.jsonl")
  if variant == "baseline":
    app = baseline_module(directory).create_app(model_dir, sink, outbox_path=outbox_path, seed=0)
    config = uvicorn.Config(app, loop="asyncio", http="h11", access_log=False,
                            log_level="warning")
    uvicorn.Server(config).run(sockets=[server.listening_socket("127.0.0.1", port)])
    return
  if variant == "none":
    outbox.OutboxLogger = NoOutbox
  if variant in ("none", "outbox"):
    sink = DiscardSink()
  if variant == "pubsub":  # PUBSUB_EMULATOR_HOST is inherited from the parent.
    sink = log_sinks.PubSubSink(PUBSUB_TOPIC)
  app = app_lib.create_app(model_dir, sink, outbox_path=outbox_path, seed=index, served=served)
  server.serve(app, server.listening_socket("127.0.0.1", port, reuse_port=True))


def summarize(seconds: Sequence[float]) -> Dict[str, float]:
  """Count, p50, p99 and mean in milliseconds (NaN when empty)."""
  milliseconds = 1e3 * np.asarray(seconds, np.float64)
  if not len(milliseconds):
    return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
  return {"n": int(len(milliseconds)), "p50_ms": float(np.percentile(milliseconds, 50)),
          "p99_ms": float(np.percentile(milliseconds, 99)), "mean_ms": float(milliseconds.mean())}


def time_calls(call: Callable, inputs: Sequence, desc: str) -> np.ndarray:
  """Seconds of one call each, cycling through `inputs`, after a few warm-up calls."""
  for item in inputs[:POLICY_WARMUP_CALLS]:
    call(item)
  latencies = []
  deadline = time.perf_counter() + POLICY_MAX_SECONDS
  with tqdm(total=POLICY_MAX_CALLS, desc=desc, unit="call", leave=False) as bar:
    for index in range(POLICY_MAX_CALLS):
      if time.perf_counter() > deadline:
        break
      item = inputs[index % len(inputs)]
      start = time.perf_counter()
      call(item)
      latencies.append(time.perf_counter() - start)
      bar.update()
  return np.array(latencies)


def train_and_save(model: simulation.MovieLensModel, directory: str, ucb_directory: str,
                   seed: int) -> None:
  """LinUCB trained on uniformly logged records: `model_io.save`, and `agent.policy` saved alone."""
  rng = np.random.default_rng(seed)
  users = rng.integers(model.num_users, size=LOGGED_SAMPLES)
  actions = rng.integers(model.num_movies, size=LOGGED_SAMPLES).astype(np.int32)
  config = AgentConfig(name="linucb")
  agent = model_io.new_agent(config, model.num_movies, model.rank_k)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions),
                           batch_size=TRAIN_BATCH_SIZE, progress=True)
  model_io.save(agent, config, model.num_movies, model.rank_k, directory,
                {"samples": LOGGED_SAMPLES})
  policy_saver.PolicySaver(agent.policy, batch_size=None).save(ucb_directory)


def saved_policy_call(path: str) -> Callable:
  """`call(time_step) -> actions` of the PolicySaver SavedModel at `path`."""
  saved = tf.saved_model.load(path)
  state = saved.get_initial_state(1)
  return lambda time_step: saved.action(time_step, state).action.numpy()


def policy_latency(model: simulation.MovieLensModel, directory: str, ucb_directory: str,
                   contexts: np.ndarray) -> Dict[str, np.ndarray]:
  """Seconds of one-context calls of the two SavedModels and of `ServingModel.act`."""
  time_steps = [ts.restart(tf.constant(context[None]), batch_size=1) for context in contexts]
  serving_model = serving_policy.load_model(directory, "bench")
  rng = np.random.default_rng(0)
  name = f"{model.num_movies} movies"
  return {
      "tf_agents_ucb_savedmodel": time_calls(
          saved_policy_call(ucb_directory), time_steps, f"{name}: tf-agents UCB SavedModel"),
      "serving_savedmodel": time_calls(
          saved_policy_call(os.path.join(directory, model_io.POLICY_DIR)), time_steps,
          f"{name}: serving SavedModel"),
      "serving_model_act": time_calls(
          lambda observations: serving_model.act(observations, rng),
          [context[None] for context in contexts], f"{name}: ServingModel.act"),
  }


async def _drive(port: int, bodies: Sequence[bytes], concurrency: int, seconds: float,
                 rate: Optional[float]) -> Dict[str, Any]:
  """Sends one-instance requests on `concurrency` keep-alive connections (see `drive`)."""
  requests = [b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body) for body in bodies]
  total = int(rate * seconds) if rate else MAX_REQUESTS
  counter = itertools.count()
  warmups = collections.Counter()
  records = []  # (latency, end time, status)

  async def exchange(reader, writer, request: bytes) -> str:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
      name, _, value = line.partition(b":")
      if name.strip().lower() == b"content-length":
        length = int(value)
    await reader.readexactly(length)
    return head.split(b" ", 2)[1].decode()

  async def send(stream, request: bytes) -> str:
    try:
      return await asyncio.wait_for(exchange(*stream, request), REQUEST_TIMEOUT_SECONDS)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
      stream[1].close()
      stream[:] = await asyncio.open_connection("127.0.0.1", port)
      return type(error).__name__

  async def connect():
    stream = list(await asyncio.open_connection("127.0.0.1", port))
    for request in requests[:WARMUP_REQUESTS]:
      warmups[await send(stream, request)] += 1
    return stream

  streams = await asyncio.gather(*(connect() for _ in range(concurrency)))
  start = time.perf_counter() + 0.01

  async def run(stream):
    while True:
      index = next(counter)
      now = time.perf_counter()
      if (index >= total or now > start + seconds + GRACE_SECONDS
          or (not rate and now >= start + seconds)):
        return
      due = start + index / rate if rate else now
      while now < due:  # Never before its time: uvloop's timers may fire a millisecond early.
        await asyncio.sleep(due - now)
        now = time.perf_counter()
      status = await send(stream, requests[index % len(requests)])
      end = time.perf_counter()
      records.append((end - due, end, status))

  await asyncio.gather(*(run(stream) for stream in streams))
  for _, writer in streams:
    writer.close()
  statuses = collections.Counter(status for _, _, status in records)
  return {"latencies": [latency for latency, _, status in records if status == "200"],
          "elapsed": max(end for _, end, _ in records) - start if records else 0.0,
          "timed_statuses": dict(statuses), "all_statuses": dict(statuses + warmups),
          "unsent": total - len(records) if rate else 0}


def drive(port: int, bodies: Sequence[bytes], concurrency: int, seconds: float,
          rate: Optional[float]) -> Dict[str, Any]:
  """Sends one-instance requests to 127.0.0.1:port on `concurrency` keep-alive connections.

  Open loop (`rate` per second): request i is due at start + i / rate and its
  latency counts from then, so waiting for a free connection is included.
  Closed loop (`rate` None): each connection sends again when answered, until
  the window ends. Each connection first sends a few untimed warm-up requests.
  """
  import uvloop  # pylint: disable=import-outside-toplevel
  return uvloop.run(_drive(port, bodies, concurrency, seconds, rate))


def load_generator(connection) -> None:
  """Child process: runs each `drive` command it receives and sends back the result."""
  connection.send("ready")
  while True:
    command = connection.recv()
    if command is None:
      return
    connection.send(drive(**command))


def run_load(connection, desc: str, **command) -> Dict[str, Any]:
  """Has the load generator run `command`; shows progress while waiting (bounded)."""
  connection.send(command)
  seconds = command["seconds"]
  limit = seconds + GRACE_SECONDS + REQUEST_TIMEOUT_SECONDS + 30.0
  start = time.monotonic()
  with tqdm(total=round(seconds), desc=desc, unit="s", leave=False) as bar:
    while not connection.poll(0.5):
      elapsed = time.monotonic() - start
      if elapsed > limit:
        raise RuntimeError(f"the load generator did not answer within {limit:.0f} s")
      bar.n = min(round(elapsed), bar.total)
      bar.refresh()
  return connection.recv()


def _free_port() -> int:
  with contextlib.closing(socket.socket()) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _stop(processes: List[multiprocessing.Process]) -> None:
  for process in processes:
    if process.is_alive():
      process.terminate()  # SIGTERM: uvicorn shuts down and the outbox drains.
  for process in processes:
    process.join(60.0)
    if process.is_alive():
      process.kill()
      process.join()


def _warehouse_rows(path: str) -> int:
  if not os.path.exists(path):
    return 0
  with contextlib.closing(sqlite3.connect(path, timeout=30.0)) as database:
    try:
      return database.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    except sqlite3.OperationalError:  # Table not created yet.
      return 0


def start_servers(model_dir: str, workdir: str, stack: contextlib.ExitStack) -> Dict[str, Any]:
  """The server processes of each variant, each on its own port, with its model loaded."""
  context = multiprocessing.get_context("spawn")
  servers = {}
  for variant in VARIANTS:
    workers = 1 if variant in ("baseline", "on1") else WORKERS
    port = _free_port()
    os.makedirs(os.path.join(workdir, variant))
    served = None if variant == "baseline" else recent.RecentPredictions(context=context)
    processes = [context.Process(target=server_process, name=f"{variant}-{index}", daemon=True,
                                 args=(variant, index, port, model_dir, workdir, served))
                 for index in range(workers)]
    for process in processes:
      process.start()
    stack.callback(_stop, processes)
    # Kept: the children open the table's lock by name, which its finalizer removes.
    servers[variant] = {"port": port, "processes": processes, "served": served,
                        "warehouse": (None if variant in ("none", "pubsub", "outbox") else
                                      os.path.join(workdir, variant, "warehouse.sqlite")),
                        "outboxes": [os.path.join(workdir, variant, f"outbox-{index}.jsonl")
                                     for index in range(workers)],
                        "statuses": collections.Counter()}
  deadline = time.monotonic() + STARTUP_SECONDS
  for variant, entry in servers.items():
    # Every worker must be listening: each answers /health on its own connection, and the
    # kernel spreads new connections over the workers, so ask until many answered 200.
    answered = 0
    while answered < 20 * len(entry["processes"]):
      if time.monotonic() > deadline or not all(p.is_alive() for p in entry["processes"]):
        raise RuntimeError(f"{variant}: the servers did not start within {STARTUP_SECONDS} s")
      try:
        ok = httpx.get(f"http://127.0.0.1:{entry['port']}/health", timeout=5.0).is_success
      except httpx.TransportError:
        ok = False
      answered = answered + 1 if ok else 0
      time.sleep(0.0 if ok else 0.5)
  return servers


def _drained(outbox_paths: List[str]) -> bool:
  """Whether each outbox has delivered all it holds: its saved offset is its size."""
  for path in outbox_paths:
    with open(path + ".offset", "rb") as f:
      if int(f.read().strip() or 0) != os.path.getsize(path):
        return False
  return True


def _flushed(variant: str, entry: Dict[str, Any]) -> bool:
  """Whether a variant's log is all delivered (always, for `none`, which keeps none)."""
  if entry["warehouse"] is not None:
    return _warehouse_rows(entry["warehouse"]) >= entry["statuses"]["200"]
  return variant == "none" or _drained(entry["outboxes"])


def flush_all(servers: Dict[str, Any]) -> None:
  """Waits (bounded) until each logging variant's warehouse holds every answered prediction,
  or, for the pubsub and outbox variants, until their outboxes are drained (for pubsub:
  acknowledged by Pub/Sub)."""
  for variant, entry in servers.items():
    deadline = time.monotonic() + FLUSH_SECONDS
    while not _flushed(variant, entry) and time.monotonic() < deadline:
      time.sleep(0.2)


def published_request_ids(stack: contextlib.ExitStack) -> Callable[[], int]:
  """Starts the Pub/Sub emulator with PUBSUB_TOPIC and a subscription to it, and sets
  PUBSUB_EMULATOR_HOST for the processes started after; returns a function that pulls
  every message on the subscription and counts the distinct request ids in them."""
  from google.cloud import pubsub_v1  # pylint: disable=import-outside-toplevel
  host = stack.enter_context(testing_utils.pubsub_emulator(
      stack.enter_context(tempfile.TemporaryDirectory()), PUBSUB_PROJECT))
  os.environ["PUBSUB_EMULATOR_HOST"] = host
  pubsub_v1.PublisherClient().create_topic(name=PUBSUB_TOPIC)
  subscriber = pubsub_v1.SubscriberClient()
  subscriber.create_subscription(name=PUBSUB_SUBSCRIPTION, topic=PUBSUB_TOPIC)

  def count() -> int:
    request_ids = set()
    deadline = time.monotonic() + FLUSH_SECONDS
    while time.monotonic() < deadline:
      answer = subscriber.pull(subscription=PUBSUB_SUBSCRIPTION,
                               max_messages=PUBSUB_PULL_MESSAGES, timeout=10.0)
      if not answer.received_messages:
        break
      for received in answer.received_messages:
        request_ids.update(row["request_id"] for row in
                           log_sinks.decode_json(received.message.data)["predictions"])
      subscriber.acknowledge(subscription=PUBSUB_SUBSCRIPTION,
                             ack_ids=[received.ack_id for received in answer.received_messages])
    return len(request_ids)

  return count


def emulator_cpu_seconds(host: str) -> float:
  """User and system CPU seconds the Pub/Sub emulator at `host` has used so far: the
  processes of the session `testing_utils.pubsub_emulator` starts it in (gcloud and Java)."""
  stats = {}
  for pid in filter(str.isdigit, os.listdir("/proc")):
    with contextlib.suppress(OSError):  # Gone meanwhile.
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")
      with open(f"/proc/{pid}/stat") as f:
        stats[pid] = (cmdline, f.read().rsplit(")", 1)[1].split())
  option = f"--host-port={host}".encode()
  leaders = [pid for pid, (cmdline, _) in stats.items() if option in cmdline]
  if not leaders:
    raise RuntimeError(f"no process of the Pub/Sub emulator at {host}")
  ticks = sum(int(fields[11]) + int(fields[12]) for _, fields in stats.values()
              if fields[3] in leaders)  # Field 6 of stat: the session.
  return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_ticks(stat_path: str) -> int:
  with open(stat_path) as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat.


def cpu_seconds(processes: List[multiprocessing.Process]) -> np.ndarray:
  """[all threads, the main thread] user and system CPU seconds the processes have used so
  far. The main thread runs the event loop; in a logging variant the others deliver the log."""
  ticks = np.zeros(2)
  for process in processes:
    main_thread = _cpu_ticks(f"/proc/{process.pid}/task/{process.pid}/stat")  # First: <= all.
    ticks += (_cpu_ticks(f"/proc/{process.pid}/stat"), main_thread)
  return ticks / os.sysconf("SC_CLK_TCK")


def pooled(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
  """Latency percentiles, throughput, and server and Pub/Sub emulator CPU per request of runs
  of the same variant."""
  latencies = list(itertools.chain.from_iterable(run["latencies"] for run in runs))
  elapsed = sum(run["elapsed"] for run in runs)
  answered = max(sum(sum(run["all_statuses"].values()) for run in runs), 1)
  cpu_all, cpu_main = (float(us) for us in 1e6 * sum(run["cpu_seconds"] for run in runs)
                       / answered)
  rps = [len(run["latencies"]) / max(run["elapsed"], 1e-9) for run in runs]
  return {**summarize(latencies), "rps": len(latencies) / max(elapsed, 1e-9), "seconds": elapsed,
          "server_cpu_us_per_request": cpu_all,
          # Both counters tick at SC_CLK_TCK: read apart, they may differ by a tick below zero.
          "other_threads_cpu_us_per_request": max(cpu_all - cpu_main, 0.0),
          "emulator_cpu_us_per_request": 1e6 * sum(run["emulator_cpu_seconds"] for run in runs)
                                         / answered,
          "rps_per_run": rps,
          "rps_after": {before: float(np.mean([run_rps for run_rps, run in zip(rps, runs)
                                               if run["after"] == before]))
                        for before in sorted({run["after"] for run in runs} - {None})},
          "non_200": sum(n for run in runs for status, n in run["timed_statuses"].items()
                         if status != "200"),
          "unsent": sum(run["unsent"] for run in runs)}


def _resampled_rps(runs: List[Dict[str, Any]], rng: np.random.Generator) -> np.ndarray:
  """Pooled throughput of BOOTSTRAP_RESAMPLES resamplings, with replacement, of `runs`."""
  answered = np.array([len(run["latencies"]) for run in runs], np.float64)
  elapsed = np.array([run["elapsed"] for run in runs])
  picks = rng.integers(len(runs), size=(BOOTSTRAP_RESAMPLES, len(runs)))
  return answered[picks].sum(1) / elapsed[picks].sum(1)


def ratio_interval(numerator: List[Dict[str, Any]], denominator: List[Dict[str, Any]],
                   rng: np.random.Generator) -> List[float]:
  """90% bootstrap interval of the pooled throughput ratio of two variants' closed-loop
  runs, each variant's rounds resampled: how far this machine's noise leaves the ratio open."""
  ratios = _resampled_rps(numerator, rng) / _resampled_rps(denominator, rng)
  return np.percentile(ratios, [5, 95]).tolist()


def serving_benchmark(model_dir: str, contexts: np.ndarray, connection,
                      args: argparse.Namespace) -> Dict[str, Any]:
  """Open- and closed-loop runs against each variant, and the correctness counts."""
  bodies = [json.dumps({"instances": [{"observation": [float(x) for x in context]}]}).encode()
            for context in contexts]
  raw = {"open": collections.defaultdict(list), "closed": collections.defaultdict(list)}
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
    count_published = published_request_ids(stack)
    emulator_host = os.environ["PUBSUB_EMULATOR_HOST"]
    servers = start_servers(model_dir, workdir, stack)
    schedule = ([("open", name, args.seconds, args.rate) for name in VARIANTS]
                + [("closed", name, args.seconds / 2, None)
                   for name in CLOSED_LOOP_BLOCK * args.blocks])
    previous = None  # The closed-loop round before.
    for mode, name, seconds, rate in schedule:
      flush_all(servers)
      cpu_before = cpu_seconds(servers[name]["processes"])
      emulator_before = emulator_cpu_seconds(emulator_host)
      result = run_load(connection, f"{mode} loop, {name}", port=servers[name]["port"],
                        bodies=bodies, concurrency=args.concurrency, seconds=seconds, rate=rate)
      flush_all(servers)  # The CPU of delivering this run's log counts too.
      result["cpu_seconds"] = cpu_seconds(servers[name]["processes"]) - cpu_before
      result["emulator_cpu_seconds"] = emulator_cpu_seconds(emulator_host) - emulator_before
      servers[name]["statuses"].update(result["all_statuses"])
      result["after"] = previous
      previous = name if mode == "closed" else None
      raw[mode][name].append(result)
    flush_all(servers)
    checks = {}
    for name, entry in servers.items():
      statuses = entry["statuses"].copy()
      answered = statuses.pop("200", 0)
      logged = None
      if entry["warehouse"] is not None:
        logged = _warehouse_rows(entry["warehouse"])
      elif name == "pubsub":
        logged = count_published()
      checks[name] = {"responses_200": answered, "other": dict(statuses), "logged_rows": logged,
                      "flushed": None if logged is None else logged >= answered}
  closed = {name: pooled(runs) for name, runs in raw["closed"].items()}
  # Relative spread between rounds of the same variant: the noise of a throughput ratio.
  spread = max((max(f["rps_per_run"]) - min(f["rps_per_run"])) / f["rps"] for f in closed.values())
  rng = np.random.default_rng(0)
  intervals = {f"{a}/{b}": ratio_interval(raw["closed"][a], raw["closed"][b], rng)
               for a, b in RATIOS}
  return {"open": {name: pooled(runs) for name, runs in raw["open"].items()},
          "closed": closed, "closed_round_spread": spread, "closed_ratio_intervals": intervals,
          "checks": checks,
          "load_average_1min": [load_before, os.getloadavg()[0]],
          "cdf": {mode: {name: np.sort(np.concatenate([run["latencies"] for run in runs]))
                         for name, runs in raw[mode].items()} for mode in raw}}


def plot_latency(cdf: Dict[str, Dict[str, np.ndarray]], in_process: np.ndarray, rate: float,
                 path: pathlib.Path) -> pathlib.Path:
  """CDFs of endpoint latency per run and logging variant, beside the in-process call."""
  figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
  titles = {"open": f"open loop, {rate:g} requests/s", "closed": "closed loop (max throughput)"}
  for axis, (mode, curves) in zip(axes, cdf.items()):
    for name, latencies in curves.items():
      axis.plot(1e3 * latencies, np.arange(1, len(latencies) + 1) / len(latencies),
                label=f"endpoint, {name}")
    values = np.sort(in_process)
    axis.plot(1e3 * values, np.arange(1, len(values) + 1) / len(values), linestyle="--",
              color="gray", label="in process: ServingModel.act")
    axis.axvline(P99_TARGET_MS, color="red", linewidth=0.8, label=f"{P99_TARGET_MS:g} ms")
    axis.axhline(0.99, color="black", linewidth=0.5, linestyle=":")
    axis.set_xscale("log")
    axis.set_xlabel("latency (ms, log scale)")
    axis.set_title(titles[mode])
    axis.grid(alpha=0.3)
  axes[0].set_ylabel("share of requests")
  axes[0].legend(fontsize=8, loc="upper left")
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def print_policy(policy: Dict[int, Dict[str, Dict[str, float]]]) -> None:
  print(f"one-context policy calls, rank {RANK_K}, LinUCB trained on {LOGGED_SAMPLES:,} uniformly "
        f"logged records; p50 / p99 ms (calls timed)")
  print(f"  {'movies':>6} {'tf-agents UCB SavedModel':>26} {'serving SavedModel':>22} "
        f"{'ServingModel.act':>22} {'UCB/act p50':>12} {'serving SM/act p50':>19}")
  for movies, figures in policy.items():
    cells = [f"{f['p50_ms']:.3f} / {f['p99_ms']:.3f} ({f['n']})" for f in figures.values()]
    act = figures["serving_model_act"]["p50_ms"]
    print(f"  {movies:>6} {cells[0]:>26} {cells[1]:>22} {cells[2]:>22} "
          f"{figures['tf_agents_ucb_savedmodel']['p50_ms'] / act:>11.0f}x "
          f"{figures['serving_savedmodel']['p50_ms'] / act:>18.0f}x")
  print("  tf-agents UCB: PolicySaver(agent.policy), alpha 10, a linear solve per arm and call "
        "(the issue's baseline).\n"
        "  serving SavedModel: model_io.save's policy/, epsilon-greedy over the greedy arm from "
        "theta (no solves).\n"
        "  ServingModel.act: the server's NumPy fast path (greedy arm and propensity); SavedModel "
        "inputs are prebuilt TimeSteps.")


def print_serving(serving: Dict[str, Any], act: Dict[str, float], args: argparse.Namespace) -> None:
  print(f"\nendpoint, {SERVING_MOVIES} movies, one instance per request, {args.concurrency} "
        f"keep-alive connections from a separate asyncio process on the same "
        f"{len(os.sched_getaffinity(0))} CPUs; 1-minute load average before / after: "
        "{:.2f} / {:.2f}".format(*serving["load_average_1min"]))
  print(f"  {'run':<24} {'variant':<9} {'requests':>8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'p50/in-process':>15} {'non-200':>8} {'unsent':>7}")
  for mode, label in (("open", f"open loop {args.rate:g}/s"), ("closed", "closed loop")):
    for name, f in serving[mode].items():
      print(f"  {label:<24} {name:<9} {f['n']:>8} {f['rps']:>8.1f} {f['p50_ms']:>7.2f} "
            f"{f['p99_ms']:>7.2f} {f['p50_ms'] / act['p50_ms']:>14.0f}x {f['non_200']:>8} "
            f"{f['unsent']:>7}")
  print(f"  in process, ServingModel.act on the same contexts: p50 {act['p50_ms']:.3f} ms, "
        f"p99 {act['p99_ms']:.3f} ms")
  print(f"  open loop: {args.seconds:g} s per variant; latency counts from each request's due "
        f"time.\n  closed loop: rounds of {args.seconds / 2:g} s in the order "
        f"{', '.join(CLOSED_LOOP_BLOCK)}, {args.blocks} times; req/s per round: "
        + "; ".join(f"{name} " + ", ".join(f"{r:.0f}" for r in f["rps_per_run"])
                    for name, f in serving["closed"].items()))
  print(f"  rounds of the same variant differ by up to {serving['closed_round_spread']:.0%} of its "
        "req/s: smaller throughput differences are within this machine's noise")
  closed = serving["closed"]
  cpu = {name: f["server_cpu_us_per_request"] for name, f in closed.items()}
  print("  closed loop, server CPU per request (all its processes and threads, log delivery "
        "included; in brackets, threads other than the event loop's, which deliver the log): "
        + ", ".join(f"{name} {us:.0f} us ({closed[name]['other_threads_cpu_us_per_request']:.0f})"
                    for name, us in cpu.items())
        + "; logging's part of " + ", ".join(
            f"{name}'s: {(cpu[name] - cpu['none']) / cpu[name]:.0%}"
            for name in ("on", "pubsub", "outbox")))
  print("  closed loop, the Pub/Sub emulator's CPU per request (Java, on the same CPUs; on "
        "Vertex, Google's): " + ", ".join(
            f"{name} {f['emulator_cpu_us_per_request']:.1f} us" for name, f in closed.items()))
  paired = [on / none for on, none in zip(closed["on"]["rps_per_run"],
                                          closed["none"]["rps_per_run"])]
  print(f"  on / none of the i-th rounds of each (in the same block): median "
        f"{np.median(paired):.2f}, {min(paired):.2f} to {max(paired):.2f}")
  print("  req/s by the variant run just before: " + "; ".join(
      f"{name} " + ", ".join(f"after {before} {rps:.0f}"
                             for before, rps in closed[name]["rps_after"].items())
      for name in closed))
  intervals = serving["closed_ratio_intervals"]
  print("  closed-loop ratios (90% bootstrap interval over the rounds): " + ", ".join(
      f"{a}/{b} {closed[a]['rps'] / closed[b]['rps']:.2f} "
      "({:.2f} to {:.2f})".format(*intervals[f"{a}/{b}"]) for a, b in RATIOS))
  print("  variants:")
  for name, description in VARIANTS.items():
    print(f"    {name:<9} {description}")
  print("\ncorrectness (all requests of a variant, warm-up included)")
  for name, c in serving["checks"].items():
    where = "rows on the topic" if name == "pubsub" else "warehouse rows"
    rows = "" if c["logged_rows"] is None else (
        f", {where} {c['logged_rows']}, all delivered: {'yes' if c['flushed'] else 'no'}")
    print(f"  {name:<9} 200 responses {c['responses_200']}, other {c['other'] or 0}{rows}")


def targets(serving: Dict[str, Any], args: argparse.Namespace) -> List[Dict[str, Any]]:
  """Each serving target of the issue with its figures and whether it is met."""
  open_on = serving["open"]["on"]
  closed = serving["closed"]
  gain = closed["on"]["rps"] / closed["baseline"]["rps"]
  loss = {name: closed[name]["rps"] / closed["none"]["rps"] for name in ("on", "pubsub")}
  spread = f"rounds of a variant differ by up to {serving['closed_round_spread']:.0%}"
  interval = "90% bootstrap interval over the rounds {:.2f} to {:.2f}".format
  return [{
      "target": f"p99 <= {P99_TARGET_MS:g} ms at {args.rate:g} requests/s open loop, logging on",
      "met": bool(open_on["p99_ms"] <= P99_TARGET_MS and open_on["rps"] >= 0.95 * args.rate
                  and open_on["non_200"] == 0 and open_on["unsent"] == 0),
      "detail": f"p99 {open_on['p99_ms']:.2f} ms, {open_on['rps']:.1f} requests/s achieved; "
                f"baseline p99 {serving['open']['baseline']['p99_ms']:.2f} ms"
  }, {
      "target": f"closed-loop throughput >= {THROUGHPUT_GAIN_TARGET:g}x the baseline (on / "
                "baseline)",
      "met": bool(gain >= THROUGHPUT_GAIN_TARGET),
      "detail": f"{closed['on']['rps']:.0f} / {closed['baseline']['rps']:.0f} req/s = "
                f"{gain:.2f}x ({interval(*serving['closed_ratio_intervals']['on/baseline'])}); "
                f"{spread}"
  }] + [{
      "target": f"logging lowers closed-loop throughput by <= {THROUGHPUT_LOSS_TARGET:.0%} "
                f"({name} / none: {how})",
      "met": bool(loss[name] >= 1.0 - THROUGHPUT_LOSS_TARGET),
      "detail": f"{closed[name]['rps']:.0f} / {closed['none']['rps']:.0f} req/s = "
                f"{loss[name]:.3f} ({interval(*serving['closed_ratio_intervals'][f'{name}/none'])}"
                f"); {spread}"
  } for name, how in (
      ("pubsub", "as on Vertex, the outboxes publishing to Pub/Sub"),
      ("on", "as `rlops serve` runs locally, the Logger's warehouse writes in the server "
             "processes"))]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seconds", type=float, default=10.0,
                      help="load per variant and loop kind (default: %(default)s)")
  parser.add_argument("--rate", type=float, default=500.0,
                      help="open-loop requests per second (default: %(default)s)")
  parser.add_argument("--concurrency", type=int, default=16,
                      help="keep-alive connections (default: %(default)s)")
  parser.add_argument("--blocks", type=int, default=3,
                      help="closed-loop blocks, each five rounds of every variant, one right "
                           "after each other variant (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=0,
                      help="data and training (default: %(default)s)")
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parent / "results",
                      help="where the JSON and PNG go (default: bench/results)")
  return parser


def main(argv=None) -> None:
  args = build_parser().parse_args(argv)
  if (not 0 < args.seconds <= 60 or args.rate <= 0 or not 1 <= args.concurrency <= 64
      or not 1 <= args.blocks <= 10):
    raise SystemExit("need 0 < --seconds <= 60, --rate > 0, 1 <= --concurrency <= 64 and "
                     "1 <= --blocks <= 10")
  load_at_start = os.getloadavg()[0]
  available = sorted(os.sched_getaffinity(0))
  # Started first: its imports overlap training. Spawned, not forked, from a process using TF.
  context = multiprocessing.get_context("spawn")
  connection, child_connection = context.Pipe()
  generator = context.Process(target=load_generator, args=(child_connection,),
                              name="load-generator", daemon=True)
  generator.start()
  args.output_dir.mkdir(parents=True, exist_ok=True)
  ratings = movielens.generate_ratings(seed=args.seed)
  latencies, contexts = {}, {}
  with tempfile.TemporaryDirectory() as workdir:
    models = {}
    for movies in MOVIES:
      model = simulation.MovieLensModel(ratings, movies, RANK_K)
      rng = np.random.default_rng(args.seed + 1)
      contexts[movies] = model.observe(rng.integers(model.num_users, size=NUM_CONTEXTS))
      models[movies] = (model, os.path.join(workdir, f"movies{movies}"),
                        os.path.join(workdir, f"tf_agents_ucb{movies}"))
      print(f"[{movies} movies] train and save", flush=True)
      train_and_save(*models[movies], seed=args.seed)
    if not connection.poll(120.0) or connection.recv() != "ready":
      raise RuntimeError("the load generator did not start")
    for movies, (model, directory, ucb_directory) in models.items():
      latencies[movies] = policy_latency(model, directory, ucb_directory, contexts[movies])
    print(f"[{SERVING_MOVIES} movies] endpoint", flush=True)
    serving = serving_benchmark(models[SERVING_MOVIES][1], contexts[SERVING_MOVIES], connection,
                                args)
  connection.send(None)
  generator.join(10.0)
  policy = {movies: {name: summarize(values) for name, values in calls.items()}
            for movies, calls in latencies.items()}
  act = policy[SERVING_MOVIES]["serving_model_act"]
  checks = targets(serving, args)
  plot = plot_latency(serving.pop("cdf"), latencies[SERVING_MOVIES]["serving_model_act"],
                      args.rate, args.output_dir / "serving_latency.png")
  print(f"\nratings: {ratings.source}; {len(available)} CPUs; 1-minute load average at start "
        f"{load_at_start:.2f}")
  print_policy(policy)
  print_serving(serving, act, args)
  print()
  for check in checks:
    print(f"target met: {'yes' if check['met'] else 'no'} -- {check['target']} ({check['detail']})")
  report = args.output_dir / "serving.json"
  report.write_text(json.dumps({
      "ratings": ratings.source, "cpus": available, "load_average_1min_at_start": load_at_start,
      "rank_k": RANK_K, "logged_samples": LOGGED_SAMPLES,
      "seconds": args.seconds, "rate": args.rate, "concurrency": args.concurrency,
      "variants": VARIANTS, "workers": WORKERS, "baseline_commit": BASELINE_COMMIT,
      "policy": policy, "serving": serving, "targets": checks}, indent=2))
  print(f"\nreport: {report}; plot: {plot}")


if __name__ == "__main__":
  main()
