"""Tests for mtsl_jax.data: known answers for sources, partitions, transforms, sampling."""

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import config_base
from mtsl_jax import data
from mtsl_jax.data import normalization
from mtsl_jax.data import partition as part
from mtsl_jax.data import sources
from mtsl_jax.data import synthetic

TFDS_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tfds"


def _data_config(**overrides):
  cfg = config_base.base_config().data
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _image_dataset(per_class=40, num_classes=10, shape=(8, 8, 1), name="toy", seed=0):
  """Balanced uint8 images; class k's test set is a quarter of its train set's size."""
  rng = np.random.default_rng(seed)
  y_train = np.repeat(np.arange(num_classes), per_class)
  y_test = np.repeat(np.arange(num_classes), per_class // 4)
  x_train = rng.integers(0, 256, (y_train.size,) + shape, dtype=np.uint8)
  x_test = rng.integers(0, 256, (y_test.size,) + shape, dtype=np.uint8)
  return data.ArrayDataset.from_arrays(name, x_train, y_train, x_test, y_test)


def _label_coded_dataset(per_class=40, num_classes=10):
  """Float features whose first entry is the label, so labels can be read back from x."""
  rng = np.random.default_rng(1)
  y_train = np.repeat(np.arange(num_classes), per_class)
  y_test = np.repeat(np.arange(num_classes), per_class // 4)
  x_train = np.stack([y_train, rng.normal(size=y_train.size)], 1).astype(np.float32)
  x_test = np.stack([y_test, rng.normal(size=y_test.size)], 1).astype(np.float32)
  return data.ArrayDataset.from_arrays("coded", x_train, y_train, x_test, y_test)


def _assert_federations_equal(a, b):
  for field in ("train_x", "train_y", "test_x", "test_y"):
    for u, v in zip(getattr(a, field), getattr(b, field)):
      np.testing.assert_array_equal(u, v)
  np.testing.assert_array_equal(a.num_classes, b.num_classes)


# ---- determinism ------------------------------------------------------------------------


def test_synthetic_federation_is_deterministic_in_seed():
  cfg = _data_config(feature_noise_std=0.1, label_noise_rate=0.1, label_permutation=True)
  _assert_federations_equal(data.build_federation(cfg, 3), data.build_federation(cfg, 3))
  other = data.build_federation(cfg, 4)
  assert not np.array_equal(other.train_x[0][:5], data.build_federation(cfg, 3).train_x[0][:5])


def test_dataset_federation_is_deterministic_in_seed():
  ds = _image_dataset()
  cfg = _data_config(partition="dirichlet", dirichlet_alpha=0.5, min_examples_per_client=5,
                     num_clients=4, rotation_step_degrees=30.0, feature_noise_std=0.2,
                     label_noise_rate=0.2, label_permutation=True, max_examples_per_client=60)
  a = data.build_federation_from_datasets([ds], cfg, 0)
  _assert_federations_equal(a, data.build_federation_from_datasets([ds], cfg, 0))
  b = data.build_federation_from_datasets([ds], cfg, 1)
  assert not all(np.array_equal(u, v) for u, v in zip(a.train_y, b.train_y))
  assert a.description == ("toy, dirichlet(0.5), 4 clients, <= 60 train examples/client, "
                           "permuted labels, rotation 30 deg/client, feature noise 0.2 "
                           "(constant), label noise 0.2 (constant)")


# ---- partitions -------------------------------------------------------------------------


def _assert_disjoint_cover(parts, n):
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def test_iid_and_dirichlet_use_every_example_once():
  labels = np.repeat(np.arange(5), 37)
  iid = part.partition_iid(labels, 6, np.random.default_rng(0))
  _assert_disjoint_cover(iid, labels.size)
  assert {p.size for p in iid} == {30, 31}  # 185 = 5 * 31 + 30.
  dirichlet = part.partition_dirichlet(labels, 6, 0.3, 3, np.random.default_rng(0))
  _assert_disjoint_cover(dirichlet, labels.size)
  assert min(p.size for p in dirichlet) >= 3


@pytest.mark.parametrize("alpha", [0.1, 10.0])
def test_dirichlet_share_variance_matches_dirichlet(alpha):
  # Client m's share of class k is Dir(alpha 1_M)_m, whose variance is
  # (1/M)(1 - 1/M)/(M alpha + 1). Averaged over 10 classes x 40 seeds the estimate's
  # standard error is ~2.3%, so 10% is a 4-sigma band.
  num_clients, labels = 10, np.repeat(np.arange(10), 1000)
  estimates = []
  for seed in range(40):
    parts = part.partition_dirichlet(labels, num_clients, alpha, 0, part.derive_rng(seed, 9, 0))
    counts = np.stack([np.bincount(labels[p], minlength=10) for p in parts])
    estimates.append((counts / counts.sum(axis=0)).var(axis=0).mean())
  expected = (1 / num_clients) * (1 - 1 / num_clients) / (num_clients * alpha + 1)
  assert np.mean(estimates) == pytest.approx(expected, rel=0.10)


def test_dirichlet_raises_when_min_examples_cannot_be_met():
  labels = np.repeat(np.arange(3), 10)
  with pytest.raises(data.DataError, match="data.min_examples_per_client"):
    part.partition_dirichlet(labels, 4, 0.5, 8, np.random.default_rng(0))  # 32 > 30.
  with pytest.raises(data.DataError, match="data.dirichlet_alpha"):
    part.partition_dirichlet(labels, 4, 0.01, 7, np.random.default_rng(0))


def test_shards_give_exactly_c_classes_with_balanced_counts():
  labels = np.repeat(np.arange(10), 100)
  parts = part.partition_shards(labels, 10, 2, np.random.default_rng(0))
  _assert_disjoint_cover(parts, labels.size)  # 10 x 2 = 20 slots: each class twice.
  for p in parts:
    assert np.unique(labels[p]).size == 2
    assert p.size == 100 and set(np.bincount(labels[p])[np.unique(labels[p])]) == {50}
  # Uneven case: 7 clients x 3 classes = 21 slots over 10 classes (2 or 3 holders each).
  parts = part.partition_shards(labels, 7, 3, np.random.default_rng(1))
  assert all(np.unique(labels[p]).size == 3 for p in parts)
  assert all(100 <= p.size <= 150 for p in parts)


def test_shards_errors_name_the_config_field():
  labels = np.repeat(np.arange(4), 2)
  with pytest.raises(data.DataError, match="data.classes_per_client"):
    part.partition_shards(labels, 2, 5, np.random.default_rng(0))
  with pytest.raises(data.DataError, match="data.classes_per_client"):
    part.partition_shards(labels, 8, 3, np.random.default_rng(0))  # 6 holders, 2 examples.


def test_test_allocation_exact_proportions_and_disjoint():
  train_labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])
  train_parts = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7])]  # [3, 1] and [1, 3].
  test_labels = np.array([0] * 4 + [1] * 8)
  tests = part.allocate_test_like_train(train_parts, train_labels, test_labels,
                                        np.random.default_rng(0))
  _assert_disjoint_cover(tests, test_labels.size)
  np.testing.assert_array_equal(np.bincount(test_labels[tests[0]]), [3, 2])
  np.testing.assert_array_equal(np.bincount(test_labels[tests[1]]), [1, 6])


