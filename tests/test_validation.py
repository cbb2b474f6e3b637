"""Bad configs fail before anything compiles, with one line naming the field."""

import pathlib
import subprocess
import sys

import pytest

from mtsl_jax import config_base, validation

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


def test_unknown_field_is_rejected():
  config = config_base.base_config()
  config.data.dirichlet_alhpa = 0.1
  with pytest.raises(validation.ConfigError, match="config.data.dirichlet_alhpa: unknown"):
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
