"""Gradient inversion of a FedAvg client's update: the reference point for MTSL's leakage.

Under FedAvg the server sees each client's model update. With one local step (FedSGD)
the update is -η times the gradient g = ∇_θ L(θ; x, y) of the client's minibatch loss at
the global model θ the server itself sent, so the server can search for inputs whose
gradient matches it: "Deep Leakage from Gradients" (DLG, Zhu, Liu & Han, NeurIPS 2019),
with the labels read off the gradient as in iDLG (Zhao, Mopuri & Bilen, 2020).

  * labels: for one example, the head's bias gradient is p - onehot(y), negative only at
    y, so y is exact (iDLG). For several, the attack optimizes soft labels with the
    inputs (DLG);
  * inputs: dummy inputs x' (N(0, 1)) minimize ||∇_θ L(θ; x', y') - g||² by Adam (the
    original uses L-BFGS; Adam is steadier on float32), all iterations in one jitted scan;
  * scores: `reconstruction.score` of x' against x (PSNR, SSIM, a fixed classifier's
    accuracy), each true example paired with its closest reconstruction (the batch's
    order is not identifiable from a summed gradient).
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize

from mtsl_jax import task_losses


@dataclasses.dataclass(frozen=True)
class InversionBudget:
  """The attacker's optimization.

  Attributes:
    iterations: Adam iterations.
    learning_rate: Adam's rate on the dummy inputs (and soft labels).
    seed: the dummy data's PRNG seed.
  """
  iterations: int = 1000
  learning_rate: float = 0.1
  seed: int = 0


def client_gradient(apply, params, x: jax.Array, y: jax.Array, num_classes: int):
  """∇_θ of the client's minibatch loss (mean cross-entropy over its label space)."""
  def loss(p):
    return task_losses.masked_cross_entropy(apply(p, x), y, num_classes)
  return jax.grad(loss)(params)


def _head_bias_gradient(grads) -> jax.Array:
  """The bias gradient of the model's last block (its head).

  Blocks are named blocks_0, blocks_1, ...; leaves come in string order of their paths
  (blocks_10 before blocks_2), so the head is found by the block numbers themselves.
  """
  def numbers(path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", jax.tree_util.keystr(path)))
  biases = [(numbers(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(grads)
            if "bias" in jax.tree_util.keystr(path)]
  return max(biases, key=lambda item: item[0])[1]


def invert(apply, params, target_grads, input_shape: tuple[int, ...], batch_size: int,
           num_classes: int, budget: InversionBudget = InversionBudget()):
  """Dummy inputs (and labels) whose gradient at `params` matches `target_grads`.

  Args:
    apply: the model, (params, x [n, ...]) -> logits [n, C].
    params: the global model the client trained from.
    target_grads: the client's gradient (what the server recovers from its update).
    input_shape: one input's shape.
    batch_size: the client's minibatch size n (known to the server: the protocol's).
    num_classes: the label space C.
    budget: the optimization.

  Returns:
    (inputs [n, ...], labels [n]) of the attacker.
  """
  key = jax.random.PRNGKey(budget.seed)
  x0 = jax.random.normal(key, (batch_size,) + tuple(input_shape))
  exact_label = batch_size == 1
  label = jnp.argmin(_head_bias_gradient(target_grads))[None]  # iDLG: p - onehot(y) < 0 at y
  logits0 = jnp.zeros((batch_size, num_classes))

  def objective(variables):
    x, soft = variables
    def loss(p):
      logits = apply(p, x)
      if exact_label:
        return task_losses.masked_cross_entropy(logits, label, num_classes)
      return jnp.mean(optax.softmax_cross_entropy(logits, jax.nn.softmax(soft)))
    grads = jax.grad(loss)(params)
    return sum(jnp.sum((a - b) ** 2) for a, b in
               zip(jax.tree.leaves(grads), jax.tree.leaves(target_grads)))

  tx = optax.adam(budget.learning_rate)

  def step(carry, _):
    variables, opt = carry
    g = jax.grad(objective)(variables)
    updates, opt = tx.update(g, opt, variables)
    return (optax.apply_updates(variables, updates), opt), None

  @jax.jit
  def run(variables):
    (variables, _), _ = jax.lax.scan(step, (variables, tx.init(variables)), None,
                                     length=budget.iterations)
    return variables

  x, soft = run((x0, logits0))
  labels = label if exact_label else jnp.argmax(soft, axis=-1)
  return x, labels


def pair_up(x: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
  """The reconstructions reordered so that each true example meets its closest one."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  r = np.asarray(reconstruction, np.float64)
  flat = r.reshape(len(r), -1)
  cost = ((x[:, None, :] - flat[None, :, :]) ** 2).mean(-1)
  _, columns = optimize.linear_sum_assignment(cost)
  return r[columns]