def test_test_allocation_follows_dirichlet_train_proportions():
  rng = np.random.default_rng(0)
  train_labels, test_labels = np.repeat(np.arange(10), 600), np.repeat(np.arange(10), 200)
  parts = part.partition_dirichlet(train_labels, 5, 0.5, 50, rng)
  tests = part.allocate_test_like_train(parts, train_labels, test_labels, rng)
  _assert_disjoint_cover(tests, test_labels.size)
  for tr, te in zip(parts, tests):
    p_train = np.bincount(train_labels[tr], minlength=10) / tr.size
    p_test = np.bincount(test_labels[te], minlength=10) / te.size
    # Largest-remainder rounding is off by < 1 example per class.
    np.testing.assert_allclose(p_test, p_train, atol=10 / te.size)


def test_test_allocation_gives_every_client_a_test_example():
  train_labels = np.repeat(np.arange(2), 50)
  parts = [np.arange(99), np.array([99])]  # Client 1: one train example of class 1.
  tests = part.allocate_test_like_train(parts, train_labels, np.array([0, 1, 1]),
                                        np.random.default_rng(0))
  assert [t.size for t in tests] == [2, 1]


def test_cap_keeps_a_random_subset_of_train():
  ds = _label_coded_dataset()
  uncapped = data.build_federation_from_datasets([ds], _data_config(num_clients=4), 0)
  capped = data.build_federation_from_datasets(
      [ds], _data_config(num_clients=4, max_examples_per_client=30), 0)
  np.testing.assert_array_equal(capped.train_counts, [30] * 4)
  np.testing.assert_array_equal(capped.test_counts, uncapped.test_counts)
  for small, big in zip(capped.train_x, uncapped.train_x):
    rows = {tuple(r) for r in big}
    assert all(tuple(r) in rows for r in small)


