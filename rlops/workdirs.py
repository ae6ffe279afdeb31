"""The layout of a local deployment's working directory."""
import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class LocalPaths:
  """Where a local deployment keeps its state, all under one working directory."""
  workdir: str

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.workdir, "pipeline_root")

  @property
  def metadata(self) -> str:
    return os.path.join(self.workdir, "metadata.sqlite")

  @property
  def warehouse(self) -> str:
    return os.path.join(self.workdir, "warehouse.sqlite")

  @property
  def config(self) -> str:
    """The configuration of the workdir's startup run, for the commands that follow."""
    return os.path.join(self.workdir, "rlops_config.json")

  @property
  def outbox(self) -> str:
    """The local endpoint's outbox of prediction logs not yet delivered."""
    return os.path.join(self.workdir, "outbox.jsonl")

  @property
  def undelivered_feedback(self) -> str:
    """Rewards `rlops simulate` could not deliver; its next run sends them first."""
    return os.path.join(self.workdir, "feedback-undelivered.jsonl")

  @property
  def tensorboard(self) -> str:
    """TensorBoard logs of the local loop, one step per round of `rlops demo`."""
    return os.path.join(self.workdir, "tensorboard")

  @property
  def serving(self) -> str:
    """Pusher's base directory: one numbered folder per pushed model version."""
    return os.path.join(self.workdir, "serving")
