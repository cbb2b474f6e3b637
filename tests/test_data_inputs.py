"""Bad data inputs of every kind give one DataError line naming the field or file.

Issue 13 ("Trust every run"): damaged prepared TFDS data, out-of-range values in any
split (raw arrays and the final float32 federation), clients with nothing to be evaluated
on, inputs whose rank does not fit the model, and Synthetic data that overflow. Every case
is a small table row and fails if its check is removed.
"""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mtsl_jax import config_base
from mtsl_jax import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "tfds" / "mnist" / "3.0.1"
CIFAR10_TEST = ROOT.parent / "shared" / "tfds" / "cifar10" / "3.0.2" / (
    "cifar10-test.array_record-00000-of-00001")
TRAIN_FILE = "mnist-train.array_record-00000-of-00001"
TEST_FILE = "mnist-test.array_record-00000-of-00001"


def _assert_one_line(message: str) -> None:
  assert "\n" not in message, message


def _config(model="mlp", **data_fields):
  config = config_base.base_config()
  config.model.name = model
  for key, value in data_fields.items():
    config.data[key] = value
  return config


def _image_dataset(shape=(8, 8, 1), per_class=12, num_classes=3, dtype=np.uint8, seed=0):
  rng = np.random.default_rng(seed)
  y_train = np.repeat(np.arange(num_classes), per_class)
  y_test = np.repeat(np.arange(num_classes), per_class // 3)
  x_train = rng.integers(0, 256, (y_train.size,) + shape).astype(dtype)
  x_test = rng.integers(0, 256, (y_test.size,) + shape).astype(dtype)
  return data.ArrayDataset.from_arrays("toy", x_train, y_train, x_test, y_test)


def _assert_federations_equal(a, b):
  for field in ("train_x", "train_y", "test_x", "test_y"):
    for u, v in zip(getattr(a, field), getattr(b, field)):
      assert u.dtype == v.dtype
      np.testing.assert_array_equal(u, v)
  np.testing.assert_array_equal(a.num_classes, b.num_classes)


# ---- damaged prepared TFDS data ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
  """A prepared 'mnist' of 30 train and 10 test records copied from ../shared/tfds.

  Read from the shared copy (never written) and rewritten small, so that loading takes
  well under a second; dataset_info.json lists the new shard lengths.
  """
  if not MNIST.is_dir():
    pytest.skip("no prepared TFDS mnist in ../shared/tfds")
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("tiny_tfds")
  version = root / "mnist" / "3.0.1"
  version.mkdir(parents=True)
  shutil.copyfile(MNIST / "features.json", version / "features.json")
  info = json.loads((MNIST / "dataset_info.json").read_text())
  for split, file, count in (("train", TRAIN_FILE, 30), ("test", TEST_FILE, 10)):
    reader = array_record_module.ArrayRecordReader(str(MNIST / file))
    records = reader.read(list(range(count)))
    reader.close()
    writer = array_record_module.ArrayRecordWriter(str(version / file), "group_size:1")
    for record in records:
      writer.write(record)
    writer.close()
    entry = next(s for s in info["splits"] if s["name"] == split)
    entry["shardLengths"] = [str(count)]
    entry["numBytes"] = str(sum(len(r) for r in records))
  (version / "dataset_info.json").write_text(json.dumps(info))
  return root


def _truncate(file, size):
  def damage(version):
    path = version / file
    path.write_bytes(path.read_bytes()[:size])
  return damage


def _scramble(file, offset, length=64):
  def damage(version):
    path = version / file
    raw = bytearray(path.read_bytes())
    raw[offset:offset + length] = bytes(b ^ 0xFF for b in raw[offset:offset + length])
    path.write_bytes(bytes(raw))
  return damage


def _delete(file):
  return lambda version: (version / file).unlink()


def _write_info(text):
  return lambda version: (version / "dataset_info.json").write_text(text)


def _edit_info(edit):
  def damage(version):
    info = json.loads((version / "dataset_info.json").read_text())
    edit(info)
    (version / "dataset_info.json").write_text(json.dumps(info))
  return damage


def _set_shard_length(split, count):
  def edit(info):
    next(s for s in info["splits"] if s["name"] == split)["shardLengths"] = [str(count)]
  return _edit_info(edit)


def _drop_split(split):
  def edit(info):
    info["splits"] = [s for s in info["splits"] if s["name"] != split]
  return _edit_info(edit)


def _rewrite_records(file, transform):
  """Rewrites `file` with transform(record bytes) for each of its records."""
  def damage(version):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    reader = array_record_module.ArrayRecordReader(str(version / file))
    records = reader.read(list(range(reader.num_records())))
    reader.close()
    (version / file).unlink()
    writer = array_record_module.ArrayRecordWriter(str(version / file), "group_size:1")
    for record in records:
      writer.write(transform(record))
    writer.close()
  return damage


def _replace_records(file, source):
  """Replaces each record of `file` (10, in tiny_mnist's test split) by one from `source`."""
  def damage(version):
    if not source.is_file():
      pytest.skip(f"no {source}")
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    reader = array_record_module.ArrayRecordReader(str(source))
    records = iter(reader.read(list(range(10))))
    reader.close()
    _rewrite_records(file, lambda record: next(records))(version)
  return damage


def _label_12(record):
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  example = tf_example_pb2.Example.FromString(record)
  example.features.feature["label"].int64_list.value[0] = 12  # mnist has 10 classes
  return example.SerializeToString()


TFDS_DAMAGE = [
    ("train_truncated_to_100_bytes", _truncate(TRAIN_FILE, 100), TRAIN_FILE),
    ("train_truncated_to_its_header", _truncate(TRAIN_FILE, 65536), TRAIN_FILE),
    ("test_truncated_mid_chunk", _truncate(TEST_FILE, 70000), TEST_FILE),
    ("test_shard_deleted", _delete(TEST_FILE), TEST_FILE),
    ("train_shard_deleted", _delete(TRAIN_FILE), TRAIN_FILE),
    ("train_bytes_scrambled", _scramble(TRAIN_FILE, 3000), "reading split 'train'"),
    ("dataset_info_unparsable", _write_info("{not json"), "dataset_info.json"),
    ("dataset_info_empty", _write_info(""), "dataset_info.json"),
    ("dataset_info_a_list", _write_info("[]"), "dataset_info.json"),
    ("dataset_info_without_test_split", _drop_split("test"), "no split 'test'"),
    ("dataset_info_bad_file_template",
     _edit_info(lambda info: info["splits"][0].update(filepathTemplate="{NOPE}")),
     "its splits cannot be opened as dataset_info.json describes them"),
    ("dataset_info_negative_shard_length", _set_shard_length("train", -5),
     "incompatible with -5 examples"),
    ("more_records_listed_than_stored", _set_shard_length("train", 50),
     "holds 30 records but dataset_info.json lists 50"),
    # Without the record-count check this one loads silently, 10 of the 30 records.
    ("fewer_records_listed_than_stored", _set_shard_length("test", 4),
     "holds 10 records but dataset_info.json lists 4"),
    ("records_not_examples", _rewrite_records(TRAIN_FILE, lambda r: b"junk" + r[:7]),
     "reading split 'train'"),
    ("test_records_of_another_dataset", _replace_records(TEST_FILE, CIFAR10_TEST),
     "(mnist: train inputs have shape (28, 28, 1) but test inputs (32, 32, 3))"),
    ("labels_outside_the_classes", _rewrite_records(TEST_FILE, _label_12),
     "outside the 10 classes"),
]


def test_tiny_tfds_copy_loads(tiny_mnist):
  dataset = data.load_tfds("mnist", str(tiny_mnist))
  assert dataset.x_train.shape == (30, 28, 28, 1) and dataset.x_test.shape == (10, 28, 28, 1)
  assert dataset.num_classes == 10


@pytest.mark.parametrize("damage,expected", [c[1:] for c in TFDS_DAMAGE],
                         ids=[c[0] for c in TFDS_DAMAGE])
def test_damaged_tfds_data_say_which_and_how_to_reprepare(tiny_mnist, tmp_path, damage,
                                                          expected):
  root = tmp_path / "tfds"
  shutil.copytree(tiny_mnist, root)
  damage(root / "mnist" / "3.0.1")
  with pytest.raises(data.DataError) as error:
    data.load_tfds("mnist", str(root))
  message = str(error.value)
  _assert_one_line(message)
  assert message.startswith("data.tfds_data_dir: the prepared TFDS dataset 'mnist' in ")
  assert str(root / "mnist") in message and "is damaged" in message
  assert "download_and_prepare" in message and "array_record" in message
  assert expected in message, message


# ---- raw values out of range (npz) ---------------------------------------------------------


def _npz_arrays():
  rng = np.random.default_rng(0)
  return dict(x_train=rng.normal(size=(12, 3)).astype(np.float32),
              y_train=np.arange(12) % 3, x_test=rng.normal(size=(4, 3)).astype(np.float32),
              y_test=np.arange(4) % 3)


def _set(name, index, value, dtype=None):
  def change(arrays):
    array = arrays[name].astype(dtype or arrays[name].dtype)
    array[index] = value
    arrays[name] = array
  return change


def _replace(**new):
  return lambda arrays: arrays.update(new)


NPZ_BAD = [
    ("nan_train_input", _set("x_train", (5, 1), np.nan),
     "x_train holds 1 NaN or infinite value(s), in 1 example(s), the first at index 5"),
    ("inf_test_input", _set("x_test", (2, 0), np.inf), "x_test holds 1 NaN or infinite"),
    ("minus_inf_train_input", _set("x_train", (0, 2), -np.inf), "x_train holds 1 NaN"),
    ("nan_test_input_float16", _set("x_test", (3, 2), np.nan, np.float16),
     "x_test holds 1 NaN"),
    ("train_input_beyond_float32", _set("x_train", (1, 1), 1e300, np.float64),
     "x_train holds values as large as 1e+300"),
    ("test_input_beyond_float32", _set("x_test", (0, 0), -1e39, np.float64),
     "beyond float32's range"),
    ("negative_train_label", _set("y_train", 3, -1), "y_train has 1 negative label(s)"),
    ("negative_test_label", _set("y_test", 0, -7), "y_test has 1 negative label(s)"),
    ("absurd_train_label", _set("y_train", 3, 10**9),
     "y_train holds label 1000000000, which would make 1000000001 classes for 12 train"),
    ("test_label_beyond_class_bound", _set("y_test", 1, 12),
     "y_test holds label 12, which would make 13 classes for 12 train examples"),
    ("uint8_label_beyond_class_bound", _set("y_train", 0, 200, np.uint8),
     "y_train holds label 200"),
    ("uint64_label_beyond_int64", _set("y_test", 0, 2**64 - 1, np.uint64),
     "holds label 18446744073709551615 (uint64), which does not fit in int64"),
    ("float_train_labels", _set("y_train", 0, 0, np.float64),
     "y_train must hold integer class ids 0..K-1 (any signed or unsigned integer dtype), "
     "got dtype float64"),
    ("float_test_labels", _set("y_test", 0, 0.5, np.float32), "got dtype float32"),
    ("bool_train_labels", _replace(y_train=np.arange(12) % 2 == 0), "got dtype bool"),
    ("bool_test_labels", _replace(y_test=np.ones(4, bool)), "y_test must hold integer"),
    ("empty_test_split", _replace(x_test=np.zeros((0, 3), np.float32),
                                  y_test=np.zeros(0, np.int64)), "the test split is empty"),
    ("inputs_without_features", _replace(x_train=np.zeros((12, 0)), x_test=np.zeros((4, 0))),
     "every example needs at least one feature"),
]


@pytest.mark.parametrize("change,expected", [c[1:] for c in NPZ_BAD],
                         ids=[c[0] for c in NPZ_BAD])
def test_npz_values_out_of_range_are_refused(tmp_path, change, expected):
  arrays = _npz_arrays()
  change(arrays)
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(data.DataError) as error:
    data.load_npz(str(path))
  message = str(error.value)
  _assert_one_line(message)
  assert message.startswith(f"data.npz_path: {path}: "), message
  assert expected in message, message


def test_valid_npz_passes_the_same_checks(tmp_path):
  path = tmp_path / "good.npz"
  np.savez(path, **_npz_arrays())
  assert data.load_npz(str(path)).num_classes == 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int32])
