"""Plain PyTorch FedAvg and SplitFed v2 that loop over clients: `bench_rounds.py`'s baselines.

Written as the PFLlib and SplitFed reference codes are: one `nn.Module` and one
`torch.optim.SGD` per client, a Python loop over the clients, NCHW inputs, the model
copied into each client at the start of a round and the server averaging the clients'
models at its end. Each computes what the library's algorithm computes (with SGD; checked
by `bench_rounds.py --check`):

  * `TorchFedAvg.round`, `algorithms/fedavg.py`: every client starts from the global
    model and takes its own sequence of minibatches (any sizes: a local epoch's last,
    smaller batch, as the library's `EpochPlan` masks it, or K drawn minibatches), its
    loss the mean cross-entropy of the batch; the server adds the weighted mean of the
    deltas θ_m - θ, weights n_m / Σ n (renormalized in float32 as `federated.weighted_mean`
    does): the library's server SGD at learning rate 1 (FedOpt form), which is the plain
    weighted average of the client models up to float rounding.
  * `TorchSplitFedV2.round`, `algorithms/splitfed.py` version 2: in a given order, each
    client starts from the global client-side model and takes its split steps against the
    ONE server-side model, the server stepping after every split step with that client's
    gradient; then the client-side models are averaged (plain weighted mean).

MTSL's per-client loop is `torch_split.TorchMTSL` (its `padding='valid'` option builds the
unpadded CNN). PyTorch is a benchmark-only dependency.
"""

import numpy as np
import torch
from torch import nn

import torch_split  # benchmarks/ is on sys.path wherever this module is imported


def make_model(padding: str = "valid", **model_kwargs) -> nn.Sequential:
  """The whole CNN as one module: conv5x5-32, pool, conv5x5-64, pool, dense 512, dense 10.

  Its Linear and Conv2d layers come in the order of the library's `BlockStack`, so
  `torch_split.load_stack` loads the library's full-model parameters into it.

  Args:
    padding: 'valid' (PFLlib's FedAvgCNN, 582,026 parameters) or 'same'.
    **model_kwargs: more arguments of `torch_split.make_parts`.

  Returns:
    The model, on the CPU, PyTorch's default initialization.
  """
  parts = torch_split.make_parts("cnn", padding=padding, **model_kwargs)
  return nn.Sequential(*(make() for make in parts))


def client_tensors(xs, ys, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
  """Per-client (x [n, C, H, W] float32, y [n] int64) tensors from NHWC numpy arrays."""
  # np.array copies: a transposed C = 1 array is still contiguous, and would share the
  # memory of a read-only (JAX) array.
  return [(torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), np.float32)).to(device),
           torch.from_numpy(np.array(y, np.int64)).to(device)) for x, y in zip(xs, ys)]


def epoch_batches(counts, batch_size: int, generator: torch.Generator | None = None,
                  device: str = "cpu") -> list[list[torch.Tensor]]:
  """One local epoch per client as a DataLoader(shuffle=True) without drop_last gives it.

  Args:
    counts: n_m, each client's number of train examples.
    batch_size: B.
    generator: randomness of the shuffles.
    device: where the index tensors live.

  Returns:
    Per client, ceil(n_m / B) index tensors: a random order of range(n_m) in batches of B,
    the last holding the n_m mod B remaining examples when B does not divide n_m.
  """
  return [list(torch.randperm(int(n), generator=generator, device=device).split(batch_size))
          for n in counts]


def drawn_batches(counts, num_steps: int, batch_size: int,
                  device: str = "cpu") -> list[list[torch.Tensor]]:
  """K minibatches per client drawn with replacement, as `data.sample_batches` draws them."""
  return [[torch.randint(0, int(n), (batch_size,), device=device) for _ in range(num_steps)]
          for n in counts]


def renormalized_weights(counts) -> torch.Tensor:
  """n_m / Σ n as the library computes it: in float64, cast to float32, renormalized."""
  w = (np.asarray(counts, np.float64) / np.sum(counts)).astype(np.float32)
  return torch.from_numpy(w / w.sum())


def _copy_into(dst: nn.Module, src: nn.Module) -> None:
  """The server's broadcast: `dst`'s parameters set to `src`'s, in place."""
  with torch.no_grad():
    for p, q in zip(dst.parameters(), src.parameters()):
      p.copy_(q)


def _mean_losses(per_client: list[list[torch.Tensor]]) -> list[float]:
  """Each client's mean loss over its steps, copied to the host once (0 with no steps)."""
  means = [torch.stack(l).mean() if l else torch.zeros(()) for l in per_client]
  return torch.stack(means).tolist()


