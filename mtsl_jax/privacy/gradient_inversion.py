"""Gradient inversion of a FedAvg client's update: the reference point for MTSL's leakage.

Under FedAvg the server sees each client's model update. With one local step (FedSGD)
the update is -η times the gradient g = ∇_θ L(θ; x, y) of the client's minibatch loss at
the global model θ the server itself sent, so the server can search for inputs whose
gradient matches it. The attack is "Inverting Gradients" (Geiping, Bauermeister, Dröge &
Moeller, NeurIPS 2020), the scale-free successor of DLG (Zhu, Liu & Han, NeurIPS 2019):

  * labels, restored from the head's gradients before the search: for one example the
    head's bias gradient is p - onehot(y), negative only at y, so y is exact (iDLG, Zhao,
    Mopuri & Bilen, 2020); for a batch, the B classes whose column of the head's weight
    gradient has the most negative entry (Yin et al., "See through gradients", CVPR
    2021), exact when the batch's labels are distinct;
  * inputs: dummy inputs x' (N(0, 1)) minimize the cosine distance
    1 - <∇_θ L(θ; x', y'), g> / (|∇_θ L(θ; x', y')| |g|) plus a total-variation prior on
    images, by Adam with a cosine-decayed rate, all iterations in one jitted scan; a few
    restarts from different dummies (vmapped), the one matching best is kept.

Why not DLG's squared distance: at a trained model the client's gradient is small (its
examples are classified confidently), the squared distance is then minimized by dummies
whose gradient is merely small too, and DLG's reconstructions are no closer to the
inputs than the initial noise (measured on the privacy study's MNIST MLP: PSNR 7 dB,
SSIM 0.01, against 23-27 dB and SSIM 0.91-0.97 for one example with the cosine distance).

Scores: `reconstruction.score` of x' against x (PSNR, SSIM, a fixed classifier's
accuracy), each true example paired with its closest reconstruction (the batch's order is
not identifiable from a summed gradient).
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize

from mtsl_jax import task_losses
from mtsl_jax.privacy import reconstruction


@dataclasses.dataclass(frozen=True)
class InversionBudget:
  """The attacker's optimization.

  Attributes:
    iterations: Adam iterations per restart.
    learning_rate: Adam's initial rate on the dummy inputs (cosine-decayed to 0).
    tv_weight: weight of the total-variation prior (images only; 0: none).
    restarts: dummies optimized side by side; the best-matching one is kept.
    seed: the dummies' PRNG seed.
  """
  iterations: int = 2000
  learning_rate: float = 0.03
  tv_weight: float = 0.01
  restarts: int = 2
  seed: int = 0


def client_gradient(apply, params, x: jax.Array, y: jax.Array, num_classes: int):
  """∇_θ of the client's minibatch loss (mean cross-entropy over its label space)."""
  def loss(p):
    return task_losses.masked_cross_entropy(apply(p, x), y, num_classes)
  return jax.grad(loss)(params)


def _head_leaf(grads, name: str) -> jax.Array:
  """The `name` ('bias' or 'kernel') leaf of the model's last block (its head).

  Blocks are named blocks_0, blocks_1, ...; leaves come in string order of their paths
  (blocks_10 before blocks_2), so the head is found by the block numbers themselves.
  """
  def numbers(path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", jax.tree_util.keystr(path)))
  leaves = [(numbers(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(grads)
            if name in jax.tree_util.keystr(path)]
  return max(leaves, key=lambda item: item[0])[1]


def restore_labels(grads, batch_size: int, num_classes: int) -> jax.Array:
  """The batch's labels as the server reads them off the head's gradients.

  Args:
    grads: the client's gradient.
    batch_size: B.
    num_classes: C (classes beyond the client's label space are never chosen).

  Returns:
    Labels [B]: iDLG's exact label for B = 1; otherwise the B classes whose head-weight
    gradient column has the smallest entry (distinct labels, Yin et al. 2021).
  """
  if batch_size == 1:
    bias = _head_leaf(grads, "bias")[:num_classes]
    return jnp.argmin(bias)[None]   # p - onehot(y) < 0 only at y
  kernel = _head_leaf(grads, "kernel")[..., :num_classes]
  column_min = kernel.reshape((-1, kernel.shape[-1])).min(axis=0)
  return jnp.sort(jnp.argsort(column_min)[:batch_size])


def _total_variation(x: jax.Array) -> jax.Array:
  """Mean absolute difference of neighbouring pixels of images [n, H, W, C]; 0 otherwise."""
  if x.ndim != 4:
    return jnp.zeros(())
  return (jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1]))
          + jnp.mean(jnp.abs(x[:, :, 1:] - x[:, :, :-1])))


