"""The `rlops` command line."""
import argparse
import dataclasses
import json
import os
import pathlib
import sys
import warnings
from typing import List, Optional

from rlops import movielens
from rlops.config import (AGENT_NAMES, EXPLORATION_RULES, AgentConfig, Config, ConfigError,
                          DataConfig, EnvironmentConfig, GcpConfig, PipelineConfig)


# Startup samples of the demo: few, so that the loop visibly learns from its own logs.
COLD_START_SAMPLES = 300


def _quiet_known_noise() -> None:
  """Silences what the libraries print on import that is no news to a user: TensorFlow's
  C++ start-up logs and the Google clients' deprecation notices about their own
  Python and grpcio support."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
  defaults = Config()
  parser.add_argument("--workdir", default=defaults.workdir, help="where outputs go (default: %(default)s)")
  parser.add_argument("--data", default=None,
                      help="ml-100k/ folder, its zip, or u.data (default: seeded generated ratings)")
  parser.add_argument("--data-seed", type=int, default=defaults.data.seed)
  parser.add_argument("--agent", default=defaults.agent.name, choices=AGENT_NAMES)
  parser.add_argument("--alpha", type=float, default=None,
                      help="LinUCB/LinTS exploration (default: 10 for linucb, 1 for lints)")
  parser.add_argument("--epsilon", type=float, default=defaults.agent.epsilon,
                      help="exploration of the epsilon_greedy rule and of the neural agent "
                           "(default: %(default)s)")
  parser.add_argument("--exploration", default=defaults.agent.exploration,
                      choices=EXPLORATION_RULES,
                      help="serving-policy rule; inverse_gap explores less as the model learns "
                           "(default: %(default)s)")
  parser.add_argument("--gamma-scale", type=float, default=defaults.agent.gamma_scale,
                      help="inverse_gap: gamma = gamma_scale * sqrt(records trained on) "
                           "(default: %(default)s)")
  parser.add_argument("--propensity-floor", type=float, default=defaults.agent.propensity_floor,
                      help="least serving probability of any movie, at most 1/num_movies "
                           "(default: %(default)s)")
  parser.add_argument("--forgetting", type=float, default=defaults.agent.forgetting,
                      help="linear agents' forgetting factor per training batch, in (0, 1]; "
                           "1 keeps all data (default: %(default)s)")
  parser.add_argument("--num-movies", type=int, default=defaults.environment.num_movies)
  parser.add_argument("--rank-k", type=int, default=defaults.environment.rank_k)
  parser.add_argument("--batch-size", type=int, default=defaults.environment.batch_size)
  parser.add_argument("--seed", type=int, default=defaults.environment.seed)
  parser.add_argument("--samples", type=int, default=defaults.pipeline.samples,
                      help="samples to simulate or generate (default: %(default)s)")
  parser.add_argument("--gate-tolerance", type=float, default=defaults.pipeline.gate_tolerance)
  parser.add_argument("--no-warm-start", action="store_true",
                      help="retrain from scratch instead of from the latest blessed model")


_GCP_OPTIONS = ("project", "region", "bucket", "dataset", "endpoint_name", "pipeline_image",
                "serving_image", "service_account")


def _add_gcp_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gcp-config", default=None,
                      help="JSON file of the gcp settings (GcpConfig fields); options below override it")
  for name in _GCP_OPTIONS:
    parser.add_argument(f"--{name.replace('_', '-')}", default=None)


def gcp_from_args(args: argparse.Namespace) -> GcpConfig:
  """GcpConfig from --gcp-config and the individual options; raises ConfigError."""
  fields = {}
  if args.gcp_config:
    try:
      with open(args.gcp_config) as f:
        fields = json.load(f)
    except (OSError, ValueError) as error:
      raise ConfigError(f"cannot read --gcp-config {args.gcp_config}: {error}") from error
  fields.update({name: getattr(args, name) for name in _GCP_OPTIONS if getattr(args, name)})
  try:
    gcp = GcpConfig(**fields)
  except TypeError as error:
    raise ConfigError(f"gcp settings: {error} (give them as options or in --gcp-config)") from error
  gcp.validate()
  return gcp


def config_from_args(args: argparse.Namespace) -> Config:
  """The validated `Config` of parsed arguments; raises ConfigError."""
  return Config(
      data=DataConfig(path=args.data, seed=args.data_seed),
      environment=EnvironmentConfig(num_movies=args.num_movies, rank_k=args.rank_k,
                                    batch_size=args.batch_size, seed=args.seed),
      agent=AgentConfig(name=args.agent, alpha=args.alpha, epsilon=args.epsilon,
                        exploration=args.exploration, gamma_scale=args.gamma_scale,
                        propensity_floor=args.propensity_floor, forgetting=args.forgetting),
      pipeline=PipelineConfig(samples=args.samples, gate_tolerance=args.gate_tolerance,
                              warm_start=not args.no_warm_start),
      workdir=args.workdir,
      gcp=gcp_from_args(args) if hasattr(args, "gcp_config") else None,
  ).validate()


def _train(config: Config, samples: int) -> dict:
  """Trains the configured agent online on the simulation; writes a report and a plot."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from rlops import agents, environment, plots, simulation, training  # pylint: disable=import-outside-toplevel
  model = simulation.MovieLensModel.from_config(config)
  env = environment.MovieLensEnvironment(model, batch_size=config.environment.batch_size,
                                         seed=config.environment.seed)
  agent = agents.create_agent(config.agent, env.time_step_spec(), env.action_spec())
  curve = training.train_online(agent, env, samples, agents.exploring_action_fn(agent, config.agent),
                                progress=True)
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
        f"mean reward {online['mean_reward']:.3f}, regret over the last 10% {online['final_regret']:.3f}")
  print(f"  greedy policy (all users):  reward {greedy['reward']:.3f}, regret {greedy['regret']:.3f}, "
        f"optimal action {greedy['optimal_action_share']:.1%}")
  print(f"  serving policy ({report['exploration']}):  reward {serving['reward']:.3f}, "
        f"regret {serving['regret']:.3f}")
  print(f"  report: {workdir}/train_report.json, plot: {workdir}/train_regret.png")


