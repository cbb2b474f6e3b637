"""`python launch/privacy.py`: mtsl_jax/cli/privacy.py's command from a clone (`--help`).

Installed by pip as `mtsl-privacy`.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# Light (standard library): the command's heavy imports wait for its signal handler.
from mtsl_jax.cli import commands  # pylint: disable=wrong-import-position

if __name__ == "__main__":
  commands.privacy()
