"""The training methods by name, and the facts about them that the config checks need.

The methods are built in `algorithms/` (one module each, registered in
`algorithms.ALGORITHMS` under these names, in this order). What sits below the
algorithms (the config checks in `validation.py`, the memory bound in `memory.py`) reads
these facts from here instead of importing the methods, which import most of the library.
"""

# `config.algorithm`'s choices.
ALGORITHM_NAMES = ("mtsl", "fedavg", "centralized", "local", "fedrep", "splitfed_v1",
                   "splitfed_v2", "fedem")
# The methods whose model `config.split` cuts; the others train full models.
SPLIT_ALGORITHMS = ("mtsl", "splitfed_v1", "splitfed_v2")
# The methods whose loop step is a federated ROUND of `config.fl.local_steps` local steps
# per sampled client (`algorithms/federated.py`).
ROUND_ALGORITHMS = ("fedavg", "fedem", "fedrep", "splitfed_v1", "splitfed_v2")


def num_sampled(client_fraction: float, num_clients: int) -> int:
  """S, the fixed number of clients a federated round samples.

  Args:
    client_fraction: `config.fl.client_fraction`, in (0, 1].
    num_clients: M.

  Returns:
    max(1, round(client_fraction * M)).
  """
  return max(1, int(round(client_fraction * num_clients)))