def invert(apply, params, target_grads, input_shape: tuple[int, ...], batch_size: int,
           num_classes: int, budget: InversionBudget = InversionBudget()):
  """Dummy inputs whose gradient at `params` matches `target_grads` in direction.

  Args:
    apply: the model, (params, x [n, ...]) -> logits [n, C].
    params: the global model the client trained from.
    target_grads: the client's gradient (what the server recovers from its update).
    input_shape: one input's shape.
    batch_size: the client's minibatch size n (known to the server: the protocol's).
    num_classes: the label space C.
    budget: the optimization.

  Returns:
    (inputs [n, ...], labels [n]) of the attacker: the best-matching restart.
  """
  labels = restore_labels(target_grads, batch_size, num_classes)
  target = jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(target_grads)])
  target_norm = jnp.linalg.norm(target)

  def objective(x):
    grads = jax.grad(lambda p: task_losses.masked_cross_entropy(apply(p, x), labels,
                                                                num_classes))(params)
    flat = jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(grads)])
    cosine = jnp.dot(flat, target) / (jnp.linalg.norm(flat) * target_norm + 1e-12)
    return 1.0 - cosine + budget.tv_weight * _total_variation(x)

  tx = optax.adam(optax.cosine_decay_schedule(budget.learning_rate, budget.iterations))

  def search(x0):
    def step(carry, _):
      x, opt = carry
      updates, opt = tx.update(jax.grad(objective)(x), opt, x)
      return (optax.apply_updates(x, updates), opt), None
    (x, _), _ = jax.lax.scan(step, (x0, tx.init(x0)), None, length=budget.iterations)
    return x, objective(x)

  keys = jax.random.split(jax.random.PRNGKey(budget.seed), budget.restarts)
  starts = jax.vmap(lambda k: jax.random.normal(k, (batch_size,) + tuple(input_shape)))(keys)
  found, values = jax.jit(jax.vmap(search))(starts)
  return found[jnp.argmin(values)], labels


def label_accuracy(true: np.ndarray, restored: np.ndarray) -> float:
  """The fraction of the batch's labels restored, as multisets (order is not known)."""
  true, restored = list(np.asarray(true).tolist()), list(np.asarray(restored).tolist())
  hits = 0
  for label in restored:
    if label in true:
      true.remove(label)
      hits += 1
  return hits / len(restored)


def pair_up(x: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
  """The reconstructions reordered so that each true example meets its closest one."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  r = np.asarray(reconstruction, np.float64)
  flat = r.reshape(len(r), -1)
  cost = ((x[:, None, :] - flat[None, :, :]) ** 2).mean(-1)
  _, columns = optimize.linear_sum_assignment(cost)
  return r[columns]


def attack_batches(apply, params, x: jax.Array, y: jax.Array, num_classes: int,
                   budget: InversionBudget, classify) -> list[dict]:
  """Inverts the FedSGD update of each of several batches, in one compiled program.

  Args:
    apply: the model, (params, x [n, ...]) -> logits [n, C].
    params: the global model the client trained from (the server sent it).
    x: the batches' inputs [batches, n, ...]; y: their labels [batches, n].
    num_classes: the client's label space C.
    budget: the attacker's optimization.
    classify: the fixed classifier scoring the reconstructions
      (`reconstruction.fixed_classifier`).

  Returns:
    Per batch, `reconstruction.score` of its reconstruction (each true example paired
    with its closest one) and 'label_accuracy', the share of its labels restored.
  """
  n, shape = x.shape[1], tuple(x.shape[2:])

  def one(xb, yb):
    target = client_gradient(apply, params, xb, yb, num_classes)
    return invert(apply, params, target, shape, n, num_classes, budget)

  # The batches are vmapped: one trace and one compilation per budget, whatever their number.
  guesses, labels = jax.jit(jax.vmap(one))(x, y)
  guesses, labels = np.asarray(guesses), np.asarray(labels)
  out = []
  for xb, yb, guess, restored in zip(np.asarray(x), np.asarray(y), guesses, labels):
    scores = reconstruction.score(xb, pair_up(xb, guess), yb, classify)
    out.append(dict(scores, label_accuracy=label_accuracy(yb, restored)))
  return out
