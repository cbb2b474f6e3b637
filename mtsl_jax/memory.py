"""A lower bound on the memory a run needs, from its config alone.

The bound counts the bytes a run holds at once: the parameters and optimizer slots of
every model copy the algorithm keeps or trains at once, one step's (one round's)
minibatches and, for Synthetic, the padded client arrays, all float32. It needs no data and
no JAX. `validation.validate_config` refuses a config whose bound exceeds the machine's
physical memory (`check_memory`), naming the fields that drive the largest part, instead
of letting it swap or be killed minutes later. Activations, gradients and XLA's buffers
come on top of the bound.
"""

import math
import os
from typing import NamedTuple

from mtsl_jax import errors, methods, models
from mtsl_jax.data import sources, synthetic

_BYTES = 4
# Optimizer state per parameter (optimizers.py): momentum's trace, Adam's two moments.
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2}


class MemoryEstimate(NamedTuple):
  """Lower bounds, in bytes, of what one run holds in memory at once.

  Attributes:
    client_state: parameters and optimizer slots of the per-client model copies.
    server_state: those of the server's (or the global) model.
    batches: one step's (for the federated baselines one round's) minibatches.
    data: the padded client arrays for Synthetic data; 0 for datasets read from disk.
    client_copies: the per-client copies that client_state counts.
    client_params: parameters of one client copy.
  """
  client_state: int
  server_state: int
  batches: int
  data: int
  client_copies: float
  client_params: int

  @property
  def total(self) -> int:
    return self.client_state + self.server_state + self.batches + self.data


def physical_memory_bytes() -> int:
  """The machine's physical memory (what the memory estimate is compared with)."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _input_shape_and_classes(c) -> tuple[tuple[int, ...] | None, int]:
  """One example's shape (None: unknown before loading) and the largest label space."""
  if c.data.source == "synthetic":
    return (c.data.synthetic.num_features,), c.data.synthetic.num_classes
  if c.data.source == "tfds":
    names = c.data.name.split(",")
    return (sources.TFDS_INPUT_SHAPES[names[0]],
            max(sources.TFDS_NUM_CLASSES[n] for n in names))
  return None, 2  # npz, client files: they say; the smallest case keeps this a lower bound


def block_param_counts(model_config, input_shape: tuple[int, ...] | None,
                       num_classes: int) -> list[int]:
  """Parameters of each block `models.make_blocks` builds, counted from the config alone.

  Args:
    model_config: the `model` section (validated).
    input_shape: one example's shape; None when unknown (npz), which counts the smallest
      input (one feature, one 1x1 pixel), so the counts stay lower bounds.
    num_classes: outputs of the head.

  Returns:
    One count per block, in `models.make_blocks`' order.
  """
  m = model_config
  if m.name == "mlp":
    width = math.prod(input_shape) if input_shape else 1
    counts = []
    for units in m.hidden_sizes:
      counts.append(width * units + units)  # kernel and bias
      width = units
    return counts + [width * num_classes + num_classes]
  height, width, channels = input_shape if input_shape and len(input_shape) == 3 else (1, 1, 1)
  if m.name == "cnn":
    counts = []
    for features in m.cnn_features:
      counts.append(25 * channels * features + features)  # 5x5 kernel and bias
      height = models.conv_pool_side(height, m.get("padding", "same"))
      width, channels = models.conv_pool_side(width, m.get("padding", "same")), features
    dense = m.cnn_dense
    return counts + [height * width * channels * dense + dense, dense * num_classes + num_classes]
  widths = m.resnet_widths
  counts = [9 * channels * widths[0] + 2 * widths[0]]  # 3x3 kernel (no bias), GroupNorm
  channels = widths[0]
  for stage, features in enumerate(widths):
    count = 0
    for block in range(m.resnet_blocks_per_stage):
      stride = 2 if stage > 0 and block == 0 else 1
      count += 9 * channels * features + 9 * features * features + 4 * features
      if channels != features or stride != 1:
        count += channels * features  # the shortcut's 1x1 projection
      channels = features
    counts.append(count)
  return counts + [channels * num_classes + num_classes]  # global pool, then dense