def test_eval_cap_subsets_the_evaluated_split_only():
  ds = _label_coded_dataset()
  full = data.build_federation_from_datasets([ds], _data_config(num_clients=4), 0)
  capped = data.build_federation_from_datasets(
      [ds], _data_config(num_clients=4, max_eval_examples_per_client=7), 0)
  np.testing.assert_array_equal(capped.test_counts, np.minimum(full.test_counts, 7))
  for m in range(4):
    np.testing.assert_array_equal(capped.train_x[m], full.train_x[m])  # train untouched
    rows = {tuple(r) for r in full.test_x[m]}
    assert all(tuple(r) in rows for r in capped.test_x[m])
  again = data.build_federation_from_datasets(
      [ds], _data_config(num_clients=4, max_eval_examples_per_client=7), 0)
  _assert_federations_equal(capped, again)  # the same subset for every method of a seed


def test_validation_split_is_held_out_of_train_and_replaces_test_when_asked():
  ds = _label_coded_dataset()
  full = data.build_federation_from_datasets([ds], _data_config(num_clients=4), 0)
  held = data.build_federation_from_datasets(
      [ds], _data_config(num_clients=4, validation_fraction=0.25), 0)
  tuned = data.build_federation_from_datasets(
      [ds], _data_config(num_clients=4, validation_fraction=0.25, evaluate_on="validation"), 0)
  np.testing.assert_array_equal(held.train_counts, np.round(full.train_counts * 0.75))
  np.testing.assert_array_equal(held.test_counts, full.test_counts)  # test set untouched
  for m in range(4):
    np.testing.assert_array_equal(tuned.train_x[m], held.train_x[m])  # same training data
    train_rows = {tuple(r) for r in held.train_x[m]}
    val_rows = {tuple(r) for r in tuned.test_x[m]}
    all_rows = {tuple(r) for r in full.train_x[m]}
    assert not train_rows & val_rows and train_rows | val_rows == all_rows
  assert part.hold_out(np.arange(1), 0.5, np.random.default_rng(0))[0].size == 1


def test_federation_errors_name_the_config_field():
  ds = _image_dataset(per_class=2, num_classes=2)
  with pytest.raises(data.DataError, match="data.num_clients"):
    data.build_federation_from_datasets([ds], _data_config(num_clients=5), 0)
  with pytest.raises(data.DataError, match="data.min_examples_per_client"):
    data.build_federation_from_datasets([ds], _data_config(num_clients=2), 0)
  with pytest.raises(data.DataError, match="data.partition"):
    data.build_federation_from_datasets([ds], _data_config(partition="x", num_clients=1), 0)
  with pytest.raises(data.DataError, match="data.source"):
    data.build_federation(_data_config(source="csv"), 0)


def test_mixture_assigns_contiguous_groups_and_checks_shapes():
  a = _image_dataset(num_classes=3, name="a")
  b = _image_dataset(num_classes=5, name="b", seed=1)
  fed = data.build_federation_from_datasets([a, b], _data_config(num_clients=5), 0)
  np.testing.assert_array_equal(fed.num_classes, [3, 3, 3, 5, 5])
  assert fed.description.startswith("a+b, iid, 5 clients")
  np.testing.assert_array_equal(fed.train_counts, [40, 40, 40, 100, 100])
  c = _image_dataset(shape=(4, 4, 1), name="c")
  with pytest.raises(data.DataError, match="data.name"):
    data.build_federation_from_datasets([a, c], _data_config(num_clients=4), 0)


# ---- transforms -------------------------------------------------------------------------


