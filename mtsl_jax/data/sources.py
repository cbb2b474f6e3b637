"""Whole datasets loaded once into host numpy, before any partitioning.

A source is read completely into memory as an `ArrayDataset` (raw dtypes: images stay
uint8), before any partitioning. Everything downstream (partitioners, transforms, the
device copy) works on these arrays, so the input pipeline has no per-step host work.
Their float32 preprocessing (`data.normalization`) is fitted per dataset here and defined
in `normalization.py`.

TFDS datasets are read with `tfds.data_source`, which needs the dataset prepared in
array_record format and never touches the network here (`download=False`).
"""

import dataclasses
import functools
import math
import os
import zipfile

import numpy as np

from mtsl_jax import errors
from mtsl_jax.data import normalization

# Datasets `load_tfds` knows how to read: name -> (image feature, label feature).
# CIFAR-100 uses its fine labels ('label'), not 'coarse_label'.
TFDS_FEATURES = {
    "mnist": ("image", "label"),
    "fashion_mnist": ("image", "label"),
    "cifar10": ("image", "label"),
    "cifar100": ("image", "label"),
}
# Known before anything is loaded: one example's shape and the number of classes, for the
# config checks on the CNN's depth and on mixtures, and for the memory bound
# (`validation.py`, `memory.py`). An npz file's shapes are only known once it is read.
TFDS_INPUT_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
                     "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}
TFDS_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


DataError = errors.DataError  # defined in `errors.py`; public here and as `data.DataError`
Standardizer = normalization.Standardizer  # defined in `normalization.py`; public here too


