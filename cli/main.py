"""The `rlops` command line."""
import argparse
import glob
import importlib.metadata
import json
import logging
import math
import os
import pathlib
import re
import shutil
import signal
import sys
import urllib.parse
from typing import List, Optional

from cli import options
from cli.options import WorkdirError, config_from_args
from rlops import movielens, noise, workdirs
from rlops.config import LEARNING_LOOP_AGENT, MAX_SEED, Config, ConfigError

# Startup samples of the demo: few, so that the loop visibly learns from its own logs.
COLD_START_SAMPLES = 300

# Exit codes: what went wrong, for scripts.
EXIT_CONFIGURATION = 2
EXIT_DATA = 3
EXIT_WORKDIR = 4
EXIT_RUNNING = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it.
MAX_WORKERS = 64  # Server processes of `rlops serve`.


class RunningError(Exception):
  """A pipeline run is under way: the command would start another."""


def _quiet_known_noise() -> None:
  """Silences what the libraries print that is no news to a user (`noise.quiet_libraries`),
  and the warnings TFX, Beam and TensorFlow log about their internals. Errors still show,
  one line each."""
  noise.quiet_libraries()
  # The root handler, before any library's logging.basicConfig (which then does nothing).
  handler = logging.StreamHandler()
  handler.setLevel(logging.ERROR)
  handler.setFormatter(logging.Formatter("rlops: %(name)s: %(message)s"))
  logging.getLogger().addHandler(handler)


def _check_data(config: Config) -> None:
  """Loads the ratings before any work starts: bad files and too few movies fail here."""
  from rlops import simulation  # pylint: disable=import-outside-toplevel
  ratings = movielens.ratings_from_config(config.data)
  if ratings.num_movies < config.environment.num_movies:
    raise ConfigError(f"{ratings.source} has ratings of {ratings.num_movies} movies: "
                      f"--num-movies {config.environment.num_movies} needs as many")
  try:
    simulation.MovieLensModel(ratings, config.environment.num_movies, config.environment.rank_k)
  except ValueError as error:
    raise ConfigError(str(error)) from error


