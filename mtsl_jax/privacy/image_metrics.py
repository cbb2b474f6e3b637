"""How close a reconstructed input is to the original: PSNR and SSIM per image.

Images are [n, H, W, C] arrays on a known value range L (`data_range`, e.g. 1 for [0, 1]
pixels, 255 for bytes); both metrics are computed in float64 with numpy, one value per
image.

  * PSNR = 10 log10(L^2 / MSE) dB, MSE the mean squared error over the image's pixels and
    channels; infinite for an exact reconstruction.
  * SSIM (Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error
    visibility to structural similarity", IEEE TIP 2004): in a window around each pixel,
    with local means mu, variances sigma^2 and covariance sigma_xy taken under an 11x11
    Gaussian weighting (sigma 1.5),

      SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)
             (sigma_x^2 + sigma_y^2 + C2)),   C1 = (0.01 L)^2, C2 = (0.03 L)^2,

    the product of a luminance term (the means) and a contrast-structure term (the
    variances and covariance). The map is computed per channel over the 'valid' windows
    only (no padding, so (H - 10) x (W - 10) of them) and averaged over windows and
    channels. It is 1 for identical images and near 0 for unrelated ones.
"""

import numpy as np

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _image_pair(reference: np.ndarray, reconstruction: np.ndarray,
                data_range: float) -> tuple[np.ndarray, np.ndarray]:
  """Both image batches as float64 [n, H, W, C]; ValueError for bad shapes or range."""
  x = np.asarray(reference, np.float64)
  y = np.asarray(reconstruction, np.float64)
  if x.ndim != 4:
    raise ValueError(f"reference must be images [n, H, W, C], got shape {x.shape}")
  if y.shape != x.shape:
    raise ValueError(f"reconstruction must have the reference's shape {x.shape}, got "
                     f"shape {y.shape}")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError("reference and reconstruction must be finite")
  if not (np.isfinite(data_range) and data_range > 0):
    raise ValueError(f"data_range must be a finite number > 0, got {data_range}")
  return x, y


def psnr(reference: np.ndarray, reconstruction: np.ndarray, data_range: float) -> np.ndarray:
  """The peak signal-to-noise ratio of each reconstructed image, in dB.

  Args:
    reference: [n, H, W, C] the original images.
    reconstruction: [n, H, W, C] their reconstructions.
    data_range: L, the span of pixel values (e.g. 1.0 or 255.0).

  Returns:
    float64 [n]: 10 log10(L^2 / MSE) per image, inf where the reconstruction is exact.

  Raises:
    ValueError: images not [n, H, W, C], shapes that differ, non-finite pixels, or a
      data_range that is not > 0.
  """
  x, y = _image_pair(reference, reconstruction, data_range)
  mse = np.mean((x - y) ** 2, axis=(1, 2, 3))
  with np.errstate(divide="ignore"):  # MSE 0 is an exact reconstruction: inf, on purpose
    return 10.0 * np.log10(data_range ** 2 / mse)


def _gaussian_window() -> np.ndarray:
  """The normalised 1-D Gaussian weights; their outer product is the 2-D window."""
  offsets = np.arange(WINDOW) - (WINDOW - 1) / 2
  w = np.exp(-offsets ** 2 / (2 * SIGMA ** 2))
  return w / w.sum()


def _filter(images: np.ndarray) -> np.ndarray:
  """The Gaussian-weighted mean over every valid 11x11 window of images [n, H, W, C]."""
  w = _gaussian_window()
  # The 2-D Gaussian is separable: filtering rows then columns with the 1-D weights is the
  # same weighted mean at 2 * 11 instead of 121 multiplications per pixel.
  rows = np.lib.stride_tricks.sliding_window_view(images, WINDOW, axis=1) @ w
  return np.lib.stride_tricks.sliding_window_view(rows, WINDOW, axis=2) @ w


def ssim(reference: np.ndarray, reconstruction: np.ndarray, data_range: float) -> np.ndarray:
  """The mean structural similarity of each reconstructed image (see the module docstring).

  Args:
    reference: [n, H, W, C] the original images, H and W at least 11.
    reconstruction: [n, H, W, C] their reconstructions.
    data_range: L, the span of pixel values (e.g. 1.0 or 255.0).

  Returns:
    float64 [n]: the SSIM map averaged over valid windows and channels, at most 1 (1 for
    identical images).

  Raises:
    ValueError: what `psnr` refuses, or images smaller than the 11x11 window.
  """
  x, y = _image_pair(reference, reconstruction, data_range)
  if x.shape[1] < WINDOW or x.shape[2] < WINDOW:
    raise ValueError(f"reference must be at least {WINDOW}x{WINDOW} pixels for the SSIM "
                     f"window, got {x.shape[1]}x{x.shape[2]}")
  c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
  mu_x, mu_y = _filter(x), _filter(y)
  var_x = _filter(x * x) - mu_x ** 2
  var_y = _filter(y * y) - mu_y ** 2
  cov = _filter(x * y) - mu_x * mu_y
  luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
  contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
  return np.mean(luminance * contrast_structure, axis=(1, 2, 3))
