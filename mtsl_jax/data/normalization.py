"""Input normalization: raw inputs to the float32 arrays the model sees (`data.normalization`).

The statistics are fitted once per dataset on its pooled train inputs (every client's,
before any split; for user-given splits, all clients' train inputs together), and the
same map is applied to every client's train and test inputs:

  'auto'         uint8 inputs (images): scaled to [0, 1], then standardized per channel;
                 other inputs: standardized per feature. What every run did before the
                 choice existed, and the default: it keeps those runs byte-identical.
  'none'         the inputs as given, cast to float32 (uint8 images stay 0..255).
  'scale_-1_1'   mapped affinely onto [-1, 1]: uint8 images as (x / 255 - 0.5) / 0.5 (as
                 torchvision's Normalize(0.5, 0.5) after ToTensor), other inputs by the
                 train minimum and maximum over all entries.
  'per_channel'  zero mean and unit std per channel (the last axis), over examples and
                 positions.
  'per_pixel'    zero mean and unit std per input entry (pixel and channel, or feature),
                 over examples.

Every mode but 'none' scales uint8 inputs to [0, 1] first (`to_unit`), which is where
geometric transforms run (zero is black), and standardizes after (`standardize`).
Synthetic data are used as drawn ('auto' and 'none' both mean that; validation refuses
the others for it).
"""

import dataclasses

import numpy as np

from mtsl_jax.errors import DataError

NORMALIZATIONS = ("auto", "none", "scale_-1_1", "per_channel", "per_pixel")
# A constant input entry (e.g. an always-black border pixel) would divide by zero.
_MIN_STD = 1e-8


@dataclasses.dataclass(frozen=True, eq=False)  # Arrays have no boolean ==.
class Standardizer:
  """Maps raw inputs to float32: `(to_unit(x) - mean) / std`, fitted on one train set.

  Scaling (`to_unit`) and standardizing (`standardize`) are separate so that geometric
  transforms can run in pixel space, where zero is black, between the two.

  Attributes:
    is_image: whether the raw inputs were uint8 (`to_unit` divides them by 255).
    mean: broadcastable to one example.
    std: broadcastable to one example, values below 1e-8 replaced by 1.
  """
  is_image: bool
  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, x_train: np.ndarray, mode: str = "auto") -> "Standardizer":
    """Fits the statistics of `mode` on a raw train set [N, ...].

    Args:
      x_train: the pooled raw train inputs.
      mode: one of NORMALIZATIONS but 'none' (see the module docstring).

    Returns:
      The fitted Standardizer.
    """
    is_image = x_train.dtype == np.uint8
    if mode == "auto":
      mode = "per_channel" if is_image else "per_pixel"
    x = _to_unit(x_train, is_image)
    if mode == "scale_-1_1":
      # uint8 images are [0, 1] by construction, whatever the train set's extremes.
      lo, hi = (0.0, 1.0) if is_image else (float(x.min()), float(x.max()))
      mean, std = np.float64((lo + hi) / 2), np.float64((hi - lo) / 2)
    elif mode in ("per_channel", "per_pixel"):
      axes = tuple(range(x.ndim - 1)) if mode == "per_channel" else (0,)
      # float64 accumulation: float32 sums over ~1e8 pixels lose digits.
      mean = x.mean(axis=axes, dtype=np.float64)
      std = x.std(axis=axes, dtype=np.float64)
    else:
      raise DataError(f"data.normalization: {mode!r} has no statistics to fit.")
    std = np.where(std > _MIN_STD, std, 1.0)
    return cls(is_image=is_image, mean=np.asarray(mean, np.float32),
               std=np.asarray(std, np.float32))

  def to_unit(self, x: np.ndarray) -> np.ndarray:
    """Raw -> float32; images scaled to [0, 1]."""
    return _to_unit(x, self.is_image)

  def standardize(self, x_unit: np.ndarray) -> np.ndarray:
    """Output of `to_unit` -> `(x_unit - mean) / std`, float32."""
    return ((x_unit - self.mean) / self.std).astype(np.float32, copy=False)


def fit(x_train: np.ndarray, mode: str) -> Standardizer | None:
  """The normalizer `mode` names, fitted on `x_train`.

  Args:
    x_train: the pooled raw train inputs [N, ...].
    mode: one of NORMALIZATIONS.

  Returns:
    A Standardizer, or None for 'none' (inputs are only cast to float32).
  """
  if mode not in NORMALIZATIONS:
    raise DataError(f"data.normalization must be one of {NORMALIZATIONS}, got {mode!r}.")
  return None if mode == "none" else Standardizer.fit(x_train, mode)


def _to_unit(x: np.ndarray, is_image: bool) -> np.ndarray:
  if is_image:
    return x.astype(np.float32) / np.float32(255.0)
  return x.astype(np.float32, copy=False)
