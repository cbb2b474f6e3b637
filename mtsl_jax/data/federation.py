"""From a data config to per-client arrays: on the host (`Federation`) and on device.

`build_federation` runs the whole host pipeline once, in this order: load the source(s),
partition the train set, allocate test examples like train (user-given client splits,
`client_splits.py`, skip both: their clients are used as given), cap train sizes, hold
out a validation part of each client's train examples (`data.validation_fraction`; with
`data.evaluate_on = 'validation'` it replaces the test set, for tuning), then apply the
per-client transforms and the input normalization (`data.normalization`). `to_device`
pads the ragged clients into `[M, N_max, ...]` arrays, and `sample_batches` draws every
client's minibatch on device, so a training step never goes back to the host for data.
"""

import dataclasses
import functools

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from mtsl_jax.data import client_splits
from mtsl_jax.data import normalization
from mtsl_jax.data import partition as part
from mtsl_jax.data import sources
from mtsl_jax.data import synthetic
from mtsl_jax.errors import DataError

# derive_rng keys are (namespace, purpose, index); synthetic.py uses namespace 1.
_NAMESPACE = 2
(_PARTITION, _TEST, _CAP, _LABEL_PERM, _LABEL_NOISE, _NOISE_TRAIN, _NOISE_TEST,
 _VALIDATION, _EVAL_CAP) = range(9)


@dataclasses.dataclass(frozen=True, eq=False)  # Arrays have no boolean ==.
class Federation:
  """Every client's data in host memory; ragged, one entry per client (task).

  Attributes:
    train_x: per client float32 [n_m, *input_shape].
    train_y: per client int32 [n_m], in [0, num_classes[m]).
    test_x: per client float32 [t_m, *input_shape].
    test_y: per client int32 [t_m] (never label-noised).
    num_classes: int32 [M], label-space size of each task.
    input_shape: shape of one input.
    description: one line, e.g. "mnist, dirichlet(0.3), 10 clients".
  """
  train_x: tuple[np.ndarray, ...]
  train_y: tuple[np.ndarray, ...]
  test_x: tuple[np.ndarray, ...]
  test_y: tuple[np.ndarray, ...]
  num_classes: np.ndarray
  input_shape: tuple[int, ...]
  description: str

  @property
  def num_clients(self) -> int:
    return len(self.train_x)

  @property
  def train_counts(self) -> np.ndarray:
    return np.array([y.shape[0] for y in self.train_y], dtype=np.int64)

  @property
  def test_counts(self) -> np.ndarray:
    return np.array([y.shape[0] for y in self.test_y], dtype=np.int64)


@dataclasses.dataclass
class _RawClient:
  """One client before transforms: raw inputs (uint8 or float) and labels."""
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  normalizer: normalization.Standardizer | None  # None: inputs only cast to float32.


def build_federation(data_config, seed: int) -> Federation:
  """Builds the configured federation; deterministic in (data_config, seed).

  Args:
    data_config: the `c.data` ConfigDict (see config_base.py).
    seed: the experiment seed.

  Returns:
    The host-side Federation.

  Raises:
    DataError: when the data cannot be loaded or split as configured; the message names
      the config field to change.
  """
  source = data_config.source
  if source == "synthetic":
    s = data_config.synthetic
    clients = synthetic.generate_synthetic(
        num_clients=data_config.num_clients, alpha=s.alpha, beta=s.beta,
        num_features=s.num_features, num_classes=s.num_classes, min_classes=s.min_classes,
        examples_lognormal_mean=s.examples_lognormal_mean,
        examples_lognormal_sigma=s.examples_lognormal_sigma, max_examples=s.max_examples,
        test_fraction=s.test_fraction, seed=seed)
    raw = [_RawClient(clients.train_x[m], clients.train_y[m], clients.test_x[m],
                      clients.test_y[m], int(clients.num_classes[m]), None)
           for m in range(data_config.num_clients)]
    head = f"synthetic({s.alpha:g}, {s.beta:g})"
    return _finish(raw, data_config, seed, head)
  if source in client_splits.SOURCES:
    splits = client_splits.load_client_splits(source, data_config.client_path,
                                              data_config.num_clients)
    raw = _raw_clients(splits.dataset, splits.train_parts, splits.test_parts,
                       data_config.normalization)
    return _finish(raw, data_config, seed, f"{splits.dataset.name}, given split")
  if source == "tfds":
    names = [n.strip() for n in data_config.name.split(",") if n.strip()]
    if not names:
      raise DataError("data.name: no dataset name given.")
    datasets = [sources.load_tfds(n, data_config.tfds_data_dir) for n in names]
  elif source == "npz":
    datasets = [sources.load_npz(data_config.npz_path)]
  else:
    raise DataError("data.source must be 'synthetic', 'tfds', 'npz', "
                    f"{' or '.join(repr(s) for s in client_splits.SOURCES)}, got {source!r}.")
  return build_federation_from_datasets(datasets, data_config, seed)


