"""Models: block counts, output shapes, the two convolution implementations, max-pool."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import config_base, models


@pytest.mark.parametrize("padding", models.PADDINGS)
@pytest.mark.parametrize("kernel,stride,size,cin", [
    ((5, 5), (1, 1), 28, 1), ((3, 3), (2, 2), 9, 3), ((3, 3), (2, 2), 8, 4),
    ((1, 1), (2, 2), 7, 5), ((3, 5), (1, 2), 10, 2)])
def test_patch_convolution_equals_xla_convolution(kernel, stride, size, cin, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size + 1, cin))
  xla = models.Conv2D(6, kernel, stride, impl="xla", padding=padding)
  patches = models.Conv2D(6, kernel, stride, impl="patches", padding=padding)
  params = xla.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  a, b = xla.apply(params, x), patches.apply(params, x)
  assert a.shape == b.shape
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  ga = jax.grad(lambda p: jnp.sum(xla.apply(p, x) ** 2))(params)
  gb = jax.grad(lambda p: jnp.sum(patches.apply(p, x) ** 2))(params)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(u, v, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("size", [(28, 28), (14, 14), (7, 9)])
def test_reshape_max_pool_equals_flax_max_pool(size):
  x = jax.random.normal(jax.random.PRNGKey(0), (2,) + size + (3,))  # no ties
  flax_pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(models.max_pool_2x2(x), flax_pool(x))
  grad = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x)
  np.testing.assert_array_equal(grad(models.max_pool_2x2), grad(flax_pool))


@pytest.mark.parametrize("name,input_shape", [
    ("mlp", (60,)), ("mlp", (28, 28, 1)), ("cnn", (28, 28, 1)), ("cnn", (32, 32, 3)),
    ("resnet", (32, 32, 3))])
def test_block_lists_have_the_announced_length_and_output_logits(name, input_shape):
  c = config_base.base_config().model
  c.name = name
  c.hidden_sizes, c.cnn_features, c.cnn_dense, c.resnet_widths = (8,), (4, 8), 16, (4, 8, 8)
  blocks = models.make_blocks(c, 7)
  assert len(blocks) == models.num_blocks(c)
  stack = models.BlockStack(tuple(blocks))
  x = jnp.zeros((2,) + input_shape)
  out = jax.eval_shape(lambda: stack.apply(stack.init(jax.random.PRNGKey(0), x), x))
  assert out.shape == (2, 7) and out.dtype == jnp.float32


def test_empty_block_stack_is_the_identity_without_parameters():
  stack = models.BlockStack(())
  x = jnp.arange(6.0).reshape(2, 3)
  params = stack.init(jax.random.PRNGKey(0), x)
  assert jax.tree.leaves(params) == []
  np.testing.assert_array_equal(stack.apply(params, x), x)


def test_auto_conv_impl_picks_patches_on_cpu():
  assert jax.default_backend() == "cpu"
  assert models.resolve_conv_impl("auto") == "patches"
  assert models.resolve_conv_impl("xla") == "xla"


def _primitives(fn, *args) -> set[str]:
  """Every primitive of fn's jaxpr, sub-jaxprs included."""
  from jax.extend import core as jax_core  # pylint: disable=import-outside-toplevel

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn.primitive.name
      for sub in jax_core.jaxprs_in_params(eqn.params):
        yield from walk(sub)

  return set(walk(jax.make_jaxpr(fn)(*args).jaxpr))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_forward_only_convolutions_pick_xla_for_shared_kernels_patches_for_vmapped(padding):
  """Inside `forward_only`, 'auto' on the CPU: a kernel shared by the (vmapped) batch runs
  XLA's convolution on the folded batch, per-client kernels the patches product; nested
  vmaps (replicas of clients) too; the values are lax.conv's."""
  conv = models.Conv2D(6, (5, 5), padding=padding)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 12, 12, 4))
  params = jax.vmap(lambda k: conv.init(k, x[0]))(jax.random.split(jax.random.PRNGKey(1), 3))
  shared = jax.tree.map(lambda p: p[0], params)
  reference = models.Conv2D(6, (5, 5), padding=padding, impl="xla")
  with models.forward_only():
    per_client = lambda: jax.vmap(conv.apply)(params, x)
    one_kernel = lambda: jax.vmap(lambda xm: conv.apply(shared, xm))(x)
    nested = lambda: jax.vmap(jax.vmap(conv.apply))(
        jax.tree.map(lambda p: jnp.stack([p, p]), params), jnp.stack([x, x]))
    assert "conv_general_dilated" not in _primitives(per_client)
    assert "conv_general_dilated" in _primitives(one_kernel)
    np.testing.assert_allclose(per_client(), jax.vmap(reference.apply)(params, x),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one_kernel(), reference.apply(shared, x.reshape(6, 12, 12, 4))
                               .reshape(3, 2, *one_kernel().shape[2:]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nested()[1], per_client(), rtol=1e-5, atol=1e-5)
  # Outside it, training's formulation: patches.
  assert "conv_general_dilated" not in _primitives(
      lambda: jax.vmap(lambda xm: conv.apply(shared, xm))(x))


def test_the_valid_cnn_is_the_fedavg_cnn_of_peer_libraries():
  """conv5x5-32, pool, conv5x5-64, pool, dense 1024->512, dense 10, no padding: 582,026
  parameters on MNIST (PFLlib's and LEAF's FedAvgCNN), where 'same' padding gives 1.66M."""
  config = config_base.base_config().model
  config.name = "cnn"
  x = jnp.zeros((2, 28, 28, 1))
  counts = {}
  for padding in models.PADDINGS:
    config.padding = padding
    stack = models.BlockStack(tuple(models.make_blocks(config, 10)))
    params = stack.init(jax.random.PRNGKey(0), x)
    counts[padding] = models.count_params(params)
    assert stack.apply(params, x).shape == (2, 10)
  assert counts == {"valid": 582_026, "same": 1_663_370}


def test_torch_init_draws_pytorch_default_uniform_fan_in_weights_and_biases():
  config = config_base.base_config().model
  config.name, config.padding, config.init = "cnn", "valid", "torch"
  stack = models.BlockStack(tuple(models.make_blocks(config, 10)))
  params = stack.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  fan_ins = {"blocks_0": 25, "blocks_1": 25 * 32, "blocks_2": 1024, "blocks_3": 512}
  for block, fan_in in fan_ins.items():
    (layer,) = params[block].values()
    bound = 1 / np.sqrt(fan_in)
    for name in ("kernel", "bias"):
      w = np.asarray(layer[name])
      assert np.abs(w).max() <= bound
      if w.size > 1000:  # uniform on [-b, b]: std b / sqrt(3)
        np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.05)
    assert np.abs(np.asarray(layer["bias"])).max() > bound / 4  # not zeros
  # Flax's default keeps zero biases and LeCun-normal weights, as before the option.
  config.init = "flax"
  stack = models.BlockStack(tuple(models.make_blocks(config, 10)))
  params = stack.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  assert not np.any(np.asarray(params["blocks_2"]["Dense_0"]["bias"]))
