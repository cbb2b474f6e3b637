"""User-given client splits (data.source 'client_dir' and 'client_npz'; issue 17).

A given partition is reproduced exactly (same examples per client, same order), through
`data.build_federation` and through `train.train_and_evaluate`, for both layouts; every
bad input is refused in one line naming the config field and the file.
"""

import json
import pathlib

import numpy as np
import pytest

from mtsl_jax import config_base
from mtsl_jax import config_files
from mtsl_jax import data
from mtsl_jax import fingerprint
from mtsl_jax import train
from mtsl_jax import validation

# Uneven clients: train and test sizes per client.
TRAIN_SIZES, TEST_SIZES = (5, 9, 7), (2, 3, 4)
SHAPE = (4, 4, 1)


def _clients(dtype=np.uint8, seed=0):
  """Per-client arrays; inputs encode (client, index) so any reordering shows."""
  rng = np.random.default_rng(seed)
  clients = []
  for m, (n, t) in enumerate(zip(TRAIN_SIZES, TEST_SIZES)):
    c = {}
    for split, size in (("train", n), ("test", t)):
      x = rng.integers(0, 256, (size,) + SHAPE)
      x[:, 0, 0, 0] = 10 * m + np.arange(size)  # client and position, readable back
      c[f"x_{split}"] = x.astype(dtype)
      c[f"y_{split}"] = rng.integers(0, 4, size)
    clients.append(c)
  clients[1]["y_train"][0] = 5  # the shared label space is max label + 1 = 6
  return clients


def _write_dir(path: pathlib.Path, clients) -> pathlib.Path:
  path.mkdir(exist_ok=True)
  for m, c in enumerate(clients):
    np.savez(path / f"client_{m}.npz", **c)
  (path / "README.txt").write_text("other files are ignored")
  return path


def _pooled(clients, seed=1):
  """One file's arrays: the clients' examples interleaved, each client's order kept."""
  rng = np.random.default_rng(seed)
  out = {}
  for split in ("train", "test"):
    ids = np.concatenate([np.full(c[f"y_{split}"].shape[0], m) for m, c in enumerate(clients)])
    ids = rng.permutation(ids)
    x = np.zeros((ids.size,) + clients[0][f"x_{split}"].shape[1:],
                 clients[0][f"x_{split}"].dtype)
    y = np.zeros(ids.size, np.int64)
    for m, c in enumerate(clients):
      x[ids == m], y[ids == m] = c[f"x_{split}"], c[f"y_{split}"]
    out |= {f"x_{split}": x, f"y_{split}": y, f"client_{split}": ids}
  return out


def _write_npz(path: pathlib.Path, clients, **change) -> pathlib.Path:
  arrays = _pooled(clients)
  arrays.update(change)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return path


def _write(layout, tmp_path, clients):
  if layout == "client_dir":
    return _write_dir(tmp_path / "clients", clients)
  return _write_npz(tmp_path / "clients.npz", clients)


def _config(layout, path, normalization="none", num_clients=3):
  config = config_base.base_config()
  config.data.source, config.data.client_path = layout, str(path)
  config.data.num_clients = num_clients
  config.data.normalization = normalization
  return config


def _expected_federation(clients, normalize=lambda x: x.astype(np.float32)):
  """The federation the given clients make, built by hand."""
  return data.Federation(
      train_x=tuple(normalize(c["x_train"]) for c in clients),
      train_y=tuple(c["y_train"].astype(np.int32) for c in clients),
      test_x=tuple(normalize(c["x_test"]) for c in clients),
      test_y=tuple(c["y_test"].astype(np.int32) for c in clients),
      num_classes=np.full(len(clients), 6, np.int32), input_shape=SHAPE, description="")


def _assert_same(federation, expected):
  for field in ("train_x", "train_y", "test_x", "test_y"):
    got, want = getattr(federation, field), getattr(expected, field)
    assert len(got) == len(want)
    for u, v in zip(got, want):
      assert u.dtype == v.dtype and u.shape == v.shape, field
      np.testing.assert_array_equal(u, v)
  np.testing.assert_array_equal(federation.num_classes, expected.num_classes)
  assert fingerprint.federation_digest(federation) == fingerprint.federation_digest(expected)