def test_rotation_by_90_degrees_is_rot90_counter_clockwise():
  image = np.zeros((1, 5, 5, 1), np.float32)
  image[0, 0, 1] = 1.0  # Top row, left of centre: an asymmetric image.
  rotated = part.rotate_images(image, 90.0)
  np.testing.assert_allclose(rotated, np.rot90(image, 1, axes=(1, 2)), atol=1e-6)
  assert rotated[0, 3, 0, 0] == pytest.approx(1.0)  # Counter-clockwise: now left column.
  np.testing.assert_array_equal(part.rotate_images(image, 0.0), image)
  with pytest.raises(data.DataError, match="data.rotation_step_degrees"):
    part.rotate_images(np.zeros((3, 60), np.float32), 15.0)


def test_federation_rotation_is_m_times_step_in_pixel_space():
  ds = _image_dataset(per_class=8, num_classes=2, shape=(6, 6, 1))
  cfg = _data_config(num_clients=3, min_examples_per_client=1)
  plain = data.build_federation_from_datasets([ds], cfg, 0)
  cfg.rotation_step_degrees = 90.0
  turned = data.build_federation_from_datasets([ds], cfg, 0)
  for m in range(3):
    for split in ("train_x", "test_x"):
      np.testing.assert_allclose(getattr(turned, split)[m],
                                 np.rot90(getattr(plain, split)[m], m, axes=(1, 2)), atol=1e-5)


def test_noise_levels():
  np.testing.assert_allclose(part.noise_levels(0.3, "linear", 4), [0.0, 0.1, 0.2, 0.3])
  np.testing.assert_allclose(part.noise_levels(0.3, "linear", 1), [0.3])
  np.testing.assert_allclose(part.noise_levels(0.3, "constant", 2), [0.3, 0.3])
  with pytest.raises(data.DataError, match="data.noise_profile"):
    part.noise_levels(0.3, "cubic", 2)


def test_label_permutation_is_a_bijection_shared_by_train_and_test():
  ds = _label_coded_dataset()
  fed = data.build_federation_from_datasets(
      [ds], _data_config(num_clients=3, label_permutation=True), 0)
  stats = sources.Standardizer.fit(ds.x_train)
  non_identity = 0
  for m in range(3):
    mapping = {}
    for x, y in ((fed.train_x[m], fed.train_y[m]), (fed.test_x[m], fed.test_y[m])):
      original = np.rint(x[:, 0] * stats.std[0] + stats.mean[0]).astype(int)
      for o, new in zip(original, y):
        assert mapping.setdefault(o, new) == new  # One image per label: a function.
    assert sorted(mapping.values()) == list(range(10))  # All 10 classes seen: bijective.
    non_identity += any(k != v for k, v in mapping.items())
  assert non_identity == 3


def test_flip_labels_changes_exactly_round_rate_n_to_other_classes():
  y = np.repeat(np.arange(4), 250)
  flipped = part.flip_labels(y, 0.3, 4, np.random.default_rng(0))
  changed = flipped != y
  assert changed.sum() == 300
  # From each class the new label is uniform over the 3 others (~25 each of class 0's).
  new_of_class0 = np.bincount(flipped[changed & (y == 0)], minlength=4)
  assert new_of_class0[0] == 0 and new_of_class0[1:].min() > 10
  np.testing.assert_array_equal(part.flip_labels(y, 0.0, 4, np.random.default_rng(0)), y)


def test_label_and_feature_noise_in_federation():
  ds = _image_dataset()
  clean = data.build_federation_from_datasets([ds], _data_config(num_clients=3), 0)
  noisy = data.build_federation_from_datasets(
      [ds], _data_config(num_clients=3, label_noise_rate=0.5, feature_noise_std=0.2,
                         noise_profile="linear"), 0)
  # Linear profile: client 0 untouched, client 1 half the rate and std, client 2 all of it.
  for m, rate in enumerate([0.0, 0.25, 0.5]):
    n = clean.train_counts[m]
    assert np.sum(noisy.train_y[m] != clean.train_y[m]) == round(rate * n)
    np.testing.assert_array_equal(noisy.test_y[m], clean.test_y[m])  # Test stays clean.
    diff = noisy.train_x[m] - clean.train_x[m]
    assert diff.std() == pytest.approx(0.2 * m / 2, abs=0.01)
  # Train and test noise come from different streams.
  test_diff = noisy.test_x[2] - clean.test_x[2]
  train_diff = (noisy.train_x[2] - clean.train_x[2])[:test_diff.shape[0]]
  assert not np.allclose(test_diff, train_diff, atol=1e-5)


