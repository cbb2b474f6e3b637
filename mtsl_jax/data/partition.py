"""Splitting a dataset among clients, and the per-client transforms that make tasks differ.

Partitioners map train labels to M disjoint index arrays (sorted; one per client).
`allocate_test_like_train` then gives each client test examples drawn like its train
examples, so a client's test accuracy measures its own task. The transforms (label
permutation, rotation, feature noise, label noise) act on one client's arrays.

Everything random takes an explicit `np.random.Generator`; `derive_rng` is the package's
one way to make those from the experiment seed, so no two purposes share a stream.
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mtsl_jax.errors import DataError

# Dirichlet draws are retried this many times before giving up on min_examples.
_DIRICHLET_MAX_TRIES = 100


def derive_rng(seed: int, *key: int) -> np.random.Generator:
  """An independent generator for one purpose, e.g. `derive_rng(seed, PURPOSE, client)`.

  Args:
    seed: the experiment seed (>= 0).
    *key: non-negative ints naming the purpose; use keys of one fixed length, since
      SeedSequence pads keys with zeros and (a,) and (a, 0) could otherwise meet.

  Returns:
    A numpy Generator seeded by SeedSequence(seed, spawn_key=key).
  """
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


def _check_enough(labels: np.ndarray, num_clients: int) -> None:
  if num_clients < 1:
    raise DataError(f"data.num_clients must be >= 1, got {num_clients}.")
  if labels.shape[0] < num_clients:
    raise DataError(f"data.num_clients: {num_clients} clients but only {labels.shape[0]} "
                    "train examples.")


def partition_iid(labels: np.ndarray, num_clients: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
  """Shuffles the examples and deals them into M parts of sizes differing by at most one.

  Args:
    labels: [N] train labels (only the length is used).
    num_clients: M.
    rng: randomness for the shuffle.

  Returns:
    M disjoint sorted int64 index arrays covering range(N).
  """
  _check_enough(labels, num_clients)
  order = rng.permutation(labels.shape[0])
  return [np.sort(part) for part in np.array_split(order, num_clients)]


def partition_dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
                        min_examples: int, rng: np.random.Generator) -> list[np.ndarray]:
  """Label-skewed split: each class is divided among clients by Dir(alpha * 1_M) shares.

  The whole draw is repeated until every client has at least `min_examples` examples.

  Args:
    labels: [N] train labels.
    num_clients: M.
    alpha: Dirichlet concentration (> 0); small alpha gives each client few classes.
    min_examples: the least number of examples any client may end with.
    rng: randomness for the shares and shuffles.

  Returns:
    M disjoint sorted index arrays covering range(N).

  Raises:
    DataError: if no draw within the retry budget meets `min_examples`.
  """
  _check_enough(labels, num_clients)
  if alpha <= 0:
    raise DataError(f"data.dirichlet_alpha must be > 0, got {alpha}.")
  if num_clients * min_examples > labels.shape[0]:
    raise DataError(f"data.min_examples_per_client: {num_clients} clients x {min_examples} "
                    f"examples exceeds the {labels.shape[0]} train examples.")
  by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
  for _ in range(_DIRICHLET_MAX_TRIES):
    parts = [[] for _ in range(num_clients)]
    for idx in by_class:
      shares = rng.dirichlet(np.full(num_clients, alpha))
      cuts = (np.cumsum(shares)[:-1] * idx.shape[0]).astype(np.int64)
      for m, chunk in enumerate(np.split(rng.permutation(idx), cuts)):
        parts[m].append(chunk)
    parts = [np.sort(np.concatenate(p)) for p in parts]
    if min(p.shape[0] for p in parts) >= min_examples:
      return parts
  raise DataError(
      f"data.dirichlet_alpha={alpha}: no Dirichlet draw in {_DIRICHLET_MAX_TRIES} tries gave "
      f"every one of {num_clients} clients >= {min_examples} examples; raise "
      "data.dirichlet_alpha, lower data.min_examples_per_client or use fewer clients.")


def partition_shards(labels: np.ndarray, num_clients: int, classes_per_client: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
  """Pathological non-iid split: each client holds exactly `classes_per_client` classes.

  With a random permutation `perm` of the K classes, client m holds classes
  perm[(m * c + j) % K] for j < c, so classes are spread over clients as evenly as
  possible; each class's examples are split evenly among the clients holding it.
  Classes that no client holds (when M * c < K) are left out.

  Args:
    labels: [N] train labels.
    num_clients: M.
    classes_per_client: c, with 1 <= c <= K (number of distinct labels).
    rng: randomness for the class permutation and shuffles.

  Returns:
    M disjoint sorted index arrays.

  Raises:
    DataError: if c is out of range or a class has fewer examples than holders.
  """
  _check_enough(labels, num_clients)
  classes = np.unique(labels)
  c, num_k = classes_per_client, classes.shape[0]
  if not 1 <= c <= num_k:
    raise DataError(f"data.classes_per_client must be in [1, {num_k}] (the number of "
                    f"classes), got {c}.")
  perm = rng.permutation(classes)
  held = [[perm[(m * c + j) % num_k] for j in range(c)] for m in range(num_clients)]
  holders = {k: [m for m in range(num_clients) if k in held[m]] for k in classes}
  parts = [[] for _ in range(num_clients)]
  for k, clients in holders.items():
    if not clients:
      continue
    idx = rng.permutation(np.flatnonzero(labels == k))
    if idx.shape[0] < len(clients):
      raise DataError(f"data.classes_per_client: class {k} has {idx.shape[0]} examples for "
                      f"{len(clients)} clients holding it; use fewer clients or classes.")
    for m, chunk in zip(clients, np.array_split(idx, len(clients))):
      parts[m].append(chunk)
  return [np.sort(np.concatenate(p)) for p in parts]


def _largest_remainder(total: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Integers summing to `total`, proportional to `weights`; ties broken at random."""
  quota = total * weights / weights.sum()
  counts = np.floor(quota).astype(np.int64)
  frac = quota - counts
  # lexsort: last key is primary. Random secondary key so ties do not favour low m.
  order = np.lexsort((rng.random(weights.shape[0]), -frac))
  counts[order[:total - counts.sum()]] += 1
  return counts


