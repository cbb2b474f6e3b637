"""Whole datasets loaded once into host numpy, and their float32 preprocessing.

A source is read completely into memory as an `ArrayDataset` (raw dtypes: images stay
uint8), before any partitioning. Everything downstream (partitioners, transforms, the
device copy) works on these arrays, so the input pipeline has no per-step host work.

TFDS datasets are read with `tfds.data_source`, which needs the dataset prepared in
array_record format and never touches the network here (`download=False`).
"""

import dataclasses
import functools
import os
import zipfile

import numpy as np

# Datasets `load_tfds` knows how to read: name -> (image feature, label feature).
# CIFAR-100 uses its fine labels ('label'), not 'coarse_label'.
TFDS_FEATURES = {
    "mnist": ("image", "label"),
    "fashion_mnist": ("image", "label"),
    "cifar10": ("image", "label"),
    "cifar100": ("image", "label"),
}


class DataError(Exception):
  """A dataset cannot be loaded or federated as configured; the message says how to fix it."""


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

  @functools.cached_property
  def standardizer(self) -> "Standardizer":
    """Statistics of x_train, fitted once per dataset object (seconds for 60000 images).

    Datasets from `load_tfds` are cached, so runs after the first in a process (seeds,
    sweeps, the comparison) reuse the fit.
    """
    return Standardizer.fit(self.x_train)

  @classmethod
  def from_arrays(cls, name: str, x_train, y_train, x_test, y_test) -> "ArrayDataset":
    """Validates raw arrays and builds a dataset whose num_classes is max label + 1.

    Args:
      name: the dataset's name (used in messages).
      x_train: [N, ...] inputs.
      y_train: [N] integer labels >= 0.
      x_test: [N_test, ...] inputs, same trailing shape as x_train.
      y_test: [N_test] integer labels >= 0.

    Returns:
      The validated ArrayDataset, labels as int64. uint8 inputs of shape [N, H, W] get a
      trailing channel axis, so that every uint8 image is [N, H, W, C].

    Raises:
      DataError: on non-integer or negative labels, lengths that do not match, inputs
        without a leading example axis, or train and test input shapes that differ.
    """
    arrays = dict(x_train=np.asarray(x_train), y_train=np.asarray(y_train),
                  x_test=np.asarray(x_test), y_test=np.asarray(y_test))
    for split in ("train", "test"):
      x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
      if y.dtype.kind not in "iu":
        raise DataError(f"{name}: y_{split} must hold integer class ids, got dtype {y.dtype}.")
      if y.ndim != 1:
        raise DataError(f"{name}: y_{split} must have shape [N], got {y.shape}.")
      if x.ndim < 2:
        raise DataError(f"{name}: x_{split} must have shape [N, ...features], got {x.shape}.")
      if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: x_{split} has {x.shape[0]} examples but y_{split} has "
                        f"{y.shape[0]}.")
      if x.dtype.kind not in "uif":
        raise DataError(f"{name}: x_{split} must be numeric, got dtype {x.dtype}.")
      if y.size and y.min() < 0:
        raise DataError(f"{name}: y_{split} has negative labels.")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
      raise DataError(f"{name}: train inputs have shape {arrays['x_train'].shape[1:]} but "
                      f"test inputs {arrays['x_test'].shape[1:]}.")
    if arrays["y_train"].size == 0:
      raise DataError(f"{name}: the train split is empty.")
    for split in ("train", "test"):
      x = arrays[f"x_{split}"]
      if x.dtype == np.uint8 and x.ndim == 3:  # Grayscale without a channel axis.
        arrays[f"x_{split}"] = x[..., None]
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    return cls(x_train=arrays["x_train"], y_train=arrays["y_train"].astype(np.int64),
               x_test=arrays["x_test"], y_test=arrays["y_test"].astype(np.int64),
               num_classes=int(labels.max()) + 1, name=name)


