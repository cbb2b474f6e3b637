"""Test-session setup: a persistent XLA compilation cache shared by all tests.

Many tests (and the launcher subprocesses they start, which inherit the environment)
compile the same tiny programs; caching the compiled executables on disk keeps the suite
within minutes on 2 CPU cores. Set before JAX is imported anywhere.
"""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mtsl_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