def group_sizes(num_clients: int, num_groups: int) -> list[int]:
  """Contiguous client-group sizes, as even as possible, earlier groups larger."""
  base, extra = divmod(num_clients, num_groups)
  return [base + (g < extra) for g in range(num_groups)]


def build_federation_from_datasets(datasets, data_config, seed: int) -> Federation:
  """Partitions in-memory datasets among clients; several datasets make a mixture.

  Clients are divided into contiguous groups, one per dataset (see `group_sizes`), and
  each dataset is partitioned among its own group only.

  Args:
    datasets: a sequence of sources.ArrayDataset sharing one input shape.
    data_config: the `c.data` ConfigDict; its partition and transform fields are used.
    seed: the experiment seed.

  Returns:
    The host-side Federation.

  Raises:
    DataError: see `build_federation`.
  """
  num_clients = data_config.num_clients
  if num_clients < len(datasets):
    raise DataError(f"data.num_clients: {num_clients} clients cannot cover "
                    f"{len(datasets)} datasets ({data_config.name}).")
  shapes = {d.x_train.shape[1:] for d in datasets}
  if len(shapes) > 1:
    raise DataError("data.name: mixed datasets must share one input shape, got "
                    + ", ".join(f"{d.name} {d.x_train.shape[1:]}" for d in datasets))
  raw = []
  for g, (dataset, size) in enumerate(zip(datasets, group_sizes(num_clients, len(datasets)))):
    train_parts = _partition(dataset.y_train, size, data_config, part.derive_rng(
        seed, _NAMESPACE, _PARTITION, g))
    test_parts = part.allocate_test_like_train(
        train_parts, dataset.y_train, dataset.y_test,
        part.derive_rng(seed, _NAMESPACE, _TEST, g))
    raw += _raw_clients(dataset, train_parts, test_parts, data_config.normalization)
  scheme = data_config.partition
  if scheme == "dirichlet":
    scheme = f"dirichlet({data_config.dirichlet_alpha:g})"
  elif scheme == "shards":
    scheme = f"shards({data_config.classes_per_client} classes/client)"
  head = f"{'+'.join(d.name for d in datasets)}, {scheme}"
  return _finish(raw, data_config, seed, head)


def _raw_clients(dataset, train_parts, test_parts, mode: str) -> list[_RawClient]:
  """One client per (train, test) index array pair of `dataset`, with its normalizer."""
  normalizer = dataset.normalizer(mode)
  return [_RawClient(dataset.x_train[tr], dataset.y_train[tr], dataset.x_test[te],
                     dataset.y_test[te], dataset.num_classes, normalizer)
          for tr, te in zip(train_parts, test_parts)]


