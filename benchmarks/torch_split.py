"""A plain PyTorch MTSL step that loops over clients: the baseline `bench_step.py` compares to.

This is how the SplitFed and FedEM reference codes are written: one `nn.Module` and one
optimizer per client, a Python loop over clients every step, and the split crossed by
detaching the activations (`.detach().requires_grad_()`) and passing gradients back by
hand. It computes the same step as `mtsl_jax.split.make_train_step` with SGD on both sides
and uniform task weights (docs/algorithm.md):

  for each client m, at the current server parameters φ:
    smashed = B_m(x_m)                        client bottom forward, sent up
    h = G(smashed)                            server forward, sent down
    f_m = CE(T_m(h), y_m)                     client top forward and loss
    backward through T_m                      ∂f_m/∂ψ_m^t, and the cut gradient at h, sent up
    backward through G                        ∂f_m/∂φ accumulated, cut gradient at smashed down
    backward through B_m                      ∂f_m/∂ψ_m^b
    client m's SGD step on ψ_m with ∇_ψm f_m  (its own loss, unweighted)
  the server's SGD step on φ with Σ_m w_m ∇_φ f_m, w_m = 1/M, once per step.

Client updates inside the loop do not change what later clients see: they touch only
ψ_m, and φ changes only after the loop.

PyTorch is a benchmark-only dependency (not in requirements.txt); `bench_step.py` imports
this module only when torch is installed.
"""

import jax
import numpy as np
import torch
from torch import nn


def _conv_block(in_channels: int, features: int, padding: str = "same") -> nn.Sequential:
  """5x5 convolution ('same' or 'valid'), ReLU, 2x2 max-pool: `models.ConvPoolBlock`."""
  return nn.Sequential(nn.Conv2d(in_channels, features, 5, padding=2 if padding == "same" else 0),
                       nn.ReLU(), nn.MaxPool2d(2))