class TorchFedAvg:
  """A global model and M client models with their SGD optimizers; `round` is one round.

  Attributes:
    global_model: the server's model.
    clients: one model per client.
    opts: one SGD optimizer per client (no momentum: stateless, as the library's fresh
      optimizer state every round).
  """

  def __init__(self, num_clients: int, lr: float, device: str = "cpu", padding: str = "valid"):
    self.global_model = make_model(padding).to(device)
    self.clients = [make_model(padding).to(device) for _ in range(num_clients)]
    self.opts = [torch.optim.SGD(c.parameters(), lr=lr) for c in self.clients]

  def round(self, data, batches, weights: torch.Tensor) -> list[float]:
    """One FedAvg round: local SGD on every client from the global model, then averaging.

    Args:
      data: per client (x [n_m, C, H, W], y [n_m]) on the models' device.
      batches: per client, its steps' example indices into its data (any batch sizes).
      weights: w_m, summing to one (`renormalized_weights`).

    Returns:
      Each client's mean loss over its steps (each measured before its update), as the
      library's 'task_loss'.
    """
    losses = []
    for model, opt, (x, y), steps in zip(self.clients, self.opts, data, batches):
      _copy_into(model, self.global_model)
      own = []
      for idx in steps:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        own.append(loss.detach())
      losses.append(own)
    self._aggregate(weights)
    return _mean_losses(losses)

  def _aggregate(self, weights: torch.Tensor) -> None:
    """θ <- θ + Σ_m w_m (θ_m - θ): `federated.server_step` with server SGD at rate 1."""
    with torch.no_grad():
      for g, *ps in zip(self.global_model.parameters(),
                        *(c.parameters() for c in self.clients)):
        deltas = torch.stack([p - g for p in ps])
        g.add_(torch.tensordot(weights.to(g.device), deltas, dims=1))


class TorchSplitFedV2:
  """SplitFed v2: one server-side model, a global client-side model, M client copies.

  Attributes:
    server: the server-side part (updated after every split step of every client).
    bottom, top: the global client-side model (averaged every round).
    bottoms, tops: each client's copy, with `client_opts` its SGD optimizers.
    server_opt: the server's SGD optimizer.
  """

  def __init__(self, num_clients: int, server_lr: float, client_lr: float,
               device: str = "cpu", padding: str = "valid"):
    make_bottom, make_server, make_top = torch_split.make_parts("cnn", padding=padding)
    self.server = make_server().to(device)
    self.bottom, self.top = make_bottom().to(device), make_top().to(device)
    self.bottoms = [make_bottom().to(device) for _ in range(num_clients)]
    self.tops = [make_top().to(device) for _ in range(num_clients)]
    self.client_opts = [torch.optim.SGD(list(b.parameters()) + list(t.parameters()),
                                        lr=client_lr)
                        for b, t in zip(self.bottoms, self.tops)]
    self.server_opt = torch.optim.SGD(self.server.parameters(), lr=server_lr)

  def round(self, data, batches, order, weights: torch.Tensor) -> list[float]:
    """One SplitFed v2 round.

    Args:
      data: per client (x [n_m, C, H, W], y [n_m]).
      batches: per client, its split steps' example indices into its data.
      order: the clients' turns (a permutation of range(M)).
      weights: w_m, summing to one.

    Returns:
      Each client's mean loss over its split steps (in client order).
    """
    losses = [[] for _ in self.bottoms]
    for m in order:
      m = int(m)
      bottom, top, opt = self.bottoms[m], self.tops[m], self.client_opts[m]
      _copy_into(bottom, self.bottom)
      _copy_into(top, self.top)
      x, y = data[m]
      for idx in batches[m]:
        opt.zero_grad(set_to_none=True)
        self.server_opt.zero_grad(set_to_none=True)
        losses[m].append(torch_split.split_backward(bottom, self.server, top, x[idx], y[idx]))
        self.server_opt.step()  # this client's own gradient, unweighted
        opt.step()
    with torch.no_grad():  # `federated.weighted_mean` of the client-side models
      for glob, copies in ((self.bottom, self.bottoms), (self.top, self.tops)):
        for g, *ps in zip(glob.parameters(), *(c.parameters() for c in copies)):
          g.copy_(torch.tensordot(weights.to(g.device), torch.stack(ps), dims=1))
    return _mean_losses(losses)


def evaluate(model: nn.Module, data, batch_size: int) -> tuple[list[int], list[float]]:
  """Every client's test set through one model, in batches, under `torch.no_grad()`.

  Args:
    model: the (global) model.
    data: per client (x [t_m, C, H, W], y [t_m]).
    batch_size: examples per forward pass.

  Returns:
    (correct predictions, summed cross-entropy) per client, as the library's
    `evaluation.make_evaluate` returns them.
  """
  correct, loss_sum = [], []
  with torch.no_grad():
    for x, y in data:
      c, l = torch.zeros((), dtype=torch.int64), torch.zeros(())
      for i in range(0, y.shape[0], batch_size):
        logits = model(x[i:i + batch_size])
        c = c + (logits.argmax(dim=1) == y[i:i + batch_size]).sum()
        l = l + nn.functional.cross_entropy(logits, y[i:i + batch_size], reduction="sum")
      correct.append(c)
      loss_sum.append(l)
  return torch.stack(correct).tolist(), torch.stack(loss_sum).tolist()
