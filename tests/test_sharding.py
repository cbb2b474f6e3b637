"""Sharding the client axis over devices gives the same training as one device.

Runs in a subprocess with 8 fake CPU devices (XLA_FLAGS must be set before JAX starts).
"""

import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from mtsl_jax import train, validation
    from tests.test_train import load_config
    assert jax.device_count() == 8, jax.devices()
    results = {}
    for devices in (1, 8):
      config = load_config("test")
      config.data.num_clients = 8
      config.parallel.client_devices = devices
      results[devices] = train.train_and_evaluate(config, f"{sys.argv[1]}/d{devices}",
                                                  verbose=False)
    sharded = results[8].state.clients.params
    leaf = jax.tree.leaves(sharded)[0]
    assert len(leaf.sharding.device_set) == 8, leaf.sharding
    assert leaf.addressable_shards[0].data.shape[0] == 1  # one client per device
    for a, b in zip(jax.tree.leaves(results[1].state), jax.tree.leaves(results[8].state)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[1].eval_metrics["test/accuracy"],
                               results[8].eval_metrics["test/accuracy"])
    # Rerunning the finished sharded run restores its checkpoint straight into place, on
    # the same devices or on one.
    for devices in (8, 1):
      config.parallel.client_devices = devices
      resumed = train.train_and_evaluate(config, f"{sys.argv[1]}/d8", verbose=False)
      leaf = jax.tree.leaves(resumed.state.clients.params)[0]
      assert len(leaf.sharding.device_set) == devices, leaf.sharding
      for a, b in zip(jax.tree.leaves(results[8].state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      np.testing.assert_allclose(resumed.eval_metrics["test/accuracy"],
                                 results[8].eval_metrics["test/accuracy"])
    for algorithm in ("fedavg", "splitfed_v1"):
      runs = []
      for devices in (1, 4):
        config = load_config("test")
        config.algorithm = algorithm
        config.data.num_clients, config.num_steps, config.fl.local_steps = 8, 10, 2
        config.parallel.client_devices = devices
        runs.append(train.train_and_evaluate(config, f"{sys.argv[1]}/{algorithm}{devices}",
                                             verbose=False))
      for a, b in zip(jax.tree.leaves(runs[0].state), jax.tree.leaves(runs[1].state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5,
                                   err_msg=algorithm)
    config = load_config("test")
    config.data.num_clients = 6
    config.parallel.client_devices = 8
    try:
      train.train_and_evaluate(config, f"{sys.argv[1]}/bad", verbose=False)
      raise AssertionError("expected a ConfigError")
    except validation.ConfigError as e:
      assert str(e).startswith("config.parallel.client_devices:"), e
    print("SHARDING-OK")
""")


def test_sharded_clients_train_like_one_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0 and "SHARDING-OK" in proc.stdout, proc.stderr[-3000:]
