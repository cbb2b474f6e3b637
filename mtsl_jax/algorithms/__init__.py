"""Training algorithms behind one interface, chosen by `config.algorithm`.

Each algorithm module provides `build(config, federation) -> Algorithm`; the training loop
(`train.py`), evaluation and checkpoints only ever see the `Algorithm` interface, so every
method runs on the same data, the same evaluation and the same ledger.
"""

from mtsl_jax.algorithms import centralized, fedavg, fedem, fedrep, local, mtsl, splitfed
from mtsl_jax.algorithms.base import Algorithm

ALGORITHMS = {
    "mtsl": mtsl.build,
    "fedavg": fedavg.build,
    "centralized": centralized.build,
    "local": local.build,
    "fedrep": fedrep.build,
    "splitfed_v1": splitfed.build_v1,
    "splitfed_v2": splitfed.build_v2,
    "fedem": fedem.build,
}


def build_algorithm(config, federation) -> Algorithm:
  """The Algorithm named by `config.algorithm`.

  Args:
    config: a validated experiment config.
    federation: the built `data.Federation`.

  Returns:
    An Algorithm.
  """
  return ALGORITHMS[config.algorithm](config, federation)
