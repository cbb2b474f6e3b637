"""FedRep (Collins et al., ICML 2021): a shared representation and personal heads.

The model's blocks are cut into a body (all but the last `config.fl.fedrep_head_blocks`)
shared through the server, and a head that never leaves its client. One loop step is one
round: each sampled client receives the body, runs `config.fl.fedrep_head_steps` steps of
`config.client_optimizer` on its head with the body frozen, then `config.fl.local_steps`
steps on the body with its new head frozen (or `config.fl.local_epochs` passes over its
own examples; the head phase keeps its fixed steps), fresh optimizer states in each phase; the
server aggregates the bodies like FedAvg (FedOpt form, `config.server_optimizer`). Task m
is evaluated with the global body and client m's head. With 0 head blocks it is FedAvg.
"""

import flax
import jax
import jax.numpy as jnp
import optax

from mtsl_jax import data, ledger, methods, models, optimizers, split_state
from mtsl_jax.algorithms import federated, local_training
from mtsl_jax.algorithms.base import Algorithm
from mtsl_jax.algorithms.base import aggregation_weights
from mtsl_jax.algorithms.base import take_clients
from mtsl_jax.algorithms.base import task_setup

# The head steps' minibatches come from their own random stream of the round (after
# federated.BATCH_STREAM and SAMPLE_STREAM).
_HEAD_BATCH_STREAM = 2


@flax.struct.dataclass
class FedRepState:
  """Attributes: step, rng, server (body and server optimizer state), heads ([M], personal)."""
  step: jax.Array
  rng: jax.Array
  server: split_state.SideState
  heads: dict


def build(config, federation: data.Federation) -> Algorithm:
  """FedRep from a validated config and its federation.

  Args:
    config: experiment config (model, fl, both optimizers, batch size, seed).
    federation: the clients' data.

  Returns:
    An Algorithm whose state is a FedRepState.
  """
  num_classes_M, num_clients, input_shape, _, classes = task_setup(config, federation)
  weights_M = aggregation_weights(config, federation)
  blocks = models.make_blocks(config.model, int(num_classes_M.max()))
  n_head = config.fl.fedrep_head_blocks
  body = models.BlockStack(tuple(blocks[:len(blocks) - n_head]))
  head = models.BlockStack(tuple(blocks[len(blocks) - n_head:]))
  local_steps = federated.local_steps(config, federation)
  head_steps, epochs = config.fl.fedrep_head_steps, config.fl.local_epochs
  sampled = methods.num_sampled(config.fl.client_fraction, num_clients)
  body_tx = optimizers.make_optimizer(config.client_optimizer, local_steps)
  head_tx = optimizers.make_optimizer(config.client_optimizer, max(head_steps, 1))
  server_tx = optimizers.make_optimizer(config.server_optimizer, config.num_steps)

  def forward(body_params, head_params, x):
    h = body.apply(body_params, x)
    return head.apply(head_params, h) if head.blocks else h

  def init_state():
    key = local_training.init_key(config.seed)
    body_params = local_training.init_model(body, key, input_shape)
    head_in = local_training.output_shape(body, body_params, input_shape)
    # Heads start equal (then stay personal); the key differs from the body's.
    head_params = local_training.init_model(head, jax.random.fold_in(key, 1), head_in)
    heads = optax.tree.batch_shape(head_params, (num_clients,))
    return FedRepState(step=jnp.zeros((), jnp.int32), rng=local_training.run_key(config.seed),
                       server=split_state.SideState(body_params, server_tx.init(body_params)),
                       heads=heads)

  def local_work(state, train_data, mask):
    """Every client: its head's steps on the global body, then the body's with that head."""
    del mask  # every client works; the unsampled ones' work is discarded
    if epochs:  # the body's steps are its local epochs, given as an EpochPlan
      body_batches = federated.round_epochs(state, train_data, local_steps,
                                            config.batch_size, epochs)
      examples = (train_data.x, train_data.y)
    else:
      body_batches = federated.draw_round_batches(state, train_data, local_steps,
                                                  config.batch_size)
      examples = ((), ())  # the drawn minibatches hold the examples
    global_body = state.server.params
    train_heads = bool(head.blocks) and head_steps > 0
    if train_heads:
      hx, hy = federated.draw_round_batches(state, train_data, head_steps, config.batch_size,
                                            stream=_HEAD_BATCH_STREAM)
    else:  # nothing to train: placeholders of the right client axis
      hx = hy = jnp.zeros((num_clients, 0))

    def train_client(head_m, body_batches_m, examples_m, hx_m, hy_m, k_m):
      head_losses = jnp.zeros((0,))
      head_accs = jnp.zeros((0,))
      if train_heads:
        head_loss = lambda p, b: local_training.client_loss(forward(global_body, p, b[0]),
                                                            b[1], k_m)
        head_m, head_losses, head_accs = local_training.local_sgd(head_loss, head_m, head_tx,
                                                                  (hx_m, hy_m))
      if epochs:
        body_loss = lambda p, b, mask: local_training.client_loss(
            forward(p, head_m, b[0]), b[1], k_m, example_mask_B=mask)
        body_m, losses, accs = local_training.epoch_sgd(body_loss, global_body, body_tx,
                                                        examples_m, body_batches_m)
      else:
        body_loss = lambda p, b: local_training.client_loss(forward(p, head_m, b[0]), b[1],
                                                            k_m)
        body_m, losses, accs = local_training.local_sgd(body_loss, global_body, body_tx,
                                                        body_batches_m)
      return (body_m, head_m, jnp.concatenate([head_losses, losses]),
              jnp.concatenate([head_accs, accs]))

    bodies, heads, losses, accs = jax.vmap(train_client)(state.heads, body_batches, examples,
                                                         hx, hy, classes)
    step_mask = None
    if epochs:  # the head steps are always taken
      step_mask = jnp.concatenate([jnp.ones(hx.shape[:2], bool), body_batches.step_mask],
                                  axis=1)
    return federated.ClientWork(uploads=bodies, kept=heads, losses=losses, accuracies=accs,
                                step_mask=step_mask)

  fedopt = federated.fedopt_aggregate(server_tx, weights_M)

  def aggregate(state, work, mask):
    """The bodies averaged (FedOpt); unsampled clients keep their heads."""
    new_state, health = fedopt(state, work, mask)
    return new_state.replace(heads=federated.keep_unsampled(work.kept, state.heads, mask)), health

  step = federated.make_round_step(num_clients, sampled, weights_M, local_work, aggregate)

  def logits(state, x, clients=None):
    h = local_training.apply_to_all(body, state.server.params, x)
    return jax.vmap(head.apply)(take_clients(state.heads, clients), h) if head.blocks else h

  abstract = jax.eval_shape(init_state)
  traffic = ledger.exchange_traffic(
      {"down/body": abstract.server.params, "up/body_delta": abstract.server.params},
      num_clients, sampled / num_clients)
  return Algorithm(
      name="fedrep", init_state=init_state, step=step, logits=logits, traffic=traffic,
      param_counts={"body (shared)": models.count_params(abstract.server.params),
                    "head (each)": models.count_params(abstract.heads) // num_clients},
      num_classes_M=num_classes_M)
