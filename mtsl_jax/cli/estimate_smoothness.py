"""Block smoothness constants and step-size bounds of an MTSL config (docs/theory.md).

  python launch/estimate_smoothness.py --config configs/default.py
  python launch/estimate_smoothness.py --config configs/default.py --workdir workdirs/default

Measures L_φ (server block of f), L_m (client m's block of its own loss f_m) and ρ_m (cross
block) by Hessian-vector power iteration on a fixed batch, at initialization or at the
latest checkpoint in --workdir, and prints the bounds of the theory for the configured
learning rates: the sharpness Λ of the MTSL step (descent needs Λ < 2), its arrow-matrix
upper bound, the largest server rate for the configured client rates, the block-Jacobi
rates and the predicted best ratio η_c/η_s. The bounds are for plain SGD on both sides.

Installed as `mtsl-smoothness` (`mtsl_jax.cli.commands`); `python
launch/estimate_smoothness.py` runs it from a clone.
"""

import pathlib
import sys

from absl import flags
import jax
import numpy as np

from mtsl_jax import algorithms, checkpointing, data, fingerprint, smoothness, step_sizes
from mtsl_jax import config_files, validation

_CONFIG = config_files.DEFINE_config_file("config", "Experiment config file (configs/<name>.py).")
_WORKDIR = flags.DEFINE_string(
    "workdir", "", "If set and it holds a checkpoint, measure at its latest step.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Examples per client of the fixed batch.",
                              lower_bound=1)
_ITERS = flags.DEFINE_integer("num_iters", 100, "Power-iteration steps per constant.",
                              lower_bound=1)


def _fmt(values) -> str:
  return "[" + " ".join(f"{v:.4g}" for v in np.atleast_1d(values)) + "]"


def main() -> int:
  """Measures the block constants, prints them with the bounds; the exit status."""
  config = config_files.required_config(_CONFIG)
  if config is None:
    return 2
  try:
    validation.validate_config(config)
    federation = data.build_federation(config.data, config.seed)
    validation.validate_label_spaces(config, federation.num_classes)
    algorithm = algorithms.build_algorithm(config, federation)
    where = "initialization"
    ckpt_dir = pathlib.Path(_WORKDIR.value) / "checkpoints" if _WORKDIR.value else None
    state = None
    if ckpt_dir is not None and ckpt_dir.exists():
      checkpointer = checkpointing.Checkpointer(ckpt_dir, fingerprint.of_run(config, federation))
      if checkpointer.latest_step() is not None:
        state = checkpointer.restore(jax.eval_shape(algorithm.init_state))
        where = f"checkpoint step {int(state.step)} of {_WORKDIR.value}"
      checkpointer.close()
    if state is None:
      state = jax.jit(algorithm.init_state)()
  except (validation.ConfigError, data.DataError,
          checkpointing.CheckpointMismatchError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  r = smoothness.config_smoothness(config, federation, state, _BATCH.value, _ITERS.value,
                                   config.seed)
  c, w = r["constants"], r["weights"]
  ls, lc, rho = float(c.server), np.asarray(c.clients), np.asarray(c.cross)
  eta_s, eta_c = r["server_lr"], r["client_lrs"]
  bound = step_sizes.sharpness_bound(ls, lc, rho, w, eta_s, eta_c)
  jac_s, jac_c = step_sizes.jacobi_rates(ls, lc, rho, w, level=1.0)
  print(f"{federation.description}; measured at {where}, fixed batch of {_BATCH.value} "
        f"examples per client, {_ITERS.value} power steps\n"
        f"block constants:\n"
        f"  L_phi (server block of f)       {ls:.4g}\n"
        f"  L_m   (client block of own f_m) {_fmt(lc)}\n"
        f"  rho_m (cross block of f_m)      {_fmt(rho)}\n"
        f"  w_m                             {_fmt(w)}\n"
        f"configured rates: eta_s {eta_s:.4g}, eta_c,m {_fmt(eta_c)}\n"
        f"  sharpness Lambda of the step    {r['sharpness']:.4g}   "
        f"({'descent guaranteed locally' if r['sharpness'] < 2 else 'NO descent guarantee'}:"
        f" needs < 2)\n"
        f"  arrow-matrix bound on Lambda    {bound:.4g}\n"
        f"  largest eta_s for these eta_c   "
        f"{step_sizes.max_server_lr(ls, lc, rho, w, eta_c, level=2.0):.4g} (bound < 2), "
        f"{step_sizes.max_server_lr(ls, lc, rho, w, eta_c, level=1.0):.4g} (bound < 1)\n"
        f"block-Jacobi rates (bound 1): eta_s {jac_s:.4g}, eta_c,m {_fmt(jac_c)}\n"
        f"predicted best ratio eta_c/eta_s, one shared client rate: "
        f"{step_sizes.predicted_ratio(ls, lc):.4g}")
  return 0

