"""Where metrics go: JSON lines in `<workdir>/metrics.jsonl` and TensorBoard summaries.

Scalars are written as they are; per-client vectors ([M]) are written whole as JSON lists
and as one TensorBoard scalar per client (`name/client_07`). clu's writers would need
TensorFlow for TensorBoard output, so the event files come from tensorboardX.

metrics.jsonl holds only what the computation determines (no wall-clock values), so the
same config and seed give the same file byte for byte on CPU; wall time and throughput go
to `<workdir>/timing.jsonl`. A run resuming from step s first drops the records after s
(written by the interrupted run after its last checkpoint; the resumed run writes them
again), so a resumed run's metrics.jsonl equals an uninterrupted run's. A last line torn
by a crash is repaired; any other damage is refused in one line (`MetricsFileError`).
"""

import json
import os
import pathlib
import time
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter

from mtsl_jax import errors


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

  Raises:
    MetricsFileError: metrics.jsonl holds lines this library did not write.
  """

  def __init__(self, workdir: str | pathlib.Path, start_step: int = 0,
               tensorboard: bool = True):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.path = workdir / "metrics.jsonl"
    _truncate_after(self.path, start_step)
    _end_with_newline(workdir / "timing.jsonl")
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

  def write_event(self, step: int, name: str, text: str) -> None:
    """Records a one-line event (e.g. 'diverged': the message) as `{step, name: text}`."""
    self._file.write(json.dumps({"step": int(step), name: text}) + "\n")
    self._file.flush()
    if self._tb is not None:
      self._tb.add_text(name, text, step)

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

  def write_event(self, step: int, name: str, text: str) -> None:
    del step, name, text

  def write_timing(self, step: int, timing: dict[str, float]) -> None:
    del step, timing

  def close(self) -> None:
    pass


MetricsFileError = errors.MetricsFileError  # defined in `errors.py`; public here too


def _parse_record(line: bytes) -> dict | None:
  """The record of one line, or None if it is not a JSON object with an integer step."""
  try:
    record = json.loads(line.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  if not isinstance(record, dict) or type(record.get("step")) is not int:  # pylint: disable=unidiomatic-typecheck
    return None
  return record


def _truncate_after(path: pathlib.Path, step: int) -> None:
  """Drops records with a step after `step`, repairing a torn last line; atomically.

  The only damage a crash can do to an append-only file written a line at a time is a
  last line cut short (no final newline): it is dropped, or, if it is a complete record
  whose newline was lost, kept with its newline (so the next record never lands on the
  same line). Any other line that is not a record (undecodable bytes, not JSON, not an
  object with an integer 'step') was not written by this library: the file is refused,
  unchanged, rather than silently rewritten.

  Raises:
    MetricsFileError: naming the file, the line and what to do.
  """
  if not path.exists():
    return
  raw = path.read_bytes()
  lines = raw.split(b"\n")
  torn = lines.pop()  # b"" when the file ends with a newline
  kept, changed = [], bool(torn)
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      changed = True
      continue
    record = _parse_record(line)
    if record is None:
      raise MetricsFileError(
          f"{path} line {number} is not a metrics record (a JSON object with an integer "
          f"'step'): {line[:80]!r}; repair or move the file away to resume (nothing was "
          "changed)")
    if record["step"] <= step:
      kept.append(line)
    else:
      changed = True
  if torn:
    record = _parse_record(torn)
    if record is not None and record["step"] <= step:
      kept.append(torn)
  if changed:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in kept))
    os.replace(tmp, path)


def _end_with_newline(path: pathlib.Path) -> None:
  """Drops a torn last line of an append-only log (timing.jsonl) before appending."""
  if not path.exists() or path.stat().st_size == 0:
    return
  raw = path.read_bytes()
  if not raw.endswith(b"\n"):
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_bytes(raw[:raw.rfind(b"\n") + 1])
    os.replace(tmp, path)


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl`, in order."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