def allocate_test_like_train(train_parts: Sequence[np.ndarray], train_labels: np.ndarray,
                             test_labels: np.ndarray,
                             rng: np.random.Generator) -> list[np.ndarray]:
  """Splits the test set so each client's test labels follow its train labels.

  Each class's test examples go to the clients in proportion to how many train examples
  of that class they hold (largest-remainder rounding). Test examples of a class that
  no client holds are dropped. A client left with no test example then gets one, moved
  from the client holding the most test examples of its largest train class, because an
  empty test set has no accuracy.

  Args:
    train_parts: M index arrays into train_labels.
    train_labels: [N] train labels.
    test_labels: [N_test] test labels.
    rng: randomness for rounding ties and shuffles.

  Returns:
    M disjoint sorted index arrays into test_labels, each non-empty.

  Raises:
    DataError: if some client cannot be given any test example.
  """
  num_k = int(max(train_labels.max(), test_labels.max(initial=0))) + 1
  train_counts = np.stack([np.bincount(train_labels[p], minlength=num_k)
                           for p in train_parts])  # [M, K]
  test_counts = np.zeros_like(train_counts)
  for k in range(num_k):
    total = int(np.sum(test_labels == k))
    if total and train_counts[:, k].sum():
      test_counts[:, k] = _largest_remainder(total, train_counts[:, k].astype(float), rng)
  for m in np.flatnonzero(test_counts.sum(axis=1) == 0):
    for k in np.argsort(-train_counts[m], kind="stable"):
      donors = test_counts[:, k] * (test_counts.sum(axis=1) > 1)
      if train_counts[m, k] and donors.max() > 0:
        test_counts[np.argmax(donors), k] -= 1
        test_counts[m, k] += 1
        break
    else:
      raise DataError(f"data.num_clients: client {m} cannot get any test example; use "
                      "fewer clients.")
  parts = [[] for _ in train_parts]
  for k in range(num_k):
    idx = rng.permutation(np.flatnonzero(test_labels == k))
    for m, chunk in enumerate(np.split(idx, np.cumsum(test_counts[:, k])[:-1])):
      parts[m].append(chunk)
  return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def cap_examples(indices: np.ndarray, max_examples: int,
                 rng: np.random.Generator) -> np.ndarray:
  """A random subset of at most `max_examples` of `indices` (all of them if <= 0)."""
  if max_examples <= 0 or indices.shape[0] <= max_examples:
    return indices
  return np.sort(rng.choice(indices, size=max_examples, replace=False))