@pytest.mark.parametrize("layout", ["client_dir", "client_npz"])
def test_a_given_partition_is_reproduced_exactly(tmp_path, layout):
  clients = _clients()
  config = _config(layout, _write(layout, tmp_path, clients))
  federation = data.build_federation(config.data, config.seed)
  _assert_same(federation, _expected_federation(clients))
  assert "given split, 3 clients" in federation.description
  # The seed draws nothing here: no partition, no test resampling.
  _assert_same(data.build_federation(config.data, 7), _expected_federation(clients))


@pytest.mark.parametrize("layout", ["client_dir", "client_npz"])
def test_auto_normalization_uses_every_clients_train_inputs(tmp_path, layout):
  clients = _clients()
  config = _config(layout, _write(layout, tmp_path, clients), normalization="auto")
  pooled = np.concatenate([c["x_train"] for c in clients]).astype(np.float64) / 255
  mean, std = pooled.mean(), pooled.std()  # one channel: per channel is over everything
  federation = data.build_federation(config.data, config.seed)
  expected = _expected_federation(clients, lambda x: ((x / 255 - mean) / std))
  for got, want in zip(federation.train_x + federation.test_x, expected.train_x + expected.test_x):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_scale_to_minus_one_one_applies_to_client_files(tmp_path):
  clients = _clients()
  config = _config("client_dir", _write_dir(tmp_path / "d", clients), normalization="scale_-1_1")
  federation = data.build_federation(config.data, config.seed)
  for got, c in zip(federation.test_x, clients):
    np.testing.assert_allclose(got, c["x_test"] / 127.5 - 1, atol=1e-6)


def test_float_inputs_of_any_shape_are_used_as_given(tmp_path):
  rng = np.random.default_rng(0)
  clients = [dict(x_train=rng.normal(size=(n, 5)), y_train=np.arange(n) % 3,
                  x_test=rng.normal(size=(2, 5)), y_test=np.array([0, 2]))
             for n in (4, 6)]
  config = _config("client_dir", _write_dir(tmp_path / "d", clients), num_clients=2)
  federation = data.build_federation(config.data, config.seed)
  for got, c in zip(federation.train_x, clients):
    np.testing.assert_array_equal(got, c["x_train"].astype(np.float32))
  np.testing.assert_array_equal(federation.num_classes, [3, 3])


