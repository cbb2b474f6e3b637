"""User-given client splits: each client's train and test examples exactly as supplied.

For data whose clients are already chosen (a consortium's sites, LEAF's users, a peer
library's published partition): nothing is re-partitioned and no test example is
resampled; client m trains on its train examples and is evaluated on its test examples,
in the order given. Two layouts, chosen by `data.source`, read from `data.client_path`:

  'client_dir'  a directory holding one file per client, `client_<m>.npz` for
                m = 0 .. M-1 (no gaps; other files are ignored), each with the arrays
                x_train, y_train, x_test, y_test.
  'client_npz'  one .npz file holding x_train, y_train, client_train, x_test, y_test,
                client_test, where client_<split>[i] in 0 .. M-1 is the client of
                example i of that split.

`data.num_clients` must equal the M found (it sizes config checks made before any data
are read, so it is not derived from the data). Every client needs at least one train and
one test example, and all clients' inputs one shape and dtype. The clients share one
label space, max label + 1 over all of them, as in the other sources, and one
normalization fitted on all clients' train inputs together. Each problem is refused in
one line naming the config field and the file (and array).

The clients are returned as index arrays into one pooled `ArrayDataset`, so that the
federation's transforms (`data.validation_fraction`, label permutation, rotation, noise)
apply to them as to partitioned data; at their defaults every example is used as given.
"""

import dataclasses
import os
import re

import numpy as np

from mtsl_jax.data import sources
from mtsl_jax.errors import DataError

SOURCES = ("client_dir", "client_npz")
_FIELD = "data.client_path"
_KEYS = ("x_train", "y_train", "x_test", "y_test")
_FILE = re.compile(r"client_(\d+)\.npz")


@dataclasses.dataclass(frozen=True, eq=False)  # Arrays have no boolean ==.
class ClientSplits:
  """Every client's examples, as indices into one pooled dataset.

  Attributes:
    dataset: all clients' train examples (client 0's first) as its train split and all
      their test examples as its test split; its num_classes is the shared label space
      and its normalizer is fitted on all clients' train inputs.
    train_parts: per client, the indices of its train examples in dataset.x_train, in
      the order given.
    test_parts: per client, the indices of its test examples in dataset.x_test.
  """
  dataset: sources.ArrayDataset
  train_parts: list[np.ndarray]
  test_parts: list[np.ndarray]


def load_client_splits(source: str, path: str, num_clients: int) -> ClientSplits:
  """Loads and checks user-given client splits in one of the two layouts.

  Args:
    source: 'client_dir' or 'client_npz' (`data.source`).
    path: the directory or .npz file (`data.client_path`).
    num_clients: `data.num_clients`, which must equal the number of clients found.

  Returns:
    The client splits.

  Raises:
    DataError: one line naming the config field and the file, for a missing file or
      array, a client count other than `num_clients`, a client with no train or no test
      example, inputs of differing shapes or dtypes, x and y of differing lengths,
      labels that are not integers, negative or too large, non-finite inputs.
  """
  if source == "client_dir":
    return load_client_dir(path, num_clients)
  if source == "client_npz":
    return load_client_npz(path, num_clients)
  raise DataError(f"data.source must be one of {SOURCES} here, got {source!r}.")


def load_client_dir(path: str, num_clients: int) -> ClientSplits:
  """Reads `<path>/client_<m>.npz` for m = 0 .. M-1 (see the module docstring).

  Args:
    path: the directory.
    num_clients: `data.num_clients`.

  Returns:
    The client splits; client m's examples in the order of its file.

  Raises:
    DataError: see `load_client_splits`.
  """
  if not path or not os.path.isdir(path):
    raise DataError(f"{_FIELD}: no directory at {path!r} (data.source 'client_dir' reads "
                    "one client_<m>.npz file per client from a directory).")
  files = _client_files(path)
  if len(files) != num_clients:
    raise DataError(f"data.num_clients: is {num_clients}, but {path} holds {len(files)} "
                    f"clients (client_0.npz .. client_{len(files) - 1}.npz); set "
                    f"data.num_clients = {len(files)}.")
  clients = []
  for m, file in enumerate(files):
    arrays = sources.read_npz(file, _KEYS, _FIELD)
    try:
      _check_client(f"client_{m}", arrays, first=clients[0] if clients else None)
    except DataError as e:  # say which config field and which file
      raise DataError(f"{_FIELD}: {file}: {e}") from e
    clients.append(arrays)
  _check_label_space(files, clients)
  pooled = {k: np.concatenate([c[k] for c in clients]) for k in _KEYS}
  dataset = _pooled_dataset(path, pooled)
  return ClientSplits(dataset, _ranges([c["y_train"].shape[0] for c in clients]),
                      _ranges([c["y_test"].shape[0] for c in clients]))


