"""Runs Vertex tasks' container commands in forked processes of one interpreter that
has imported TFX once (for the rehearsal, `vertex_rehearsal`).

A task's container runs `python -m <module> <args>`; here each task is a child
forked from this process, running `<module>` as `__main__` with those arguments,
its output in a log file. Importing TensorFlow, TFX and TF-Agents costs most of
a task's time, so they are imported once, before the first fork.

Protocol: `python -m tfx_pipeline.task_forker PRELOAD_MODULE...`, then one JSON
request a line on stdin, {"module": ..., "args": [...], "log": path}, answered by
one line {"exit_code": n} on stdout once the child has ended.
"""
import importlib
import json
import os
import runpy
import sys
import traceback


def _run_child(module: str, args, log_path: str) -> None:
  """In the forked child: runs `module` as `python -m module args` would, then exits."""
  log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  os.dup2(log, 1)
  os.dup2(log, 2)
  sys.argv = [module] + list(args)
  exit_code = 0
  try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
  except SystemExit as exit_request:
    code = exit_request.code
    exit_code = code if isinstance(code, int) else (0 if code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    exit_code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(exit_code)  # pylint: disable=protected-access


def main(preload) -> None:
  for module in preload:
    importlib.import_module(module)
  answers = sys.stdout
  for line in sys.stdin:
    request = json.loads(line)
    answers.flush()
    pid = os.fork()
    if pid == 0:
      _run_child(request["module"], request["args"], request["log"])
    _, status = os.waitpid(pid, 0)
    answers.write(json.dumps({"exit_code": os.waitstatus_to_exitcode(status)}) + "\n")
    answers.flush()


if __name__ == "__main__":
  main(sys.argv[1:])
