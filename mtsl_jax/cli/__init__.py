"""The command-line programs: one module a command, each with its flags and `main`.

`commands.py` holds the console entry points (`mtsl-train`, ...) that `pyproject.toml`
installs and that `launch/*.py` call: each installs the start-up signal handler, then
loads its command module (and with it JAX and TFDS) and runs the module's `main(argv)`
under absl. This `__init__` imports nothing, so that `mtsl_jax.cli.commands` stays light.
"""
