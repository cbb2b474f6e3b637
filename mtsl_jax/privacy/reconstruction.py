"""Input reconstruction from smashed data: the inverse-network attack of He et al. (2019).

The server of docs/privacy.md holds auxiliary data from the clients' distribution and can
obtain the client bottom's output on inputs of its choice (query access to B_m, the
"black-box" setting of He, Zhang & Lee, "Model inversion attacks against collaborative
inference", ACSAC 2019). It trains a decoder D on pairs (B_m(x_aux), x_aux) to invert
the bottom, then applies D to the smashed data it actually received. The queries are
answered without the defences (the strongest such attacker): smashed-data noise then
acts only on the received messages, as in training.

Scores of the reconstructions x̂ of the window's inputs x:

  * PSNR and SSIM (`image_metrics`), with the data range of the window's inputs (the
    inputs are the model's standardized ones, not raw pixels);
  * the accuracy of a fixed classifier, trained once on the auxiliary data, on x̂
    against the true labels: how much of what matters about the input survives.

The decoder and the classifier are small MLPs trained with Adam; their sizes and steps
are arguments, stated in the study's records.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtsl_jax import data
from mtsl_jax.privacy import image_metrics, messages


class _MLP(nn.Module):
  """Dense ReLU layers of `hidden` units, then a linear layer of `out` units."""
  hidden: tuple[int, ...]
  out: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.out)(x)


@dataclasses.dataclass(frozen=True)
class AttackBudget:
  """How the attacker trains.

  Attributes:
    decoder_hidden: hidden widths of the decoder.
    decoder_steps: Adam steps of the decoder.
    classifier_hidden: hidden widths of the fixed classifier.
    classifier_steps: its Adam steps.
    batch_size: examples per Adam step.
    learning_rate: Adam's rate (both).
  """
  decoder_hidden: tuple[int, ...] = (256,)
  decoder_steps: int = 600
  classifier_hidden: tuple[int, ...] = (128,)
  classifier_steps: int = 600
  batch_size: int = 128
  learning_rate: float = 1e-3


def _fit(module: nn.Module, inputs: jax.Array, loss_fn, key: jax.Array, steps: int,
         batch_size: int, learning_rate: float):
  """Adam on minibatches of `inputs` (and the targets `loss_fn` indexes); the params."""
  init_key, data_key = jax.random.split(key)
  params = module.init(init_key, inputs[:1])
  tx = optax.adam(learning_rate)

  def step(carry, k):
    params, opt = carry
    idx = jax.random.randint(k, (batch_size,), 0, inputs.shape[0])
    grads = jax.grad(lambda p: loss_fn(p, idx))(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)),
                                jax.random.split(data_key, steps))
  return params


def fit_classifier(aux_x: jax.Array, aux_y: jax.Array, num_classes: int, key: jax.Array,
                   budget: AttackBudget = AttackBudget()):
  """The attacker's fixed classifier on its auxiliary data.

  Args:
    aux_x: auxiliary inputs [n, ...].
    aux_y: their labels [n].
    num_classes: C.
    key: a PRNG key.
    budget: sizes and steps.

  Returns:
    A function inputs [k, ...] -> predicted labels [k].
  """
  module = _MLP(budget.classifier_hidden, num_classes)

  def loss(params, idx):
    logits = module.apply(params, aux_x[idx])
    return optax.softmax_cross_entropy_with_integer_labels(logits, aux_y[idx]).mean()

  params = jax.jit(lambda k: _fit(module, aux_x, loss, k, budget.classifier_steps,
                                  budget.batch_size, budget.learning_rate))(key)
  return jax.jit(lambda x: jnp.argmax(module.apply(params, x), axis=-1))


def fit_decoder(bottom, aux_x: jax.Array, key: jax.Array,
                budget: AttackBudget = AttackBudget()):
  """The inverse network: a decoder from the bottom's outputs back to its inputs.

  Args:
    bottom: the queried client bottom, inputs [k, ...] -> smashed data [k, ...].
    aux_x: auxiliary inputs [n, ...].
    key: a PRNG key.
    budget: sizes and steps.

  Returns:
    A function smashed data [k, ...] -> reconstructed inputs [k, *aux_x.shape[1:]].
  """
  shape = aux_x.shape[1:]
  queried = bottom(aux_x)  # the attacker's queries, answered once
  module = _MLP(budget.decoder_hidden, int(np.prod(shape)))

  def loss(params, idx):
    recon = module.apply(params, queried[idx])
    return jnp.mean((recon - aux_x[idx].reshape((len(idx), -1))) ** 2)

  params = jax.jit(lambda k: _fit(module, queried, loss, k, budget.decoder_steps,
                                  budget.batch_size, budget.learning_rate))(key)
  return jax.jit(lambda s: module.apply(params, s).reshape((s.shape[0],) + shape))


def score(x: np.ndarray, reconstruction: np.ndarray, y: np.ndarray, classify) -> dict:
  """PSNR, SSIM (images of 11 x 11 or more) and the fixed classifier's accuracy.

  Args:
    x: the true inputs [n, ...].
    reconstruction: the attacker's [n, ...].
    y: the true labels [n].
    classify: the fixed classifier (`fit_classifier`).

  Returns:
    {'psnr', 'ssim' (None for non-images), 'classifier_accuracy'}: means over examples
    (PSNR over the finite values; an exact reconstruction is capped at 100 dB).
  """
  x, reconstruction = np.asarray(x, np.float64), np.asarray(reconstruction, np.float64)
  data_range = float(x.max() - x.min()) or 1.0
  images = x.ndim == 4
  # PSNR needs only the per-example MSE: a feature vector is scored as a 1 x d image.
  as_image = (lambda a: a) if images else (lambda a: a.reshape((a.shape[0], 1, -1, 1)))
  psnr = np.minimum(image_metrics.psnr(as_image(x), as_image(reconstruction), data_range),
                    100.0)
  ssim = None
  if images and min(x.shape[1:3]) >= 11:
    ssim = float(np.mean(image_metrics.ssim(x, reconstruction, data_range)))
  accuracy = float(np.mean(np.asarray(classify(jnp.asarray(reconstruction, jnp.float32)))
                           == np.asarray(y)))
  return {"psnr": float(np.mean(psnr)), "ssim": ssim, "classifier_accuracy": accuracy}


def attack_client(config, state, federation: data.Federation, window: messages.Window,
                  client: int = 0, budget: AttackBudget = AttackBudget(),
                  seed: int = 0) -> dict | None:
  """The inverse-network attack on one client's smashed data in a recorded window.

  The auxiliary data are the other clients' test examples (the same distribution, never
  the attacked client's); the decoder queries the client bottom at the window's state.

  Args:
    config: the run's config (MTSL with one client architecture, or SplitFed).
    state: the run's state at the window's start (its client bottom is queried; under
      SplitFed the global client-side model, which the server side averages anyway).
    federation: the run's data.
    window: the recorded window (its 'up/smashed', inputs and labels).
    client: the attacked client.
    budget: the attacker's training.
    seed: the attacker's PRNG seed.

  Returns:
    `score` of the reconstructions, or None when the orientation sends no smashed data.
  """
  received = window.messages.get("up/smashed")
  bottom = messages.client_bottom(config, state, federation, client)
  if received is None or bottom is None:
    return None
  aux_x, _ = auxiliary_data(federation, client)
  classify = fixed_classifier(federation, client, budget, seed)
  decode = fit_decoder(bottom, aux_x, jax.random.fold_in(jax.random.PRNGKey(seed), 1), budget)
  return score(window.x[client], np.asarray(decode(jnp.asarray(received[client]))),
               window.y[client], classify)


def auxiliary_data(federation: data.Federation, client: int) -> tuple[jax.Array, jax.Array]:
  """The attacker's auxiliary data against `client`: every other client's test examples."""
  others = [m for m in range(len(federation.test_x)) if m != client]
  return (jnp.asarray(np.concatenate([federation.test_x[m] for m in others])),
          jnp.asarray(np.concatenate([federation.test_y[m] for m in others])))


def fixed_classifier(federation: data.Federation, client: int,
                     budget: AttackBudget = AttackBudget(), seed: int = 0):
  """The fixed classifier scoring reconstructions of `client`'s inputs (`fit_classifier`
  on `auxiliary_data`, key fold_in(seed, 0)); every attack on a client uses this one."""
  aux_x, aux_y = auxiliary_data(federation, client)
  return fit_classifier(aux_x, aux_y, int(federation.num_classes[client]),
                        jax.random.fold_in(jax.random.PRNGKey(seed), 0), budget)