def test_unsigned_labels_give_exactly_the_int64_federation(tmp_path, dtype):
  reference = _image_dataset(num_classes=10, per_class=9)
  arrays = dict(x_train=reference.x_train, y_train=reference.y_train.astype(dtype),
                x_test=reference.x_test, y_test=reference.y_test.astype(dtype))
  np.savez(tmp_path / "labels.npz", **arrays)
  loaded = data.load_npz(str(tmp_path / "labels.npz"))
  assert loaded.y_train.dtype == np.int64 and loaded.y_test.dtype == np.int64
  cfg = _config(num_clients=3, partition="dirichlet", dirichlet_alpha=0.5,
                min_examples_per_client=5, label_permutation=True, label_noise_rate=0.2).data
  _assert_federations_equal(data.build_federation_from_datasets([loaded], cfg, 0),
                            data.build_federation_from_datasets([reference], cfg, 0))


# ---- the built federation: check_federation --------------------------------------------------


def _replace_client(federation, field, m, array):
  arrays = list(getattr(federation, field))
  arrays[m] = array
  return dataclasses.replace(federation, **{field: tuple(arrays)})


def _built(config, datasets=None):
  if datasets is None:
    return data.build_federation(config.data, config.seed)
  return data.build_federation_from_datasets(datasets, config.data, config.seed)


