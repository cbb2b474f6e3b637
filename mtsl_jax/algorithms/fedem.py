"""FedEM (Marfoq et al., NeurIPS 2021): federated EM over a mixture of shared models.

`config.fl.num_components` = C full models (components) are shared by all clients; client
m's model is the mixture p_m(y|x) = Σ_c π_mc p_c(y|x) with its own weights π_m (state,
[M, C]). One loop step is one round; each sampled client, on its round's K minibatches:

  1. E-step: responsibilities q_ic ∝ π_mc p_c(y_i|x_i) of every component for every
     example, with the components as broadcast (round start);
  2. M-step for π: π_m <- mean_i q_i (over the round's K × B examples);
  3. M-step for the components: K steps of `config.client_optimizer` on each component,
     minimizing mean_i q_ic CE_c(x_i, y_i) (all components vmapped, fresh optimizer states);

then the server averages each component over the sampled clients (weights w_m of
`config.fl.aggregation_weights`, renormalized) and applies `config.server_optimizer` to
the negated mean delta of the stacked components (FedOpt form, as FedAvg). Task m is
evaluated with its mixture; the logits returned are log p_m(y|x), so argmax and
cross-entropy apply unchanged.

With `config.fl.local_epochs` = E > 0 the M-step for the components is E passes over the
client's own examples (`federated.round_epochs`), and the E-step and π update run over
all its examples, which the epochs visit equally often: the paper's E-step.

Simplifications (stated in docs/algorithms.md): with `fl.local_steps`, the E-step and π
update use the round's minibatches, not the client's whole dataset; a server
`grad_clip_norm` clips the stacked components jointly. With C = 1 every responsibility
is 1 and FedEM is FedAvg.
"""

import flax
import jax
import jax.numpy as jnp

from mtsl_jax import data, ledger, methods, models, optimizers, split_state
from mtsl_jax import task_losses
from mtsl_jax.algorithms import federated, local_training
from mtsl_jax.algorithms.base import Algorithm
from mtsl_jax.algorithms.base import aggregation_weights
from mtsl_jax.algorithms.base import take_clients
from mtsl_jax.algorithms.base import task_setup


@flax.struct.dataclass
class FedEMState:
  """Attributes: step, rng, server (components stacked [C, ...] and the server optimizer
  state), pi (mixture weights, float32 [M, C])."""
  step: jax.Array
  rng: jax.Array
  server: split_state.SideState
  pi: jax.Array