@dataclasses.dataclass(frozen=True, eq=False)  # Arrays have no boolean ==.
class ArrayDataset:
  """A whole classification dataset in host memory.

  Attributes:
    x_train: [N, ...] inputs, uint8 (images, 0..255) or float.
    y_train: [N] integer labels.
    x_test: [N_test, ...] inputs with the same trailing shape and dtype kind as x_train.
    y_test: [N_test] integer labels.
    num_classes: label-space size, max label + 1 over train and test.
    name: a short name for descriptions and error messages.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str
  # normalization mode -> fitted normalizer (see `normalizer`); not part of the data.
  _normalizers: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

  def normalizer(self, mode: str = "auto") -> Standardizer | None:
    """The `data.normalization` map fitted on x_train, once per dataset object and mode.

    Fitting takes seconds for 60000 images; datasets from `load_tfds` are cached, so runs
    after the first in a process (seeds, sweeps, the comparison) reuse the fit.

    Args:
      mode: one of normalization.NORMALIZATIONS.

    Returns:
      The fitted Standardizer, or None for 'none' (inputs only cast to float32).
    """
    if mode not in self._normalizers:
      self._normalizers[mode] = normalization.fit(self.x_train, mode)
    return self._normalizers[mode]

  @classmethod
  def from_arrays(cls, name: str, x_train, y_train, x_test, y_test) -> "ArrayDataset":
    """Validates raw arrays and builds a dataset whose num_classes is max label + 1.

    Labels may have any signed or unsigned integer dtype (uint8 is common in saved image
    datasets); they are converted to int64. The number of classes, max label + 1, must be
    at most the number of train examples: a larger label is almost surely a damaged or
    mislabelled file, and it would size per-class arrays and the model's head (a label
    of 10**9 would ask for a billion classes).

    Args:
      name: the dataset's name (used in messages).
      x_train: [N, ...] numeric inputs, finite and within float32's range.
      y_train: [N] integer labels >= 0.
      x_test: [N_test, ...] inputs, same trailing shape as x_train.
      y_test: [N_test] integer labels >= 0.

    Returns:
      The validated ArrayDataset, labels as int64. uint8 inputs of shape [N, H, W] get a
      trailing channel axis, so that every uint8 image is [N, H, W, C].

    Raises:
      DataError: on labels that are not integers (float, bool), negative, beyond int64 or
        beyond the bound above; lengths that do not match; inputs that are not numeric,
        lack a leading example axis or any feature, hold NaN or inf or values beyond
        float32's range; train and test input shapes that differ; an empty train split.
    """
    arrays = dict(x_train=np.asarray(x_train), y_train=np.asarray(y_train),
                  x_test=np.asarray(x_test), y_test=np.asarray(y_test))
    for split in ("train", "test"):
      check_split_arrays(name, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
      raise DataError(f"{name}: train inputs have shape {arrays['x_train'].shape[1:]} but "
                      f"test inputs {arrays['x_test'].shape[1:]}.")
    num_train = arrays["y_train"].shape[0]
    if num_train == 0:
      raise DataError(f"{name}: the train split is empty.")
    top, where = max((int(arrays[f"y_{s}"].max()), s) for s in ("train", "test")
                     if arrays[f"y_{s}"].size)
    if top + 1 > num_train:
      raise DataError(f"{name}: y_{where} holds label {top}, which would make {top + 1} "
                      f"classes for {num_train} train examples; class ids must run 0..K-1 "
                      "with K (the number of classes) at most the number of train examples.")
    for split in ("train", "test"):
      x = arrays[f"x_{split}"]
      if x.dtype == np.uint8 and x.ndim == 3:  # Grayscale without a channel axis.
        arrays[f"x_{split}"] = x[..., None]
    return cls(x_train=arrays["x_train"], y_train=arrays["y_train"].astype(np.int64),
               x_test=arrays["x_test"], y_test=arrays["y_test"].astype(np.int64),
               num_classes=top + 1, name=name)


def check_split_arrays(name: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
  """Checks one split's raw inputs and labels on their own (see `ArrayDataset.from_arrays`).

  Args:
    name: the dataset's (or client file's) name, for messages.
    split: 'train' or 'test', for messages (`x_train`, `y_test`, ...).
    x: [N, ...] raw inputs.
    y: [N] raw labels.

  Raises:
    DataError: labels that are not integers, not a vector, negative or beyond int64;
      inputs that are not numeric, lack an example axis or any feature, do not match the
      labels' count, or hold NaN, inf or values beyond float32's range.
  """
  _check_raw_labels(name, split, y)
  if x.ndim < 2:
    raise DataError(f"{name}: x_{split} must have shape [N, ...features], got {x.shape}.")
  if x.shape[0] != y.shape[0]:
    raise DataError(f"{name}: x_{split} has {x.shape[0]} examples but y_{split} has "
                    f"{y.shape[0]}.")
  if x.dtype.kind not in "uif":
    raise DataError(f"{name}: x_{split} must be numeric (integer or float), got dtype "
                    f"{x.dtype}.")
  if math.prod(x.shape[1:]) == 0:
    raise DataError(f"{name}: x_{split} has shape {x.shape}: every example needs at "
                    "least one feature.")
  if x.dtype.kind == "f" and x.size:
    _check_raw_inputs(name, split, x)


def _check_raw_labels(name: str, split: str, y: np.ndarray) -> None:
  """Labels must be a vector of integers >= 0 that int64 holds (see from_arrays)."""
  if y.dtype.kind not in "iu":  # bool (kind 'b') too: numpy would cast it to 0 and 1
    raise DataError(f"{name}: y_{split} must hold integer class ids 0..K-1 (any signed or "
                    f"unsigned integer dtype), got dtype {y.dtype}.")
  if y.ndim != 1:
    raise DataError(f"{name}: y_{split} must have shape [N], got {y.shape}.")
  if not y.size:
    return
  if y.min() < 0:
    raise DataError(f"{name}: y_{split} has {np.count_nonzero(y < 0)} negative label(s) "
                    f"(smallest {y.min()}); class ids must be >= 0.")
  # uint64 values past int64's range would wrap to negative ids in the int64 conversion.
  if y.dtype.kind == "u" and y.max() > np.iinfo(np.int64).max:
    raise DataError(f"{name}: y_{split} holds label {y.max()} ({y.dtype}), which does not fit "
                    "in int64; class ids must run 0..K-1 with K at most the number of "
                    "train examples.")


def _check_raw_inputs(name: str, split: str, x: np.ndarray) -> None:
  """Float inputs must be finite and within float32's range, the model's input dtype."""
  # min and max propagate NaN and reach any inf: two passes, no temporary array.
  lo, hi = x.min(), x.max()
  if not (np.isfinite(lo) and np.isfinite(hi)):
    bad = ~np.isfinite(x.reshape(x.shape[0], -1))
    rows = np.flatnonzero(bad.any(axis=1))
    raise DataError(f"{name}: x_{split} holds {np.count_nonzero(bad)} NaN or infinite "
                    f"value(s), in {rows.size} example(s), the first at index {rows[0]}; "
                    "inputs must be finite numbers.")
  limit = float(np.finfo(np.float32).max)
  if max(-float(lo), float(hi)) > limit:
    raise DataError(f"{name}: x_{split} holds values as large as "
                    f"{max(-float(lo), float(hi)):.3g} in magnitude, beyond float32's range "
                    f"(+-{limit:.3g}) in which the model computes; rescale the inputs.")


def load_npz(path: str) -> ArrayDataset:
  """Loads a dataset from an .npz file holding x_train, y_train, x_test and y_test.

  Args:
    path: the .npz file.

  Returns:
    The dataset, named after the file (without '.npz').

  Raises:
    DataError: for a missing or unreadable file, a missing array, bad shapes, labels or
      values (see `ArrayDataset.from_arrays`), or an empty test split.
  """
  arrays = read_npz(path, ("x_train", "y_train", "x_test", "y_test"), "data.npz_path")
  name = npz_name(path)
  try:
    dataset = ArrayDataset.from_arrays(name, **arrays)
  except DataError as e:  # say which file and which config field
    raise DataError(f"data.npz_path: {path}: {e}") from e
  if dataset.y_test.shape[0] == 0:
    # Every client is evaluated on test examples drawn like its train examples
    # (partition.allocate_test_like_train), which needs some to draw from.
    raise DataError(f"data.npz_path: {path}: the test split is empty (x_test and y_test hold "
                    "0 examples); it needs at least one test example per client.")
  return dataset


def read_npz(path: str, keys, field: str) -> dict[str, np.ndarray]:
  """Reads the arrays `keys` of an .npz file (no pickles); other arrays are ignored.

  Args:
    path: the .npz file.
    keys: the names of the arrays it must hold.
    field: the config field that named the file, for messages.

  Returns:
    {key: array}.

  Raises:
    DataError: a missing or unreadable file, or a missing array, naming `field`.
  """
  if not path or not os.path.isfile(path):
    raise DataError(f"{field}: no file at {path!r}.")
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in keys if k not in npz.files]
      if missing:
        raise DataError(f"{field}: {path} lacks array(s) {', '.join(missing)}; it "
                        f"has {', '.join(npz.files) or 'none'}.")
      return {k: npz[k] for k in keys}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # Corrupt or pickled.
    raise DataError(f"{field}: cannot read {path} as .npz: {e}") from e


def npz_name(path: str) -> str:
  """A file's name without its directory and '.npz', for descriptions and messages."""
  name = os.path.basename(os.path.normpath(path))
  return name[:-4] if name.endswith(".npz") else name


