"""Config files, overrides and the launchers' command lines: every mistake is one line.

Config files that are missing, not Python, raise, lack get_config() or return the wrong
thing; overrides (in Python and on the command line) with misspelled fields or values of
the wrong type; sweep files likewise. In-process through `mtsl_jax.config_files`, plus a
few real launcher runs asserting exit status 2, no traceback and a last stderr line
`error: ...` naming the file or field. And every config in configs/ still loads and
validates.
"""

import pathlib
import subprocess
import sys

from absl import flags
import ml_collections
import numpy as np
import pytest

from mtsl_jax import config_files, sweeps, validation

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Not the packages' __init__.py (configs/ installs as mtsl_jax.configs).
CONFIGS = sorted((ROOT / "configs").glob("[!_]*.py"))
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("[!_]*.py"))

_BASE = "from mtsl_jax import config_base\n"


# Configs of the user's own data name it on the command line (a directory here).
USER_DATA = {"pfllib_mnist": "data.client_path"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_file_loads_and_validates(path, tmp_path):
  overrides = {USER_DATA[path.stem]: str(tmp_path)} if path.stem in USER_DATA else None
  config = config_files.load_config(str(path), overrides)
  assert config.is_locked  # as config_flags locked it: a misspelled override is an error


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_file_loads_and_every_combination_validates(path):
  config, sweep = config_files.load_sweep_file(str(path))
  for overrides in sweeps.expand(sweep):
    validation.validate_config(config_files.apply_overrides(config, overrides))


# (file contents, or None for no file; a fragment the message must hold after "<path>: ")
BAD_FILES = [
    (None, "no such file"),
    ("def get_config(:\n  pass\n", "line 1: not valid Python: invalid syntax"),
    ("def get_config():\n  return 1\n  oops oops\n", "line 3: not valid Python"),
    ("import not_a_module_anywhere\n", "line 1: loading it raised ModuleNotFoundError: No module "
     "named 'not_a_module_anywhere'"),
    ("x = 1 / 0\n", "line 1: loading it raised ZeroDivisionError: division by zero"),
    ("X = 1\n", "defines no get_config() function"),
    ("get_config = 3\n", "defines no get_config() function"),
    ("def get_config():\n  raise RuntimeError('no\\ndata')\n",
     "line 2: get_config() raised RuntimeError: no data"),
    ("def get_config(variant):\n  return None\n", "get_config() raised TypeError"),
    ("def get_config():\n  return {'batch_size': 3}\n",
     "get_config() must return an ml_collections.ConfigDict built from "
     "config_base.base_config(), got a builtins.dict"),
    ("def get_config():\n  pass\n", "got None (a missing return statement?)"),
    ("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'seed': 1})\n",
     "config.algorithm: missing; start configs from config_base.base_config()"),
    (_BASE + "def get_config():\n  c = config_base.base_config()\n  c.batch_sizee = 3\n"
     "  return c\n", "config.batch_sizee: unknown field; did you mean 'batch_size'?"),
    (_BASE + "import numpy as np\ndef get_config():\n  c = config_base.base_config()\n"
     "  c.batch_size = np.int64(5)\n  return c\n",
     "line 5: get_config() raised TypeError: Could not override field 'batch_size'"),
    (_BASE + "import numpy as np\ndef get_config():\n  c = config_base.base_config()\n"
     "  c.server_optimizer.learning_rate = np.float32(0.1)\n  return c\n",
     "use Python int, float and bool values, not numpy scalars"),
    (_BASE + "import numpy as np, ml_collections\ndef get_config():\n"
     "  c = config_base.base_config()\n  s = c.fl.to_dict()\n  s['local_steps'] = np.int64(5)\n"
     "  c.fl = ml_collections.ConfigDict(s)\n  return c\n",
     "config.fl.local_steps: got np.int64(5), a numpy.int64; use a Python int"),
    (_BASE + "import numpy as np\ndef get_config():\n  c = config_base.base_config()\n"
     "  c.model.hidden_sizes = tuple(np.array([64, 64]))\n  return c\n",
     "config.model.hidden_sizes: element [0]: got np.int64(64), a numpy.int64; use a Python int"),
    (_BASE + "def get_config():\n  c = config_base.base_config()\n  c.batch_size = True\n"
     "  return c\n", "config.batch_size: must be an integer, got True"),
    (_BASE + "def get_config():\n  c = config_base.base_config()\n"
     "  c.model.hidden_sizes = (64, 'a')\n  return c\n",
     "config.model.hidden_sizes: element [1] must be an integer, got 'a' (str)"),
]


@pytest.mark.parametrize("text,fragment", BAD_FILES, ids=[f[:50] for _, f in BAD_FILES])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, text, fragment):
  path = tmp_path / "experiment.py"
  if text is not None:
    path.write_text(text)
  with pytest.raises(validation.ConfigError) as info:
    config_files.load_config_file(str(path))
  message = str(info.value)
  assert isinstance(info.value, config_files.ConfigFileError)
  assert message.startswith(f"{path}: "), message
  assert fragment in message, message
  assert "\n" not in message