def build(config, federation: data.Federation) -> Algorithm:
  """FedEM from a validated config and its federation.

  Args:
    config: experiment config (model, fl, both optimizers, batch size, seed).
    federation: the clients' data.

  Returns:
    An Algorithm whose state is a FedEMState.
  """
  num_classes_M, num_clients, input_shape, _, classes = task_setup(config, federation)
  weights_M = aggregation_weights(config, federation)
  model = local_training.make_full_model(config.model, int(num_classes_M.max()))
  num_components, epochs = config.fl.num_components, config.fl.local_epochs
  local_steps = federated.local_steps(config, federation)
  sampled = methods.num_sampled(config.fl.client_fraction, num_clients)
  client_tx = optimizers.make_optimizer(config.client_optimizer, local_steps)
  server_tx = optimizers.make_optimizer(config.server_optimizer, config.num_steps)

  def init_state():
    # Component c starts from init_key(seed, c): component 0 is FedAvg's initial model.
    # A Python loop, not vmap: C is small and the unbatched initializers compile in less
    # than half the time on CPU.
    components = [local_training.init_model(model, local_training.init_key(config.seed, c),
                                            input_shape) for c in range(num_components)]
    components = jax.tree.map(lambda *leaves: jnp.stack(leaves), *components)
    return FedEMState(step=jnp.zeros((), jnp.int32), rng=local_training.run_key(config.seed),
                      server=split_state.SideState(components, server_tx.init(components)),
                      pi=jnp.full((num_clients, num_components), 1.0 / num_components,
                                       jnp.float32))

  def e_step(components, pi_m, x, y, k_m, valid=None):
    """Responsibilities at the broadcast components, and what they give, on examples x [N, ...].

    Returns (q [C, N], new π_m, the mixture's loss, its accuracy); with `valid` (bool [N])
    the means run over the valid examples only.
    """
    def mean(v, axis=None):  # over the examples: all of them, or the valid ones
      return jnp.mean(v, axis) if valid is None else task_losses.masked_mean(v, valid, axis)

    # log π_mc p_c(y|x_i) for every class, [C, N, L].
    joint_all = jnp.log(pi_m)[:, None, None] + jax.vmap(
        lambda p: task_losses.class_log_probs(model.apply(p, x), k_m))(components)
    joint = jnp.take_along_axis(joint_all, y[None, :, None], axis=-1)[..., 0]
    log_mix = jax.nn.logsumexp(joint, axis=0)  # log p_m(y_i|x_i), [N]
    resp = jnp.exp(joint - log_mix[None])  # q_ic, [C, N]
    new_pi = mean(resp, axis=1)
    # The mixture's accuracy on the examples used (before the update).
    mix_logits = jax.nn.logsumexp(joint_all, axis=0)
    acc = mean(task_losses.masked_predictions(mix_logits, k_m) == y)
    return resp, new_pi, -mean(log_mix), acc

  def train_client(components, pi_m, x_m, y_m, k_m):
    """One client's round: x_m [K, B, ...], y_m [K, B]."""
    resp, new_pi, loss, acc = e_step(components, pi_m, x_m.reshape((-1,) + x_m.shape[2:]),
                                     y_m.reshape(-1), k_m)
    resp_K = resp.reshape((num_components,) + y_m.shape)

    def train_component(params, resp_c):
      loss_fn = lambda p, b: local_training.client_loss(model.apply(p, b[0]), b[1], k_m,
                                                        example_weights_B=b[2])
      return local_training.local_sgd(loss_fn, params, client_tx, (x_m, y_m, resp_c))[0]

    new_components = jax.vmap(train_component)(components, resp_K)
    return new_components, new_pi, loss, acc

  def train_client_epochs(components, pi_m, x_N, y_N, count, plan_m, k_m):
    """One client's round of local epochs: its E-step over all its n_m examples (each is
    visited equally often, E times, by the epochs), then the components' steps."""
    valid = jnp.arange(y_N.shape[0]) < count
    resp, new_pi, loss, acc = e_step(components, pi_m, x_N, y_N, k_m, valid)

    def train_component(params, resp_c):
      loss_fn = lambda p, b, mask: local_training.client_loss(
          model.apply(p, b[0]), b[1], k_m, example_weights_B=b[2], example_mask_B=mask)
      return local_training.epoch_sgd(loss_fn, params, client_tx, (x_N, y_N, resp_c),
                                      plan_m)[0]

    new_components = jax.vmap(train_component)(components, resp)
    return new_components, new_pi, loss, acc

  def local_work(state, train_data, mask):
    """Every client's E-step and M-steps on its round's minibatches (or local epochs)."""
    del mask  # every client works; the unsampled ones' work is discarded
    if epochs:
      plan = federated.round_epochs(state, train_data, local_steps, config.batch_size, epochs)
      comps_M, pi, losses, accs = jax.vmap(train_client_epochs, (None, 0, 0, 0, 0, 0, 0))(
          state.server.params, state.pi, train_data.x, train_data.y, train_data.counts, plan,
          classes)
    else:
      x, y = federated.draw_round_batches(state, train_data, local_steps, config.batch_size)
      comps_M, pi, losses, accs = jax.vmap(train_client, (None, 0, 0, 0, 0))(
          state.server.params, state.pi, x, y, classes)
    # One loss (the mixture's, before the update) per client per round.
    return federated.ClientWork(uploads=comps_M, kept=pi, losses=losses[:, None],
                                accuracies=accs[:, None])

  fedopt = federated.fedopt_aggregate(server_tx, weights_M)

  def aggregate(state, work, mask):
    """The components averaged (FedOpt); unsampled clients keep their mixture weights."""
    new_state, health = fedopt(state, work, mask)
    pi = federated.keep_unsampled(work.kept, state.pi, mask)
    entropy = -jnp.sum(pi * jnp.log(jnp.maximum(pi, 1e-30)), axis=1).mean()
    return new_state.replace(pi=pi), dict(health, pi_entropy=entropy)

  step = federated.make_round_step(num_clients, sampled, weights_M, local_work, aggregate)

  def logits(state, x, clients=None):
    k_S = take_clients(classes, clients)
    log_p = jax.vmap(lambda p: task_losses.class_log_probs(
        local_training.apply_to_all(model, p, x), k_S[:, None]))(state.server.params)
    log_pi = jnp.log(take_clients(state.pi, clients)).T[:, :, None, None]  # [C, S, 1, 1]
    return jax.nn.logsumexp(log_pi + log_p, axis=0)

  abstract = jax.eval_shape(init_state)
  traffic = ledger.exchange_traffic(
      {"down/components": abstract.server.params,
       "up/component_deltas": abstract.server.params}, num_clients, sampled / num_clients)
  return Algorithm(
      name="fedem", init_state=init_state, step=step, logits=logits, traffic=traffic,
      param_counts={"components (all)": models.count_params(abstract.server.params),
                    "mixture weights (each)": num_components},
      num_classes_M=num_classes_M)