def _preparation_hint(name: str, root: str, searched: str) -> str:
  return (
      f"TFDS dataset {name!r} is not prepared in array_record format under data_dir "
      f"{root!r} (data.tfds_data_dir; searched {searched}). Nothing is downloaded here; "
      f"prepare it offline from the original archives with:\n"
      f"  import tensorflow_datasets as tfds\n"
      f"  tfds.builder({name!r}, data_dir={root!r}, file_format='array_record')"
      f".download_and_prepare(\n"
      f"      download_config=tfds.download.DownloadConfig("
      f"manual_dir='<dir with the original archives>'))")


def _one_line(error: BaseException, limit: int = 300) -> str:
  """'Type: message' on one line, cut to `limit` characters (library messages can be long)."""
  text = " ".join(f"{type(error).__name__}: {error}".split()).rstrip(":")
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _damaged(name: str, root: str, where: str, detail: str) -> DataError:
  """The error for a prepared TFDS dataset that exists but cannot be read back whole."""
  return DataError(
      f"data.tfds_data_dir: the prepared TFDS dataset {name!r} in {where} is damaged "
      f"({detail}); delete {where} and prepare it again in array_record format: "
      f"tfds.builder({name!r}, data_dir={root!r}, file_format='array_record')"
      ".download_and_prepare(download_config=tfds.download.DownloadConfig("
      "manual_dir='<dir with the original archives>')).")


def _check_record_counts(name: str, root: str, where: str, split: str, info) -> None:
  """Every array_record file of `split` must open and hold the records dataset_info.json lists.

  The data source reads the record counts of dataset_info.json, not of the files: a file
  that is missing or truncated would otherwise fail somewhere inside the first read, and
  one holding more records than listed (a file from another preparation) would be read
  short without any error.
  """
  # Imported here, like TFDS: tfds.data_source reads array_record files with it.
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  for instruction in info.splits[split].file_instructions:
    file = os.path.basename(os.fspath(instruction.filename))
    try:
      reader = array_record_module.ArrayRecordReader(os.fspath(instruction.filename))
      count = reader.num_records() if reader.ok() else None
      reader.close()  # raises the reason when the reader is not ok
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(name, root, where, f"{file} cannot be read as an ArrayRecord file: "
                     f"{_one_line(e)}") from e
    if count != instruction.examples_in_shard:
      raise _damaged(name, root, where, f"{file} holds {count} records but dataset_info.json "
                     f"lists {instruction.examples_in_shard}")