def test_standardizer_images_per_channel_features_per_feature():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
  images[..., 2] //= 4  # Channels with different statistics.
  std = sources.Standardizer.fit(images)
  assert std.mean.shape == (3,)
  np.testing.assert_allclose(std.mean, (images / 255).mean(axis=(0, 1, 2)), rtol=1e-5)
  z = std.standardize(std.to_unit(images))
  np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, rtol=1e-4)
  features = np.stack([rng.normal(3, 2, 50), np.full(50, 7.0)], 1)  # A constant feature.
  std = sources.Standardizer.fit(features)
  z = std.standardize(std.to_unit(features))
  assert z.dtype == np.float32
  np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
  np.testing.assert_allclose(z.std(axis=0), [1, 0], atol=1e-5)


# Two uint8 examples of 1 x 2 pixels, one channel: pixel values 0, 102 and 255, 204; in
# [0, 1] units 0, .4 and 1, .8 (all four: mean .55, variance .1475).
_IMAGES = np.array([[0, 102], [255, 204]], np.uint8).reshape(2, 1, 2, 1)
_S = np.sqrt(0.1475)
# Two float examples of 2 features: 1, 10 and 3, 30.
_FEATURES = np.array([[1.0, 10.0], [3.0, 30.0]])


@pytest.mark.parametrize("x,mode,expected", [
    (_IMAGES, "none", [[0, 102], [255, 204]]),
    (_IMAGES, "scale_-1_1", [[-1, -0.2], [1, 0.6]]),  # (x / 255 - 0.5) / 0.5
    (_IMAGES, "per_channel", [[-0.55 / _S, -0.15 / _S], [0.45 / _S, 0.25 / _S]]),
    (_IMAGES, "auto", [[-0.55 / _S, -0.15 / _S], [0.45 / _S, 0.25 / _S]]),  # per channel
    (_IMAGES, "per_pixel", [[-1, -1], [1, 1]]),  # pixel 0: 0, 1; pixel 1: .4, .8
    (_FEATURES, "none", [[1, 10], [3, 30]]),
    (_FEATURES, "scale_-1_1", [[-1, -5.5 / 14.5], [-12.5 / 14.5, 1]]),  # min 1, max 30
    (_FEATURES, "per_pixel", [[-1, -1], [1, 1]]),  # per feature: means 2, 20; stds 1, 10
    (_FEATURES, "per_channel", [[-1, -1], [1, 1]]),  # the last axis is the feature axis
    (_FEATURES, "auto", [[-1, -1], [1, 1]]),  # per feature
])
def test_normalization_options_by_hand(x, mode, expected):
  normalizer = normalization.fit(x, mode)
  z = normalizer.standardize(normalizer.to_unit(x)) if normalizer else x.astype(np.float32)
  assert z.dtype == np.float32 and z.shape == x.shape
  np.testing.assert_allclose(z.reshape(2, 2), expected, rtol=1e-6, atol=1e-6)


def test_normalization_of_a_constant_input_keeps_it_finite():
  x = np.full((3, 2), 7.0)
  for mode in ("scale_-1_1", "per_channel", "per_pixel"):
    normalizer = normalization.fit(x, mode)
    np.testing.assert_array_equal(normalizer.standardize(normalizer.to_unit(x)), 0)


@pytest.mark.parametrize("mode", normalization.NORMALIZATIONS)
def test_npz_normalization_uses_train_statistics_for_train_and_test(tmp_path, mode):
  rng = np.random.default_rng(0)
  x_train = rng.normal(5, 3, (40, 3))
  x_test = rng.normal(5, 3, (10, 3))
  np.savez(tmp_path / "f.npz", x_train=x_train, y_train=np.arange(40) % 2, x_test=x_test,
           y_test=np.arange(10) % 2)
  cfg = _data_config(source="npz", npz_path=str(tmp_path / "f.npz"), num_clients=2,
                     normalization=mode)
  fed = data.build_federation(cfg, 0)
  lo, hi = x_train.min(), x_train.max()
  by_hand = {"none": lambda x: x,
             "scale_-1_1": lambda x: (x - (lo + hi) / 2) / ((hi - lo) / 2),
             "per_pixel": lambda x: (x - x_train.mean(0)) / x_train.std(0)}
  by_hand["auto"] = by_hand["per_channel"] = by_hand["per_pixel"]
  train_rows = np.concatenate(fed.train_x)
  test_rows = np.concatenate(fed.test_x)
  # The partition shuffles the examples; as sets of rows they are the normalized file.
  for got, raw in ((train_rows, x_train), (test_rows, x_test)):
    want = by_hand[mode](raw)
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(want, axis=0), atol=1e-5)
  if mode != "auto":
    assert f"inputs normalized {mode}" in fed.description