def _train(config: Config, samples: int) -> dict:
  """Trains the configured agent online on the simulation; writes a report and a plot."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from rlops import agents, environment, plots, simulation, training  # pylint: disable=import-outside-toplevel
  model = simulation.MovieLensModel.from_config(config)
  env = environment.MovieLensEnvironment(model, batch_size=config.environment.batch_size,
                                         seed=config.environment.seed)
  agent = agents.create_agent(config.agent, env.time_step_spec(), env.action_spec())
  curve = training.train_online(agent, env, samples,
                                agents.exploring_action_fn(agent, config.agent), progress=True)
  everyone = np.arange(model.num_users)
  report = {
      "agent": config.agent.name,
      "exploration": config.agent.exploration,
      "num_movies": model.num_movies,
      "rank_k": model.rank_k,
      "users": model.num_users,
      "reconstruction_rmse": model.reconstruction_rmse,
      "online": curve.summary(),
      "greedy": training.evaluate_policy(agents.greedy_policy(agent), model, everyone),
      "serving": training.evaluate_policy(
          agents.serving_policy(agent, config.agent, curve.regret.size), model, everyone),
  }
  workdir = pathlib.Path(config.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "train_report.json").write_text(json.dumps(report, indent=2))
  plots.learning_curves({config.agent.name: curve}, workdir / "train_regret.png",
                        title=f"{model.num_movies} movies, rank {model.rank_k}")
  return report


def _print_train_report(report: dict, workdir: str) -> None:
  online, greedy, serving = report["online"], report["greedy"], report["serving"]
  print(f"\n{report['agent']} on {report['users']} users x {report['num_movies']} movies, "
        f"rank {report['rank_k']} (reconstruction RMSE {report['reconstruction_rmse']:.3f})")
  print(f"  online:  {online['samples']} samples, {online['samples_per_second']:.0f} samples/s, "
        f"mean reward {online['mean_reward']:.3f}, "
        f"regret over the last 10% {online['final_regret']:.3f}")
  print(f"  greedy policy (all users):  reward {greedy['reward']:.3f}, "
        f"regret {greedy['regret']:.3f}, "
        f"optimal action {greedy['optimal_action_share']:.1%}")
  print(f"  serving policy ({report['exploration']}):  reward {serving['reward']:.3f}, "
        f"regret {serving['regret']:.3f}")
  print(f"  report: {workdir}/train_report.json, plot: {workdir}/train_regret.png")


def _cmd_train(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  _check_data(config)
  _print_train_report(_train(config, config.pipeline.samples), config.workdir)
  return 0


def _print_run(result: dict) -> None:
  from tfx_pipeline import windows  # pylint: disable=import-outside-toplevel
  window = result["window"]
  print(f"\n{result['mode']} pipeline"
        + (f", records logged in {windows.Window(**window)}" if window else ""))
  if not result["trained"]:
    print(f"  nothing trained: {result['reason']}")
    return
  evaluation = result["evaluation"]
  candidate, baseline = evaluation["candidate"], evaluation["baseline"]
  warm = (f"model {result['warm_started_from_model']}" if result.get("warm_started_from_model")
          else "nothing (from scratch)")
  print(f"  trained: {result['agent']} model {result['model_id']} on {result['samples']} records, "
        f"warm-started from {warm}")
  print(f"  estimates on {evaluation['eval_records']} held-out records (95% bootstrap intervals):")
  for metric in ("ips", "snips", "dr"):
    value = candidate[metric]
    print(f"    {metric:6s} {value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
          f"   baseline {baseline[metric]['value']:.3f}")
  print(f"    oracle {candidate['oracle']['value']:.3f} (regret {candidate['oracle_regret']:.3f})"
        f"   baseline {baseline['oracle']['value']:.3f}")
  print(f"  gate against the {evaluation['baseline_name']}: "
        f"{'BLESSED' if result['blessed'] else 'NOT BLESSED'} ({'; '.join(evaluation['reasons'])})")
  print(f"  pushed to: {result['pushed_destination']}" if result.get("pushed") else "  not pushed")


def _print_component(node_id: str, seconds: float) -> None:
  print(f"  {node_id:32s} {seconds:6.1f} s", flush=True)


def _start_workdir(config: Config, force: bool) -> Config:
  """Checks that `config.workdir` may take a startup run and remembers the configuration.

  A used workdir is refused unless `force`, which clears it first.
  """
  if options.remembered(config.workdir) is not None or (
      os.path.isdir(config.workdir) and os.listdir(config.workdir)):
    if not force:
      raise WorkdirError(f"{config.workdir} is not empty: a second startup would replace what it "
                         "serves. Use another --workdir, or --force to clear it")
    if options.remembered(config.workdir) is None:
      raise WorkdirError(f"--force clears only a workdir of rlops: "
                         f"{config.workdir} has other files")
    shutil.rmtree(config.workdir)
  if config.data.path:
    config = config.replace(data={"path": os.path.abspath(config.data.path)})
  options.remember(config)
  return config


def _cmd_pipeline(args: argparse.Namespace) -> int:
  startup = args.mode == "startup"
  config = config_from_args(args, starts_workdir=startup)
  _check_data(config)
  if startup:
    config = _start_workdir(config, args.force)
  elif options.remembered(config.workdir) is None:
    raise WorkdirError(f"{config.workdir} has no startup run: run `rlops pipeline startup "
                       f"--workdir {config.workdir}` first")
  from tfx_pipeline import local_runner  # pylint: disable=import-outside-toplevel
  print(f"{args.mode} pipeline in {config.workdir}:", flush=True)
  _print_run(local_runner.run(config, args.mode, on_component=_print_component))
  return 0


def _cmd_demo(args: argparse.Namespace) -> int:
  """The whole local loop: startup pipeline, endpoint, rounds of traffic, retrainings."""
  config = config_from_args(args, starts_workdir=True)
  for name in ("rounds", "requests", "threshold"):
    if getattr(args, name) < 1:
      raise ConfigError(f"--{name} must be positive, got {getattr(args, name)}")
  if args.drift_at_round is not None and not 2 <= args.drift_at_round <= args.rounds:
    raise ConfigError(f"--drift-at-round must be between 2 and --rounds, got {args.drift_at_round}")
  _check_data(config)
  config = _start_workdir(config, args.force)
  from cli import demo  # pylint: disable=import-outside-toplevel
  report = demo.run_demo(config, rounds=args.rounds, requests_per_round=args.requests,
                         threshold=args.threshold, drift_at_round=args.drift_at_round)
  demo.print_table(report)
  print(f"\nreport: {config.workdir}/demo_report.json, plots: {config.workdir}/demo_rounds.png, "
        f"{config.workdir}/demo_learning.png")
  return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
  """Ranks learning settings offline on the warehouse's logged records."""
  config = config_from_args(args)
  if not 0 < args.newer_share < 1:
    raise ConfigError(f"--newer-share must be in (0, 1), got {args.newer_share}")
  if args.write_config and (os.path.isdir(args.write_config) or not os.path.isdir(
      os.path.dirname(os.path.abspath(args.write_config)))):
    raise ConfigError(f"--write-config {args.write_config} must be a file in an existing folder")
  from rlops import offline_evaluation  # pylint: disable=import-outside-toplevel
  settings = [offline_evaluation.parse_setting(text, config.agent)
              for text in (args.setting or [""])]
  for setting in settings:
    setting.validate_for(config.environment)
  from rlops import plots, warehouse  # pylint: disable=import-outside-toplevel
  path = workdirs.LocalPaths(config.workdir).warehouse
  if not os.path.isfile(path):
    raise WorkdirError(f"no warehouse at {path}: run `rlops pipeline startup` first")
  store = warehouse.Warehouse(path)
  try:
    records = store.rewarded_records()
  finally:
    store.close()
  try:
    rows = offline_evaluation.compare(
        records, settings, config.environment.num_movies, config.environment.rank_k,
        newer_share=args.newer_share, bootstrap_samples=config.pipeline.bootstrap_samples,
        seed=config.environment.seed, progress=True)
  except ValueError as error:  # Too few records to split, or to estimate on.
    raise WorkdirError(f"{path}: {error}") from error
  labels = [offline_evaluation.describe(row["setting"], config.agent) for row in rows]
  print(f"\ntrained on the older {rows[0]['train_records']} records, estimated on the newer "
        f"{rows[0]['eval_records']}; versus logging: paired difference with its 95% interval")
  print(f"{'rank':>4}  {'DR':>7} {'interval':>17}  {'SNIPS':>7}  {'versus logging':>26}  setting")
  for rank, (row, label) in enumerate(zip(rows, labels), 1):
    dr, versus = row["estimates"]["dr"], row["versus_logging"]["dr"]
    print(f"{rank:>4}  {dr['value']:>7.4f} [{dr['low']:>7.4f}, {dr['high']:>7.4f}]  "
          f"{row['estimates']['snips']['value']:>7.4f}  {versus['value']:>+8.4f} "
          f"[{versus['low']:>+7.4f}, {versus['high']:>+7.4f}]  {label}")
  os.makedirs(config.workdir, exist_ok=True)
  plot = plots.offline_comparison(rows, labels, os.path.join(config.workdir, "evaluate.png"))
  with open(os.path.join(config.workdir, "evaluate_report.json"), "w") as f:
    json.dump(rows, f, indent=2)
  print(f"report: {config.workdir}/evaluate_report.json, plot: {plot}")
  if args.write_config:
    from rlops import model_io  # pylint: disable=import-outside-toplevel
    best = model_io.agent_config_of({"agent": rows[0]["setting"]})
    with open(args.write_config, "w") as f:
      f.write(config.replace(agent=best).to_json())
    print(f"best setting written as the configuration: {args.write_config}")
  return 0