def test_a_directory_is_not_a_config_file(tmp_path):
  with pytest.raises(config_files.ConfigFileError, match=r": not a file \(a config file"):
    config_files.load_config_file(str(tmp_path))


def test_the_argument_after_a_colon_goes_to_get_config(tmp_path):
  path = tmp_path / "variants.py"
  path.write_text(_BASE + "def get_config(clients):\n  c = config_base.base_config()\n"
                  "  c.data.num_clients = int(clients)\n  return c\n")
  assert config_files.load_config_file(f"{path}:7").data.num_clients == 7


# (overrides, field named, fragment): what a Python caller's overrides can get wrong.
BAD_OVERRIDES = [
    ({"batch_sizee": 3}, "batch_sizee", "unknown field; did you mean 'batch_size'?"),
    ({"data.nmu_clients": 3}, "data.nmu_clients", "did you mean 'num_clients'?"),
    ({"dta.num_clients": 3}, "dta", "unknown field; did you mean 'data'?"),
    ({"batch_size.value": 3}, "batch_size", "is a value, not a section"),
    ({"batch_size": "abc"}, "batch_size", "must be an integer, got 'abc'"),
    ({"batch_size": 2.5}, "batch_size", "must be an integer, got 2.5"),
    ({"batch_size": True}, "batch_size", "must be an integer, got True"),
    # ConfigDict would store True as 1.0 in a float field; refused before it can.
    ({"server_optimizer.learning_rate": True}, "server_optimizer.learning_rate",
     "must be a finite number, got True"),
    ({"batch_size": [1, 2]}, "batch_size", "must be an integer, got (1, 2)"),
    ({"model.hidden_sizes": 64}, "model.hidden_sizes", "must be a tuple, e.g. '(1, 2)', got 64"),
    ({"model.hidden_sizes": [64, "a"]}, "model.hidden_sizes", "element [1] must be an integer"),
    ({"split.client_lr_multipliers": (1.0, False, 1.0, 1.0)}, "split.client_lr_multipliers",
     "element [1] must be a number, got False (bool)"),
    ({"seed": np.int64(3)}, "seed", "a numpy.int64; use a Python int"),
    ({"progress_bar": np.bool_(False)}, "progress_bar",
     "a numpy.bool; use a Python bool"),
    ({"data": "mnist"}, "data", "must be a section"),
]


@pytest.mark.parametrize("overrides,field,fragment", BAD_OVERRIDES,
                         ids=[str(o)[:60] for o, _, _ in BAD_OVERRIDES])
def test_bad_overrides_name_the_field(overrides, field, fragment):
  with pytest.raises(validation.ConfigError) as info:
    config_files.load_config(str(ROOT / "configs" / "test.py"), overrides)
  message = str(info.value)
  assert message.startswith(f"config.{field}: "), message
  assert fragment in message, message
  assert "\n" not in message


def test_good_overrides_apply_to_a_copy_and_validate():
  base = config_files.load_config_file(str(ROOT / "configs" / "test.py"))
  config = config_files.apply_overrides(
      base, {"data.num_clients": 3, "model.hidden_sizes": [8, 8], "seed": 2**32 - 1})
  validation.validate_config(config)
  assert (config.data.num_clients, config.model.hidden_sizes) == (3, (8, 8))
  assert base.data.num_clients == 4  # the base is untouched


def test_values_made_valid_by_an_override_are_not_refused_early(tmp_path):
  path = tmp_path / "long_warmup.py"  # warmup >= num_steps until the override
  path.write_text(_BASE + "def get_config():\n  c = config_base.base_config()\n"
                  "  c.num_steps = 10\n  c.server_optimizer.warmup_steps = 50\n  return c\n")
  with pytest.raises(validation.ConfigError, match="server_optimizer.warmup_steps"):
    config_files.load_config(str(path))
  config_files.load_config(str(path), {"num_steps": 100})


