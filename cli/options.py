"""The command line's configuration options, and the workdir that remembers them.

Each option is declared once, with the `Config` field it sets and its help text;
its default is that field's default. A workdir remembers the configuration its
startup run used (`workdirs.LocalPaths.config`), and later commands on it start from that
configuration: an option given on the command line must agree with it.
"""
import argparse
import dataclasses
import json
import os
from typing import Any, Callable, Dict, Optional, Tuple

from rlops import workdirs
from rlops.config import AGENT_NAMES, EXPLORATION_RULES, Config, ConfigError, GcpConfig


class WorkdirError(Exception):
  """The workdir is in the wrong state for the command (or cannot be written)."""


@dataclasses.dataclass(frozen=True)
class Option:
  """A command-line option setting `Config.<section>.<field>`."""
  flag: str
  section: str
  field: str
  type: Callable[[str], Any]
  help: str
  choices: Optional[Tuple[str, ...]] = None

  @property
  def dest(self) -> str:
    return self.flag.lstrip("-").replace("-", "_")

  def default(self) -> Any:
    return getattr(getattr(Config(), self.section), self.field)


CONFIG_OPTIONS = (
    Option("--data", "data", "path", str,
           "ml-100k/ folder, its zip, or u.data (default: seeded generated ratings)"),
    Option("--data-seed", "data", "seed", int, "seed of the generated ratings"),
    Option("--num-movies", "environment", "num_movies", int, "movies to recommend from (arms)"),
    Option("--rank-k", "environment", "rank_k", int,
           "rank of the factorisation: the context size (at most --num-movies)"),
    Option("--batch-size", "environment", "batch_size", int, "users per step of online training"),
    Option("--seed", "environment", "seed", int, "seed of the simulation and exploration"),
    Option("--agent", "agent", "name", str, "the TF-Agents bandit agent", AGENT_NAMES),
    Option("--alpha", "agent", "alpha", float,
           "LinUCB/LinTS exploration weight (default: 10 for linucb, 1 for lints)"),
    Option("--tikhonov-weight", "agent", "tikhonov_weight", float,
           "ridge regularisation of the linear agents"),
    Option("--epsilon", "agent", "epsilon", float,
           "exploration of the epsilon_greedy rule and of the neural agent"),
    Option("--exploration", "agent", "exploration", str,
           "serving-policy rule; inverse_gap explores less as the model learns", EXPLORATION_RULES),
    Option("--gamma-scale", "agent", "gamma_scale", float,
           "inverse_gap: gamma = gamma_scale * sqrt(records trained on)"),
    Option("--optimism", "agent", "optimism", float,
           "inverse_gap with linucb/lints: gaps measured to mean + optimism * width, so "
           "little-known movies keep being tried"),
    Option("--propensity-floor", "agent", "propensity_floor", float,
           "least serving probability of any movie, at most 1/num_movies"),
    Option("--forgetting", "agent", "forgetting", float,
           "linear agents' forgetting factor per training batch, in (0, 1]; 1 keeps all data"),
    Option("--samples", "pipeline", "samples", int,
           "interactions the startup Generator logs, or online training steps' samples"),
    Option("--gate-tolerance", "pipeline", "gate_tolerance", float,
           "shortfall against the blessed model the gate allows, in reward units"),
)


def _help(option: Option, default: Any) -> str:
  if "(default:" in option.help:
    return option.help
  return f"{option.help} (default: {default})"


def add_config_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
  """Adds --workdir and every configuration option; unset options stay None.

  Args:
    parser: The command's parser.
    **defaults: The command's own defaults, by option name (e.g. samples=300):
      set as if given, so they apply only where a command starts a workdir.
  """
  parser.add_argument("--workdir", default=Config().workdir,
                      help="where the state and outputs go (default: %(default)s)")
  for option in CONFIG_OPTIONS:
    default = defaults.get(option.dest)
    parser.add_argument(option.flag, type=option.type, default=default, choices=option.choices,
                        help=_help(option, option.default() if default is None else default))
  parser.add_argument("--no-warm-start", action="store_true", default=None,
                      help="retrain from scratch instead of from the latest blessed model")


def given_options(args: argparse.Namespace) -> Dict[Tuple[str, str], Any]:
  """{(section, field): value} of the configuration options given on the command line."""
  given = {(option.section, option.field): getattr(args, option.dest)
           for option in CONFIG_OPTIONS if getattr(args, option.dest, None) is not None}
  if getattr(args, "no_warm_start", None):
    given[("pipeline", "warm_start")] = False
  return given


