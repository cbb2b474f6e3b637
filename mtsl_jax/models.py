"""Flax models as lists of blocks, so that a split point is just an index.

A model is `make_blocks(model_config, num_classes)`: a list of Flax modules applied one
after another. The last block is always the classification head. `split_model.py` cuts
the list into client bottom, server part and client top (`BlockStack` each), so where the network is
cut is a config value, identical for every algorithm that splits.

Normalization is GroupNorm, not BatchNorm: it keeps no running statistics, so every part
of a split model is a pure function of its parameters and inputs (the usual choice in
federated and split learning for the same reason).
"""

import contextlib
import contextvars
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

MODEL_NAMES = ("mlp", "cnn", "resnet")
CONV_IMPLS = ("auto", "xla", "patches")
PADDINGS = ("same", "valid")
INITS = ("flax", "torch")


def kernel_init(init: str) -> nn.initializers.Initializer:
  """The weight initializer of a dense or convolution layer.

  'flax': LeCun normal (Flax's default). 'torch': PyTorch's default for nn.Linear and
  nn.Conv2d, kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); peers'
  published numbers are trained from it, and early training differs markedly between the
  two (a 25-point gap after one local epoch in one side-by-side check).
  """
  if init == "torch":
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
  return nn.initializers.lecun_normal()


def bias_init(init: str, fan_in: int) -> nn.initializers.Initializer:
  """The bias initializer: zeros ('flax'), or PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  if init != "torch":
    return nn.initializers.zeros
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def conv_pool_side(side: int, padding: str) -> int:
  """A feature map's side after one CNN block (5x5 convolution, then a 2x2 max-pool)."""
  return (side if padding == "same" else side - 4) // 2


_FORWARD_ONLY = contextvars.ContextVar("mtsl_jax_forward_only", default=False)