def hold_out(indices: np.ndarray, fraction: float,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Splits `indices` into (kept, held out), holding out round(fraction * n) at random.

  At least one index is kept, and at least one held out when `fraction` > 0, so a tiny
  client still trains and still has something to validate on.

  Args:
    indices: a client's train indices.
    fraction: the share to hold out, in [0, 1); 0 holds out nothing.
    rng: the client's generator.

  Returns:
    Sorted kept indices and sorted held-out indices.
  """
  n = indices.shape[0]
  if fraction <= 0 or n < 2:
    return indices, indices[:0]
  n_out = min(max(1, int(round(fraction * n))), n - 1)
  order = rng.permutation(n)
  return np.sort(indices[order[n_out:]]), np.sort(indices[order[:n_out]])


# ---- per-client transforms --------------------------------------------------------------


def noise_levels(value: float, profile: str, num_clients: int) -> np.ndarray:
  """Per-client noise level: 'constant' gives `value` to all, 'linear' value * m / (M - 1).

  Args:
    value: the configured level.
    profile: 'constant' or 'linear' (M = 1 gives `value`).
    num_clients: M.

  Returns:
    [M] float64 levels.
  """
  if profile == "constant":
    return np.full(num_clients, float(value))
  if profile == "linear":
    if num_clients == 1:
      return np.array([float(value)])
    return value * np.arange(num_clients) / (num_clients - 1)
  raise DataError(f"data.noise_profile must be 'constant' or 'linear', got {profile!r}.")


def rotate_images(x: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates images [N, H, W, C] by `degrees` about their centre, keeping their shape.

  Positive angles turn counter-clockwise as displayed with row 0 at the top, so 90
  degrees equals np.rot90(x, 1, axes=(1, 2)). Bilinear (order=1); pixels from outside the
  image are 0, so callers should rotate before standardizing (0 = black).

  Args:
    x: [N, H, W, C] float images.
    degrees: the angle.

  Returns:
    The rotated images, same shape and dtype.

  Raises:
    DataError: if x is not [N, H, W, C] and the angle is not 0.
  """
  if degrees % 360 == 0:
    return x
  if x.ndim != 4:
    raise DataError(f"data.rotation_step_degrees needs image inputs [N, H, W, C]; these "
                    f"inputs have shape {x.shape[1:]}. Set it to 0.")
  return ndimage.rotate(x, degrees, axes=(1, 2), reshape=False, order=1, mode="constant",
                        cval=0.0).astype(x.dtype, copy=False)


def add_feature_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
  """x + N(0, std^2) noise, independently per entry (x unchanged if std is 0)."""
  if std == 0:
    return x
  return (x + std * rng.standard_normal(x.shape, dtype=np.float32)).astype(x.dtype, copy=False)


def flip_labels(y: np.ndarray, rate: float, num_classes: int,
                rng: np.random.Generator) -> np.ndarray:
  """Replaces exactly round(rate * n) labels, chosen at random, by a different class.

  The new class is uniform over the other num_classes - 1 classes.

  Args:
    y: [n] labels in [0, num_classes).
    rate: fraction in [0, 1].
    num_classes: label-space size (>= 2 when rate > 0).
    rng: randomness for which labels flip and to what.

  Returns:
    A new label array; y itself is not modified.

  Raises:
    DataError: if rate is out of [0, 1] or there is no other class to flip to.
  """
  if not 0 <= rate <= 1:
    raise DataError(f"data.label_noise_rate must be in [0, 1], got {rate}.")
  num_flip = int(round(rate * y.shape[0]))
  if num_flip == 0:
    return y.copy()
  if num_classes < 2:
    raise DataError("data.label_noise_rate > 0 needs at least 2 classes per client.")
  out = y.copy()
  which = rng.choice(y.shape[0], size=num_flip, replace=False)
  # Adding 1..K-1 modulo K reaches every other class exactly once: uniform and never y.
  out[which] = (y[which] + rng.integers(1, num_classes, size=num_flip)) % num_classes
  return out