# ---- synthetic --------------------------------------------------------------------------


def test_synthetic_shapes_sizes_and_label_spaces():
  cfg = _data_config(num_clients=5)
  cfg.synthetic.min_classes = 2
  cfg.synthetic.max_examples = 300
  fed = data.build_federation(cfg, 0)
  np.testing.assert_array_equal(fed.num_classes, [2, 4, 6, 8, 10])
  assert fed.input_shape == (60,)
  sizes = fed.train_counts + fed.test_counts
  assert sizes.min() >= 50 and sizes.max() <= 300
  np.testing.assert_array_equal(fed.test_counts, np.rint(0.2 * sizes))
  for m in range(5):
    assert fed.train_x[m].dtype == np.float32 and fed.train_y[m].dtype == np.int32
    for y in (fed.train_y[m], fed.test_y[m]):
      assert 0 <= y.min() and y.max() < fed.num_classes[m]


def _synthetic(**kw):
  args = dict(num_clients=1, alpha=1.0, beta=1.0, num_features=60, num_classes=10,
              min_classes=0, examples_lognormal_mean=4.0, examples_lognormal_sigma=2.0,
              max_examples=1000, test_fraction=0.2, seed=0)
  return synthetic.generate_synthetic(**(args | kw))


def test_synthetic_input_covariance_is_j_to_the_minus_1_2():
  clients = _synthetic(examples_lognormal_mean=12.0, max_examples=20000, num_features=8)
  x = clients.train_x[0]
  assert x.shape == (16000, 8)
  # Sample variance of 16000 normals has relative standard error ~1.1%.
  np.testing.assert_allclose(x.var(axis=0), np.arange(1, 9) ** -1.2, rtol=0.05)


@pytest.mark.parametrize("beta,expected", [(0.0, 1 / 60), (10.0, 10 + 1 / 60)])
def test_synthetic_beta_spreads_client_input_means(beta, expected):
  # The feature-averaged input mean of client k is B_k + mean_j N(0, 1) + noise,
  # whose variance across clients is beta + 1/60 (+ a small sampling term).
  clients = _synthetic(num_clients=300, beta=beta, max_examples=100)
  centres = np.array([np.concatenate([a, b]).mean() for a, b in
                      zip(clients.train_x, clients.test_x)])
  assert centres.var() == pytest.approx(expected, rel=0.3, abs=0.01)


# ---- npz --------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  arrays = dict(x_train=rng.integers(0, 256, (20, 4, 4), dtype=np.uint8),
                y_train=rng.integers(0, 3, 20), x_test=rng.integers(0, 256, (5, 4, 4),
                                                                    dtype=np.uint8),
                y_test=np.array([0, 1, 2, 6, 1]))
  np.savez(tmp_path / "toy.npz", **arrays)
  ds = data.load_npz(str(tmp_path / "toy.npz"))
  assert ds.name == "toy" and ds.num_classes == 7
  assert ds.x_train.shape == (20, 4, 4, 1)  # Grayscale images gain a channel axis.
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays["x_train"])
  np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
  assert ds.y_train.dtype == np.int64