def load_client_npz(path: str, num_clients: int) -> ClientSplits:
  """Reads one .npz file with a client id per example (see the module docstring).

  Args:
    path: the .npz file.
    num_clients: `data.num_clients`.

  Returns:
    The client splits; client m's examples in the order they have in the file.

  Raises:
    DataError: see `load_client_splits`.
  """
  arrays = sources.read_npz(path, _KEYS + ("client_train", "client_test"), _FIELD)
  name = sources.npz_name(path)
  where = f"{_FIELD}: {path}"
  try:
    for split in ("train", "test"):
      sources.check_split_arrays(name, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
      _check_client_ids(name, split, arrays[f"client_{split}"], arrays[f"y_{split}"].shape[0])
  except DataError as e:
    raise DataError(f"{where}: {e}") from e
  found = 1 + max(int(arrays[f"client_{s}"].max(initial=-1)) for s in ("train", "test"))
  if found != num_clients:
    raise DataError(f"data.num_clients: is {num_clients}, but {path} has client ids 0 .. "
                    f"{found - 1} in client_train and client_test ({found} clients); set "
                    f"data.num_clients = {found}.")
  parts = {}
  for split in ("train", "test"):
    ids = arrays[f"client_{split}"].astype(np.int64)  # all in [0, num_clients) by now
    counts = np.bincount(ids, minlength=num_clients)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
      raise DataError(f"{where}: client(s) {_some(empty)} have no {split} example in "
                      f"client_{split}; every client 0 .. {num_clients - 1} needs at least "
                      "one train and one test example.")
    # A stable sort keeps each client's examples in the file's order.
    order = np.argsort(ids, kind="stable")
    parts[split] = np.split(order, np.cumsum(counts)[:-1])
  dataset = _pooled_dataset(path, {k: arrays[k] for k in _KEYS})
  return ClientSplits(dataset, parts["train"], parts["test"])


def _client_files(path: str) -> list[str]:
  """The files client_0.npz .. client_<M-1>.npz of a directory, in client order."""
  by_id = {}
  for entry in sorted(os.listdir(path)):
    match = _FILE.fullmatch(entry)
    if not match:
      continue
    m = int(match.group(1))
    if m in by_id:  # client_1.npz and client_01.npz
      raise DataError(f"{_FIELD}: {path} holds both {by_id[m]} and {entry} for client {m}; "
                      "keep one.")
    by_id[m] = entry
  if not by_id:
    raise DataError(f"{_FIELD}: {path} holds no client_<m>.npz file (one per client, "
                    "m = 0 .. M-1, each with x_train, y_train, x_test, y_test).")
  missing = sorted(set(range(max(by_id) + 1)) - set(by_id))
  if missing:
    raise DataError(f"{_FIELD}: {path} holds files up to client_{max(by_id)}.npz but not "
                    f"client_{missing[0]}.npz ({len(missing)} missing); clients are numbered "
                    "0 .. M-1 without gaps.")
  return [os.path.join(path, by_id[m]) for m in range(len(by_id))]


def _check_client(name: str, arrays: dict, first: dict | None) -> None:
  """One client file's arrays: valid on their own, non-empty, alike the first client's."""
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    sources.check_split_arrays(name, split, x, y)
    if y.shape[0] == 0:
      raise DataError(f"{name}: has no {split} example (x_{split} and y_{split} hold 0); "
                      "every client needs at least one train and one test example.")
    ref_name, ref = ("x_train", arrays["x_train"]) if first is None else (
        "client_0's x_train", first["x_train"])
    if x.shape[1:] != ref.shape[1:]:
      raise DataError(f"{name}: x_{split} examples have shape {x.shape[1:]} but "
                      f"{ref_name} examples {ref.shape[1:]}; all clients' inputs must share "
                      "one shape.")
    if x.dtype != ref.dtype:
      raise DataError(f"{name}: x_{split} has dtype {x.dtype} but {ref_name} {ref.dtype}; "
                      "all clients' inputs must share one dtype (uint8 images are scaled, "
                      "other inputs are not).")


def _check_label_space(files: list[str], clients: list[dict]) -> None:
  """The shared label space (max label + 1) is at most all clients' train examples.

  `ArrayDataset.from_arrays` checks the same bound on the pooled arrays; here the message
  can name the file that holds the largest label.
  """
  top, m, split = max((int(c[f"y_{s}"].max()), m, s) for m, c in enumerate(clients)
                      for s in ("train", "test"))
  total = sum(c["y_train"].shape[0] for c in clients)
  if top + 1 > total:
    raise DataError(f"{_FIELD}: {files[m]}: client_{m}: y_{split} holds label {top}, which "
                    f"would make {top + 1} classes for the {total} train examples of all "
                    "clients; class ids must run 0..K-1 with K (the number of classes) at "
                    "most the number of train examples.")


def _check_client_ids(name: str, split: str, ids: np.ndarray, count: int) -> None:
  """client_<split> is a vector of integers >= 0, one per example."""
  field = f"client_{split}"
  if ids.dtype.kind not in "iu":
    raise DataError(f"{name}: {field} must hold integer client ids 0 .. M-1, got dtype "
                    f"{ids.dtype}.")
  if ids.shape != (count,):
    raise DataError(f"{name}: {field} must have shape [N] with one client id per example "
                    f"of y_{split} ({count}), got {ids.shape}.")
  if count and ids.min() < 0:
    raise DataError(f"{name}: {field} holds negative client id(s), e.g. {ids.min()}; client "
                    "ids run 0 .. M-1.")


def _pooled_dataset(path: str, arrays: dict) -> sources.ArrayDataset:
  """All clients' examples as one dataset: checks the shared label space, adds channels."""
  try:
    return sources.ArrayDataset.from_arrays(sources.npz_name(path), **arrays)
  except DataError as e:
    raise DataError(f"{_FIELD}: {path}: {e}") from e


def _ranges(counts: list[int]) -> list[np.ndarray]:
  """Consecutive index ranges of the given lengths."""
  ends = np.cumsum(counts)
  return [np.arange(end - n, end) for n, end in zip(counts, ends)]


def _some(ids: np.ndarray, most: int = 10) -> str:
  """Up to `most` ids as a list, and how many more, for one-line messages."""
  shown = ids[:most].tolist()
  return f"{shown}" + (f" (and {ids.size - most} more)" if ids.size > most else "")