def _cmd_train(args: argparse.Namespace) -> int:
  config = config_from_args(args)
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
  warm = result.get("warm_started_from") or "nothing (from scratch)"
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


def _cmd_pipeline(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  from tfx_pipeline import local_runner  # pylint: disable=import-outside-toplevel
  _print_run(local_runner.run(config, args.mode))
  return 0


def _cmd_demo(args: argparse.Namespace) -> int:
  """The whole local loop: startup pipeline, endpoint, rounds of traffic, retrainings."""
  config = config_from_args(args)
  for name in ("rounds", "requests", "threshold"):
    if getattr(args, name) < 1:
      raise ConfigError(f"--{name} must be positive, got {getattr(args, name)}")
  if args.drift_at_round is not None and not 2 <= args.drift_at_round <= args.rounds:
    raise ConfigError(f"--drift-at-round must be between 2 and --rounds, got {args.drift_at_round}")
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
  from rlops import offline_evaluation  # pylint: disable=import-outside-toplevel
  settings = [offline_evaluation.parse_setting(text, config.agent)
              for text in (args.setting or [""])]
  from rlops import plots, warehouse  # pylint: disable=import-outside-toplevel
  from tfx_pipeline import local_runner  # pylint: disable=import-outside-toplevel
  store = warehouse.Warehouse(local_runner.LocalPaths(config.workdir).warehouse)
  try:
    records = store.rewarded_records()
  finally:
    store.close()
  rows = offline_evaluation.compare(
      records, settings, config.environment.num_movies, config.environment.rank_k,
      newer_share=args.newer_share, bootstrap_samples=config.pipeline.bootstrap_samples,
      seed=config.environment.seed, progress=True)
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
  from tfx_pipeline import local_runner  # pylint: disable=import-outside-toplevel
  if args.logger_url:
    return log_sinks.CloudEventSink(args.logger_url)
  return log_sinks.InProcessSink(local_runner.LocalPaths(config.workdir).warehouse)


def _cmd_serve(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  import uvicorn  # pylint: disable=import-outside-toplevel
  from rlops import server  # pylint: disable=import-outside-toplevel
  from tfx_pipeline import local_runner  # pylint: disable=import-outside-toplevel
  app = server.create_app(args.model or local_runner.LocalPaths(config.workdir).serving,
                          _sink(args, config),
                          outbox_path=os.path.join(config.workdir, "outbox.jsonl"))
  uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
  return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  if args.requests < 1 or (args.rate is not None and args.rate <= 0):
    raise ConfigError("--requests and --rate must be positive")
  from rlops import simulation, traffic  # pylint: disable=import-outside-toplevel
  summary = traffic.run_simulation(args.url, simulation.MovieLensModel.from_config(config),
                                   args.requests, _sink(args, config), rate=args.rate,
                                   seed=config.environment.seed, progress=True)
  print(json.dumps(summary, indent=2))
  return 0 if summary["errors"] == 0 else 1


def _cmd_compile(args: argparse.Namespace) -> int:
  config = config_from_args(args)
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
    window = windows.next_window(vertex_runner.last_trained_window(config.gcp))
    if window is None:
      raise ConfigError("no whole second has passed since the last trained window ended")
  request = vertex_runner.job_request(config.gcp, config.pipeline.name, args.template, args.mode,
                                      window, enable_caching=args.cache)
  if args.dry_run:
    print(vertex_runner.describe(request))
    return 0
  if args.mode == "retrain" and vertex_runner.running_jobs(config.gcp, config.pipeline.name, "retrain"):
    raise ConfigError("a retraining run is queued or running: not submitting another")
  print(f"submitted {vertex_runner.submit(request)}")
  return 0


def _cmd_bigquery_init(args: argparse.Namespace) -> int:
  gcp = gcp_from_args(args)
  from rlops import bigquery  # pylint: disable=import-outside-toplevel
  bigquery.ensure_tables(bigquery.make_client(gcp.project), gcp.project, gcp.dataset)
  print(f"tables predictions and feedback exist in {gcp.project}.{gcp.dataset}")
  return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
  config = config_from_args(args)
  from cli import deploy  # pylint: disable=import-outside-toplevel
  gcp_path = args.gcp_config
  if not gcp_path:
    gcp_path = os.path.join("build", "gcp.json")
    os.makedirs("build", exist_ok=True)
    with open(gcp_path, "w") as f:
      json.dump(dataclasses.asdict(config.gcp), f, indent=2)
  settings = deploy.DeploySettings(
      simulator_schedule=args.simulator_schedule, simulator_requests=args.simulator_requests,
      trigger_schedule=args.trigger_schedule, retrain_threshold=args.retrain_threshold,
      gcp_config_path=gcp_path)
  deploy.deploy(config, settings, dry_run=args.dry_run)
  return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
  from tfx_pipeline import local_runner, metadata  # pylint: disable=import-outside-toplevel
  path = local_runner.LocalPaths(args.workdir).metadata
  if not os.path.exists(path):
    raise ConfigError(f"no pipeline metadata at {path}: run `rlops pipeline startup` first")
  store = metadata.connect(path)
  if args.model == "latest":
    model = metadata.latest_pushed_model(store)
    if model is None:
      raise ConfigError(f"no pushed model in {path}")
  else:
    found = store.get_artifacts_by_id([int(args.model)])
    if not found:
      raise ConfigError(f"no artifact {args.model} in {path}")
    model = found[0]
  chain = metadata.lineage(store, model)
  for depth, link in enumerate(chain):
    indent = "  " * depth
    m, outcome = link["model"], link["outcome"]
    print(f"{indent}model {m['id']} ({m.get('agent')}, {m.get('samples')} records) {m['uri']}")
    print(f"{indent}  blessed: {outcome.get('blessed')}, pushed: {outcome.get('pushed_destination')}")
    print(f"{indent}  trained on examples {link['examples']['id']} span {link['examples']['span']} "
          f"{link['examples']['uri']}")
    print(f"{indent}  pipeline run {link['pipeline_run']}")
    if link["generator"]:
      g = link["generator"]
      print(f"{indent}  generator execution {g['execution_id']}: {g.get('record_count')} records "
            f"by {g.get('logging_policy')} at {g.get('event_time')}")
    if depth + 1 < len(chain):
      print(f"{indent}  warm-started from:")
  return 0


def _cmd_data(args: argparse.Namespace) -> int:
  if args.data_command == "generate":
    ratings = movielens.generate_ratings(seed=args.seed)
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(ratings.to_udata())
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
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  demo = commands.add_parser("demo", help="run the whole local loop on embedded defaults: startup "
                              "pipeline, endpoint, simulated traffic, triggered retrainings")
  _add_config_arguments(demo)
  demo.add_argument("--rounds", type=int, default=4, help="rounds of traffic (default: %(default)s)")
  demo.add_argument("--requests", type=int, default=2000,
                    help="simulated requests per round (default: %(default)s)")
  demo.add_argument("--threshold", type=int, default=1500,
                    help="new rewarded records that trigger a retraining (default: %(default)s)")
  demo.add_argument("--drift-at-round", type=int, default=None,
                    help="round from which the users' preferences shift (default: no drift)")
  # A cold start: round 1 serves a weak model, and the rounds show the loop improving it.
  demo.set_defaults(handler=_cmd_demo, samples=COLD_START_SAMPLES)

  evaluate = commands.add_parser(
      "evaluate", help="rank learning settings offline on the warehouse's logged records")
  _add_config_arguments(evaluate)
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
  _add_config_arguments(serve)
  serve.add_argument("--model", default=None,
                     help="model directory or Pusher base directory (default: WORKDIR/serving)")
  serve.add_argument("--host", default="127.0.0.1")
  serve.add_argument("--port", type=int, default=8080)
  serve.add_argument("--logger-url", default=None,
                     help="Logger function URL (default: write to WORKDIR/warehouse.sqlite in process)")
  serve.set_defaults(handler=_cmd_serve)

  simulate = commands.add_parser("simulate", help="send simulated users' requests and their feedback")
  _add_config_arguments(simulate)
  simulate.add_argument("--url", default="http://127.0.0.1:8080/predict")
  simulate.add_argument("--requests", type=int, default=1000)
  simulate.add_argument("--rate", type=float, default=None, help="requests per second (default: as fast as answered)")
  simulate.add_argument("--logger-url", default=None,
                        help="Logger function URL (default: write to WORKDIR/warehouse.sqlite in process)")
  simulate.set_defaults(handler=_cmd_simulate)

  train = commands.add_parser("train", help="train an agent online on the MovieLens simulation")
  _add_config_arguments(train)
  train.set_defaults(handler=_cmd_train)

  pipeline = commands.add_parser("pipeline", help="run the TFX pipeline locally (LocalDagRunner)")
  pipeline.add_argument("mode", choices=("startup", "retrain"))
  _add_config_arguments(pipeline)
  pipeline.set_defaults(handler=_cmd_pipeline)

  compile_ = commands.add_parser("compile", help="compile the pipelines for Vertex Pipelines")
  compile_.add_argument("--mode", choices=("startup", "retrain", "both"), default="both")
  compile_.add_argument("--output", required=True,
                        help="pipeline JSON; with --mode both, -startup and -retrain are added")
  _add_config_arguments(compile_)
  _add_gcp_arguments(compile_)
  compile_.set_defaults(handler=_cmd_compile)

  submit = commands.add_parser("submit", help="submit a compiled pipeline to Vertex Pipelines")
  submit.add_argument("mode", choices=("startup", "retrain"))
  submit.add_argument("--template", required=True, help="compiled pipeline JSON (local or gs://)")
  submit.add_argument("--dry-run", action="store_true", help="print exactly what would be sent")
  submit.add_argument("--cache", action="store_true", help="enable Vertex caching (default: off)")
  submit.add_argument("--span", type=int, default=1)
  submit.add_argument("--window-begin", type=float, default=0.0)
  submit.add_argument("--window-end", type=float, default=None,
                      help="default: startup [0, now); retrain after the last trained window")
  _add_config_arguments(submit)
  _add_gcp_arguments(submit)
  submit.set_defaults(handler=_cmd_submit)

  deploy = commands.add_parser("deploy", help="deploy the production loop on Google Cloud "
                                "(topics, tables, functions, schedules, endpoint, pipelines)")
  deploy.add_argument("--dry-run", action="store_true", help="print the commands, run none")
  deploy.add_argument("--simulator-schedule", default="*/5 * * * *")
  deploy.add_argument("--simulator-requests", type=int, default=200)
  deploy.add_argument("--trigger-schedule", default="*/15 * * * *")
  deploy.add_argument("--retrain-threshold", type=int, default=1000)
  _add_config_arguments(deploy)
  _add_gcp_arguments(deploy)
  deploy.set_defaults(handler=_cmd_deploy)

  bigquery_init = commands.add_parser(
      "bigquery-init", help="create the BigQuery dataset and tables if missing (idempotent)")
  _add_gcp_arguments(bigquery_init)
  bigquery_init.set_defaults(handler=_cmd_bigquery_init)

  lineage = commands.add_parser("lineage", help="a model's upstream chain, from ML Metadata")
  lineage.add_argument("--model", default="latest", help="'latest' pushed, or an artifact id")
  lineage.add_argument("--workdir", default=Config().workdir)
  lineage.set_defaults(handler=_cmd_lineage)

  data = commands.add_parser("data", help="MovieLens data: generate, download, describe")
  data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
  generate = data_commands.add_parser("generate", help="write seeded MovieLens-100K-shaped u.data")
  generate.add_argument("--seed", type=int, default=0)
  generate.add_argument("--output", default="rlops-work/data/u.data")
  download = data_commands.add_parser("download", help="download and extract the MovieLens zip")
  download.add_argument("--url", default=movielens.DEFAULT_URL, help="zip URL (default: %(default)s)")
  download.add_argument("--dest", default="rlops-work/data")
  describe = data_commands.add_parser("describe", help="statistics of a ratings file")
  describe.add_argument("path")
  data.set_defaults(handler=_cmd_data)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  _quiet_known_noise()
  args = build_parser().parse_args(argv)
  try:
    return args.handler(args)
  except ConfigError as error:
    print(f"rlops: configuration error: {error}", file=sys.stderr)
    return 2
  except movielens.DataError as error:
    print(f"rlops: error: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