def make_parts(model: str, hidden_sizes=(200, 200), cnn_features=(32, 64), cnn_dense=512,
               num_classes: int = 10, input_shape=(28, 28, 1), padding: str = "same"):
  """Factories of the U-shaped cut of `model`: one block per client side, the rest served.

  Args:
    model: 'mlp' or 'cnn', as `models.make_blocks` builds them.
    hidden_sizes: the MLP's hidden layers.
    cnn_features: the CNN's convolution widths.
    cnn_dense: the CNN's dense width.
    num_classes: head size.
    input_shape: one example, HWC.
    padding: the CNN's convolutions, 'same' or 'valid' (the unpadded FedAvg CNN of
      PFLlib: 28 -> 24 -> 12 -> 8 -> 4, `config.model.padding`).

  Returns:
    (make_bottom, make_server, make_top): functions returning fresh modules. Inputs are
    NCHW tensors [B, C, H, W].
  """
  h, w, c = input_shape
  if model == "mlp":
    def make_bottom():
      return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, hidden_sizes[0]), nn.ReLU())

    def make_server():
      layers, width = [], hidden_sizes[0]
      for size in hidden_sizes[1:]:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
      return nn.Sequential(*layers)

    def make_top():
      return nn.Linear(hidden_sizes[-1], num_classes)
  elif model == "cnn":
    def make_bottom():
      return _conv_block(c, cnn_features[0], padding)

    def make_server():
      layers = [_conv_block(a, b, padding)
                for a, b in zip(cnn_features[:-1], cnn_features[1:])]
      hh, ww = h, w
      for _ in cnn_features:  # as `models.conv_pool_side`
        hh, ww = [(s if padding == "same" else s - 4) // 2 for s in (hh, ww)]
      return nn.Sequential(*layers, nn.Flatten(),
                           nn.Linear(hh * ww * cnn_features[-1], cnn_dense), nn.ReLU())

    def make_top():
      return nn.Linear(cnn_dense, num_classes)
  else:
    raise ValueError(f"model must be 'mlp' or 'cnn', got {model!r}")
  return make_bottom, make_server, make_top


class TorchMTSL:
  """M clients' bottoms and tops, one server, SGD on each; `step` is one MTSL step.

  Attributes:
    bottoms, tops: per-client modules.
    server: the shared server module.
    client_opts: one SGD optimizer per client (over its bottom and top).
    server_opt: the server's SGD optimizer.
  """

  def __init__(self, model: str, num_clients: int, server_lr: float, client_lr: float,
               device: str = "cpu", **model_kwargs):
    make_bottom, make_server, make_top = make_parts(model, **model_kwargs)
    self.bottoms = [make_bottom().to(device) for _ in range(num_clients)]
    self.tops = [make_top().to(device) for _ in range(num_clients)]
    self.server = make_server().to(device)
    self.client_opts = [torch.optim.SGD(list(b.parameters()) + list(t.parameters()),
                                        lr=client_lr)
                        for b, t in zip(self.bottoms, self.tops)]
    self.server_opt = torch.optim.SGD(self.server.parameters(), lr=server_lr)
    self.weight = 1.0 / num_clients

  def step(self, batches) -> list[float]:
    """One MTSL step on one minibatch per client.

    Args:
      batches: M pairs (x [B, C, H, W] float32, y [B] int64) on the modules' device.

    Returns:
      The M client losses before the step (as the JAX step's 'task_loss').
    """
    self.server_opt.zero_grad(set_to_none=False)
    losses = []
    for m, (x, y) in enumerate(batches):
      self.client_opts[m].zero_grad(set_to_none=True)
      losses.append(split_backward(self.bottoms[m], self.server, self.tops[m], x, y))
      self.client_opts[m].step()
    # Uniform task weights: Σ_m w_m ∇_φ f_m is the accumulated sum times 1/M.
    for p in self.server.parameters():
      p.grad.mul_(self.weight)
    self.server_opt.step()
    # One device-to-host copy per step, not one per client: on a GPU each `.item()` would
    # wait for the device, and that wait belongs to no simulator's algorithm.
    return torch.stack(losses).tolist()


def split_backward(bottom: nn.Module, server: nn.Module, top: nn.Module, x: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
  """One client's forward and backward through the cut, messages passed by hand.

  Adds the gradients of the client's mean cross-entropy to the `.grad` of all three
  modules (the server's accumulate over the clients that call this before it steps).

  Args:
    bottom, server, top: the client bottom, the server part and the client top.
    x: inputs [B, C, H, W].
    y: int64 labels [B].

  Returns:
    The loss (detached, on the modules' device).
  """
  smashed = bottom(x)
  smashed_up = smashed.detach().requires_grad_()         # uplink: smashed data
  h = server(smashed_up)
  h_down = h.detach().requires_grad_()                   # downlink: server output
  loss = nn.functional.cross_entropy(top(h_down), y)
  loss.backward()                                        # top grads, cut grad at h
  h.backward(h_down.grad)                                # server grads, cut grad at smashed
  smashed.backward(smashed_up.grad)                      # bottom grads
  return loss.detach()


def load_stack(module: nn.Module, tree) -> None:
  """Copies one `models.BlockStack`'s parameters into the torch `module` (same layers).

  Flax kernels are [in, out] (convolutions [kh, kw, in, out]) and the CNN flattens HWC;
  torch weights are [out, in] ([out, in, kh, kw]) and flatten CHW, so the dense layer
  after the last convolution has its input rows reordered.

  Args:
    module: the torch module; its Linear and Conv2d layers, in order, match the stack's.
    tree: the stack's parameters, {'params': {'blocks_0': ..., ...}}.
  """
  blocks = tree["params"]
  flax_layers = [layer for b in sorted(blocks, key=lambda n: int(n.rsplit("_", 1)[1]))
                 for _, layer in sorted(blocks[b].items())]
  torch_layers = [l for l in module.modules() if isinstance(l, (nn.Linear, nn.Conv2d))]
  for i, (dst, src) in enumerate(zip(torch_layers, flax_layers)):
    kernel = np.asarray(src["kernel"])
    if kernel.ndim == 4:
      kernel = kernel.transpose(3, 2, 0, 1)
    else:
      prev = torch_layers[i - 1] if i else None
      if isinstance(prev, nn.Conv2d):  # rows are (h, w, c) in flax, (c, h, w) in torch
        cc = prev.out_channels
        side = int(round((dst.in_features // cc) ** 0.5))
        kernel = kernel.reshape(side, side, cc, -1).transpose(2, 0, 1, 3).reshape(
            side * side * cc, -1)
      kernel = kernel.T
    with torch.no_grad():
      dst.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
      dst.bias.copy_(torch.from_numpy(np.array(src["bias"])))


def load_jax_params(sim: TorchMTSL, server_params, client_params) -> None:
  """Copies the library's parameters (φ, stacked ψ) into `sim`, for the equality check.

  Args:
    sim: the PyTorch model to overwrite.
    server_params: φ as `split_model.init_params` returns it.
    client_params: stacked ψ, {'bottom': ..., 'top': ...} with leading axis M.
  """
  load_stack(sim.server, server_params)
  for m, (bottom, top) in enumerate(zip(sim.bottoms, sim.tops)):
    own = jax.tree.map(lambda a, m=m: np.asarray(a)[m], client_params)
    load_stack(bottom, own["bottom"])
    load_stack(top, own["top"])