@contextlib.contextmanager
def forward_only():
  """Convolutions traced inside are never differentiated (evaluation).

  On the CPU, 'auto' convolutions then take the fastest forward formulation per use:
  XLA's own convolution where the kernel is shared by the batch (a server part, a global
  model: 2.7x the patches formulation for a FedAvg CNN's forward), the patches
  formulation where `vmap` gives every client its own kernel (XLA:CPU's grouped
  convolution is slower there); see `_forward_conv`. Tracing a gradient of such a
  convolution raises (custom_vmap has no reverse-mode rule), so only forward passes may
  be traced inside.
  """
  token = _FORWARD_ONLY.set(True)
  try:
    yield
  finally:
    _FORWARD_ONLY.reset(token)


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'patches' on CPU ('forward' inside `forward_only`), 'xla' on GPU/TPU
  (where XLA's convolutions are fast)."""
  if impl != "auto":
    return impl
  if jax.default_backend() != "cpu":
    return "xla"
  return "forward" if _FORWARD_ONLY.get() else "patches"


def _xla_conv(x, kernel, strides, pads):
  return jax.lax.conv_general_dilated(x, kernel, strides, pads,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches_conv(x, kernel, strides, pads):
  """The kh*kw shifted views of x concatenated, times the kernel as [kh*kw*C, F]."""
  (kh, kw, _, features), (sh, sw) = kernel.shape, strides
  out_h = (x.shape[1] + sum(pads[0]) - kh) // sh + 1
  out_w = (x.shape[2] + sum(pads[1]) - kw) // sw + 1
  xp = jnp.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
  views = [xp[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw, :]
           for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(views, axis=-1) if len(views) > 1 else views[0]
  return patches @ kernel.reshape(-1, features)


@functools.cache
def _forward_conv(strides: tuple[int, int], pads: tuple[tuple[int, int], ...]):
  """A forward-only convolution that picks its formulation by what `vmap` batches.

  Unbatched it is XLA's convolution. Under `vmap`: with a batched kernel (per-client
  kernels) the patches formulation, vmapped; with only the input batched, the mapped
  axis is folded into the examples and the (shared-kernel) convolution called again.
  """
  @jax.custom_batching.custom_vmap
  def conv(x, kernel):
    return _xla_conv(x, kernel, strides, pads)

  @conv.def_vmap
  def rule(axis_size, in_batched, x, kernel):
    del axis_size
    x_batched, kernel_batched = in_batched
    if kernel_batched:
      patches = lambda x, k: _patches_conv(x, k, strides, pads)
      return jax.vmap(patches, in_axes=(0 if x_batched else None, 0))(x, kernel), True
    y = conv(x.reshape((-1,) + x.shape[2:]), kernel)
    return y.reshape(x.shape[:2] + y.shape[1:]), True

  return conv


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA's 'SAME' padding: output ceil(size / stride), the extra pad at the end."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class Conv2D(nn.Module):
  """2-D convolution ('SAME' or 'VALID' padding) with two interchangeable implementations.

  'xla' calls `lax.conv_general_dilated`. 'patches' gathers the kh*kw shifted (strided)
  views of the input into one [N, H', W', kh*kw*C] tensor and multiplies it by the kernel
  reshaped to [kh*kw*C, F]. On CPU the latter is several times faster for training, above
  all under `vmap` over per-client kernels, where XLA's CPU grouped convolution (and its
  weight gradient) is very slow; see benchmarks. 'auto' inside `forward_only` (evaluation)
  takes 'forward': XLA's convolution for a shared kernel, patches for vmapped ones. All
  use the same parameters (kernel [kh, kw, C, F], bias [F]) and agree to float rounding
  (tested).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  use_bias: bool = True
  impl: str = "auto"
  dtype: jnp.dtype = jnp.float32
  padding: str = "same"
  init_scheme: str = "flax"  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    sh, sw = self.strides
    fan_in = kh * kw * x.shape[-1]
    kernel = self.param("kernel", kernel_init(self.init_scheme),
                        (kh, kw, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.padding == "same":
      pads = [_same_padding(x.shape[1], kh, sh), _same_padding(x.shape[2], kw, sw)]
    else:
      pads = [(0, 0), (0, 0)]
    impl = resolve_conv_impl(self.impl)
    if impl == "xla":
      y = _xla_conv(x, kernel, (sh, sw), pads)
    elif impl == "forward":
      y = _forward_conv((sh, sw), tuple(tuple(p) for p in pads))(x, kernel)
    else:
      y = _patches_conv(x, kernel, (sh, sw), pads)
    if self.use_bias:
      y = y + self.param("bias", bias_init(self.init_scheme, fan_in),
                         (self.features,)).astype(self.dtype)
    return y


def _dense(features: int, init: str, fan_in: int, dtype) -> nn.Dense:
  if init == "flax":  # Flax's own defaults, as every run before `model.init` existed
    return nn.Dense(features, dtype=dtype)
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init(init),
                  bias_init=bias_init(init, fan_in))


class DenseBlock(nn.Module):
  """Flatten (if needed), dense layer, ReLU."""
  features: int
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "flax"  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return nn.relu(_dense(self.features, self.init_scheme, x.shape[-1], self.dtype)(x))


class Head(nn.Module):
  """Flatten (global-average-pool for feature maps) and a linear classifier.

  Logits are returned in float32 whatever the compute dtype, so the loss is stable.
  """
  num_classes: int
  pool: bool = False
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "flax"  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x):
    x = x.mean(axis=(1, 2)) if self.pool else x.reshape(x.shape[0], -1)
    dense = _dense(self.num_classes, self.init_scheme, x.shape[-1], self.dtype)
    return dense(x).astype(jnp.float32)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2 and 'VALID' padding over [N, H, W, C].

  The same values as `nn.max_pool(x, (2, 2), strides=(2, 2))`, computed as a reshape and
  a max: its gradient is an elementwise mask, where `reduce_window`'s is a
  `select_and_scatter`, which XLA:CPU runs about 3x slower (the CNN step at M = 10 is
  ~1.3x faster with this; benchmarks/RESULTS.md). Only at exact ties within a window do
  the gradients differ: shared among the tied inputs here, all to the first one there
  (both are subgradients).
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ConvPoolBlock(nn.Module):
  """5x5 convolution, ReLU, 2x2 max-pool (the classic FedAvg CNN layer).

  'same' padding keeps the side before the pool; 'valid' (the FedAvg CNN of McMahan et
  al. as PFLlib and LEAF implement it) trims 4 pixels: 28 -> 24 -> 12 -> 8 -> 4.
  """
  features: int
  conv_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32
  padding: str = "same"
  init_scheme: str = "flax"  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x):
    x = nn.relu(Conv2D(self.features, (5, 5), impl=self.conv_impl, dtype=self.dtype,
                       padding=self.padding, init_scheme=self.init_scheme)(x))
    return max_pool_2x2(x)


class ResNetStem(nn.Module):
  """3x3 convolution, GroupNorm, ReLU."""
  features: int
  conv_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "flax"  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x):
    x = Conv2D(self.features, (3, 3), use_bias=False, impl=self.conv_impl, dtype=self.dtype,
               init_scheme=self.init_scheme)(x)
    return nn.relu(nn.GroupNorm(num_groups=min(8, self.features), dtype=self.dtype)(x))


class ResNetStage(nn.Module):
  """`num_blocks` pre-activation-free basic residual blocks; the first may downsample."""
  features: int
  num_blocks: int
  stride: int
  conv_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "flax"  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x):
    groups = min(8, self.features)
    for i in range(self.num_blocks):
      stride = self.stride if i == 0 else 1
      conv = lambda s: Conv2D(self.features, (3, 3), strides=(s, s), use_bias=False,
                              impl=self.conv_impl, dtype=self.dtype,
                              init_scheme=self.init_scheme)
      y = nn.relu(nn.GroupNorm(num_groups=groups, dtype=self.dtype)(conv(stride)(x)))
      y = nn.GroupNorm(num_groups=groups, dtype=self.dtype)(conv(1)(y))
      if x.shape[-1] != self.features or stride != 1:
        x = Conv2D(self.features, (1, 1), strides=(stride, stride), use_bias=False,
                   impl=self.conv_impl, dtype=self.dtype, init_scheme=self.init_scheme)(x)
      x = nn.relu(x + y)
    return x


class BlockStack(nn.Module):
  """Applies `blocks` in order; an empty stack is the identity with no parameters."""
  blocks: Sequence[nn.Module]

  @nn.compact
  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    return x


def make_blocks(config: ml_collections.ConfigDict, num_classes: int) -> list[nn.Module]:
  """Builds the block list of `config.name`.

  Args:
    config: the `model` section of the experiment config.
    num_classes: output size of the head (the largest label space over tasks).

  Returns:
    A list of unbound Flax modules; the last one is the head.
  """
  dtype, impl = jnp.dtype(config.dtype), config.conv_impl
  init = config.get("init", "flax")
  if config.name == "mlp":
    blocks = [DenseBlock(h, dtype=dtype, init_scheme=init) for h in config.hidden_sizes]
    return blocks + [Head(num_classes, dtype=dtype, init_scheme=init)]
  if config.name == "cnn":
    padding = config.get("padding", "same")
    blocks = [ConvPoolBlock(f, conv_impl=impl, dtype=dtype, padding=padding, init_scheme=init)
              for f in config.cnn_features]
    return blocks + [DenseBlock(config.cnn_dense, dtype=dtype, init_scheme=init),
                     Head(num_classes, dtype=dtype, init_scheme=init)]
  if config.name == "resnet":
    widths = config.resnet_widths
    blocks = [ResNetStem(widths[0], conv_impl=impl, dtype=dtype, init_scheme=init)]
    blocks += [ResNetStage(w, config.resnet_blocks_per_stage, stride=1 if i == 0 else 2,
                           conv_impl=impl, dtype=dtype, init_scheme=init)
               for i, w in enumerate(widths)]
    return blocks + [Head(num_classes, pool=True, dtype=dtype, init_scheme=init)]
  raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {config.name!r}")


def num_blocks(config: ml_collections.ConfigDict) -> int:
  """Number of blocks `make_blocks` returns, known without building anything."""
  if config.name == "mlp":
    return len(config.hidden_sizes) + 1
  if config.name == "cnn":
    return len(config.cnn_features) + 2
  if config.name == "resnet":
    return len(config.resnet_widths) + 2
  raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {config.name!r}")


def count_params(tree) -> int:
  """Number of parameters in a parameter tree (arrays or their abstract shapes).

  Args:
    tree: a pytree whose leaves have a `.shape`.

  Returns:
    The total number of entries over the leaves.
  """
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