_SWEEP_BASE = _BASE + "def get_config():\n  return config_base.base_config()\n"
BAD_SWEEPS = [
    (_SWEEP_BASE, "ConfigFileError", "defines no get_sweep() function (a sweep file's returns"),
    (_SWEEP_BASE + "def get_sweep():\n  return [('seed', [0])]\n", "ConfigFileError",
     "get_sweep() must return a dict of field -> list of values, got list"),
    (_SWEEP_BASE + "def get_sweep():\n  return {'seed': []}\n", "ConfigFileError",
     "get_sweep()['seed'] must be a non-empty list of values"),
    (_SWEEP_BASE + "def get_sweep():\n  return {'seed': 3}\n", "ConfigFileError",
     "must be a non-empty list of values, got 3"),
    (_SWEEP_BASE + "def get_sweep():\n  return {'server_optimizer.learning_rte': [0.1]}\n",
     "ConfigError", "config.server_optimizer.learning_rte: unknown field; did you mean "
     "'learning_rate'?"),
    (_SWEEP_BASE + "import numpy as np\ndef get_sweep():\n  return {'seed': list(np.arange(2))}\n",
     "ConfigError", "config.seed: got np.int64(0), a numpy.int64; use a Python int"),
    (_SWEEP_BASE + "def get_sweep():\n  return {'client_optimizer.learning_rate': [0.1, True]}\n",
     "ConfigError", "config.client_optimizer.learning_rate: must be a finite number, got True"),
    (_SWEEP_BASE + "def get_sweep():\n  raise KeyError('lr')\n", "ConfigFileError",
     "line 5: get_sweep() raised KeyError: 'lr'"),
]


@pytest.mark.parametrize("text,kind,fragment", BAD_SWEEPS, ids=[f[:50] for _, _, f in BAD_SWEEPS])
def test_a_bad_sweep_file_is_one_line(tmp_path, text, kind, fragment):
  path = tmp_path / "sweep.py"
  path.write_text(text)
  with pytest.raises(validation.ConfigError) as info:
    config_files.load_sweep_file(str(path))
  assert type(info.value).__name__ == kind
  assert fragment in str(info.value), str(info.value)
  assert "\n" not in str(info.value)


# ---- the command line (in process, on a flag set of its own) --------------------------------

# (arguments after --config configs/test.py, exception type, the message's start)
BAD_COMMAND_LINES = [
    (["--config.batch_size=abc"], validation.ConfigError,
     "config.batch_size: must be an integer, got 'abc' on the command line"),
    (["--config.batch_size=True"], validation.ConfigError,
     "config.batch_size: must be an integer, got 'True' on the command line"),
    (["--config.batch_size=[1,2]"], validation.ConfigError,
     "config.batch_size: must be an integer, got '[1,2]' on the command line"),
    (["--config.server_optimizer.learning_rate=fast"], validation.ConfigError,
     "config.server_optimizer.learning_rate: must be a finite number, got 'fast'"),
    (["--config.progress_bar=maybe"], validation.ConfigError,
     "config.progress_bar: must be true or false, got 'maybe'"),
    (["--config.data=5"], validation.ConfigError, "config.data: must be a section"),
    (["--config.batch_sizee=3"], validation.ConfigError,
     "config.batch_sizee: unknown field; did you mean 'batch_size'?"),
    (["--config.data.nmu_clients=3"], validation.ConfigError,
     "config.data.nmu_clients: unknown field; did you mean 'num_clients'?"),
    (["--config.dta.num_clients=3"], validation.ConfigError,
     "config.dta: unknown field; did you mean 'data'?"),
    (["--workdri=x"], config_files.CommandLineError, "Unknown command line flag 'workdri'"),
    (["--steps=abc"], config_files.CommandLineError,
     "flag --steps=abc: invalid literal for int()"),
]


