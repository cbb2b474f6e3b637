"""The package as users install it: metadata, entry points, configs and data from anywhere.

The installs themselves (`pip install -e ".[test]"`, `pip install <clone>` in a fresh
virtualenv) need the network and minutes, so they are checked by hand (README.md, "Set up
and run"); here: what they are made of, and the commands run from another directory as
an installed package runs them.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from mtsl_jax import config_files
from mtsl_jax.cli import commands

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "tfds"


def _pyproject() -> dict:
  tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
  return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirement_lines(path: pathlib.Path) -> set[str]:
  lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
  return {line for line in lines if line}


def _in_another_directory(tmp_path, code: str, env: dict | None = None):
  """Runs Python `code` in tmp_path with the clone importable, as an install makes it."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
  return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


# ---- metadata ---------------------------------------------------------------------------


def test_requirements_txt_is_the_dependencies_with_the_test_and_notebook_extras():
  project = _pyproject()["project"]
  extras = project["optional-dependencies"]
  own = [r for r in extras["test"] if r.startswith("mtsl_jax[")]
  assert own == ["mtsl_jax[notebooks]"]  # the suite executes the notebooks
  expected = (set(project["dependencies"]) | set(extras["test"]) - set(own)
              | set(extras["notebooks"]))
  assert _requirement_lines(ROOT / "requirements.txt") == expected
  assert not {"pytest", "ipykernel", "nbclient"} & {r.split(">")[0] for r in
                                                    project["dependencies"]}


def test_every_package_directory_is_listed_for_the_wheel():
  listed = set(_pyproject()["tool"]["setuptools"]["packages"])
  found = {".".join(("mtsl_jax",) + p.parent.relative_to(ROOT / "mtsl_jax").parts)
           for p in (ROOT / "mtsl_jax").rglob("__init__.py")}
  found |= {".".join(("mtsl_jax",) + p.parent.relative_to(ROOT).parts)
            for p in (ROOT / "configs").rglob("__init__.py")}
  assert listed == found, "add the new package to [tool.setuptools] packages"


def test_every_entry_point_runs_a_command_module_with_main():
  scripts = _pyproject()["project"]["scripts"]
  assert set(scripts) == {"mtsl-train", "mtsl-sweep", "mtsl-lr-sweep", "mtsl-plot",
                          "mtsl-reproduce", "mtsl-smoothness", "mtsl-compare-v2",
                          "mtsl-server-map", "mtsl-privacy"}
  for target in scripts.values():
    module, _, function = target.partition(":")
    assert module == "mtsl_jax.cli.commands" and callable(getattr(commands, function))
  for launcher in (ROOT / "launch").glob("*.py"):  # each wrapper's command exists
    assert (ROOT / "mtsl_jax" / "cli" / launcher.name).is_file(), launcher.name


def test_importing_the_entry_points_loads_nothing_heavy(tmp_path):
  # The start-up signal handler must be in place before JAX and absl load.
  proc = _in_another_directory(tmp_path, "import sys; from mtsl_jax.cli import commands; "
                               "print(sorted({'jax', 'absl', 'numpy'} & set(sys.modules)))")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]"


# ---- configs from anywhere ----------------------------------------------------------------


def test_config_paths_resolve_here_first_then_in_the_projects_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_files.bundled_configs_dir() == ROOT / "configs"
  assert config_files.find_config_file("configs/test.py") == str(ROOT / "configs" / "test.py")
  assert config_files.find_config_file("configs/sweeps/lr_synthetic.py") == str(
      ROOT / "configs" / "sweeps" / "lr_synthetic.py")
  assert config_files.load_config("configs/test.py").num_steps == 40
  assert config_files.load_sweep_file("configs/sweeps/lr_synthetic.py")[1]
  # A file of that name in the working directory wins over the project's.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "test.py").write_text(
      "from mtsl_jax import config_base\ndef get_config():\n"
      "  c = config_base.base_config()\n  c.num_steps = 7\n  return c\n")
  assert config_files.find_config_file("configs/test.py") == "configs/test.py"
  assert config_files.load_config("configs/test.py").num_steps == 7
  # Only 'configs/...' is looked up there; anything else missing stays missing.
  assert config_files.find_config_file("default.py") == "default.py"
  with pytest.raises(config_files.ConfigFileError, match=r"^configs/nothere\.py: no such file "
                     r"\(nor in the project's configs, "):
    config_files.load_config_file("configs/nothere.py")


def test_the_launcher_trains_from_another_directory(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "train.py"), "--config", "configs/test.py",
       "--workdir", "run", "--config.num_steps=20"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "step 20: per-task test accuracy" in proc.stdout
  assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_an_entry_point_finds_the_config_from_another_directory(tmp_path):
  # As the installed `mtsl-train` runs: the console script calls commands.train().
  proc = _in_another_directory(
      tmp_path, "import sys; from mtsl_jax.cli import commands; sys.argv = ['mtsl-train', "
      "'--config', 'configs/test.py', '--config.batch_size=abc']; commands.train()")
  assert proc.returncode == 2, proc.stderr[-2000:]
  # The file was found and read: the error is the override's, not a missing file's.
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: config.batch_size: must be an integer, got 'abc'"), proc.stderr[-2000:]


# ---- the TFDS data_dir --------------------------------------------------------------------


_LOAD_MNIST_TEST = (
    "from mtsl_jax import config_files, data\n"
    "from mtsl_jax.data import sources\n"
    "config = config_files.load_config('configs/mnist.py')\n"
    "assert config.data.tfds_data_dir == ''\n"
    "try:\n"
    "  x, _ = sources.load_tfds_split('mnist', 'test', config.data.tfds_data_dir)\n"
    "  print('loaded', x.shape)\n"
    "except data.DataError as e:\n"
    "  print('DataError', e)\n")


def test_an_empty_tfds_data_dir_reads_the_tfds_data_dir_environment_variable(tmp_path):
  empty = tmp_path / "no_data_here"
  empty.mkdir()
  proc = _in_another_directory(tmp_path, _LOAD_MNIST_TEST, {"TFDS_DATA_DIR": str(empty)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith("DataError") and f"'{empty}'" in proc.stdout, proc.stdout
  if not (SHARED_TFDS / "mnist").is_dir():
    pytest.skip("no prepared TFDS mnist in ../shared/tfds")
  proc = _in_another_directory(tmp_path, _LOAD_MNIST_TEST, {"TFDS_DATA_DIR": str(SHARED_TFDS)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "loaded (10000, 28, 28, 1)"
