"""Synthetic(alpha, beta): the heterogeneous clients of Li et al. (FedProx, MLSys 2020).

Client k draws u_k ~ N(0, alpha) and B_k ~ N(0, beta) (alpha and beta are variances);
its true model W_k ~ N(u_k, 1) of shape [K_k, F] and b_k ~ N(u_k, 1); its input mean v_k
with entries ~ N(B_k, 1); inputs x ~ N(v_k, Sigma) with Sigma diagonal, Sigma_jj =
j^(-1.2) for j = 1..F; labels y = argmax(W_k x + b_k) (softmax does not change the
argmax). alpha makes the clients' models differ, beta their input distributions.

Client sizes follow FedProx's power law: int(lognormal(mean, sigma)) + 50, capped. Inputs
are returned raw (not standardized), as in FedProx.
"""

import dataclasses

import numpy as np

from mtsl_jax.data.partition import derive_rng
from mtsl_jax.errors import DataError

# derive_rng keys are (namespace, purpose, client); the namespace keeps these streams
# apart from federation.py's, which share the experiment seed.
_NAMESPACE = 1
_SIZES, _MODEL, _INPUTS, _SPLIT = range(4)


@dataclasses.dataclass(frozen=True, eq=False)  # Arrays have no boolean ==.
class SyntheticClients:
  """Per-client arrays of a Synthetic(alpha, beta) draw (ragged lists, one per client).

  Attributes:
    train_x: [n_k, F] float32 per client.
    train_y: [n_k] int64 per client, in [0, num_classes[k]).
    test_x: [t_k, F] float32 per client.
    test_y: [t_k] int64 per client.
    num_classes: [M] int64 label-space size K_k of each client.
  """
  train_x: list[np.ndarray]
  train_y: list[np.ndarray]
  test_x: list[np.ndarray]
  test_y: list[np.ndarray]
  num_classes: np.ndarray


def label_space_sizes(num_clients: int, num_classes: int, min_classes: int) -> np.ndarray:
  """K_k: num_classes for all clients, or spaced linearly from min_classes if it is > 0.

  Args:
    num_clients: M.
    num_classes: the largest label-space size.
    min_classes: 0, or the smallest label-space size (client 0's).

  Returns:
    [M] int64 sizes, rounded to the nearest integer.
  """
  if min_classes <= 0:
    return np.full(num_clients, num_classes, dtype=np.int64)
  if not 1 <= min_classes <= num_classes:
    raise DataError(f"data.synthetic.min_classes must be in [0, {num_classes}] "
                    f"(data.synthetic.num_classes), got {min_classes}.")
  return np.rint(np.linspace(min_classes, num_classes, num_clients)).astype(np.int64)


def client_sizes(num_clients: int, lognormal_mean: float, lognormal_sigma: float,
                 max_examples: int, seed: int) -> np.ndarray:
  """Examples per client (train + test): int(lognormal(mean, sigma)) + 50, capped.

  Args:
    num_clients: M.
    lognormal_mean: mean of the underlying normal.
    lognormal_sigma: std of the underlying normal.
    max_examples: cap on each client's size.
    seed: experiment seed.

  Returns:
    [M] int64 sizes.
  """
  rng = derive_rng(seed, _NAMESPACE, _SIZES, 0)
  raw = rng.lognormal(lognormal_mean, lognormal_sigma, num_clients)
  return np.minimum(raw.astype(np.int64) + 50, max_examples)


def generate_synthetic(*, num_clients: int, alpha: float, beta: float, num_features: int,
                       num_classes: int, min_classes: int, examples_lognormal_mean: float,
                       examples_lognormal_sigma: float, max_examples: int,
                       test_fraction: float, seed: int) -> SyntheticClients:
  """Draws a Synthetic(alpha, beta) federation; keyword names match `c.data.synthetic`.

  Args:
    num_clients: M.
    alpha: variance of u_k, the spread of the clients' true models.
    beta: variance of B_k, the spread of the clients' input means.
    num_features: F.
    num_classes: largest label-space size.
    min_classes: see `label_space_sizes`.
    examples_lognormal_mean: see `client_sizes`.
    examples_lognormal_sigma: see `client_sizes`.
    max_examples: cap on each client's train + test examples (>= 2).
    test_fraction: share of each client's examples held out for test, in (0, 1); at
      least one example goes to each side.
    seed: experiment seed; the same seed gives the same arrays.

  Returns:
    The clients' arrays.

  Raises:
    DataError: for out-of-range settings (naming the data.synthetic field).
  """
  if num_clients < 1:
    raise DataError(f"data.num_clients must be >= 1, got {num_clients}.")
  if alpha < 0 or beta < 0:
    raise DataError(f"data.synthetic.alpha and .beta are variances (>= 0); got {alpha}, "
                    f"{beta}.")
  if num_features < 1 or num_classes < 1:
    raise DataError("data.synthetic.num_features and .num_classes must be >= 1.")
  if max_examples < 2:
    raise DataError(f"data.synthetic.max_examples must be >= 2, got {max_examples}.")
  if not 0 < test_fraction < 1:
    raise DataError(f"data.synthetic.test_fraction must be in (0, 1), got {test_fraction}.")
  sizes = client_sizes(num_clients, examples_lognormal_mean, examples_lognormal_sigma,
                       max_examples, seed)
  label_sizes = label_space_sizes(num_clients, num_classes, min_classes)
  # Sigma_jj = j^(-1.2), j counted from 1: later features vary less.
  input_std = np.arange(1, num_features + 1, dtype=np.float64) ** -0.6

  out = SyntheticClients([], [], [], [], label_sizes)
  for k in range(num_clients):
    model_rng = derive_rng(seed, _NAMESPACE, _MODEL, k)
    u_k = model_rng.normal(0.0, np.sqrt(alpha))
    w_k = model_rng.normal(u_k, 1.0, (label_sizes[k], num_features))
    b_k = model_rng.normal(u_k, 1.0, label_sizes[k])

    input_rng = derive_rng(seed, _NAMESPACE, _INPUTS, k)
    big_b_k = input_rng.normal(0.0, np.sqrt(beta))
    v_k = input_rng.normal(big_b_k, 1.0, num_features)
    x = v_k + input_std * input_rng.standard_normal((sizes[k], num_features))
    y = np.argmax(x @ w_k.T + b_k, axis=1).astype(np.int64)

    num_test = min(max(1, int(round(test_fraction * sizes[k]))), sizes[k] - 1)
    order = derive_rng(seed, _NAMESPACE, _SPLIT, k).permutation(sizes[k])
    test, train = order[:num_test], order[num_test:]
    out.train_x.append(x[train].astype(np.float32))
    out.train_y.append(y[train])
    out.test_x.append(x[test].astype(np.float32))
    out.test_y.append(y[test])
  return out
