"""Where metrics go: JSON lines in `<workdir>/metrics.jsonl` and TensorBoard summaries.

Scalars are written as they are; per-client vectors ([M]) are written whole as JSON lists
and as one TensorBoard scalar per client (`name/client_07`). clu's writers would need
TensorFlow for TensorBoard output, so the event files come from tensorboardX.
"""

import json
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
    workdir: the run's directory; metrics.jsonl and tensorboard/ go there. A resumed run
      appends to the same files.
    tensorboard: also write TensorBoard event files.
  """

  def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard")) if tensorboard else None

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Writes one record; `metrics` values are scalars or per-client vectors."""
    record = {"step": int(step), "time": time.time()}
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

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl`, in order."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