def _sink(args: argparse.Namespace, config: Config):
  from rlops import log_sinks  # pylint: disable=import-outside-toplevel
  if args.logger_url:
    _check_logger_url(args.logger_url)
    return log_sinks.CloudEventSink(args.logger_url)
  return log_sinks.InProcessSink(workdirs.LocalPaths(config.workdir).warehouse,
                                 log_sinks.RowLimits.of(config.environment))


def _refuse_a_model_of_another_shape(directory: str, config: Config) -> None:
  """Refuses to serve, into the workdir's warehouse, a model whose rows the workdir's row
  limits would refuse (its observation length or number of movies differ)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from rlops import model_io  # pylint: disable=import-outside-toplevel
  try:
    metadata = model_io.read_metadata(directory)
    shape = (metadata["num_movies"], metadata["rank_k"])
  except (tf.errors.OpError, ValueError, KeyError, TypeError):
    return  # Not readable yet: the server reports why it does not serve.
  environment = config.environment
  if shape != (environment.num_movies, environment.rank_k):
    raise ConfigError(f"the model at {directory} has {shape[0]} movies at rank {shape[1]}, the "
                      f"workdir {config.workdir} {environment.num_movies} at rank "
                      f"{environment.rank_k}: its predictions could not be logged there; serve "
                      "it with a workdir of its shape (--num-movies, --rank-k)")


def _check_outboxes(workdir: str, workers: int) -> None:
  """Refuses outboxes the server processes cannot log to (unwritable, or logged to by a server
  still running), and a count of processes that would leave the undelivered rows of another
  outbox behind: worker i delivers outbox-<i>.jsonl, a single process outbox.jsonl."""
  from rlops.serving import outbox, server  # pylint: disable=import-outside-toplevel
  served = workdirs.LocalPaths(workdir).outbox
  paths = [server.worker_outbox_path(served, index if workers > 1 else None)
           for index in range(workers)]
  for path in paths:
    try:
      outbox.check_free(path)
    except OSError as error:
      raise WorkdirError(f"cannot log to {path}: {error}") from None
  owned = {os.path.basename(path) for path in paths}
  for path in sorted(pathlib.Path(workdir).glob("outbox*.jsonl")):
    if not re.fullmatch(r"outbox(-\d+)?\.jsonl", path.name) or path.name in owned:
      continue
    rows = outbox.undelivered_rows(str(path))
    if rows:
      raise WorkdirError(f"{path} holds {rows} undelivered prediction logs, which --workers "
                         f"{workers} would not deliver: serve with the --workers that wrote it "
                         "until they are delivered")


def _check_logger_url(url: str) -> None:
  parsed = urllib.parse.urlsplit(url)
  if parsed.scheme not in ("http", "https") or not parsed.hostname:
    raise ConfigError(f"--logger-url must be an http(s) URL of the Logger, got {url!r}")


def _check_address(host: str, port: int) -> None:
  """Refuses an address the server could not listen on (taken, not this machine's, no port)."""
  from rlops.serving import server  # pylint: disable=import-outside-toplevel
  try:
    server.listening_socket(host, port).close()
  except (OSError, OverflowError) as error:
    raise ConfigError(f"cannot listen on {host}:{port}: {error}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  if not 1 <= args.workers <= MAX_WORKERS:
    raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS}, got {args.workers}")
  _check_address(args.host, args.port)
  from rlops import model_io  # pylint: disable=import-outside-toplevel
  paths = workdirs.LocalPaths(config.workdir)
  model_dir = args.model or paths.serving
  if not os.path.isdir(model_dir):
    raise WorkdirError(f"no model at {model_dir}: run `rlops pipeline startup` first, or pass "
                       "--model a pushed model directory")
  newest = model_dir
  if not os.path.exists(os.path.join(model_dir, model_io.METADATA_FILE)):
    try:
      version = model_io.latest_version(model_dir)
    except FileNotFoundError as error:
      raise WorkdirError(str(error)) from error
    newest = os.path.join(model_dir, version)
    print(f"serving {model_dir} (newest version {version}) at "
          f"http://{args.host}:{args.port}/predict", flush=True)
  if args.logger_url:
    _check_logger_url(args.logger_url)
  else:
    _refuse_a_model_of_another_shape(newest, config)
  from rlops import log_sinks  # pylint: disable=import-outside-toplevel
  from rlops.serving import server  # pylint: disable=import-outside-toplevel
  _check_outboxes(config.workdir, args.workers)
  for name in ("RLOPS_LOG_TOPIC", "RLOPS_LOG_URL", "RLOPS_WAREHOUSE", log_sinks.ROW_LIMITS_ENV):
    os.environ.pop(name, None)
  os.environ.update({
      "AIP_STORAGE_URI": model_dir, "AIP_HTTP_PORT": str(args.port),
      "RLOPS_HOST": args.host, "RLOPS_WORKERS": str(args.workers),
      "RLOPS_OUTBOX": paths.outbox,
      **({"RLOPS_LOG_URL": args.logger_url} if args.logger_url
         else {"RLOPS_WAREHOUSE": paths.warehouse,
               log_sinks.ROW_LIMITS_ENV: log_sinks.RowLimits.of(config.environment).to_json()})})
  return server.main()


def _cmd_replay_dead_letters(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  from rlops.serving import outbox  # pylint: disable=import-outside-toplevel
  from rlops import claims  # pylint: disable=import-outside-toplevel
  # The dead-letter files, and those of a replay that was killed (claimed, not put back).
  found = pathlib.Path(config.workdir).glob("outbox*" + outbox.dead_letter_path(".jsonl") + "*")
  files = args.path or sorted({str(path).split(claims.SUFFIX)[0] for path in found
                               if path.suffix != ".lock"})
  for path in args.path:
    if not (os.path.isfile(path) or glob.glob(glob.escape(path) + claims.SUFFIX + "*")):
      raise ConfigError(f"{path} is not a dead-letter file (outbox*.jsonl.dead.jsonl)")
  sink = _sink(args, config)
  counts = {}
  for path in files:
    try:
      counts[path] = outbox.replay_dead_letters(path, sink)
    except Exception as error:  # pylint: disable=broad-except
      # A retryable failure (`replay_dead_letters` put every line back).
      raise ConfigError(f"cannot deliver the rows of {path} now ({type(error).__name__}: "
                        f"{error}); every one not delivered is still in it: check "
                        "--logger-url, or retry later") from None
  print(json.dumps(counts, indent=2))
  left = sum(count["rejected"] + count["unreplayable"] for count in counts.values())
  return 0 if left == 0 else 1  # 1 while a dead-letter file still holds something.


def _exit_on_sigterm(signum, frame) -> None:  # pylint: disable=unused-argument
  raise SystemExit(128 + signum)


def _cmd_simulate(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  if args.requests < 1 or (args.rate is not None and not 0 < args.rate < math.inf):
    raise ConfigError("--requests and --rate must be positive (--rate finite)")
  from rlops import simulation, traffic  # pylint: disable=import-outside-toplevel
  # Stopped (timeout, a container's stop): the rewards not yet sent are kept, as on Ctrl-C.
  signal.signal(signal.SIGTERM, _exit_on_sigterm)
  try:
    summary = traffic.run_simulation(
        args.url, simulation.MovieLensModel.from_config(config), args.requests,
        _sink(args, config), rate=args.rate, seed=config.environment.seed, progress=True,
        undelivered_path=workdirs.LocalPaths(config.workdir).undelivered_feedback)
  except OSError as error:  # The file of undelivered rewards cannot be read or written.
    raise WorkdirError(str(error)) from error
  print(json.dumps(summary, indent=2))
  return 0 if summary["errors"] == 0 and summary["feedback_undelivered"] == 0 else 1


def _cmd_compile(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  if not args.output or os.path.isdir(args.output):
    raise ConfigError(f"--output must name a JSON file, got {args.output!r}")
  from tfx_pipeline import vertex_runner  # pylint: disable=import-outside-toplevel
  modes = ("startup", "retrain") if args.mode == "both" else (args.mode,)
  for mode in modes:
    output = args.output
    if len(modes) > 1:
      stem, extension = os.path.splitext(args.output)
      output = f"{stem}-{mode}{extension or '.json'}"
    print(f"{mode}: {vertex_runner.compile_pipeline(config, mode, output)}")
  return 0


def _cmd_submit(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  from tfx_pipeline import vertex_runner, windows  # pylint: disable=import-outside-toplevel
  if args.window_end is not None:
    try:
      window = windows.Window(span=args.span, begin=args.window_begin, end=args.window_end)
    except ValueError as error:
      raise ConfigError(f"--span, --window-begin, --window-end: {error}") from error
  elif args.mode == windows.STARTUP:
    window = windows.next_window(None)
  elif args.dry_run:
    raise ConfigError("a retraining dry run needs --span, --window-begin and --window-end "
                      "(a real submission reads the last trained window from Vertex ML Metadata)")
  else:
    window = windows.next_window(
        vertex_runner.last_trained_window(config.gcp, config.pipeline.name),
        lateness=config.pipeline.feedback_lateness)
    if window is None:
      raise ConfigError("no whole second has passed since the last trained window ended")
  request = vertex_runner.job_request(config.gcp, config.pipeline.name, args.template, args.mode,
                                      window, enable_caching=args.cache)
  if args.dry_run:
    print(vertex_runner.describe(request))
    return 0
  running = vertex_runner.running_jobs(config.gcp, config.pipeline.name)
  if args.mode == windows.STARTUP and (
      running or vertex_runner.last_trained_window(config.gcp, config.pipeline.name)):
    print("not submitted: this pipeline has run already (startup runs once)")
    return 0
  if running:
    raise RunningError("a run of this pipeline is queued or running: not submitting another")
  if args.mode == windows.RETRAIN:
    submitted = windows.submit_retraining(config, window, template_path=args.template,
                                          enable_caching=args.cache)["job"]
  else:
    submitted = vertex_runner.submit(request)
  print(f"submitted {submitted}")
  return 0


def _cmd_bigquery_init(args: argparse.Namespace) -> int:
  gcp = options.gcp_from_args(args)
  from rlops import bigquery  # pylint: disable=import-outside-toplevel
  bigquery.ensure_tables(bigquery.make_client(gcp.project), gcp.project, gcp.dataset,
                         location=gcp.region)
  print(f"tables predictions and feedback exist in {gcp.project}.{gcp.dataset}")
  return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  from cli import deploy  # pylint: disable=import-outside-toplevel
  settings = deploy.DeploySettings(
      simulator_schedule=args.simulator_schedule, simulator_requests=args.simulator_requests,
      trigger_schedule=args.trigger_schedule, retrain_threshold=args.retrain_threshold)
  deploy.deploy(config, settings, dry_run=args.dry_run)
  return 0


def _local_lineage(args: argparse.Namespace) -> List[dict]:
  from tfx_pipeline import metadata  # pylint: disable=import-outside-toplevel
  path = workdirs.LocalPaths(args.workdir).metadata
  if not os.path.exists(path):
    raise WorkdirError(f"no pipeline metadata at {path}: run `rlops pipeline startup` first")
  store = metadata.connect(path)
  if args.model == "latest":
    model = metadata.latest_pushed_model(store)
    if model is None:
      raise WorkdirError(f"no pushed model in {path}")
  else:
    if not args.model.isascii() or not args.model.isdigit():
      raise ConfigError(f"--model is 'latest' or a Model artifact id, got {args.model!r}")
    models = [m for m in metadata.artifacts_of_type(store, "Model") if m.id == int(args.model)]
    if not models:
      raise WorkdirError(f"no Model artifact with id {args.model} in {path}")
    model = models[0]
  return metadata.lineage(store, model)


def _vertex_lineage(args: argparse.Namespace) -> List[dict]:
  gcp = options.gcp_from_args(args)
  if args.model != "latest":
    raise ConfigError(f"on Vertex, --model is 'latest' (the model {gcp.endpoint_name} serves), "
                      f"got {args.model!r}")
  from tfx_pipeline import vertex_metadata  # pylint: disable=import-outside-toplevel
  try:
    vertex = vertex_metadata.VertexMetadata(gcp.project, gcp.region,
                                            api_endpoint=args.vertex_api_endpoint)
    return vertex.lineage(gcp.endpoint_name)
  except vertex_metadata.NotFound as error:
    raise WorkdirError(str(error)) from error


def _cmd_lineage(args: argparse.Namespace) -> int:
  if args.graph and (not args.graph.endswith(".png") or not os.path.isdir(
      os.path.dirname(os.path.abspath(args.graph)))):
    raise ConfigError(f"--graph must be a .png file in an existing folder, got {args.graph!r}")
  uses_vertex = args.config or args.gcp_config or any(
      getattr(args, name) for name in options.GCP_OPTIONS)
  chain = _vertex_lineage(args) if uses_vertex else _local_lineage(args)
  if args.graph:
    from rlops import plots  # pylint: disable=import-outside-toplevel
    plots.lineage_graph(chain, args.graph)
  if args.json:
    print(json.dumps(chain, indent=2, sort_keys=True))
    return 0
  from tfx_pipeline import windows  # pylint: disable=import-outside-toplevel
  for depth, link in enumerate(chain):
    indent = "  " * depth
    m, outcome = link["model"], link["outcome"]
    print(f"{indent}model {m['id']} ({m.get('agent')}, {m.get('samples')} records) {m['uri']}")
    print(f"{indent}  blessed: {outcome.get('blessed')}, "
          f"pushed: {outcome.get('pushed_destination')}")
    print(f"{indent}  trained on examples {link['examples']['id']} "
          f"(span {link['examples']['span']}, "
          f"records logged before {windows.iso(m['window_end'])}) {link['examples']['uri']}")
    print(f"{indent}  pipeline run {link['pipeline_run']}")
    if link["generator"]:
      g = link["generator"]
      print(f"{indent}  generator execution {g['execution_id']}: {g.get('record_count')} records "
            f"by {g.get('logging_policy')} at {windows.iso(g['event_time'])}")
    if depth + 1 < len(chain):
      print(f"{indent}  warm-started from:")
  if args.graph:
    print(f"graph: {args.graph}")
  return 0


def _cmd_data(args: argparse.Namespace) -> int:
  if args.data_command == "generate":
    if not 0 <= args.seed <= MAX_SEED:
      raise ConfigError(f"--seed must be from 0 to {MAX_SEED}, got {args.seed}")
    ratings = movielens.generate_ratings(seed=args.seed)
    output = pathlib.Path(args.output)
    try:
      output.parent.mkdir(parents=True, exist_ok=True)
      output.write_bytes(ratings.to_udata())
    except OSError as error:
      raise ConfigError(f"cannot write --output {args.output}: {error}") from error
    print(f"wrote {len(ratings)} ratings to {output}")
  elif args.data_command == "download":
    path = movielens.download_movielens(args.dest, url=args.url)
    print(f"downloaded {len(movielens.load_ratings(path))} ratings to {path}")
  else:
    ratings = movielens.load_ratings(args.path)
    print(json.dumps(movielens.describe(ratings), indent=2))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="rlops", description="Contextual-bandit movie recommender with a closed MLOps loop.")
  parser.add_argument("--version", action="version",
                      version=f"%(prog)s {importlib.metadata.version('rlops')}")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  demo = commands.add_parser("demo", help="run the whole local loop on embedded defaults: startup "
                              "pipeline, endpoint, simulated traffic, triggered retrainings")
  # A cold start, served with exploration that shrinks as the model learns: round 1 serves a
  # weak model, and the rounds show the loop improving it from its own logs.
  options.add_config_arguments(demo, samples=COLD_START_SAMPLES, **LEARNING_LOOP_AGENT)
  demo.add_argument("--rounds", type=int, default=4,
                    help="rounds of traffic (default: %(default)s)")
  demo.add_argument("--requests", type=int, default=2000,
                    help="simulated requests per round (default: %(default)s)")
  demo.add_argument("--threshold", type=int, default=1500,
                    help="new rewarded records that trigger a retraining (default: %(default)s)")
  demo.add_argument("--force", action="store_true",
                    help="clear a workdir of an earlier run first (default: refuse a used workdir)")
  demo.add_argument("--drift-at-round", type=int, default=None,
                    help="round from which the users' preferences shift (default: no drift)")
  demo.set_defaults(handler=_cmd_demo)

  evaluate = commands.add_parser(
      "evaluate", help="rank learning settings offline on the warehouse's logged records")
  options.add_config_arguments(evaluate)
  evaluate.add_argument("--setting", action="append", default=None,
                        help="a candidate as AgentConfig fields over the options above, e.g. "
                             "name=lints,alpha=0.5 or exploration=inverse_gap,gamma_scale=50; "
                             "repeat for more (default: the options alone)")
  evaluate.add_argument("--newer-share", type=float, default=0.3,
                        help="share of the newest records the settings are estimated on "
                             "(default: %(default)s)")
  evaluate.add_argument("--write-config", default=None,
                        help="write the best setting's configuration (Config JSON) here")
  evaluate.set_defaults(handler=_cmd_evaluate)

  serve = commands.add_parser("serve", help="serve the newest pushed model over HTTP")
  options.add_config_arguments(serve)
  serve.add_argument("--model", default=None,
                     help="model directory or Pusher base directory (default: WORKDIR/serving)")
  serve.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default: %(default)s, this machine only)")
  serve.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
  serve.add_argument("--workers", type=int, default=1,
                     help="server processes sharing the port, each with its own outbox "
                          "WORKDIR/outbox-<i>.jsonl (default: %(default)s, WORKDIR/outbox.jsonl)")
  serve.add_argument("--logger-url", default=None,
                     help="Logger function URL "
                          "(default: write to WORKDIR/warehouse.sqlite in process)")
  serve.set_defaults(handler=_cmd_serve)

  replay = commands.add_parser(
      "replay-dead-letters",
      help="deliver the prediction logs the warehouse rejected again (after a fix)")
  options.add_config_arguments(replay)
  replay.add_argument("path", nargs="*",
                      help="dead-letter files (default: WORKDIR/outbox*.jsonl.dead.jsonl)")
  replay.add_argument("--logger-url", default=None,
                      help="Logger function URL "
                           "(default: write to WORKDIR/warehouse.sqlite in process)")
  replay.set_defaults(handler=_cmd_replay_dead_letters)

  simulate = commands.add_parser("simulate",
                                 help="send simulated users' requests and their feedback")
  options.add_config_arguments(simulate)
  simulate.add_argument("--url", default="http://127.0.0.1:8080/predict",
                        help="the endpoint's predict URL (default: %(default)s)")
  simulate.add_argument("--requests", type=int, default=1000,
                        help="requests to send (default: %(default)s)")
  simulate.add_argument("--rate", type=float, default=None,
                        help="requests per second (default: as fast as answered)")
  simulate.add_argument("--logger-url", default=None,
                        help="Logger function URL "
                             "(default: write to WORKDIR/warehouse.sqlite in process)")
  simulate.set_defaults(handler=_cmd_simulate)

  train = commands.add_parser("train", help="train an agent online on the MovieLens simulation")
  options.add_config_arguments(train)
  train.set_defaults(handler=_cmd_train)

  pipeline = commands.add_parser("pipeline", help="run the TFX pipeline locally (LocalDagRunner)")
  pipeline.add_argument("mode", choices=("startup", "retrain"),
                        help="startup: generate, train and push the first model in a new "
                             "workdir; retrain: train on the records since the last window")
  options.add_config_arguments(pipeline)
  pipeline.add_argument("--force", action="store_true",
                        help="startup: clear a workdir of an earlier run first")
  pipeline.set_defaults(handler=_cmd_pipeline)

  compile_ = commands.add_parser("compile", help="compile the pipelines for Vertex Pipelines")
  compile_.add_argument("mode", nargs="?", choices=("startup", "retrain", "both"),
                        default="both", help="which pipeline(s) (default: %(default)s)")
  compile_.add_argument("--output", required=True,
                        help="pipeline JSON; for both, -startup and -retrain are added to its name")
  options.add_config_arguments(compile_)
  options.add_gcp_arguments(compile_)
  compile_.set_defaults(handler=_cmd_compile)

  submit = commands.add_parser("submit", help="submit a compiled pipeline to Vertex Pipelines")
  submit.add_argument("mode", choices=("startup", "retrain"), help="which pipeline")
  submit.add_argument("--template", required=True, help="compiled pipeline JSON (local or gs://)")
  submit.add_argument("--dry-run", action="store_true", help="print exactly what would be sent")
  submit.add_argument("--cache", action="store_true", help="enable Vertex caching (default: off)")
  submit.add_argument("--span", type=int, default=1,
                      help="span number of the window, with --window-end (default: %(default)s)")
  submit.add_argument("--window-begin", type=float, default=0.0,
                      help="window start, Unix seconds, with --window-end (default: %(default)s)")
  submit.add_argument("--window-end", type=float, default=None,
                      help="default: startup [0, now); retrain after the last trained window")
  options.add_config_arguments(submit)
  options.add_gcp_arguments(submit)
  submit.set_defaults(handler=_cmd_submit)

  deploy = commands.add_parser("deploy", help="deploy the production loop on Google Cloud "
                                "(topics, tables, functions, schedules, endpoint, pipelines)")
  deploy.add_argument("--dry-run", action="store_true", help="print the commands, run none")
  deploy.add_argument("--simulator-schedule", default="*/5 * * * *",
                      help="cron schedule of the Simulator (default: %(default)s)")
  deploy.add_argument("--simulator-requests", type=int, default=200,
                      help="requests per Simulator run (default: %(default)s)")
  deploy.add_argument("--trigger-schedule", default="*/15 * * * *",
                      help="cron schedule of the Trigger (default: %(default)s)")
  deploy.add_argument("--retrain-threshold", type=int, default=1000,
                      help="new rewarded records that start a retraining (default: %(default)s)")
  options.add_config_arguments(deploy)
  options.add_gcp_arguments(deploy)
  deploy.set_defaults(handler=_cmd_deploy)

  bigquery_init = commands.add_parser(
      "bigquery-init", help="create the BigQuery dataset and tables if missing (idempotent)")
  options.add_gcp_arguments(bigquery_init)
  bigquery_init.set_defaults(handler=_cmd_bigquery_init)

  lineage = commands.add_parser(
      "lineage", help="a model's upstream chain, from the workdir's ML Metadata or, given the "
                      "Google Cloud settings, from Vertex ML Metadata",
      description="The upstream chain of a model: its examples, pipeline run and the models "
                  "it was warm-started from. Without Google Cloud settings, from the workdir's "
                  "local ML Metadata; with them (--config, --gcp-config or the options), of "
                  "the model serving on the Vertex endpoint gcp.endpoint_name, from Vertex ML "
                  "Metadata (application default credentials).")
  lineage.add_argument("--model", default="latest",
                       help="'latest' pushed, or a Model artifact id of the workdir; on Vertex "
                            "'latest' only (default: %(default)s)")
  lineage.add_argument("--workdir", default=Config().workdir,
                       help="the workdir of the runs (default: %(default)s)")
  options.add_gcp_arguments(lineage)
  lineage.add_argument("--vertex-api-endpoint", default=None,
                       help="Vertex AI API host or URL (default: REGION-aiplatform.googleapis.com)")
  lineage.add_argument("--json", action="store_true", help="print the chain as JSON")
  lineage.add_argument("--graph", default=None, metavar="PNG",
                       help="also draw the chain as a picture into this PNG file")
  lineage.set_defaults(handler=_cmd_lineage)

  data = commands.add_parser("data", help="MovieLens data: generate, download, describe")
  data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
  generate = data_commands.add_parser("generate", help="write seeded MovieLens-100K-shaped u.data")
  generate.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
  generate.add_argument("--output", default="rlops-work/data/u.data",
                        help="file to write (default: %(default)s)")
  download = data_commands.add_parser("download", help="download and extract the MovieLens zip")
  download.add_argument("--url", default=movielens.DEFAULT_URL,
                        help="zip URL (default: %(default)s)")
  download.add_argument("--dest", default="rlops-work/data",
                        help="folder to extract into (default: %(default)s)")
  describe = data_commands.add_parser("describe", help="statistics of a ratings file")
  describe.add_argument("path", help="ml-100k/ folder, its zip, or u.data")
  data.set_defaults(handler=_cmd_data)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  _quiet_known_noise()
  args = build_parser().parse_args(argv)
  try:
    return args.handler(args)
  except ConfigError as error:
    print(f"rlops: configuration error: {error}", file=sys.stderr)
    return EXIT_CONFIGURATION
  except movielens.DataError as error:
    print(f"rlops: data error: {error}", file=sys.stderr)
    return EXIT_DATA
  except WorkdirError as error:
    print(f"rlops: workdir error: {error}", file=sys.stderr)
    return EXIT_WORKDIR
  except RunningError as error:
    print(f"rlops: run in progress: {error}", file=sys.stderr)
    return EXIT_RUNNING
  except KeyboardInterrupt:
    print("rlops: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
  except BrokenPipeError:  # Its reader stopped reading (`rlops lineage --json | head`).
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit.
    return 1
  except _missing_credentials() as error:
    print(f"rlops: configuration error: no Google Cloud credentials ({error}): run `gcloud auth "
          "application-default login`", file=sys.stderr)
    return EXIT_CONFIGURATION


def _missing_credentials() -> type:
  """google.auth's error for missing credentials, imported once something has failed."""
  from google.auth import exceptions  # pylint: disable=import-outside-toplevel
  return exceptions.DefaultCredentialsError


if __name__ == "__main__":
  sys.exit(main())