def memory_estimate(c) -> MemoryEstimate:
  """A lower bound on the memory a run of `c` needs (see the comment above).

  Args:
    c: a config that passed every other check of `validate_config`.

  Returns:
    The bound, by part.
  """
  input_shape, num_classes = _input_shape_and_classes(c)
  counts = block_param_counts(c.model, input_shape, num_classes)
  n, total = len(counts), sum(counts)
  per_c = 1 + OPTIMIZER_SLOTS.get(c.client_optimizer.name, 0)
  per_s = 1 + OPTIMIZER_SLOTS.get(c.server_optimizer.name, 0)
  num_clients = c.data.num_clients
  client, server = total, 0
  if c.algorithm in methods.SPLIT_ALGORITHMS:
    b, t = c.split.client_bottom_blocks, c.split.client_top_blocks
    client = sum(counts[:b]) + sum(counts[n - t:])
    server = total - client
  copies = float(num_clients)
  if c.algorithm == "mtsl":
    # Narrower client groups hold fewer parameters: at most the configured count times
    # the width ratio squared (a free block's inputs and outputs both scale).
    if c.model.client_width_groups:
      copies = sum(g * min(1.0, r) ** 2 for g, r in c.model.client_width_groups)
    client_state, server_state = copies * client * per_c, server * per_s
  elif c.algorithm == "splitfed_v1":  # a server-side copy per client as well
    client_state, server_state = copies * (client * per_c + server * per_s), total
  elif c.algorithm == "splitfed_v2":
    client_state, server_state = copies * client * per_c, server * per_s + client
  elif c.algorithm == "fedem":
    copies *= c.fl.num_components
    client_state, server_state = copies * total * per_c, c.fl.num_components * total * per_s
  elif c.algorithm == "centralized":
    copies, client_state, server_state = 0.0, 0, total * per_s
  elif c.algorithm == "local":
    client_state, server_state = copies * total * per_c, 0
  else:  # fedavg, fedrep: every client trains a full copy each round
    client_state, server_state = copies * total * per_c, total * per_s
  steps = 1
  # The federated baselines vmap a round's K local steps over ALL M clients, drawing every
  # minibatch of the round at once (local_training.draw_batches: [M, K, B, ...]); with
  # local epochs they gather one step's minibatch at a time (FedRep's head steps are
  # still drawn at once).
  if c.algorithm in methods.ROUND_ALGORITHMS:
    steps = 1 if c.fl.local_epochs else c.fl.local_steps
    steps += c.fl.fedrep_head_steps if c.algorithm == "fedrep" else 0
  example = (math.prod(input_shape) if input_shape else 1) + 1  # inputs and an int32 label
  batches = steps * num_clients * c.batch_size * example
  data_bytes = 0
  if c.data.source == "synthetic":
    s = c.data.synthetic
    sizes = synthetic.client_sizes(num_clients, s.examples_lognormal_mean,
                                   s.examples_lognormal_sigma, s.max_examples, c.seed)
    # Train and test are each padded to their largest client, together >= the largest size.
    data_bytes = num_clients * int(sizes.max()) * s.num_features
  return MemoryEstimate(int(client_state * _BYTES), int(server_state * _BYTES),
                        batches * _BYTES, data_bytes * _BYTES, copies,
                        client if c.algorithm in methods.SPLIT_ALGORITHMS else total)


def _size(num_bytes: float) -> str:
  for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:.1f} {unit}"
  return f"{num_bytes / 2**10:.1f} KiB"


def check_memory(c) -> None:
  """Refuses a config whose memory lower bound exceeds the machine's physical memory.

  Only with `parallel.client_devices` == 1, where one process holds the whole state (a
  multi-process run must shard it); sharded runs hold a share per device and host.

  Args:
    c: a config that passed every other check of `validation.validate_config`.

  Raises:
    errors.ConfigError: naming the field that drives the largest part of the bound.
  """
  if c.parallel.client_devices != 1:
    return
  est, available = memory_estimate(c), physical_memory_bytes()
  if est.total <= available:
    return
  size_field = {"mlp": "model.hidden_sizes", "cnn": "model.cnn_dense",
                "resnet": "model.resnet_widths"}[c.model.name]
  parts = [
      (est.client_state, "data.num_clients",
       f"client state {_size(est.client_state)} ({est.client_copies:g} client copies of "
       f"{est.client_params:,} parameters with the {c.client_optimizer.name!r} optimizer's "
       "state)", f"data.num_clients, the model's size ({size_field}) or the client optimizer"),
      (est.server_state, size_field, f"server state {_size(est.server_state)}",
       f"the model's size ({size_field})"),
      (est.batches, "batch_size", f"minibatches {_size(est.batches)}",
       "batch_size, data.num_clients or fl.local_steps"),
      (est.data, "data.synthetic.max_examples", f"synthetic data {_size(est.data)}",
       "data.synthetic.max_examples, data.synthetic.num_features or data.num_clients"),
  ]
  _, field, _, lower = max(parts, key=lambda part: part[0])
  described = ", ".join(text for size, _, text, _ in parts if size)
  raise errors.ConfigError(field, f"the run needs at least {_size(est.total)} of memory, more "
                           f"than this machine's {_size(available)}: {described}; lower {lower}")
