"""Where metrics go: JSON lines in `<workdir>/metrics.jsonl` and TensorBoard summaries.

Scalars are written as they are; per-client vectors ([M]) are written whole as JSON lists
and as one TensorBoard scalar per client (`name/client_07`). clu's writers would need
TensorFlow for TensorBoard output, so the event files come from tensorboardX.

metrics.jsonl holds only what the computation determines (no wall-clock values), so the
same config and seed give the same file byte for byte on CPU; wall time and throughput go
to `<workdir>/timing.jsonl`. A run resuming from step s first drops the records after s
(written by the interrupted run after its last checkpoint; the resumed run writes them
again), so a resumed run's metrics.jsonl equals an uninterrupted run's.
"""

import json
import os
import pathlib
import time
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter


def _jsonable(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
  """Appends metrics of a run to JSON lines and TensorBoard.

  Args:
    workdir: the run's directory; metrics.jsonl, timing.jsonl and tensorboard/ go there.
    start_step: the step the run starts from (0, or the restored checkpoint's step);
      records of metrics.jsonl after it are dropped before appending.
    tensorboard: also write TensorBoard event files.
  """

  def __init__(self, workdir: str | pathlib.Path, start_step: int = 0,
               tensorboard: bool = True):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.path = workdir / "metrics.jsonl"
    _truncate_after(self.path, start_step)
    self._file = open(self.path, "a", encoding="utf-8")
    self._timing = open(workdir / "timing.jsonl", "a", encoding="utf-8")
    self._tb = SummaryWriter(str(workdir / "tensorboard")) if tensorboard else None

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Writes one record; `metrics` values are scalars or per-client vectors."""
    record = {"step": int(step)}
    record.update({k: _jsonable(v) for k, v in metrics.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in metrics.items():
        value = np.asarray(value, dtype=np.float64)
        if value.ndim == 0:
          self._tb.add_scalar(key, value.item(), step)
        else:
          for m, v in enumerate(value.ravel()):
            self._tb.add_scalar(f"{key}/client_{m:02d}", v.item(), step)

  def write_timing(self, step: int, timing: dict[str, float]) -> None:
    """Wall-clock measurements (not reproducible, so kept out of metrics.jsonl)."""
    self._timing.write(json.dumps({"step": int(step), "time": time.time(), **timing}) + "\n")
    self._timing.flush()
    if self._tb is not None:
      for key, value in timing.items():
        self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    self._file.close()
    self._timing.close()
    if self._tb is not None:
      self._tb.close()


class DiscardingWriter:
  """MetricWriter's interface, writing nothing (processes other than 0 of a multi-process run)."""

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    del step, metrics

  def write_timing(self, step: int, timing: dict[str, float]) -> None:
    del step, timing

  def close(self) -> None:
    pass


def _truncate_after(path: pathlib.Path, step: int) -> None:
  """Drops records with a step after `step`, atomically (write aside, then rename)."""
  if not path.exists():
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (json.JSONDecodeError, KeyError):
      pass  # a line cut short by a crash mid-write
  if len(kept) != len(lines):
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl`, in order."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