def _flag(section: str, field: str) -> str:
  for option in CONFIG_OPTIONS:
    if (option.section, option.field) == (section, field):
      return option.flag
  return "--no-warm-start"


def check_workdir_writable(workdir: str) -> None:
  """Raises WorkdirError unless `workdir` is (or can be made) a writable folder."""
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"{workdir} is not a folder ({existing} is a file)")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise WorkdirError(f"{workdir} is not writable ({existing} is read-only)")


def remembered(workdir: str) -> Optional[Config]:
  """The configuration the workdir's startup run used; None for a new workdir."""
  path = workdirs.LocalPaths(workdir).config
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return Config.from_json(f.read())
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise WorkdirError(f"{path} is damaged ({type(error).__name__}: {error}); restore it, or "
                       "start another --workdir") from error


def remember(config: Config) -> None:
  """Writes the configuration into its workdir, for the commands that follow."""
  os.makedirs(config.workdir, exist_ok=True)
  with open(workdirs.LocalPaths(config.workdir).config, "w") as f:
    f.write(json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True))


def gcp_from_args(args: argparse.Namespace) -> GcpConfig:
  """GcpConfig from --config, or --gcp-config and the individual options; raises ConfigError."""
  if getattr(args, "config", None):
    gcp = whole_config(args.config).gcp
    if gcp is None:
      raise ConfigError(f"--config {args.config} has no gcp section")
    return gcp
  fields = {}
  if args.gcp_config:
    try:
      with open(args.gcp_config) as f:
        fields = json.load(f)
    except (OSError, ValueError) as error:
      raise ConfigError(f"cannot read --gcp-config {args.gcp_config}: {error}") from error
  fields.update({name: getattr(args, name) for name in GCP_OPTIONS if getattr(args, name)})
  known = {field.name for field in dataclasses.fields(GcpConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ConfigError(f"unknown gcp setting(s) {', '.join(unknown)}")
  missing = [field.name for field in dataclasses.fields(GcpConfig)
             if field.default is dataclasses.MISSING and field.name not in fields]
  if missing:
    raise ConfigError("missing gcp setting(s): " + ", ".join(
        f"--{name.replace('_', '-')}" for name in missing) + " (or put them in --gcp-config)")
  gcp = GcpConfig(**fields)
  gcp.validate()
  return gcp


GCP_OPTIONS = ("project", "region", "bucket", "dataset", "endpoint_name", "pipeline_image",
               "serving_image", "service_account")


def add_gcp_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", default=None,
                      help="JSON file of the whole configuration with its gcp section (as "
                           "`rlops deploy` writes it); replaces every other config option")
  parser.add_argument("--gcp-config", default=None,
                      help="JSON file of the Google Cloud settings (GcpConfig fields); "
                           "the options below override it")
  for name in GCP_OPTIONS:
    parser.add_argument(f"--{name.replace('_', '-')}", default=None,
                        help=f"GcpConfig.{name}")


def whole_config(path: str) -> Config:
  """The validated configuration in the JSON file `path` (`Config.to_json`)."""
  try:
    with open(path) as f:
      return Config.from_json(f.read()).validate()
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise ConfigError(f"cannot read --config {path}: {error}") from error


def config_from_args(args: argparse.Namespace, *, starts_workdir: bool = False) -> Config:
  """The validated `Config` of parsed arguments.

  On a workdir that remembers a configuration (and for a command that does not
  start it) the remembered configuration is the base, and options given on the
  command line must agree with it.

  Raises:
    ConfigError: An option is invalid, or disagrees with the workdir's configuration.
    WorkdirError: The workdir cannot be written.
  """
  if getattr(args, "config", None):
    return whole_config(args.config)
  check_workdir_writable(args.workdir)
  base = None if starts_workdir else remembered(args.workdir)
  given = given_options(args)
  if base is not None:
    started = {key: getattr(getattr(base, key[0]), key[1]) for key in given}
    conflicts = [f"{_flag(*key)} {value} (it has {started[key]})"
                 for key, value in given.items() if started[key] != value]
    if conflicts:
      raise ConfigError(f"{args.workdir} was started with another configuration: "
                        + "; ".join(conflicts) + ". Drop the option or use another --workdir")
  sections: Dict[str, Dict[str, Any]] = {}
  for (section, field), value in given.items():
    sections.setdefault(section, {})[field] = value
  config = (base or Config()).replace(workdir=args.workdir, **sections)
  if hasattr(args, "gcp_config"):
    config = config.replace(gcp=gcp_from_args(args))
  return config.validate()