def load_npz(path: str) -> ArrayDataset:
  """Loads a dataset from an .npz file holding x_train, y_train, x_test and y_test.

  Args:
    path: the .npz file.

  Returns:
    The dataset, named after the file (without '.npz').

  Raises:
    DataError: for a missing or unreadable file, a missing array, or bad shapes/labels.
  """
  if not path or not os.path.isfile(path):
    raise DataError(f"data.npz_path: no file at {path!r}.")
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz.files]
      if missing:
        raise DataError(f"data.npz_path: {path} lacks array(s) {', '.join(missing)}; it "
                        f"has {', '.join(npz.files) or 'none'}.")
      arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # Corrupt or pickled.
    raise DataError(f"data.npz_path: cannot read {path} as .npz: {e}") from e
  name = os.path.basename(path)
  name = name[:-4] if name.endswith(".npz") else name
  try:
    return ArrayDataset.from_arrays(name, **arrays)
  except DataError as e:  # say which file and which config field
    raise DataError(f"data.npz_path: {path}: {e}") from e


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


def load_tfds_split(name: str, split: str, data_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
  """Reads one split of a prepared TFDS dataset completely into memory.

  Args:
    name: one of TFDS_FEATURES ('mnist', 'fashion_mnist', 'cifar10', 'cifar100').
    split: 'train' or 'test'.
    data_dir: TFDS data_dir; '' means TFDS's default.

  Returns:
    (x [N, H, W, C] uint8, y [N] int64), in TFDS's stored order.

  Raises:
    DataError: unknown name, or the dataset is not prepared as array_record there.
  """
  if name not in TFDS_FEATURES:
    raise DataError(f"data.name: {name!r} is not one of {sorted(TFDS_FEATURES)}.")
  # Imported here: the synthetic and npz paths should not pay for importing TFDS.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir or None)
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
  if split not in sources:
    raise DataError(f"TFDS dataset {name!r} has no split {split!r} (has {sorted(sources)}).")
  source = sources[split]
  image_key, label_key = TFDS_FEATURES[name]
  # One batched read decodes every record; per-index access is several times slower.
  examples = source.__getitems__(list(range(len(source))))
  x = np.stack([ex[image_key] for ex in examples]).astype(np.uint8, copy=False)
  y = np.asarray([ex[label_key] for ex in examples], dtype=np.int64)
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
    DataError: see `load_tfds_split`.
  """
  x_train, y_train = load_tfds_split(name, "train", data_dir)
  x_test, y_test = load_tfds_split(name, "test", data_dir)
  dataset = ArrayDataset.from_arrays(name, x_train, y_train, x_test, y_test)
  for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
    array.setflags(write=False)  # shared through the cache: nobody may write to it
  return dataset


# ---- preprocessing to float32 ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)  # Arrays have no boolean ==.
class Standardizer:
  """Maps raw inputs to float32 with statistics fitted on one train set.

  uint8 inputs are images: scaled to [0, 1], then standardized per channel (last axis).
  Other inputs are features: standardized per feature. Scaling (`to_unit`) and
  standardizing (`standardize`) are separate so that geometric transforms can run in
  pixel space, where zero is black, between the two.

  Attributes:
    is_image: whether the raw inputs were uint8.
    mean: broadcastable to one example.
    std: broadcastable to one example, zeros replaced by 1.
  """
  is_image: bool
  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, x_train: np.ndarray) -> "Standardizer":
    """Fits the statistics on a raw train set [N, ...]."""
    is_image = x_train.dtype == np.uint8
    x = _to_unit(x_train, is_image)
    # float64 accumulation: float32 sums over ~1e8 pixels lose digits.
    axes = tuple(range(x.ndim - 1)) if is_image else (0,)
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    # A constant feature (e.g. an always-black border pixel) would divide by zero.
    std = np.where(std > 1e-8, std, 1.0)
    return cls(is_image=is_image, mean=mean.astype(np.float32), std=std.astype(np.float32))

  def to_unit(self, x: np.ndarray) -> np.ndarray:
    """Raw -> float32; images scaled to [0, 1]."""
    return _to_unit(x, self.is_image)

  def standardize(self, x_unit: np.ndarray) -> np.ndarray:
    """Output of `to_unit` -> zero mean, unit std under the train statistics."""
    return ((x_unit - self.mean) / self.std).astype(np.float32, copy=False)


def _to_unit(x: np.ndarray, is_image: bool) -> np.ndarray:
  if is_image:
    return x.astype(np.float32) / np.float32(255.0)
  return x.astype(np.float32, copy=False)