def _synthetic_overflow(alpha, beta):
  config = _config(num_clients=2)
  config.data.synthetic.max_examples = 60
  config.data.synthetic.alpha, config.data.synthetic.beta = alpha, beta
  return _built(config), config


def _npz_standardized_overflow():
  # Finite float32 values whose standardization overflows: (3e38 - mean) / std is inf.
  x = np.full((20, 3), -3e38, np.float32)
  x[::4] = 3e38
  dataset = data.ArrayDataset.from_arrays("big", x, np.arange(20) % 2, x[:4],
                                          np.arange(4) % 2)
  config = _config(num_clients=2, min_examples_per_client=1, source="npz",
                   npz_path="/data/big.npz")
  return _built(config, [dataset]), config


def _noise_overflow():
  config = _config(num_clients=2, feature_noise_std=1e39, source="npz", npz_path="toy.npz")
  return _built(config, [_image_dataset()]), config


def _valid(model="mlp", shape=(8, 8, 1), dtype=np.uint8, **data_fields):
  """A valid federation of 3 clients of a 3-class toy dataset, as if from toy.npz."""
  config = _config(model=model, num_clients=3, min_examples_per_client=1, source="npz",
                   npz_path="toy.npz", **data_fields)
  return _built(config, [_image_dataset(shape=shape, dtype=dtype)]), config


