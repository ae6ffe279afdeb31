"""Every command the README shows is run by a test, or the reason it cannot be is listed here."""
import pathlib
import re
import subprocess
import sys

from cli import main as cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
RLOPS = str(pathlib.Path(sys.executable).parent / "rlops")

# What the README's commands start with -> the test that runs that command (path::name).
RUN_BY = {
    "make test": ".ci/run (CI runs the README's test command itself)",
    "make test-py39": ".ci/run",
    "make lint": "Makefile (`make test` runs it first)",
    "make setup": "Makefile (every target runs it first)",
    "RLOPS_VENV=": ".ci/run (make test-py39 sets it)",
    "RLOPS_PYTHON_VERSION=": ".ci/run (make test-py39 sets it)",
    "make demo": "cli/demo_test.py::test_short_demo_serves_the_retrained_model_and_logs_every_"
                 "prediction (the same command at small settings)",
    "rlops demo": "cli/demo_test.py::test_short_demo_serves_the_retrained_model_and_logs_every_"
                  "prediction",
    "rlops --help": "tests/readme_test.py::test_every_command_answers_help",
    "rlops COMMAND --help": "tests/readme_test.py::test_every_command_answers_help",
    "rlops --version": "cli/main_test.py::test_version",
    "rlops train": "cli/main_test.py::test_train_reports_regret_and_reward",
    "rlops data": "cli/main_test.py::test_data_describe; rlops/movielens_test.py (download from a "
                  "loopback server)",
    "rlops pipeline": "cli/main_test.py::test_workdir_state_is_checked_before_any_work; "
                      "tests/notebook_test.py::test_walkthrough_runs_top_to_bottom",
    "rlops lineage": "tests/pipeline_e2e_test.py::test_startup_then_retraining_with_gate_and_"
                     "lineage; cli/main_test.py::test_lineage_of_the_model_a_vertex_endpoint_"
                     "serves (--config: Vertex, recorded responses)",
    "rlops evaluate": "cli/evaluate_test.py::test_ranks_settings_from_the_warehouse_and_writes_the_"
                      "best",
    "rlops replay-dead-letters": "cli/main_test.py::test_replay_dead_letters_delivers_rows_the_"
                                 "warehouse_now_accepts",
    "rlops serve": "rlops/serving/server_test.py::test_workers_serve_as_deployed_and_drain_on_"
                   "sigterm (its entry point, as `rlops serve` starts it)",
    ".venv/bin/rlops serve": "rlops/serving/server_test.py::test_workers_serve_as_deployed_and_"
                             "drain_on_sigterm",
    "rlops simulate": "functions/simulator/main_test.py (the Simulator's `run_simulation`)",
    "RLOPS_WAREHOUSE=": "functions/logger/main_test.py::test_cloud_event_entry_point_writes_and_"
                        "deduplicates (functions-framework with --source, on 127.0.0.1)",
    "RLOPS_ROW_LIMITS=": "functions/logger/main_test.py::test_rows_outside_the_models_limits_"
                         "are_rejected_alone (the same variables, under functions-framework)",
    ".venv/bin/tensorboard": "tests/tensorboard_test.py::test_tensorboard_serves_the_scalars_of_an_"
                             "events_file",
    "rlops compile": "tfx_pipeline/vertex_rehearsal_test.py (compiles both, runs every task)",
    "rlops submit": "cli/main_test.py::test_lineage_and_submit_arguments_are_checked (dry run)",
    "rlops deploy": "cli/deploy_test.py::test_dry_run_goes_from_an_empty_project_to_a_running_loop",
    "rlops bigquery-init": "rlops/bigquery_test.py (its requests, on a stand-in client)",
}
# Commands no test here can run, and why.
NOT_RUN = {
    "make bench": "minutes of benchmarks that print figures; not a test",
    "make lock": "re-resolves the locks against PyPI",
    "RLOPS_PYTHON=": "another interpreter rebuilds .venv, which the running suite uses (CI builds "
                     ".venv and .venv39 through the same setup_env.sh)",
    "gcloud": "needs a Google Cloud project and credentials (cli/deploy_test.py parses every "
              "gcloud line `rlops deploy` prints with the real gcloud)",
}


def _readme_commands():
  text = (ROOT / "README.md").read_text()
  starts = re.compile(r"(rlops |make |\.venv/bin/|RLOPS_|functions-framework|gcloud )")
  spans = [span for span in re.findall(r"`([^`\n]+)`", text) if starts.match(span)]
  blocks = [line.strip() for line in re.findall(r"(?m)^    (\S.*)$", text)
            if starts.match(line.strip())]
  return sorted(set(spans + blocks))


def test_every_readme_command_is_run_by_a_test_or_says_why_not():
  commands = _readme_commands()
  assert len(commands) > 20
  for command in commands:
    keys = [key for key in (*RUN_BY, *NOT_RUN) if command.startswith(key)]
    assert keys, f"README command {command!r}: name the test that runs it, or why none can"
  for where in RUN_BY.values():
    for reference in where.split("; "):
      path, _, name = reference.split(" ")[0].partition("::")
      assert (ROOT / path).exists(), f"{path} does not exist"
      if name:
        assert f"def {name}(" in (ROOT / path).read_text(), f"no test {name} in {path}"


def test_every_command_answers_help():
  subprocess.run([RLOPS, "--help"], capture_output=True, check=True, timeout=120)
  subcommands = cli.build_parser()._subparsers._group_actions[0]  # pylint: disable=protected-access
  commands = sorted(subcommands.choices)
  assert {"demo", "pipeline", "serve", "simulate", "lineage", "evaluate", "deploy"} <= set(commands)
  for command in commands:
    result = subprocess.run([RLOPS, command, "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "usage: rlops" in result.stdout, command