def load_tfds_split(name: str, split: str, data_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
  """Reads one split of a prepared TFDS dataset completely into memory.

  Args:
    name: one of TFDS_FEATURES ('mnist', 'fashion_mnist', 'cifar10', 'cifar100').
    split: 'train' or 'test'.
    data_dir: TFDS data_dir; '' means TFDS's default.

  Returns:
    (x [N, H, W, C] uint8, y [N] int64), in TFDS's stored order.

  Raises:
    DataError: unknown name; the dataset is not prepared as array_record there; or it is
      damaged (unreadable dataset_info.json, a split missing from it, a missing, truncated
      or corrupted array_record file, records that do not decode, labels outside the
      dataset's classes). The damage message names data.tfds_data_dir, the folder and,
      where known, the file, and says how to prepare the dataset again.
  """
  if name not in TFDS_FEATURES:
    raise DataError(f"data.name: {name!r} is not one of {sorted(TFDS_FEATURES)}.")
  # Imported here: the synthetic and npz paths should not pay for importing TFDS.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # TFDS, array_record, protobuf and PIL raise many unrelated exception types for damaged
  # files (RuntimeError, ParseError, DecodeError, AssertionError, UnidentifiedImageError,
  # ValueError, ...), so each step below turns any exception but MemoryError into a
  # DataError that says which dataset is damaged.
  root = data_dir or os.fspath(tfds.core.constants.DATA_DIR)
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Building reads <root>/<name>/<version>/dataset_info.json when it exists.
    raise _damaged(name, root, os.path.join(root, name),
                   f"its dataset_info.json cannot be read: {_one_line(e)}") from e
  searched = os.fspath(builder.data_dir)
  # builder.data_dir is <root>/<name>/<version> for these config-less datasets.
  root = data_dir or os.path.dirname(os.path.dirname(searched))
  if not builder.is_prepared():
    raise DataError(_preparation_hint(name, root, searched))
  try:
    sources = tfds.data_source(name, data_dir=data_dir or None, download=False)
  except (NotImplementedError, FileNotFoundError) as e:
    # NotImplementedError: prepared as tfrecord, which has no random access.
    raise DataError(_preparation_hint(name, root, searched)) from e
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # The data source turns dataset_info.json's splits into file instructions here.
    raise _damaged(name, root, searched, "its splits cannot be opened as dataset_info.json "
                   f"describes them: {_one_line(e)}") from e
  if split not in sources:
    raise _damaged(name, root, searched, f"its dataset_info.json lists no split {split!r}, "
                   f"only {sorted(sources)}")
  _check_record_counts(name, root, searched, split, builder.info)
  source = sources[split]
  image_key, label_key = TFDS_FEATURES[name]
  files = ", ".join(os.path.basename(os.fspath(f.filename))
                    for f in builder.info.splits[split].file_instructions)
  try:
    # One batched read decodes every record; per-index access is several times slower.
    # The files are opened here, lazily, so this is where most damage shows.
    examples = source.__getitems__(list(range(len(source))))
    x = np.stack([ex[image_key] for ex in examples]).astype(np.uint8, copy=False)
    y = np.asarray([ex[label_key] for ex in examples], dtype=np.int64)
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _damaged(name, root, searched,
                   f"reading split {split!r} from {files} failed: {_one_line(e)}") from e
  num_classes = builder.info.features[label_key].num_classes
  outside = (y < 0) | (y >= num_classes)
  if outside.any():
    raise _damaged(name, root, searched, f"split {split!r} ({files}) holds "
                   f"{np.count_nonzero(outside)} label(s) outside the {num_classes} classes "
                   f"of {name!r}, e.g. {y[outside][0]}")
  return x, y


@functools.lru_cache(maxsize=2)
def load_tfds(name: str, data_dir: str = "") -> ArrayDataset:
  """Loads the train and test splits of a prepared TFDS dataset (array_record).

  Decoding a whole dataset takes seconds (MNIST: ~8 s on 2 cores), so the last two
  datasets loaded stay cached in the process: a notebook or sweep comparing methods on
  the same data decodes it once. The arrays are never modified downstream.

  Args:
    name: one of TFDS_FEATURES.
    data_dir: TFDS data_dir; '' means TFDS's default.

  Returns:
    The dataset with uint8 images [N, H, W, C] and int64 labels.

  Raises:
    DataError: see `load_tfds_split`; also when the two splits do not make a valid
      dataset (see `ArrayDataset.from_arrays`), which for prepared data means damage.
  """
  x_train, y_train = load_tfds_split(name, "train", data_dir)
  x_test, y_test = load_tfds_split(name, "test", data_dir)
  try:
    dataset = ArrayDataset.from_arrays(name, x_train, y_train, x_test, y_test)
  except DataError as e:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    where = os.fspath(tfds.builder(name, data_dir=data_dir or None).data_dir)
    root = data_dir or os.path.dirname(os.path.dirname(where))
    raise _damaged(name, root, where, str(e).rstrip(".")) from e
  for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
    array.setflags(write=False)  # shared through the cache: nobody may write to it
  return dataset
