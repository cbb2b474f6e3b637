"""The privacy study's primitives against known answers: distance correlation, label
inference from cut-layer gradients and its AUC, and the PSNR and SSIM of reconstructions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax.privacy import image_metrics, label_inference
from mtsl_jax.distance_correlation import distance_correlation


def _dcor_by_loops(x: np.ndarray, z: np.ndarray) -> float:
  """dCor of scalar samples written out from the double-centring formula (float64)."""
  n = len(x)

  def centred(v):
    a = [[abs(v[i] - v[j]) for j in range(n)] for i in range(n)]
    row = [sum(a[i]) / n for i in range(n)]
    col = [sum(a[i][j] for i in range(n)) / n for j in range(n)]
    grand = sum(row) / n
    return [[a[i][j] - row[i] - col[j] + grand for j in range(n)] for i in range(n)]

  a, b = centred(x), centred(z)
  mean = lambda p, q: sum(p[i][j] * q[i][j] for i in range(n) for j in range(n)) / n ** 2
  return float(np.sqrt(mean(a, b) / np.sqrt(mean(a, a) * mean(b, b))))


def test_distance_correlation_matches_the_formula_by_hand():
  x = np.array([0.0, 1.0, 3.0, 7.0])
  z = np.array([1.0, -2.0, 0.5, 4.0])
  expected = _dcor_by_loops(x, z)
  assert 0.1 < expected < 0.99  # a case that is neither trivial end
  np.testing.assert_allclose(distance_correlation(x, z), expected, rtol=1e-5)
  # Examples with feature shapes are flattened: [4, 1, 1] is the same data.
  np.testing.assert_allclose(distance_correlation(x.reshape(4, 1, 1), z), expected, rtol=1e-5)


def test_distance_correlation_ends_of_its_range():
  x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
  np.testing.assert_allclose(distance_correlation(x, 3 * x + 1), 1.0, atol=1e-5)
  np.testing.assert_allclose(distance_correlation(x, x), 1.0, atol=1e-5)
  assert float(distance_correlation(x, np.full((20, 2), 5.0))) == 0.0
  # Independent samples: only the V-statistic's small-sample bias (~0.07 here) is left.
  rng = np.random.default_rng(1)
  assert float(distance_correlation(rng.normal(size=500), rng.normal(size=500))) < 0.15
  with pytest.raises(ValueError, match="same number"):
    distance_correlation(x, x[:5])


def test_distance_correlation_gradient_is_finite_with_duplicate_examples():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3)), jnp.float32)
  x = x.at[1].set(x[0])  # two identical examples: a distance of exactly 0 off the diagonal
  grad_x = jax.jit(jax.grad(distance_correlation))(x, jnp.tanh(x))
  assert bool(jnp.all(jnp.isfinite(grad_x))) and bool(jnp.any(grad_x != 0))
  # Constant z (variance 0): the penalty is 0 with a zero, not NaN, gradient.
  grad_const = jax.grad(distance_correlation)(x, jnp.ones((6, 2)))
  assert bool(jnp.all(grad_const == 0))


def test_distance_correlation_vmaps_over_clients():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 8, 2, 2)).astype(np.float32)  # 3 clients, 8 examples each
  z = (x.reshape(3, 8, 4) @ rng.normal(size=(4, 5)) + rng.normal(size=(3, 8, 5))
       ).astype(np.float32)
  batched = jax.vmap(distance_correlation)(x, z)
  looped = [distance_correlation(x[k], z[k]) for k in range(3)]
  np.testing.assert_allclose(batched, looped, rtol=1e-5)


def _head_gradients(activations: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                    bias: np.ndarray) -> np.ndarray:
  """Per-example gradients of softmax cross-entropy w.r.t. a linear head's input."""

  def loss(h):
    logits = h @ weights + bias
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)
    return -jnp.sum(picked)  # a sum, so row i of the gradient is example i's alone

  return np.asarray(jax.grad(loss)(jnp.asarray(activations)))


def test_cosine_attack_separates_two_classes_exactly():
  # The gradient w.r.t. the logits is p - onehot(y): p1 (-1, 1) for class 0 and
  # p0 (1, -1) for class 1, opposite for any p. Through the head the gradient w.r.t. its
  # input is W (p - onehot(y)), a positive or negative multiple of W[:, 1] - W[:, 0].
  rng = np.random.default_rng(4)
  n, width = 40, 6
  h = rng.normal(size=(n, width)).astype(np.float32)
  labels = rng.integers(0, 2, size=n)
  grads = _head_gradients(h, labels, rng.normal(size=(width, 2)).astype(np.float32),
                          np.zeros(2, np.float32))
  known = {0: int(np.flatnonzero(labels == 0)[0]), 1: int(np.flatnonzero(labels == 1)[0])}
  result = label_inference.cosine_attack_auc(grads, labels, known)
  assert result == {"per_class": {0: 1.0, 1: 1.0}, "mean": 1.0}


