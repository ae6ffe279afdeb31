"""The walkthrough notebook: committed without outputs, and runs top to bottom."""
import json
import os
import sys
import time

import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "walkthrough.ipynb")
CELL_SECONDS = 300
TOTAL_SECONDS = 480


def test_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def _kernel(tmp_path, monkeypatch) -> str:
  """A kernel spec running this interpreter, with the project importable."""
  spec = tmp_path / "jupyter" / "kernels" / "rlops-test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "rlops test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  path = [ROOT, os.environ.get("PYTHONPATH")]
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
  return "rlops-test"


def _text(cell) -> str:
  return "".join(output.get("text", "") for output in cell.outputs
                 if output.output_type == "stream")


def test_walkthrough_runs_top_to_bottom(tmp_path, monkeypatch):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, kernel_name=_kernel(tmp_path, monkeypatch),
                                   timeout=CELL_SECONDS,
                                   resources={"metadata": {"path": str(run_dir)}})
  deadline = time.monotonic() + TOTAL_SECONDS
  with client.setup_kernel():
    for index, cell in enumerate(notebook.cells):
      client.execute_cell(cell, index)
      assert time.monotonic() < deadline, f"over {TOTAL_SECONDS} s, at cell {index}"
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(output.output_type != "error" for cell in code for output in cell.outputs)
  text = "\n".join(_text(cell) for cell in code)
  assert "serving at http://127.0.0.1:" in text
  assert "retraining: blessed, pushed" in text
  assert "<- warm-started from <- model" in text  # the lineage table printed a chain
  assert "task Trainer" in text and "task Pusher" in text  # the compiled Vertex task list
  images = [output for cell in code for output in cell.outputs
            if "image/png" in output.get("data", {})]
  assert len(images) == 2  # the lineage graph and the rounds plot
  assert (run_dir / "lineage.png").stat().st_size > 10_000
  assert (run_dir / "rounds.png").exists() and (run_dir / "retrain_pipeline.json").exists()
