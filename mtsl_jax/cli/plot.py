"""Compare runs: `python launch/plot.py --workdirs workdirs/a,workdirs/b --out figs/cmp`.

Writes figs/cmp.png and figs/cmp.pdf: mean per-task test accuracy against steps, bytes
transmitted and wall time, and the final per-task accuracies. Labels come from each run's
config.json unless --labels is given.

Installed as `mtsl-plot` (`mtsl_jax.cli.commands`); `python launch/plot.py` runs it from
a clone.
"""

import sys

from absl import flags

from mtsl_jax import plotting

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories, comma-separated.")
_LABELS = flags.DEFINE_list("labels", None, "One label per run (default: from config).")
_OUT = flags.DEFINE_string("out", "figures/comparison", "Output path (no extension).")


def main() -> int:
  """Draws the comparison figures of the given workdirs; the exit status."""
  if not _WORKDIRS.value:
    print("error: --workdirs is required", file=sys.stderr)
    return 2
  if _LABELS.value and len(_LABELS.value) != len(_WORKDIRS.value):
    print("error: --labels needs one label per workdir", file=sys.stderr)
    return 2
  try:
    written = plotting.plot_runs(_WORKDIRS.value, _OUT.value, _LABELS.value)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("\n".join(str(p) for p in written))
  return 0

