"""Figures from one or many runs' workdirs: accuracy against steps, bytes and wall time.

A run is read from its workdir alone: `config.json` (for the label), `metrics.jsonl`
(evaluation and train records) and `timing.jsonl` (wall time). Nothing here trains.
"""

import json
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in tests
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mtsl_jax import metric_writers, step_sizes  # pylint: disable=wrong-import-position


def run_label(workdir: str | pathlib.Path) -> str:
  """A method label from the run's config: algorithm, and the cut for split methods."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    return pathlib.Path(workdir).name
  config = json.loads(path.read_text())
  label = config.get("algorithm", "?")
  split = config.get("split", {})
  if label == "mtsl" and split:
    label += f" ({split.get('orientation')})"
  return label


def load_run(workdir: str | pathlib.Path) -> dict:
  """Evaluation curve of one run, aligned with bytes and wall time.

  Args:
    workdir: a run's directory.

  Returns:
    dict with 'label', 'steps', 'accuracy_mean', 'accuracy_worst', 'bytes' (total
    transmitted up to each evaluation step), 'seconds' (wall time since the first record)
    and 'final_per_task' (the last evaluation's per-task accuracies).
  """
  workdir = pathlib.Path(workdir)
  records = metric_writers.read_metrics(workdir)
  evals = [r for r in records if "test/accuracy_mean" in r]
  if not evals:
    raise ValueError(f"{workdir}/metrics.jsonl has no evaluation records yet")
  bytes_at = {r["step"]: r["comm/total_bytes"] for r in records if "comm/total_bytes" in r}
  per_step = (max(bytes_at.values()) / max(bytes_at)) if bytes_at else 0.0
  times, t0 = {}, None
  timing_path = workdir / "timing.jsonl"
  if timing_path.exists():
    for line in timing_path.read_text().splitlines():
      if line.strip():
        record = json.loads(line)
        times[record["step"]] = record["time"]
        if t0 is None:  # the first chunk started chunk_seconds before its record
          t0 = record["time"] - record.get("chunk_seconds", 0.0)
  steps = np.array([r["step"] for r in evals])
  t0 = 0.0 if t0 is None else t0
  return {
      "label": run_label(workdir),
      "steps": steps,
      "accuracy_mean": np.array([r["test/accuracy_mean"] for r in evals]),
      "accuracy_worst": np.array([r["test/accuracy_worst"] for r in evals]),
      # Bytes per step are constant for a run, so steps without a train record are exact.
      "bytes": np.array([bytes_at.get(s, s * per_step) for s in steps], dtype=float),
      "seconds": np.array([times.get(s, np.nan) - t0 for s in steps], dtype=float),
      "final_per_task": np.array(evals[-1]["test/accuracy"]),
  }


def plot_runs(workdirs: Sequence[str | pathlib.Path], out: str | pathlib.Path,
              labels: Sequence[str] | None = None) -> list[pathlib.Path]:
  """Draws the comparison figure and writes it as PNG and PDF.

  Panels: mean per-task test accuracy against steps, against bytes transmitted (log
  scale), against wall time, and the final per-task accuracies as bars.

  Args:
    workdirs: run directories.
    out: output path without (or with) extension; '.png' and '.pdf' are written.
    labels: one label per run; default: from each run's config.

  Returns:
    The written files.
  """
  runs = [load_run(w) for w in workdirs]
  labels = list(labels) if labels else [r["label"] for r in runs]
  fig, axes = plt.subplots(1, 4, figsize=(18, 4))
  for run, label in zip(runs, labels):
    axes[0].plot(run["steps"], run["accuracy_mean"], marker=".", label=label)
    if run["bytes"].max() > 0:  # methods that send nothing (local-only) have no curve here
      axes[1].plot(run["bytes"], run["accuracy_mean"], marker=".", label=label)
    else:
      axes[1].plot([], [], label=f"{label}: 0 bytes")
    axes[2].plot(run["seconds"], run["accuracy_mean"], marker=".", label=label)
  axes[0].set(xlabel="loop step (one round for federated methods)",
              ylabel="mean per-task test accuracy")
  axes[1].set(xlabel="bytes transmitted (all clients)", xscale="log")
  axes[1].legend(fontsize="small")
  axes[2].set(xlabel="wall time (s, compilation included)")
  width = 0.8 / len(runs)
  for i, (run, label) in enumerate(zip(runs, labels)):
    tasks = np.arange(len(run["final_per_task"]))
    axes[3].bar(tasks + i * width, run["final_per_task"], width, label=label)
  axes[3].set(xlabel="task (client)", ylabel="final test accuracy", ylim=(0, 1))
  for ax in axes[:3]:
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  written = []
  for ext in (".png", ".pdf"):
    path = out.with_suffix(ext)
    fig.savefig(path, dpi=120)
    written.append(path)
  plt.close(fig)
  return written


def _grid_index(values, grid):
  """Maps rates to fractional grid indices (linear in log rate; grids are geometric)."""
  slope, intercept = np.polyfit(np.log(grid), np.arange(len(grid)), 1)
  return slope * np.log(values) + intercept


def plot_lr_study(study, path: str | pathlib.Path) -> pathlib.Path:
  """Heatmaps of an `lr_study.LrStudy`: final loss and steps to target, with the theory.

  Each panel shows the grid (× diverged, – target never reached), the descent boundary
  of docs/theory.md computed from the block constants at initialization, the predicted
  best ratio η_c/η_s, and the lowest-final-loss point.

  Args:
    study: the study's results.
    path: the PNG to write.

  Returns:
    The written path.
  """
  server_lrs, client_lrs = study.server_lrs, study.client_lrs
  shape = (len(server_lrs), len(client_lrs))
  final_loss = study.final_loss.reshape(shape)
  steps = study.steps_to_target.reshape(shape)
  consts = study.constants
  ls, lc, rho = float(consts.server), np.asarray(consts.clients), np.asarray(consts.cross)
  eta_c = np.geomspace(client_lrs[0] / 3, client_lrs[-1] * 3, 200)
  eta_s_max = np.array([step_sizes.max_server_lr(ls, lc, rho, study.weights, e) for e in eta_c])
  eta_s = np.geomspace(server_lrs[0] / 3, server_lrs[-1] * 3, 50)
  best = np.unravel_index(study.best, shape)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  panels = [(np.log10(final_loss), "log10 final train loss"),
            (np.where(np.isfinite(steps), steps, np.nan),
             f"steps to test acc ≥ {study.target:g} (–: never, ×: diverged)")]
  for ax, (values, title) in zip(axes, panels):
    image = ax.imshow(values.T, origin="lower", cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax)
    for i in range(shape[0]):
      for j in range(shape[1]):
        if not np.isfinite(final_loss[i, j]):
          ax.text(i, j, "×", ha="center", va="center", color="red")
        elif not np.isfinite(values[i, j]):
          ax.text(i, j, "–", ha="center", va="center", color="gray")
    ok = eta_s_max > 0
    ax.plot(_grid_index(eta_s_max[ok], server_lrs), _grid_index(eta_c[ok], client_lrs), "w--",
            label="bound Λ = 2 (init)")
    ax.plot(_grid_index(eta_s, server_lrs),
            _grid_index(study.predicted_ratio * eta_s, client_lrs), "w:",
            label=f"η_c/η_s = {study.predicted_ratio:.3g} (theory)")
    ax.plot(*best, "r*", ms=14, label="lowest final loss")
    ax.set_xlim(-0.5, shape[0] - 0.5)
    ax.set_ylim(-0.5, shape[1] - 0.5)
    ax.set_xticks(range(shape[0]), [f"{v:g}" for v in server_lrs])
    ax.set_yticks(range(shape[1]), [f"{v:g}" for v in client_lrs])
    ax.set(xlabel="server lr η_s", ylabel="client lr η_c", title=title)
  axes[0].legend(loc="upper right", fontsize=7, framealpha=0.5)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
