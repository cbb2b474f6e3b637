"""The notebooks run end to end, offline, on CPU, with small parameters (papermill style)."""

import pathlib
import subprocess
import sys

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "tfds"


def execute(name: str, parameters: dict, tmp_path: pathlib.Path) -> nbformat.NotebookNode:
  """Runs notebooks/<name> with `parameters` injected after its 'parameters' cell."""
  nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT / "notebooks")}})
  client.execute()  # raises CellExecutionError if any cell raises
  nbformat.write(nb, tmp_path / name)
  return nb


def _outputs(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))


def test_quickstart_compares_mtsl_and_fedavg(tmp_path):
  on_mnist = (SHARED_TFDS / "mnist").is_dir()
  nb = execute("quickstart.ipynb", {
      "dataset": "mnist" if on_mnist else "synthetic",
      "tfds_data_dir": str(SHARED_TFDS) if on_mnist else "",
      "num_clients": 3, "num_steps": 20, "local_steps": 2, "max_examples_per_client": 300,
      "hidden_sizes": (16, 16), "workdir": str(tmp_path / "runs"),
  }, tmp_path)
  text = _outputs(nb)
  assert "mtsl    mean" in text and "fedavg  mean" in text
  assert (tmp_path / "runs" / "comparison.png").stat().st_size > 1000
  assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
             for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_lr_study_draws_the_heatmap(tmp_path):
  nb = execute("lr_study.ipynb", {
      "num_steps": 20, "eval_every": 10, "server_lrs": [0.1, 0.3], "client_lrs": [0.1, 1.0],
      "target_accuracy": 0.5, "num_clients": 3, "out_dir": str(tmp_path / "out")}, tmp_path)
  text = _outputs(nb)
  assert "4 grid points x 20 steps" in text and "predicted ratio" in text
  assert (tmp_path / "out" / "lr_study.png").stat().st_size > 1000
  rows = (tmp_path / "out" / "lr_study.csv").read_text().splitlines()
  assert len(rows) == 5 and rows[0].startswith("server_lr,client_lr")


def _setup_cell(name: str) -> str:
  nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
  return next(c.source for c in nb.cells if c.cell_type == "code" and "find_spec" in c.source)


def test_the_setup_cells_install_from_repo_url_outside_a_checkout(tmp_path):
  """Outside a clone, with mtsl_jax not importable (a fresh Colab runtime), the setup cell
  asks for `repo_url` instead of failing later on an import; with a URL it pip-installs
  `mtsl_jax[notebooks,<runtime>] @ git+<url>` (the pip call is replaced here: no network)."""
  for name in ("quickstart.ipynb", "lr_study.ipynb"):
    cell = _setup_cell(name)
    fake_pip = ("import subprocess\n"
                "subprocess.run = lambda cmd, check: print('PIP', ' '.join(cmd[3:]))\n"
                "import importlib.util\n"
                "_find = importlib.util.find_spec\n"
                "importlib.util.find_spec = lambda n: None if n == 'mtsl_jax' else _find(n)\n")
    for repo_url in ("", "https://example.org/mtsl_jax.git"):
      code = f"repo_url = {repo_url!r}\n" + fake_pip + cell
      proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, check=False)
      if repo_url:
        assert proc.returncode == 0, proc.stderr
        want = "PIP install -q mtsl_jax[notebooks] @ git+https://example.org/mtsl_jax.git"
        assert want in proc.stdout
        assert "runtime: CPU" in proc.stdout
      else:
        assert proc.returncode != 0 and "set repo_url" in proc.stderr