def _partition(labels, num_clients, data_config, rng) -> list[np.ndarray]:
  """Runs the configured partitioner and checks every client got enough examples."""
  scheme = data_config.partition
  if scheme == "iid":
    parts = part.partition_iid(labels, num_clients, rng)
  elif scheme == "dirichlet":
    parts = part.partition_dirichlet(labels, num_clients, data_config.dirichlet_alpha,
                                     data_config.min_examples_per_client, rng)
  elif scheme == "shards":
    parts = part.partition_shards(labels, num_clients, data_config.classes_per_client, rng)
  else:
    raise DataError(f"data.partition must be 'iid', 'dirichlet' or 'shards', got {scheme!r}.")
  fewest = min(p.shape[0] for p in parts)
  if fewest < max(1, data_config.min_examples_per_client):
    raise DataError(f"data.min_examples_per_client: a client got only {fewest} train "
                    f"examples ({scheme} over {num_clients} clients); use fewer clients.")
  return parts


def _finish(raw: list[_RawClient], data_config, seed: int, head: str) -> Federation:
  """Caps train sizes and applies the per-client transforms, then freezes the result."""
  num_clients = len(raw)
  feature_std = part.noise_levels(data_config.feature_noise_std, data_config.noise_profile,
                                  num_clients)
  label_rate = part.noise_levels(data_config.label_noise_rate, data_config.noise_profile,
                                 num_clients)
  train_x, train_y, test_x, test_y = [], [], [], []
  for m, c in enumerate(raw):
    def rng(purpose, m=m):
      return part.derive_rng(seed, _NAMESPACE, purpose, m)
    keep = part.cap_examples(np.arange(c.train_y.shape[0]),
                             data_config.max_examples_per_client, rng(_CAP))
    keep, held_out = part.hold_out(keep, data_config.validation_fraction, rng(_VALIDATION))
    x_tr, y_tr, x_te, y_te = c.train_x[keep], c.train_y[keep], c.test_x, c.test_y
    if data_config.evaluate_on == "validation":  # tuning: the test set stays unseen
      x_te, y_te = c.train_x[held_out], c.train_y[held_out]
    # A uniform subset of the evaluated split keeps its class mix in expectation; it is
    # drawn once per (seed, client), so every method of a comparison sees the same one.
    evaluated = part.cap_examples(np.arange(y_te.shape[0]),
                                  data_config.max_eval_examples_per_client, rng(_EVAL_CAP))
    x_te, y_te = x_te[evaluated], y_te[evaluated]
    if data_config.label_permutation:
      perm = rng(_LABEL_PERM).permutation(c.num_classes)
      y_tr, y_te = perm[y_tr], perm[y_te]
    y_tr = part.flip_labels(y_tr, label_rate[m], c.num_classes, rng(_LABEL_NOISE))
    angle = m * data_config.rotation_step_degrees
    x_tr = _prepare_inputs(x_tr, c.normalizer, angle, feature_std[m], rng(_NOISE_TRAIN))
    x_te = _prepare_inputs(x_te, c.normalizer, angle, feature_std[m], rng(_NOISE_TEST))
    train_x.append(x_tr)
    test_x.append(x_te)
    train_y.append(y_tr.astype(np.int32))
    test_y.append(y_te.astype(np.int32))
  return Federation(
      train_x=tuple(train_x), train_y=tuple(train_y), test_x=tuple(test_x),
      test_y=tuple(test_y),
      num_classes=np.array([c.num_classes for c in raw], dtype=np.int32),
      input_shape=tuple(train_x[0].shape[1:]),
      description=_describe(head, num_clients, data_config))


def _prepare_inputs(x, normalizer, angle, noise_std, rng) -> np.ndarray:
  """Raw -> float32: rotate in pixel space (where 0 is black), normalize, add noise."""
  x = normalizer.to_unit(x) if normalizer else x.astype(np.float32, copy=False)
  x = part.rotate_images(x, angle)
  if normalizer:
    x = normalizer.standardize(x)
  return part.add_feature_noise(x, noise_std, rng)