@pytest.mark.parametrize("change,message", [
    (dict(y_train=None), "lacks array"),
    (dict(y_train=np.zeros(9, np.int64)), "10 examples but y_train has 9"),
    (dict(y_test=np.zeros(4, np.float32)), "integer class ids"),
    (dict(x_train=np.zeros(10)), "shape"),
    (dict(x_test=np.zeros((4, 3))), "train inputs have shape"),
    (dict(y_train=-np.ones(10, np.int64)), "negative"),
])
def test_npz_errors(tmp_path, change, message):
  arrays = dict(x_train=np.zeros((10, 2)), y_train=np.zeros(10, np.int64),
                x_test=np.zeros((4, 2)), y_test=np.zeros(4, np.int64))
  arrays.update(change)
  np.savez(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
  with pytest.raises(data.DataError, match=message):
    data.load_npz(str(tmp_path / "bad.npz"))


def test_npz_missing_or_unreadable_file(tmp_path):
  with pytest.raises(data.DataError, match="data.npz_path: no file"):
    data.load_npz(str(tmp_path / "none.npz"))
  (tmp_path / "junk.npz").write_text("not a zip")
  with pytest.raises(data.DataError, match="cannot read"):
    data.load_npz(str(tmp_path / "junk.npz"))


# ---- device side ------------------------------------------------------------------------


def test_to_device_pads_with_zeros():
  fed = data.build_federation(_data_config(num_clients=3), 0)
  train, test = data.to_device(fed)
  n_max = data.padded_length(int(fed.train_counts.max()))
  assert train.x.shape == (3, n_max, 60) and train.y.dtype == jnp.int32
  np.testing.assert_array_equal(train.counts, fed.train_counts)
  np.testing.assert_array_equal(test.counts, fed.test_counts)
  m = int(np.argmin(fed.train_counts))
  np.testing.assert_array_equal(train.x[m, :fed.train_counts[m]], fed.train_x[m])
  assert not np.any(train.x[m, fed.train_counts[m]:])


def test_sample_batches_never_reaches_padding_and_is_uniform():
  counts = np.array([1, 50, 50], np.int32)
  x = np.full((3, 500, 2), -1.0, np.float32)  # -1 marks padding.
  for m, c in enumerate(counts):
    x[m, :c] = np.arange(c)[:, None]  # Client 1 and client 2 hold identical data.
  arrays = data.ClientArrays(x=jnp.asarray(x), y=jnp.asarray(x[..., 0].astype(np.int32)),
                             counts=jnp.asarray(counts))
  xb, yb = data.sample_batches(arrays, jax.random.key(0), 5000)
  xb, yb = np.asarray(xb), np.asarray(yb)
  assert xb.shape == (3, 5000, 2) and yb.shape == (3, 5000)
  assert xb.min() >= 0 and np.all(xb[0] == 0)
  np.testing.assert_array_equal(xb[..., 0].astype(np.int32), yb)
  assert not np.array_equal(yb[1], yb[2])  # fold_in(key, m): clients draw differently.
  # Uniform over 50 values: chi-square with 49 dof; its 99.9% quantile is ~85.
  hist = np.bincount(yb[1], minlength=50)
  assert hist.size == 50 and np.sum((hist - 100) ** 2 / 100) < 85


# ---- TFDS -------------------------------------------------------------------------------


@pytest.mark.skipif(not (TFDS_DIR / "mnist").is_dir(), reason="no prepared TFDS copy")
def test_tfds_mnist_test_split():
  x, y = data.load_tfds_split("mnist", "test", str(TFDS_DIR))
  assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
  np.testing.assert_array_equal(
      np.bincount(y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


def test_tfds_missing_dataset_fails_fast_with_hint(tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DataError) as error:
    data.load_tfds("cifar10", str(tmp_path))
  assert time.monotonic() - start < 10  # No network attempt.
  message = str(error.value)
  assert "download_and_prepare" in message and "array_record" in message
  assert str(tmp_path) in message
  with pytest.raises(data.DataError, match="data.name"):
    data.load_tfds("imagenet", str(tmp_path))


@pytest.mark.skipif(not (TFDS_DIR / "mnist").is_dir(), reason="no prepared TFDS copy")
def test_tfds_tfrecord_copy_is_refused_with_hint(tmp_path):
  # A copy prepared as tfrecord has no random access; only its metadata matters here.
  version_dir = next((TFDS_DIR / "mnist").iterdir())
  fake = tmp_path / "mnist" / version_dir.name
  fake.mkdir(parents=True)
  for meta in version_dir.glob("*.json"):
    (fake / meta.name).write_text(meta.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(data.DataError, match="download_and_prepare"):
    data.load_tfds("mnist", str(tmp_path))