def _parse(args, config="configs/test.py"):
  flag_values = flags.FlagValues()
  argv = ["prog", *(["--config", str(ROOT / config)] if config else []), *args]
  holder = config_files.DEFINE_config_file("config", "Experiment config.",
                                           flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_integer("steps", 1, "Another flag.", flag_values=flag_values)
  flags.DEFINE_string("workdir", "", "Another flag.", flag_values=flag_values)
  config_files.parse_command_line(argv, flag_values)
  return holder.value


@pytest.mark.parametrize("args,error,start", BAD_COMMAND_LINES,
                         ids=[a[0] for a, _, _ in BAD_COMMAND_LINES])
def test_a_bad_command_line_is_one_exception_of_one_line(args, error, start):
  with pytest.raises(error) as info:
    _parse(args)
  assert str(info.value).startswith(start), str(info.value)
  assert "\n" not in str(info.value)


def test_a_missing_config_file_on_the_command_line_names_it():
  with pytest.raises(config_files.ConfigFileError, match=r"nothere\.py: no such file$"):
    _parse([], config="configs/nothere.py")


def test_good_overrides_on_the_command_line_are_applied_and_locked():
  config = _parse(["--config.data.num_clients=3", "--config.model.hidden_sizes=(8, 4)",
                   "--config.progress_bar=true", "--steps=4"])
  assert isinstance(config, ml_collections.ConfigDict) and config.is_locked
  assert (config.data.num_clients, config.model.hidden_sizes) == (3, (8, 4))
  validation.validate_config(config)


def test_lr_list_flags_must_be_positive_numbers():
  assert config_files.finite_positive_floats(["0.1", "1e-3"], "server_lrs") == [0.1, 0.001]
  for bad in (["0.1", "abc"], ["-1"], ["nan"], ["inf"], []):
    with pytest.raises(config_files.CommandLineError, match="^--server_lrs: "):
      config_files.finite_positive_floats(bad, "server_lrs")


# ---- real launchers ---------------------------------------------------------------------------


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


# (launcher and arguments, what the last stderr line must start with); `{tmp}` is tmp_path.
LAUNCHES = [
    (["launch/train.py", "--config", "configs/test.py", "--config.batch_size=abc"],
     "error: config.batch_size: must be an integer, got 'abc'"),
    (["launch/train.py", "--config", "configs/test.py", "--config.data.nmu_clients=3"],
     "error: config.data.nmu_clients: unknown field; did you mean 'num_clients'?"),
    (["launch/train.py", "--config", "configs/test.py", "--config.seed=4294967296"],
     "error: config.seed: must be an integer >= 0 and <= 4294967295"),
    (["launch/train.py", "--config", "{tmp}/numpy_config.py"],
     "error: {tmp}/numpy_config.py: line 5: get_config() raised TypeError"),
    (["launch/train.py", "--config", "configs/nothere.py"],
     "error: configs/nothere.py: no such file"),
    (["launch/sweep.py", "--sweep", "{tmp}/typo_sweep.py", "--dir", "{tmp}/sweep"],
     "error: config.seeed: unknown field; did you mean 'seed'?"),
    (["launch/lr_sweep.py", "--config", "configs/test.py", "--config.num_stepz=3"],
     "error: config.num_stepz: unknown field; did you mean 'num_steps'?"),
    (["launch/estimate_smoothness.py", "--config", "{tmp}/numpy_config.py"],
     "error: {tmp}/numpy_config.py: line 5:"),
    (["launch/reproduce.py", "--budget_steps=abc", "--results", "{tmp}/runs.jsonl"],
     "error: flag --budget_steps=abc: invalid literal for int()"),
    (["launch/compare_v2.py", "--profile=laptop", "--results", "{tmp}/runs.jsonl"],
     "error: --profile: must be one of ['full', 'cpu', 'gpu', 'test'], got 'laptop'"),
    (["launch/compare_v2.py", "--profile=cpu", "--methods=fedsgd", "--results",
      "{tmp}/runs.jsonl"], "error: --methods: ['fedsgd'] not in profile 'cpu'"),
    (["launch/server_map.py", "--profile=laptop", "--results", "{tmp}/runs.jsonl"],
     "error: --profile: must be one of ['full', 'cpu', 'cnn', 'cpu_cnn', 'test'], got 'laptop'"),
    (["launch/server_map.py", "--settings=iid", "--results", "{tmp}/runs.jsonl"],
     "error: --settings: ['iid'] not in profile 'cpu'"),
    (["launch/privacy.py", "--profile=gpu", "--results", "{tmp}/runs.jsonl"],
     "error: --profile: must be one of ['cpu', 'cpu_fashion_mnist', 'test'], got 'gpu'"),
    (["launch/server_map.py", "--phases=tune,plot", "--results", "{tmp}/runs.jsonl"],
     "error: --phases: unknown ['plot']; allowed: tune, map, ablations, retune, report"),
]


@pytest.mark.parametrize("args,last_line", LAUNCHES, ids=[" ".join(a)[:70] for a, _ in LAUNCHES])
def test_launchers_report_config_mistakes_in_one_line_with_status_2(tmp_path, args, last_line):
  _write(tmp_path, "numpy_config.py", _BASE + "import numpy as np\ndef get_config():\n"
         "  c = config_base.base_config()\n  c.batch_size = np.int64(5)\n  return c\n")
  _write(tmp_path, "typo_sweep.py", _SWEEP_BASE + "def get_sweep():\n  return {'seeed': [0]}\n")
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  if args[0] in ("launch/train.py", "launch/estimate_smoothness.py"):
    args += ["--workdir", str(tmp_path / "work")]
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(last_line.replace("{tmp}", str(tmp_path))), proc.stderr[-2000:]
  assert not (tmp_path / "work").exists() and not (tmp_path / "sweep").exists()  # nothing ran
