"""Models: block counts, output shapes, the two convolution implementations, max-pool."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import config_base, models


@pytest.mark.parametrize("kernel,stride,size,cin", [
    ((5, 5), (1, 1), 28, 1), ((3, 3), (2, 2), 9, 3), ((3, 3), (2, 2), 8, 4),
    ((1, 1), (2, 2), 7, 5), ((3, 5), (1, 2), 10, 2)])
def test_patch_convolution_equals_xla_convolution(kernel, stride, size, cin):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size + 1, cin))
  xla = models.Conv2D(6, kernel, stride, impl="xla")
  patches = models.Conv2D(6, kernel, stride, impl="patches")
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
