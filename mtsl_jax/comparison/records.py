"""Compact per-run records of the comparison, and what is read off their curves.

A run's workdir holds everything (metrics.jsonl with every evaluation and the ledger,
timing.jsonl, checkpoints); the comparison keeps only one JSON line per run in
`results/runs.jsonl`: its key (phase, dataset, setting, noise, method, learning rate,
seed), its evaluation curve (client steps, mean and worst per-task accuracy, cumulative
bytes up + down) and its final numbers. The report is computed from these lines alone, so
the repository holds the results without the logs.
"""

import gzip
import json
import os
import pathlib
import zlib
from typing import Any, Iterable

import numpy as np

KEY_FIELDS = ("phase", "dataset", "setting", "noise", "method", "lr", "seed",
              "lr_fallback_from")


def run_key(record: dict) -> tuple:
  """The identity of a run: equal keys are the same run (reruns skip it)."""
  return tuple(json.dumps(record.get(f)) for f in KEY_FIELDS)


def read_run(workdir: str | pathlib.Path, client_steps_per_step: int) -> dict[str, Any]:
  """The curve and final numbers of one finished run, from its metrics.jsonl.

  Args:
    workdir: the run's workdir.
    client_steps_per_step: client steps (of batch_size examples) per loop step of the
      method, so that curves of different methods share one x axis.

  Returns:
    {'curve': {'client_steps', 'accuracy_mean', 'accuracy_worst', 'bytes'} lists,
     'final': {'accuracy_mean', 'accuracy_worst', 'accuracy_weighted', 'accuracy', 'bytes'}}.
    'bytes' is the ledger's cumulative uplink + downlink total over all clients.
  """
  evals, traffic = {}, {}
  with open(pathlib.Path(workdir) / "metrics.jsonl", encoding="utf-8") as f:
    for line in f:
      rec = json.loads(line)
      if "test/accuracy_mean" in rec:
        evals[rec["step"]] = rec
      if "comm/total_bytes" in rec:
        traffic[rec["step"]] = rec["comm/total_bytes"]
  if not evals:
    raise ValueError(f"{workdir}: metrics.jsonl has no evaluation record")
  steps = sorted(evals)
  last = evals[steps[-1]]
  curve = {
      "client_steps": [s * client_steps_per_step for s in steps],
      "accuracy_mean": [round(evals[s]["test/accuracy_mean"], 5) for s in steps],
      "accuracy_worst": [round(evals[s]["test/accuracy_worst"], 5) for s in steps],
      "bytes": [traffic.get(s, 0.0) for s in steps],
  }
  final = {"accuracy_mean": last["test/accuracy_mean"],
           "accuracy_worst": last["test/accuracy_worst"],
           "accuracy_weighted": last["test/accuracy_weighted"],
           "accuracy": [round(a, 5) for a in last["test/accuracy"]],
           "bytes": curve["bytes"][-1]}
  return {"curve": curve, "final": final}


def first_reaching(curve: dict, target: float) -> tuple[float, float] | None:
  """(client steps, bytes) at the first evaluation whose mean accuracy is >= target.

  Args:
    curve: a record's 'curve'.
    target: the accuracy to reach.

  Returns:
    The pair, or None when the run never reaches the target at an evaluation point.
  """
  for steps, acc, sent in zip(curve["client_steps"], curve["accuracy_mean"], curve["bytes"]):
    if acc >= target:
      return float(steps), float(sent)
  return None


class ResultsFile:
  """An append-only JSONL of run records; each line is written whole and flushed.

  A crash can lose at most the record being written (a torn last line is ignored on
  reading), never an earlier record. A path ending in '.gz' holds the same lines
  gzip-compressed, one gzip member per `append` (concatenated members are one valid gzip
  stream, so `zcat` reads the file): the form for large studies' records, ~8x smaller. A
  member torn by a crash is ignored on reading and cut off before the next append.
  """

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)

  @property
  def compressed(self) -> bool:
    return self.path.suffix == ".gz"

  def _members(self) -> tuple[list[bytes], int]:
    """The decompressed complete gzip members and the byte length they span."""
    data, out, pos = self.path.read_bytes(), [], 0
    while pos < len(data):
      member = zlib.decompressobj(wbits=31)  # one gzip member
      try:
        text = member.decompress(data[pos:])
      except zlib.error:
        break
      if not member.eof:  # torn: the crash cut it short
        break
      out.append(text)
      pos = len(data) - len(member.unused_data)
    return out, pos

  def _text(self) -> str:
    if not self.compressed:
      return self.path.read_text(encoding="utf-8")
    return b"".join(self._members()[0]).decode("utf-8")

  def load(self) -> list[dict]:
    """All complete records in file order."""
    if not self.path.exists():
      return []
    records = []
    for line in self._text().splitlines():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # a line torn by a crash; its run is simply redone
    return records

  def done(self) -> set[tuple]:
    """Keys of the runs already recorded."""
    return {run_key(r) for r in self.load()}

  def append(self, records: Iterable[dict]) -> None:
    """Appends records, one line each, and makes them durable."""
    lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if not self.compressed:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
      return
    if not lines:
      return
    if self.path.exists():
      _, complete = self._members()
      if complete < self.path.stat().st_size:  # a torn member: later ones must follow a whole one
        with open(self.path, "r+b") as f:
          f.truncate(complete)
    with open(self.path, "ab") as f:
      # mtime 0: the same records give the same bytes.
      f.write(gzip.compress(lines.encode("utf-8"), mtime=0))
      f.flush()
      os.fsync(f.fileno())


def seed_stats(values: Iterable[float]) -> tuple[float, float]:
  """Mean and (population) standard deviation over seeds."""
  v = np.asarray(list(values), np.float64)
  return float(v.mean()), float(v.std())
