"""Bad configs fail before anything compiles, with one line naming the field."""

import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import config_base, memory, models, validation

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (override as field -> value, the field the error must name)
BAD = [
    ({"algorithm": "fedsgd"}, "algorithm"),
    ({"seed": -1}, "seed"),
    ({"data.source": "imagenet"}, "data.source"),
    ({"data.source": "tfds", "data.name": "svhn"}, "data.name"),
    ({"data.source": "npz"}, "data.npz_path"),
    ({"data.num_clients": 0}, "data.num_clients"),
    ({"data.partition": "pathological"}, "data.partition"),
    ({"data.dirichlet_alpha": 0.0}, "data.dirichlet_alpha"),
    ({"data.dirichlet_alpha": -1.0}, "data.dirichlet_alpha"),
    ({"data.classes_per_client": 0}, "data.classes_per_client"),
    ({"data.label_noise_rate": 1.0}, "data.label_noise_rate"),
    ({"data.feature_noise_std": -0.1}, "data.feature_noise_std"),
    ({"fl.aggregation_weights": "size"}, "fl.aggregation_weights"),
    ({"data.noise_profile": "quadratic"}, "data.noise_profile"),
    ({"data.validation_fraction": 1.0}, "data.validation_fraction"),
    ({"data.evaluate_on": "validation"}, "data.evaluate_on"),  # nothing held out
    ({"data.evaluate_on": "train"}, "data.evaluate_on"),
    ({"data.rotation_step_degrees": 15.0}, "data.rotation_step_degrees"),
    ({"data.synthetic.num_classes": 1}, "data.synthetic.num_classes"),
    ({"data.synthetic.test_fraction": 1.0}, "data.synthetic.test_fraction"),
    ({"data.synthetic.min_classes": 11}, "data.synthetic.min_classes"),
    ({"model.name": "transformer"}, "model.name"),
    ({"model.name": "cnn"}, "model.name"),  # synthetic data are vectors
    ({"model.hidden_sizes": ()}, "model.hidden_sizes"),
    ({"model.hidden_sizes": (64, 0)}, "model.hidden_sizes"),
    ({"model.dtype": "float16"}, "model.dtype"),
    ({"model.conv_impl": "winograd"}, "model.conv_impl"),
    ({"split.orientation": "sideways"}, "split.orientation"),
    ({"split.client_bottom_blocks": 3}, "split.client_bottom_blocks"),  # mlp has 3 blocks
    ({"split.orientation": "bottom"}, "split.client_top_blocks"),  # head must be on server
    ({"split.orientation": "top"}, "split.client_bottom_blocks"),
    ({"split.client_top_blocks": 0}, "split.client_top_blocks"),  # u_shaped needs a head
    ({"split.orientation": "bottom", "split.client_top_blocks": 0,
      "data.synthetic.min_classes": 5}, "data.synthetic.min_classes"),
    ({"split.task_weights": "loss"}, "split.task_weights"),
    ({"split.implementation": "mpi"}, "split.implementation"),
    ({"split.client_lr_multipliers": (1.0, 2.0)}, "split.client_lr_multipliers"),
    ({"split.client_lr_multipliers": (1.0,) * 9 + (0.0,)}, "split.client_lr_multipliers"),
    ({"server_optimizer.name": "lamb"}, "server_optimizer.name"),
    ({"server_optimizer.learning_rate": 0.0}, "server_optimizer.learning_rate"),
    ({"client_optimizer.learning_rate": -0.1}, "client_optimizer.learning_rate"),
    ({"client_optimizer.schedule": "step"}, "client_optimizer.schedule"),
    ({"client_optimizer.momentum": 1.0}, "client_optimizer.momentum"),
    ({"server_optimizer.weight_decay": -1.0}, "server_optimizer.weight_decay"),
    ({"server_optimizer.warmup_steps": 5000}, "server_optimizer.warmup_steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"num_steps": 0}, "num_steps"),
    ({"eval_every": -5}, "eval_every"),
    ({"batch_size": 3.5}, "batch_size"),  # wrong type
    ({"progress_bar": "yes"}, "progress_bar"),
    ({"server_optimizer.learning_rate": "fast"}, "server_optimizer.learning_rate"),
]


# Wrong types, as a config file can set them (ConfigDict lets some through: True in an int
# field, anything in a tuple, numpy scalars in a section built from a dict): (override,
# field, a fragment the message must hold).
WRONG_TYPES = [
    ({"batch_size": True}, "batch_size", "must be an integer, got True"),
    ({"num_steps": "100"}, "num_steps", "must be an integer, got '100'"),
    ({"seed": 1.0}, "seed", "must be an integer, got 1.0"),
    ({"batch_size": np.int64(5)}, "batch_size", "numpy.int64; use a Python int"),
    ({"data.num_clients": np.int32(4)}, "data.num_clients", "numpy.int32; use a Python int"),
    ({"server_optimizer.learning_rate": np.float32(0.1)}, "server_optimizer.learning_rate",
     "numpy.float32; use a Python float"),
    ({"progress_bar": np.bool_(True)}, "progress_bar", "numpy.bool; use a Python bool"),
    ({"progress_bar": 1}, "progress_bar", "must be true or false, got 1"),
    ({"data.name": 5}, "data.name", "must be a string, got 5"),
    ({"batch_size": (32,)}, "batch_size", "must be an integer, got (32,)"),
    ({"server_optimizer.momentum": [0.9]}, "server_optimizer.momentum", "finite number"),
    ({"model.hidden_sizes": 64}, "model.hidden_sizes", "must be a tuple, got 64"),
    ({"model.hidden_sizes": (64, "a")}, "model.hidden_sizes",
     "element [1] must be an integer, got 'a' (str)"),
    ({"model.hidden_sizes": (64, True)}, "model.hidden_sizes",
     "element [1] must be an integer, got True (bool)"),
    ({"model.cnn_features": (32, 6.5)}, "model.cnn_features", "element [1] must be an integer"),
    ({"model.resnet_widths": (16, np.int64(32))}, "model.resnet_widths",
     "element [1]: got np.int64(32), a numpy.int64; use a Python int"),
    ({"split.client_lr_multipliers": (1.0,) * 9 + (True,)}, "split.client_lr_multipliers",
     "element [9] must be a number, got True (bool)"),
    ({"split.client_lr_multipliers": (1.0,) * 9 + ("2",)}, "split.client_lr_multipliers",
     "element [9] must be a number, got '2' (str)"),
    ({"model.client_width_groups": ((5, np.float32(0.5)), (5, 1.0))},
     "model.client_width_groups", "element [0][1]: got np.float32(0.5), a numpy.float32"),
    ({"data": 5}, "data", "must be a section (ConfigDict), got 5"),
    ({"data.synthetic.max_examples": math.inf}, "data.synthetic.max_examples", "integer"),
    ({"server_optimizer.learning_rate": math.nan}, "server_optimizer.learning_rate",
     "must be a finite number, got nan"),
]

# One past each upper bound (and the rules found on the way): (override, field, fragment).
TOO_LARGE = [
    ({"seed": 2**32}, "seed", "<= 4294967295 (JAX's PRNG keys keep 32 bits"),
    ({"seed": 2**63}, "seed", "<= 4294967295"),
    ({"batch_size": 65_537}, "batch_size", "<= 65536"),
    ({"eval_batch_size": 65_537}, "eval_batch_size", "<= 65536"),
    ({"data.num_clients": 100_001}, "data.num_clients", "<= 100000"),
    ({"num_steps": 2**31}, "num_steps", "<= 2147483647"),
    ({"log_every": 2**31}, "log_every", "<= 2147483647"),
    ({"eval_every": 2**31}, "eval_every", "<= 2147483647"),
    ({"checkpoint_every": 2**31}, "checkpoint_every", "<= 2147483647"),
    ({"model.hidden_sizes": (64, 65_537)}, "model.hidden_sizes", "integers >= 1 and <= 65536"),
    ({"model.hidden_sizes": (8,) * 65}, "model.hidden_sizes", "at most 64 integers"),
    ({"model.cnn_features": (4_097,)}, "model.cnn_features", "<= 4096"),
    ({"model.cnn_dense": 65_537}, "model.cnn_dense", "<= 65536"),
    ({"model.resnet_widths": (16, 4_097)}, "model.resnet_widths", "<= 4096"),
    ({"model.resnet_blocks_per_stage": 65}, "model.resnet_blocks_per_stage", "<= 64"),
    ({"data.synthetic.num_features": 1_000_001}, "data.synthetic.num_features", "<= 1000000"),
    ({"data.synthetic.num_classes": 100_001}, "data.synthetic.num_classes", "<= 100000"),
    ({"data.synthetic.max_examples": 10_000_001}, "data.synthetic.max_examples", "<= 10000000"),
    ({"data.synthetic.examples_lognormal_mean": 50.0},
     "data.synthetic.examples_lognormal_mean", "overflow int64"),
    ({"data.synthetic.examples_lognormal_sigma": 5.0},  # mean 4: sigma <= (43 - 4) / 8
     "data.synthetic.examples_lognormal_sigma", "a number in [0, 4.875]"),
    ({"data.synthetic.alpha": 1e7}, "data.synthetic.alpha", "a variance in [0, 1e+06]"),
    ({"data.feature_noise_std": 1e7}, "data.feature_noise_std", "a number in [0, 1e+06]"),
    ({"data.dirichlet_alpha": 1e300}, "data.dirichlet_alpha", "(0, 1e+06]"),
    ({"fl.local_steps": 100_001}, "fl.local_steps", "<= 100000"),
    ({"algorithm": "fedavg", "fl.local_epochs": 1_001}, "fl.local_epochs", "<= 1000"),
    ({"fl.fedrep_head_steps": 100_001}, "fl.fedrep_head_steps", "<= 100000"),
    ({"fl.num_components": 257}, "fl.num_components", "<= 256"),
    ({"algorithm": "splitfed_v1", "num_steps": 2**30, "fl.local_steps": 2},
     "fl.local_steps", "int32"),
    ({"algorithm": "splitfed_v2", "num_steps": 10**7, "fl.local_steps": 100,
      "server_optimizer.schedule": "linear"}, "server_optimizer.schedule", "int32"),
    ({"data.source": "tfds", "data.name": "mnist", "model.name": "cnn",
      "model.cnn_features": (8,) * 5}, "model.cnn_features", "at most 4 blocks keep a pixel"),
    # 'valid': 28 -> 12 -> 4 -> 0 (the third convolution has no 5x5 window left).
    ({"data.source": "tfds", "data.name": "mnist", "model.name": "cnn",
      "model.padding": "valid", "model.cnn_features": (8,) * 3}, "model.cnn_features",
     "trims 4 pixels off and halves the 28x28 mnist images, so at most 2 blocks keep a pixel"),
    ({"model.padding": "full"}, "model.padding", "one of ('same', 'valid')"),
    ({"model.init": "he"}, "model.init", "one of ('flax', 'torch')"),
    ({"data.source": "tfds", "data.name": "mnist,cifar10", "model.name": "cnn"}, "data.name",
     "mixed datasets must share one input shape"),
]


def _with(overrides):
  config = config_base.base_config()
  for field, value in overrides.items():
    *path, leaf = field.split(".")
    section = config
    for part in path:
      section = section[part]
    # Bypass ConfigDict's own type check to test ours (config files can set anything).
    with section.ignore_type():
      section[leaf] = value
  return config


def test_the_base_config_is_valid():
  validation.validate_config(config_base.base_config())


@pytest.mark.parametrize("overrides,field", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_config_names_its_field(overrides, field):
  with pytest.raises(validation.ConfigError) as info:
    validation.validate_config(_with(overrides))
  message = str(info.value)
  assert message.startswith(f"config.{field}:"), message
  assert "\n" not in message


@pytest.mark.parametrize("overrides,field,fragment", WRONG_TYPES + TOO_LARGE,
                         ids=[str(o)[:80] for o, _, _ in WRONG_TYPES + TOO_LARGE])
def test_wrong_types_and_too_large_values_name_the_field_and_what_is_allowed(
    overrides, field, fragment):
  with pytest.raises(validation.ConfigError) as info:
    validation.validate_config(_with(overrides))
  message = str(info.value)
  assert message.startswith(f"config.{field}: "), message
  assert fragment in message, message
  assert "\n" not in message


@pytest.mark.parametrize("overrides", [
    {"seed": 2**32 - 1},
    {"num_steps": 2**31 - 1, "log_every": 2**31 - 1, "eval_every": 2**31 - 1,
     "checkpoint_every": 2**31 - 1},
    {"batch_size": 65_536, "eval_batch_size": 65_536},
    {"fl.local_steps": 100_000, "fl.num_components": 256, "algorithm": "fedem",
     "model.hidden_sizes": (4,), "data.num_clients": 2, "batch_size": 1},
    {"data.synthetic.examples_lognormal_mean": 4.0,
     "data.synthetic.examples_lognormal_sigma": 4.875},
    {"data.source": "tfds", "data.name": "cifar10", "model.name": "cnn",
     "model.cnn_features": (8,) * 5},  # 32 -> 1 pixel: still a feature map
    {"server_optimizer.learning_rate": np.float64(0.1)},  # a Python float subclass
    {"algorithm": "splitfed_v2", "num_steps": 10**7, "fl.local_steps": 100},  # constant
    {"algorithm": "fedem", "fl.local_epochs": 1_000},
])
def test_values_at_the_bounds_are_accepted(overrides):
  validation.validate_config(_with(overrides))


def test_unknown_field_is_rejected_with_the_closest_name():
  config = config_base.base_config()
  config.data.dirichlet_alhpa = 0.1
  with pytest.raises(validation.ConfigError,
                     match="config.data.dirichlet_alhpa: unknown field; did you mean "
                           "'dirichlet_alpha'"):
    validation.validate_config(config)


# ---- memory estimate -------------------------------------------------------------------------


@pytest.mark.parametrize("name,shape,classes,tweaks", [
    ("mlp", (60,), 10, {}),
    ("mlp", (28, 28, 1), 10, {"hidden_sizes": (32, 16, 8)}),
    ("cnn", (28, 28, 1), 10, {}),
    ("cnn", (32, 32, 3), 100, {"cnn_features": (8, 16, 4), "cnn_dense": 33}),
    ("cnn", (28, 28, 1), 10, {"padding": "valid"}),
    ("cnn", (32, 32, 3), 10, {"padding": "valid", "cnn_features": (6, 16)}),
    ("resnet", (32, 32, 3), 10, {}),
    ("resnet", (32, 32, 3), 100, {"resnet_widths": (8, 8, 16), "resnet_blocks_per_stage": 2}),
])
def test_block_param_counts_match_the_models(name, shape, classes, tweaks):
  model_config = config_base.base_config().model
  model_config.name = name
  for key, value in tweaks.items():
    model_config[key] = value
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  real = []
  for block in models.make_blocks(model_config, classes):
    params = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
    real.append(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
    x = jax.eval_shape(block.apply, params, x)
  assert memory.block_param_counts(model_config, shape, classes) == real


def test_memory_estimate_counts_copies_and_optimizer_slots():
  config = _with({"algorithm": "local", "data.num_clients": 7})
  sgd = memory.memory_estimate(config)
  total = sum(memory.block_param_counts(config.model, (60,), 10))
  assert sgd.client_state == 7 * total * 4 and sgd.client_params == total
  config.client_optimizer.name = "adam"
  assert memory.memory_estimate(config).client_state == 3 * sgd.client_state
  mtsl = memory.memory_estimate(_with({"data.num_clients": 7}))  # u-shaped: first + head
  counts = memory.block_param_counts(config.model, (60,), 10)
  assert mtsl.client_state == 7 * (counts[0] + counts[-1]) * 4
  assert mtsl.server_state == counts[1] * 4


# (overrides, the field named): each makes one part of the bound the largest.
MEMORY_HOGS = [
    ({"algorithm": "local", "data.num_clients": 5000, "model.hidden_sizes": (512, 512)},
     "data.num_clients"),
    ({"model.hidden_sizes": (64, 4096, 4096, 64)}, "model.hidden_sizes"),
    ({"batch_size": 65_536, "data.num_clients": 100}, "batch_size"),
    ({"data.synthetic.max_examples": 1_000_000, "data.synthetic.num_features": 1000,
      "data.synthetic.examples_lognormal_mean": 20.0}, "data.synthetic.max_examples"),
]


@pytest.mark.parametrize("overrides,field", MEMORY_HOGS, ids=[f for _, f in MEMORY_HOGS])
def test_a_run_that_cannot_fit_in_memory_is_refused_naming_its_driver(
    monkeypatch, overrides, field):
  monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 64 * 2**20)  # 64 MiB
  validation.validate_config(config_base.base_config())  # the default needs ~2 MiB
  with pytest.raises(validation.ConfigError) as info:
    validation.validate_config(_with(overrides))
  message = str(info.value)
  assert message.startswith(f"config.{field}: the run needs at least "), message
  assert "more than this machine's 64.0 MiB" in message


def test_sharded_runs_are_not_held_to_one_machine(monkeypatch):
  monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 64 * 2**20)
  config = _with({"algorithm": "local", "data.num_clients": 5000})
  config.parallel.client_devices = 0  # the state is split over devices (and hosts)
  validation.validate_config(config)


def test_an_absurd_model_is_refused_on_any_real_machine():
  config = _with({"algorithm": "local", "data.num_clients": 100_000,
                  "model.hidden_sizes": (65_536, 65_536)})  # 4.3e9 parameters per client
  with pytest.raises(validation.ConfigError, match=r"^config\.data\.num_clients: the run needs "
                                                   r"at least [\d.]+ [TP]iB"):
    validation.validate_config(config)


def test_per_task_label_spaces_with_a_server_held_head_are_rejected():
  config = _with({"split.orientation": "bottom", "split.client_top_blocks": 0})
  with pytest.raises(validation.ConfigError, match="config.split.orientation"):
    validation.validate_label_spaces(config, [10, 10, 5])
  validation.validate_label_spaces(config, [10, 10, 10])


def _launch(*args):
  return subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_launcher_reports_a_bad_override_in_one_line_without_traceback(tmp_path):
  proc = _launch("--config", "configs/test.py", "--workdir", str(tmp_path),
                 "--config.server_optimizer.learning_rate=-1.0")
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: config.server_optimizer.learning_rate: must be a number > 0")
  assert not (tmp_path / "checkpoints").exists()  # failed before anything was built


def test_launcher_trains_the_test_config_and_resumes(tmp_path):
  proc = _launch("--config", "configs/test.py", "--workdir", str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  assert "per-task test accuracy" in proc.stdout
  again = _launch("--config", "configs/test.py", "--workdir", str(tmp_path))
  assert again.returncode == 0, again.stderr
  assert "resuming from step 40" in again.stdout


def test_split_checks_apply_only_to_methods_that_split():
  config = _with({"split.orientation": "bottom", "algorithm": "fedavg"})  # top blocks 1
  validation.validate_config(config)
  validation.validate_label_spaces(config, [10, 10, 5])
  config.algorithm = "splitfed_v1"
  with pytest.raises(validation.ConfigError, match="config.split.client_top_blocks"):
    validation.validate_config(config)