def _corrupt(field, m, make):
  """A valid federation whose client m has make(its `field` array) instead."""
  def build():
    federation, config = _valid()
    return _replace_client(federation, field, m, make(getattr(federation, field)[m])), config
  return build


def _set_entry(index, value, dtype=None):
  def make(array):
    array = array.astype(dtype or array.dtype)
    array[index] = value
    return array
  return make


def _synthetic_tiny_clients():
  config = _config(num_clients=2, validation_fraction=0.2, evaluate_on="validation")
  config.data.synthetic.max_examples = 2  # 1 train + 1 test: nothing left to hold out
  return _built(config), config


def _without_examples(split):
  """Client 1 of a valid federation left with no `split` examples."""
  def build():
    federation, config = _valid()
    for field in (f"{split}_x", f"{split}_y"):
      federation = _replace_client(federation, field, 1, getattr(federation, field)[1][:0])
    return federation, config
  return build


def _num_classes_for_two_clients():
  federation, config = _valid()
  return dataclasses.replace(federation, num_classes=federation.num_classes[:2]), config


FEDERATION_BAD = [
    # Non-finite float32 inputs, and the fields that caused them.
    ("synthetic_beta_overflows", lambda: _synthetic_overflow(1.0, 1e80),
     "data.synthetic.alpha / data.synthetic.beta: client 0's train inputs hold"),
    ("synthetic_alpha_and_beta_huge", lambda: _synthetic_overflow(1e300, 1e300),
     "the Synthetic(1e+300, 1e+300) inputs overflow float32"),
    ("npz_overflows_when_standardized", _npz_standardized_overflow,
     "data.npz_path: client"),
    ("noise_std_overflows", _noise_overflow,
     "data.feature_noise_std = 1e+39 overflows float32"),
    ("nan_in_a_test_input", _corrupt("test_x", 1, _set_entry((0, 2, 3, 0), np.nan)),
     "client 1's test inputs hold 1 NaN or infinite value(s)"),
    ("inf_in_a_train_input", _corrupt("train_x", 2, _set_entry((3, 0, 0, 0), -np.inf)),
     "client 2's train inputs hold 1 NaN or infinite value(s)"),
    # Labels against each client's label space.
    ("train_label_equal_to_num_classes", _corrupt("train_y", 1, _set_entry(0, 3)),
     "client 1's train labels must be class ids in [0, 3) (its number of classes), but "
     "range over [0, 3]"),
    ("negative_test_label", _corrupt("test_y", 0, _set_entry(1, -1)),
     "client 0's test labels must be class ids in [0, 3)"),
    ("float_train_labels", _corrupt("train_y", 0, lambda y: y.astype(np.float32)),
     "client 0's train labels have dtype float32"),
    ("bool_test_labels", _corrupt("test_y", 2, lambda y: y > 0),
     "client 2's test labels have dtype bool"),
    # Nothing to train on or to be evaluated on.
    ("client_without_train_examples", _without_examples("train"),
     "data.num_clients: client(s) [1] have no train example; use fewer clients or more "
     "data (data.npz_path (toy.npz))"),
    ("client_without_test_examples", _without_examples("test"),
     "data.num_clients: client(s) [1] have no test example to be evaluated on "
     "(data.evaluate_on = 'test')"),
    ("validation_with_one_example_per_client",
     lambda: _valid(validation_fraction=0.1, evaluate_on="validation",
                    max_examples_per_client=1),
     "data.validation_fraction: client(s) [0, 1, 2] hold out no validation example"),
    ("synthetic_validation_with_one_train_example", _synthetic_tiny_clients,
     "data.validation_fraction: client(s) [0, 1] hold out no validation example"),
    # Inputs whose rank or size does not fit the model.
    ("vectors_for_the_cnn", lambda: _valid(model="cnn", shape=(12,), dtype=np.float32),
     "model.name: 'cnn' needs image inputs [N, H, W, C], but the data (data.npz_path (toy.npz)) "
     "have inputs [N, 12]"),
    ("vectors_for_the_resnet", lambda: _valid(model="resnet", shape=(784,)),
     "model.name: 'resnet' needs image inputs [N, H, W, C]"),
    ("images_without_channel_axis_for_the_cnn",
     lambda: _valid(model="cnn", shape=(8, 8), dtype=np.float32),
     "have inputs [N, 8, 8]"),
    ("images_too_small_for_the_cnn", lambda: _valid(model="cnn", shape=(3, 8, 1)),
     "model.cnn_features: the cnn halves the image size in each of its 2 conv blocks, so "
     "images need height and width >= 4, but these are 3x8"),
    # Arrays that do not belong together.
    ("fewer_labels_than_inputs", _corrupt("train_y", 0, lambda y: y[1:]),
     "federation: client 0's train set has inputs"),
    ("client_with_another_input_shape",
     _corrupt("test_x", 1, lambda x: np.zeros((x.shape[0], 4, 4, 1), np.float32)),
     "federation: client 1's test inputs have shape (4, 4, 1)"),
    ("num_classes_not_per_client", _num_classes_for_two_clients,
     "federation: num_classes has shape (2,)"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the point here
@pytest.mark.parametrize("build,expected", [c[1:] for c in FEDERATION_BAD],
                         ids=[c[0] for c in FEDERATION_BAD])
def test_check_federation_refuses(build, expected):
  federation, config = build()
  with pytest.raises(data.DataError) as error:
    data.check_federation(federation, config)
  message = str(error.value)
  _assert_one_line(message)
  assert expected in message, message


@pytest.mark.parametrize("model,shape", [("mlp", (8, 8, 1)), ("mlp", (12,)), ("cnn", (4, 4, 1)),
                                         ("resnet", (2, 2, 3))])
def test_check_federation_accepts_valid_data(model, shape):
  federation, config = _valid(model=model, shape=shape, validation_fraction=0.3,
                              evaluate_on="validation", feature_noise_std=0.5,
                              label_permutation=True)
  data.check_federation(federation, config)
  config = _config(num_clients=3)  # the default Synthetic(1, 1)
  data.check_federation(_built(config), config)


# ---- through the launcher ----------------------------------------------------------------


def test_launcher_reports_nan_inputs_in_one_line_with_status_2(tmp_path):
  arrays = _npz_arrays()
  arrays["x_test"][1, 1] = np.nan
  path = tmp_path / "nan.npz"
  np.savez(path, **arrays)
  proc = subprocess.run(
      [sys.executable, "launch/train.py", "--config", "configs/test.py", "--workdir",
       str(tmp_path / "w"), "--config.data.source=npz", f"--config.data.npz_path={path}",
       "--config.data.num_clients=2", "--config.data.min_examples_per_client=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: data.npz_path: {path}: "), last
  assert "x_test holds 1 NaN or infinite value(s)" in last
