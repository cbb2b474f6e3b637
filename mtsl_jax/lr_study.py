"""The learning-rate study: a (server LR, client LR) grid, its results and the theory.

`run_study` trains the grid as vmapped replica groups (`lr_grid`), measures the block
smoothness constants at initialization (`smoothness`) and returns everything a table or a
heatmap needs; `write_csv` and `plotting.plot_lr_study` turn it into files. Used by
`launch/lr_sweep.py` and `notebooks/lr_study.ipynb`.
"""

import csv
import dataclasses
import pathlib
import tempfile
import time

import jax
import numpy as np

from mtsl_jax import algorithms, data, lr_grid, smoothness, step_sizes, validation


@dataclasses.dataclass(frozen=True)
class LrStudy:
  """Results of a grid over (server LR, client LR).

  Attributes:
    server_lrs, client_lrs: the sorted axes of the grid (S and C values).
    losses, accuracies: [S*C, E] mean train loss and mean per-task test accuracy after each
      of E chunks of `eval_every` steps; point g is (server_lrs[g // C], client_lrs[g % C]).
    steps_to_target: [S*C] first evaluated step reaching `target` accuracy (inf: never).
    target: the target accuracy.
    constants: block smoothness constants at initialization.
    weights: task weights w_m.
    seconds: wall time of the grid run.
    description: the federation's description.
  """
  server_lrs: np.ndarray
  client_lrs: np.ndarray
  losses: np.ndarray
  accuracies: np.ndarray
  steps_to_target: np.ndarray
  target: float
  constants: smoothness.BlockSmoothness
  weights: np.ndarray
  seconds: float
  description: str

  @property
  def final_loss(self) -> np.ndarray:
    """[S*C] final train loss, inf where the point diverged."""
    last = self.losses[:, -1]
    return np.where(np.isfinite(last), last, np.inf)

  @property
  def best(self) -> int:
    """Index of the lowest final loss."""
    return int(np.argmin(self.final_loss))

  @property
  def fastest(self) -> int | None:
    """Index of the fewest steps to the target (ties: higher final accuracy), or None."""
    if not np.isfinite(self.steps_to_target).any():
      return None
    return int(np.lexsort((-self.accuracies[:, -1], self.steps_to_target))[0])

  @property
  def predicted_ratio(self) -> float:
    return step_sizes.predicted_ratio(self.constants.server, self.constants.clients)

  def pair(self, index: int) -> tuple[float, float]:
    """(η_s, η_c) of grid point `index`."""
    c = len(self.client_lrs)
    return float(self.server_lrs[index // c]), float(self.client_lrs[index % c])


def run_study(config, server_lrs, client_lrs, *, eval_every: int, target: float,
              chunk_size: int = 0, smoothness_batch: int = 256,
              workdir: str | pathlib.Path | None = None) -> LrStudy:
  """Trains the grid for `config.num_steps` steps and measures the theory's constants.

  Args:
    config: an MTSL experiment config (its optimizer sections give the other settings).
    server_lrs, client_lrs: grid axes.
    eval_every: steps between evaluations.
    target: mean per-task test accuracy for steps-to-target.
    chunk_size: grid points per program; 0 runs the whole grid as one program.
    smoothness_batch: examples per client for the block constants.
    workdir: where each grid point's metrics.jsonl and the groups' checkpoints go;
      rerunning on it resumes. None: a fresh temporary directory.

  Returns:
    An LrStudy.

  Raises:
    validation.ConfigError, data.DataError: before anything compiles.
  """
  validation.validate_config(config)
  federation = data.build_federation(config.data, config.seed)
  validation.validate_label_spaces(config, federation.num_classes)
  validation.require_one_client_architecture(config, "the learning-rate study")
  workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="lr_study_"))
  server_lrs = np.array(sorted(float(v) for v in server_lrs))
  client_lrs = np.array(sorted(float(v) for v in client_lrs))
  s_grid, c_grid = (a.ravel() for a in np.meshgrid(server_lrs, client_lrs, indexing="ij"))
  num_evals = max(config.num_steps // eval_every, 1)
  t0 = time.perf_counter()
  losses, accs = lr_grid.run_grid(config, s_grid, c_grid, workdir, eval_every=eval_every,
                                  num_evals=num_evals, chunk_size=chunk_size)
  seconds = time.perf_counter() - t0
  init_state = jax.jit(algorithms.build_algorithm(config, federation).init_state)()
  measured = smoothness.config_smoothness(config, federation, init_state,
                                          smoothness_batch, seed=config.seed)
  return LrStudy(server_lrs, client_lrs, losses, accs,
                 lr_grid.steps_to_target(accs, losses, target, eval_every), target,
                 measured["constants"], np.asarray(measured["weights"]), seconds,
                 federation.description)


def write_csv(study: LrStudy, path: str | pathlib.Path) -> None:
  """One row per grid point: rates, final loss and accuracy, steps to target, diverged."""
  with open(path, "w", newline="", encoding="utf-8") as fh:
    writer = csv.writer(fh)
    writer.writerow(["server_lr", "client_lr", "final_train_loss", "final_test_accuracy",
                     "steps_to_target", "diverged"])
    for g in range(study.losses.shape[0]):
      eta_s, eta_c = study.pair(g)
      writer.writerow([f"{eta_s:g}", f"{eta_c:g}", f"{study.losses[g, -1]:.5g}",
                       f"{study.accuracies[g, -1]:.4f}", study.steps_to_target[g],
                       not np.isfinite(study.final_loss[g])])


def summary(study: LrStudy, num_steps: int) -> str:
  """A few lines: timing, best and fastest pairs, and the theory's numbers at init."""
  consts = study.constants
  best = study.best
  lines = [f"{study.description}: {study.losses.shape[0]} grid points x {num_steps} steps in "
           f"{study.seconds:.1f} s",
           "best final loss: eta_s {:g}, eta_c {:g} -> loss {:.4g}, test acc {:.4f}".format(
               *study.pair(best), study.losses[best, -1], study.accuracies[best, -1])]
  if study.fastest is None:
    lines.append(f"no pair reached test acc {study.target:g}")
  else:
    f = study.fastest
    lines.append("fastest to test acc {:g}: eta_s {:g}, eta_c {:g} -> {:g} steps, final acc "
                 "{:.4f}".format(study.target, *study.pair(f), study.steps_to_target[f],
                                 study.accuracies[f, -1]))
  jac_s, jac_c = step_sizes.jacobi_rates(consts.server, consts.clients, consts.cross,
                                         study.weights, level=1.0)
  lines.append(f"theory at init: L_phi {float(consts.server):.4g}, max L_m "
               f"{float(np.max(consts.clients)):.4g}, predicted ratio eta_c/eta_s "
               f"{study.predicted_ratio:.4g}; Jacobi rates eta_s {jac_s:.4g}, shared eta_c "
               f"{float(np.min(jac_c)):.4g}")
  return "\n".join(lines)