def test_norm_attack_finds_the_minority_class():
  # A head biased to class 0 (bias logits +3 / -3, small weights): p0 is about 0.998 for
  # every example. Majority (class 0) examples then have logit gradients of norm
  # sqrt(2) p1 ~ 0.003, minority ones sqrt(2) p0 ~ 1.4, and the head's fixed linear map
  # scales both alike: the minority has the large norms.
  rng = np.random.default_rng(5)
  n, width = 200, 4
  labels = (rng.random(n) < 0.1).astype(np.int32)  # about 10% minority (class 1)
  h = rng.normal(size=(n, width)).astype(np.float32)
  grads = _head_gradients(h, labels, 0.1 * rng.normal(size=(width, 2)).astype(np.float32),
                          np.array([3.0, -3.0], np.float32))
  assert label_inference.norm_attack_auc(grads, labels, positive_class=1) > 0.9
  with pytest.raises(ValueError, match="positive_class"):
    label_inference.norm_attack_auc(grads, labels, positive_class=7)


def test_attacks_on_pure_noise_are_at_chance():
  rng = np.random.default_rng(6)
  grads = rng.normal(size=(2000, 8))
  labels = rng.integers(0, 2, size=2000)
  assert abs(label_inference.norm_attack_auc(grads, labels, positive_class=1) - 0.5) < 0.1
  known = {0: int(np.flatnonzero(labels == 0)[0]), 1: int(np.flatnonzero(labels == 1)[0])}
  result = label_inference.cosine_attack_auc(grads, labels, known)
  assert abs(result["mean"] - 0.5) < 0.1


def test_auc_by_hand_with_ties():
  # Positive 0.35 beats 0.1, loses to 0.4; positive 0.8 beats both: 3 of 4 pairs.
  assert label_inference.auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
  assert label_inference.auc([1.0, 1.0, 1.0, 1.0], [False, True, False, True]) == 0.5
  # Pairs: (0.5, 0.5) a tie, half; (0.9, 0.5) a win: 1.5 of 2.
  assert label_inference.auc([0.5, 0.5, 0.9], [0, 1, 1]) == 0.75


def test_scores_and_bad_inputs():
  grads = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
  np.testing.assert_allclose(label_inference.norm_scores(grads), [5.0, 0.0, 1.0])
  np.testing.assert_allclose(label_inference.cosine_scores(grads, np.array([1.0, 0.0])),
                             [0.6, 0.0, -1.0])
  with pytest.raises(ValueError, match="positives"):
    label_inference.auc([0.1, 0.2], [True, True])
  with pytest.raises(ValueError, match="positives"):
    label_inference.auc([0.1, 0.2], [True])
  with pytest.raises(ValueError, match="positives"):
    label_inference.auc([0.1, 0.2], [0, 2])
  with pytest.raises(ValueError, match="scores"):
    label_inference.auc([0.1, float("nan")], [True, False])
  with pytest.raises(ValueError, match="reference"):
    label_inference.cosine_scores(grads, np.ones(3))
  with pytest.raises(ValueError, match="labels"):
    label_inference.norm_attack_auc(grads, [0, 1], positive_class=1)
  with pytest.raises(ValueError, match=r"known\[1\]"):
    label_inference.cosine_attack_auc(grads, np.array([0, 1, 1]), {1: 0})
  with pytest.raises(ValueError, match=r"known\[0\]"):
    label_inference.cosine_attack_auc(grads, np.array([0, 1, 1]), {0: 3})


def test_psnr_of_exact_and_known_errors():
  x = np.zeros((2, 4, 4, 3))
  assert np.all(np.isinf(image_metrics.psnr(x, x, data_range=1.0)))
  # Errors of 0.1 everywhere: MSE 0.01, 10 log10(1 / 0.01) = 20 dB; 0.2: 13.979 dB.
  y = x + np.array([0.1, 0.2]).reshape(2, 1, 1, 1)
  np.testing.assert_allclose(image_metrics.psnr(x, y, data_range=1.0),
                             [20.0, 10 * np.log10(25.0)], rtol=1e-12)
  with pytest.raises(ValueError, match="data_range"):
    image_metrics.psnr(x, y, data_range=0.0)
  with pytest.raises(ValueError, match="reconstruction"):
    image_metrics.psnr(x, y[:1], data_range=1.0)


def test_ssim_against_itself_noise_and_offsets():
  rng = np.random.default_rng(7)
  x = rng.random((2, 24, 24, 3))
  np.testing.assert_allclose(image_metrics.ssim(x, x, data_range=1.0), 1.0, atol=1e-12)
  # Independent noise keeps the means and variances but has no structure in common.
  assert np.all(image_metrics.ssim(x, rng.random(x.shape), data_range=1.0) < 0.1)
  noisy = image_metrics.ssim(x, x + 0.05 * rng.normal(size=x.shape), data_range=1.0)
  assert np.all((0.5 < noisy) & (noisy < 1.0))
  # An offset leaves variances and covariance as they are: only the luminance term falls.
  offsets = [image_metrics.ssim(x, x + c, data_range=1.0)[0] for c in (0.0, 0.1, 0.3, 0.6)]
  assert offsets[0] == pytest.approx(1.0) and np.all(np.diff(offsets) < 0)
  with pytest.raises(ValueError, match="11x11"):
    image_metrics.ssim(x[:, :10], x[:, :10], data_range=1.0)