@pytest.mark.parametrize("layout", ["client_dir", "client_npz"])
def test_train_and_evaluate_trains_mtsl_and_fedavg_on_the_given_clients(tmp_path, layout):
  clients = _clients()
  path = _write(layout, tmp_path, clients)
  digest = fingerprint.federation_digest(_expected_federation(clients))
  for algorithm in ("mtsl", "fedavg"):
    config = _config(layout, path)
    config.algorithm = algorithm
    config.model.hidden_sizes = (8, 8)
    config.batch_size, config.num_steps = 4, 4
    config.log_every = config.eval_every = config.checkpoint_every = 2
    config.progress_bar = False
    workdir = tmp_path / algorithm
    result = train.train_and_evaluate(config, workdir, verbose=False)
    assert np.shape(result.eval_metrics["test/accuracy"]) == (3,)
    # The run trained and was evaluated on exactly the given arrays: its checkpoint's
    # data digest is that of the federation built by hand.
    meta = json.loads((workdir / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta["fingerprint"]["data_digest"] == digest


# ---- refused in one line naming the field and the file ------------------------------------


def _drop(m, key):
  def change(clients):
    del clients[m][key]
  return change


def _set(m, key, value):
  def change(clients):
    clients[m][key] = value
  return change


def _entry(m, key, index, value, dtype=None):
  def change(clients):
    array = clients[m][key].astype(dtype or clients[m][key].dtype)
    array[index] = value
    clients[m][key] = array
  return change


DIR_BAD = [
    ("missing_array", _drop(2, "y_test"), "client_2.npz lacks array(s) y_test"),
    ("no_train_example", lambda c: c[1].update(x_train=np.zeros((0,) + SHAPE, np.uint8),
                                               y_train=np.zeros(0, np.int64)),
     "client_1.npz: client_1: has no train example"),
    ("no_test_example", lambda c: c[0].update(x_test=np.zeros((0,) + SHAPE, np.uint8),
                                              y_test=np.zeros(0, np.int64)),
     "client_0.npz: client_0: has no test example"),
    ("shapes_differ_between_clients", lambda c: c[2].update(
        x_train=c[2]["x_train"][..., :2, :], x_test=c[2]["x_test"][..., :2, :]),
     "client_2.npz: client_2: x_train examples have shape (4, 2, 1) but client_0's "
     "x_train examples (4, 4, 1)"),
    ("train_and_test_shapes_differ", _set(0, "x_test", np.zeros((2, 4, 4, 2), np.uint8)),
     "client_0: x_test examples have shape (4, 4, 2) but x_train examples (4, 4, 1)"),
    ("dtypes_differ", _set(1, "x_test", np.zeros((3,) + SHAPE, np.float32)),
     "client_1: x_test has dtype float32 but client_0's x_train uint8"),
    ("x_and_y_lengths_differ", _set(1, "y_test", np.zeros(2, np.int64)),
     "client_1: x_test has 3 examples but y_test has 2"),
    ("negative_label", _entry(2, "y_train", 0, -1), "client_2: y_train has 1 negative label"),
    ("float_labels", _entry(0, "y_test", 0, 0.5, np.float64),
     "client_0: y_test must hold integer class ids"),
    ("label_beyond_the_class_bound", _entry(1, "y_test", 0, 1000),
     "client_1.npz: client_1: y_test holds label 1000, which would make 1001 classes for the "
     "21 train examples of all clients"),
]


@pytest.mark.parametrize("change,expected", [c[1:] for c in DIR_BAD], ids=[c[0] for c in DIR_BAD])
def test_client_dir_refuses_bad_files(tmp_path, change, expected):
  clients = _clients()
  change(clients)
  path = _write_dir(tmp_path / "d", clients)
  with pytest.raises(data.DataError) as e:
    data.build_federation(_config("client_dir", path).data, 0)
  message = str(e.value)
  assert "\n" not in message and message.startswith("data.client_path: "), message
  assert str(path) in message and expected in message, message


def test_client_dir_refuses_non_finite_float_inputs(tmp_path):
  clients = _clients(dtype=np.float32)
  clients[1]["x_test"][2, 0, 1, 0] = np.inf
  path = _write_dir(tmp_path / "d", clients)
  with pytest.raises(data.DataError, match=r"^data\.client_path: .*client_1\.npz: client_1: "
                     r"x_test holds 1 NaN or infinite value\(s\)[^\n]*$"):
    data.build_federation(_config("client_dir", path).data, 0)


def _files(tmp_path, names):
  path = tmp_path / "d"
  path.mkdir()
  for name in names:
    np.savez(path / name, **_clients()[0])
  return path


@pytest.mark.parametrize("names,num_clients,expected", [
    ((), 3, "holds no client_<m>.npz file"),
    (("client_0.npz", "client_2.npz"), 3, "holds files up to client_2.npz but not client_1.npz"),
    (("client_0.npz", "client_1.npz", "client_01.npz"), 2,
     "holds both client_01.npz and client_1.npz for client 1"),
    (("client_0.npz", "client_1.npz"), 3,
     "data.num_clients: is 3, but {path} holds 2 clients (client_0.npz .. client_1.npz); "
     "set data.num_clients = 2."),
])
def test_client_dir_refuses_a_bad_set_of_files(tmp_path, names, num_clients, expected):
  path = _files(tmp_path, names)
  with pytest.raises(data.DataError) as e:
    data.build_federation(_config("client_dir", path, num_clients=num_clients).data, 0)
  message = str(e.value)
  assert "\n" not in message and expected.format(path=path) in message, message
  assert message.startswith("data.num_clients" if "num_clients" in expected
                            else f"data.client_path: {path} "), message


def test_client_dir_without_a_directory(tmp_path):
  with pytest.raises(data.DataError, match=r"^data\.client_path: no directory at"):
    data.build_federation(_config("client_dir", tmp_path / "none").data, 0)


NPZ_BAD = [
    ("missing_client_ids", dict(client_test=None), "lacks array(s) client_test"),
    ("float_client_ids", dict(client_train=np.zeros(21)), "client_train must hold integer "
     "client ids 0 .. M-1, got dtype float64"),
    ("client_ids_not_one_per_example", dict(client_test=np.zeros(8, np.int64)),
     "client_test must have shape [N] with one client id per example of y_test (9), got (8,)"),
    ("negative_client_id", dict(client_train=np.r_[-1, np.zeros(20, np.int64)]),
     "client_train holds negative client id(s)"),
    ("more_clients_than_configured", dict(client_test=np.r_[3, np.zeros(8, np.int64)]),
     "data.num_clients: is 3, but {path} has client ids 0 .. 3 in client_train and "
     "client_test (4 clients); set data.num_clients = 4."),
    ("a_client_without_test_examples", dict(client_test=np.r_[np.zeros(8, np.int64), 2]),
     "client(s) [1] have no test example in client_test"),
    ("x_and_y_lengths_differ", dict(y_train=np.zeros(20, np.int64)),
     "x_train has 21 examples but y_train has 20"),
    ("negative_label", dict(y_test=np.r_[-2, np.zeros(8, np.int64)]),
     "y_test has 1 negative label(s)"),
    ("bool_labels", dict(y_train=np.ones(21, bool)), "y_train must hold integer class ids"),
    ("non_finite_input", dict(x_test=np.full((9,) + SHAPE, np.nan, np.float32)),
     "x_test holds 144 NaN or infinite value(s)"),
    ("label_beyond_the_class_bound", dict(y_train=np.r_[99, np.zeros(20, np.int64)]),
     "y_train holds label 99, which would make 100 classes for 21 train examples"),
]


@pytest.mark.parametrize("change,expected", [c[1:] for c in NPZ_BAD], ids=[c[0] for c in NPZ_BAD])
def test_client_npz_refuses_bad_arrays(tmp_path, change, expected):
  path = _write_npz(tmp_path / "c.npz", _clients(), **change)
  with pytest.raises(data.DataError) as e:
    data.build_federation(_config("client_npz", path).data, 0)
  message = str(e.value)
  assert "\n" not in message and expected.format(path=path) in message, message
  assert message.startswith("data.num_clients: " if "num_clients" in expected
                            else f"data.client_path: {path}"), message


@pytest.mark.parametrize("fields,field", [
    ({"data.source": "client_dir"}, "data.client_path"),
    ({"data.source": "client_npz"}, "data.client_path"),
    ({"data.normalization": "zscore"}, "data.normalization"),
    ({"data.normalization": "per_pixel"}, "data.normalization"),  # synthetic: as drawn
])
def test_config_refuses_in_one_line(fields, field):
  config = config_base.base_config()
  for key, value in fields.items():
    config.data[key.split(".")[1]] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate_config(config)
  assert str(e.value).startswith(f"config.{field}: ") and "\n" not in str(e.value)


def test_the_readme_example_writes_clients_that_train(tmp_path, monkeypatch):
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = readme[readme.index("## Your own federated data"):]
  code = section[section.index("```python\n") + 10:section.index("```\n")]
  monkeypatch.chdir(tmp_path)
  exec(code, {})  # pylint: disable=exec-used
  command = section[section.index("```bash\n"):]
  command = command[:command.index("```\n", 8)]
  assert "--config.data.source=client_dir --config.data.client_path=my_clients" in command
  config = _config("client_dir", tmp_path / "my_clients", "auto", num_clients=4)
  validation.validate_config(config)
  federation = data.build_federation(config.data, config.seed)
  np.testing.assert_array_equal(federation.train_counts, [40, 60, 80, 100])


def test_the_pfllib_config_trains_fedavg_on_a_given_partition(tmp_path):
  """configs/pfllib_mnist.py on 20 tiny clients: the unpadded CNN (582,026 parameters),
  one local epoch (steps follow each client's size), data-size weights, a valid run."""
  rng = np.random.default_rng(0)
  for m in range(20):
    n = 10 + m  # 1 to 3 local steps of batch 10
    np.savez(tmp_path / f"client_{m}.npz",
             x_train=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
             y_train=rng.integers(0, 10, n), x_test=rng.integers(0, 256, (4, 28, 28, 1),
                                                                dtype=np.uint8),
             y_test=rng.integers(0, 10, 4))
  config = config_files.load_config("configs/pfllib_mnist.py",
                                    {"data.client_path": str(tmp_path)})
  config.num_steps = config.log_every = config.eval_every = config.checkpoint_every = 2
  config.progress_bar = False
  result = train.train_and_evaluate(config, tmp_path / "run", verbose=False)
  assert result.algorithm.param_counts == {"global model": 582_026}
  assert int(result.state.step) == 2
  assert np.isfinite(result.train_metrics["loss"])