def _describe(head: str, num_clients: int, data_config) -> str:
  items = [head, f"{num_clients} clients"]
  if data_config.normalization != "auto" and data_config.source != "synthetic":
    items.append(f"inputs normalized {data_config.normalization}")
  if data_config.max_examples_per_client > 0:
    items.append(f"<= {data_config.max_examples_per_client} train examples/client")
  if data_config.max_eval_examples_per_client > 0:
    items.append(f"<= {data_config.max_eval_examples_per_client} evaluated "
                 "examples/client")
  if data_config.validation_fraction > 0:
    items.append(f"{data_config.validation_fraction:g} of train held out"
                 + (", evaluated on it" if data_config.evaluate_on == "validation" else ""))
  if data_config.label_permutation:
    items.append("permuted labels")
  if data_config.rotation_step_degrees:
    items.append(f"rotation {data_config.rotation_step_degrees:g} deg/client")
  profile = data_config.noise_profile
  if data_config.feature_noise_std:
    items.append(f"feature noise {data_config.feature_noise_std:g} ({profile})")
  if data_config.label_noise_rate:
    items.append(f"label noise {data_config.label_noise_rate:g} ({profile})")
  return ", ".join(items)


# ---- device side ------------------------------------------------------------------------


@struct.dataclass
class ClientArrays:
  """All clients' examples padded to a common length, on device.

  Attributes:
    x: [M, N_max, *input_shape] float32; rows at or past counts[m] are zeros.
    y: [M, N_max] int32; padding is 0.
    counts: [M] int32 number of real examples of each client.
  """
  x: jax.Array
  y: jax.Array
  counts: jax.Array


def padded_length(n: int) -> int:
  """The client axis length for at most `n` examples: n rounded up to a coarse bucket.

  Buckets are 1/8 of n's power of two (n = 5400 -> 5632), so the padding costs at most
  12.5% memory, while federations that differ only slightly in their largest client
  (seeds, settings, datasets of one size) give the jitted step the same shapes, and the
  persistent compilation cache serves them one compiled program.

  Args:
    n: the largest client's number of examples.

  Returns:
    The padded length (>= n).
  """
  if n <= 64:
    return max(n, 1)
  step = 1 << (n.bit_length() - 4)
  return -(-n // step) * step


def _pad(xs, ys) -> ClientArrays:
  n_max = padded_length(max(y.shape[0] for y in ys))
  x = np.zeros((len(xs), n_max) + xs[0].shape[1:], dtype=np.float32)
  y = np.zeros((len(ys), n_max), dtype=np.int32)
  for m, (xm, ym) in enumerate(zip(xs, ys)):
    x[m, :xm.shape[0]] = xm
    y[m, :ym.shape[0]] = ym
  counts = np.array([ym.shape[0] for ym in ys], dtype=np.int32)
  return ClientArrays(x=x, y=y, counts=counts)


def to_host(federation: Federation) -> tuple[ClientArrays, ClientArrays]:
  """Pads the train and test sets of every client into numpy `ClientArrays`.

  Args:
    federation: host-side client data.

  Returns:
    (train, test) ClientArrays of numpy arrays, for placing on devices in one transfer
    (`jax.device_put`, or `sharding.shard_clients` for a client-sharded run).
  """
  return (_pad(federation.train_x, federation.train_y),
          _pad(federation.test_x, federation.test_y))


def to_device(federation: Federation) -> tuple[ClientArrays, ClientArrays]:
  """`to_host`, put on the default device.

  Args:
    federation: host-side client data.

  Returns:
    (train, test) ClientArrays.
  """
  return jax.device_put(to_host(federation))


@functools.partial(jax.jit, static_argnames="batch_size")
def sample_batches(data: ClientArrays, key: jax.Array,
                   batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Each client draws `batch_size` of its own examples uniformly, with replacement.

  Client m's indices come from jax.random.fold_in(key, m) and lie in [0, counts[m]),
  so padding is never sampled.

  Args:
    data: padded client arrays.
    key: a PRNG key for this step.
    batch_size: B, examples per client.

  Returns:
    (x [M, B, *input_shape], y [M, B]).
  """
  def one_client(x, y, count, m):
    idx = jax.random.randint(jax.random.fold_in(key, m), (batch_size,), 0, count)
    return x[idx], y[idx]

  clients = jnp.arange(data.counts.shape[0])
  return jax.vmap(one_client)(data.x, data.y, data.counts, clients)
