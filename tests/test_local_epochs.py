"""Local epochs (`config.fl.local_epochs`): passes without replacement, masked extra steps.

With E local epochs, client m takes k_m = ceil(n_m / B) x E steps per round over its own
examples, a fresh order per epoch, the last batch of an epoch smaller when B does not
divide n_m; every client runs the round's largest k_m with its own extra steps masked.
Checked here on uneven clients (5, 12 and 30 examples, batch 4):

  * the plan itself (`local_training.plan_epochs`): every example once per epoch, the
    documented order, batch sizes, masks, independence of the padded length;
  * FedAvg against a per-client Python loop doing the same passes in the same orders
    (recomputed from the documented key derivation), with momentum so that a masked step
    that moved anything would show;
  * FedRep, FedEM and SplitFed v1/v2: a small client's round alone equals its round next
    to a larger client (whose steps it then masks);
  * the config rules and SplitFed's ledger.

Every method with local epochs also trains through the loop and resumes exactly
(tests/test_algorithms.py, `test_trains_end_to_end_and_resumes_exactly`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import algorithms, config_base, data, validation
from mtsl_jax.algorithms import local_training

D, C, B = 3, 3, 4  # features, classes, batch size
SIZES = (5, 12, 30)
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def full_precision_matmuls():
  """float32 matmuls at full precision (GPUs may use TF32), for the library and us alike."""
  with jax.default_matmul_precision("highest"):
    yield


def make_federation(sizes, seed=0):
  """Client m holds `sizes[m]` distinct random examples with random labels, drawn from
  (seed, m): a client's data do not depend on the other clients'."""
  rngs = [np.random.default_rng([seed, m]) for m in range(len(sizes))]
  xs = tuple(r.normal(0.0, 2.0, size=(n, D)).astype(np.float32) for r, n in zip(rngs, sizes))
  ys = tuple(r.integers(0, C, size=n).astype(np.int32) for r, n in zip(rngs, sizes))
  return data.Federation(train_x=xs, train_y=ys, test_x=xs, test_y=ys,
                         num_classes=np.full(len(sizes), C, np.int32), input_shape=(D,),
                         description="uneven clients")


def epochs_config(algorithm, num_clients, epochs=2, **fl):
  """An MLP D-5-C (D-4-4-C when split), momentum on both sides, data-size weights."""
  c = config_base.base_config()
  c.algorithm = algorithm
  c.data.num_clients = num_clients
  c.model.name = "mlp"
  c.model.hidden_sizes = (4, 4) if algorithm.startswith("splitfed") else (5,)
  c.fl.aggregation_weights = "data_size"
  # Momentum: a masked step that still stepped the optimizer would move the parameters.
  c.client_optimizer.name = c.server_optimizer.name = "momentum"
  c.client_optimizer.learning_rate = 0.2
  c.server_optimizer.learning_rate = 1.0 if algorithm in ("fedavg", "fedrep", "fedem") else 0.2
  c.batch_size = B
  c.num_steps = 10
  c.fl.client_fraction = 1.0
  c.fl.local_epochs = epochs
  for key, value in fl.items():
    c.fl[key] = value
  validation.validate_config(c)
  return c


# ---- the plan -----------------------------------------------------------------------------


def reference_order(key, count):
  """The documented order of an epoch: positions sorted by bits(fold_in(key, i))."""
  bits = [int(jax.random.bits(jax.random.fold_in(key, i))) for i in range(count)]
  return np.argsort(np.asarray(bits, np.uint64), kind="stable")


@pytest.mark.parametrize("length", [30, 64])
def test_every_example_once_per_epoch_in_the_documented_order(length):
  """Client m's epoch e is its examples in `reference_order(fold_in(fold_in(key, e), m))`,
  in batches of B and a smaller last one; steps past k_m are masked entirely. The padded
  length changes nothing (a replica group pads further)."""
  key = jax.random.PRNGKey(7)
  epochs = 2
  steps = local_training.max_epoch_steps(SIZES, B, epochs)
  assert steps == 16 and list(local_training.epoch_steps(SIZES, B, epochs)) == [4, 6, 16]
  plan = jax.jit(local_training.plan_epochs, static_argnums=(2, 3, 4, 5))(
      jnp.asarray(SIZES, jnp.int32), key, length, steps, B, epochs)
  index, example_mask, step_mask = map(np.asarray, plan)
  for m, n in enumerate(SIZES):
    per_epoch = -(-n // B)
    np.testing.assert_array_equal(step_mask[m], np.arange(steps) < per_epoch * epochs)
    assert not example_mask[m, per_epoch * epochs:].any()
    for e in range(epochs):
      rows = slice(e * per_epoch, (e + 1) * per_epoch)
      visited = index[m, rows][example_mask[m, rows]]
      order = reference_order(jax.random.fold_in(jax.random.fold_in(key, e), m), n)
      np.testing.assert_array_equal(visited, order)
      sizes = example_mask[m, rows].sum(axis=1)
      np.testing.assert_array_equal(sizes, [B] * (n // B) + ([n % B] if n % B else []))
    # Fresh order per epoch (a 1 in 5! chance of a repeat for the 5-example client would
    # make the test flaky; these keys give distinct orders).
    first, second = (index[m, e * per_epoch:(e + 1) * per_epoch][
        example_mask[m, e * per_epoch:(e + 1) * per_epoch]] for e in range(2))
    assert not np.array_equal(first, second)


# ---- FedAvg against a per-client loop -------------------------------------------------------


def cross_entropy(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def test_fedavg_epochs_match_a_per_client_loop_over_the_same_orders():
  """Two rounds, 3 clients (5, 12, 30 examples), B = 4, E = 2, momentum 0.9: client m runs
  ceil(n_m / 4) x 2 heavy-ball steps over its own orders (the last batch of an epoch
  smaller: the mean over its real examples), from a fresh momentum; the server averages
  with weights n_m / Σ n and takes its own momentum step (lr 1). The round's task_loss of
  a client is the mean over its own steps only.

  Mutations seen to fail: masked steps taking their update (`keep_if` dropped in
  local_sgd); the last batch's mean over all B slots; every client's steps counted in
  its task_loss.
  """
  config = epochs_config("fedavg", 3)
  federation = make_federation(SIZES)
  algorithm = algorithms.build_algorithm(config, federation)
  train_data, _ = data.to_device(federation)
  step = jax.jit(algorithm.step)
  state = jax.jit(algorithm.init_state)()
  lr, mu = config.client_optimizer.learning_rate, config.client_optimizer.momentum

  def loss(params, x, y):
    s = state.replace(server=state.server.replace(params=params))
    return cross_entropy(algorithm.logits(s, x[None])[0], y)

  grad = jax.jit(jax.value_and_grad(loss))
  server_trace = jax.tree.map(jnp.zeros_like, state.server.params)
  weights = np.asarray(SIZES, np.float64) / sum(SIZES)
  for t in range(2):
    key = jax.random.fold_in(jax.random.fold_in(state.rng, t), 0)  # round t's batch key
    start = state.server.params
    deltas, task_losses = [], []
    for m, n in enumerate(SIZES):
      params, trace, losses = start, jax.tree.map(jnp.zeros_like, start), []
      for e in range(config.fl.local_epochs):
        order = reference_order(jax.random.fold_in(jax.random.fold_in(key, e), m), n)
        for j in range(0, n, B):
          batch = order[j:j + B]
          value, g = grad(params, federation.train_x[m][batch], federation.train_y[m][batch])
          losses.append(float(value))
          trace = jax.tree.map(lambda tr, gi: gi + mu * tr, trace, g)
          params = jax.tree.map(lambda p, tr: p - lr * tr, params, trace)
      deltas.append(jax.tree.map(lambda p, s: np.asarray(p, np.float64) - np.asarray(s),
                                 params, start))
      task_losses.append(np.mean(losses))
    pseudo_grad = jax.tree.map(lambda *d: -sum(w * di for w, di in zip(weights, d)), *deltas)
    server_trace = jax.tree.map(lambda tr, g: g + mu * tr, server_trace, pseudo_grad)
    expected = jax.tree.map(lambda p, tr: np.asarray(p) - 1.0 * tr, start, server_trace)
    state, metrics = step(state, train_data)
    for got, want in zip(jax.tree.leaves(state.server.params), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(metrics["task_loss"]), task_losses, rtol=RTOL)
    server_trace = jax.tree.map(np.asarray, server_trace)


# ---- the other methods: a small client's masked steps change nothing --------------------------


def tree_assert_close(a, b, what):
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=RTOL, atol=ATOL,
                               err_msg=what)


# What of the state a round of the (only) sampled client 0 determines, per method.
CLIENT0_PARTS = {
    "fedavg": lambda s: s.server.params,
    "fedrep": lambda s: (s.server.params, jax.tree.map(lambda h: h[0], s.heads)),
    "fedem": lambda s: (s.server.params, s.pi[0]),
    "splitfed_v1": lambda s: (s.server.params, s.client_params),
    "splitfed_v2": lambda s: (s.server, s.client_params),
}


@pytest.mark.parametrize("name", sorted(CLIENT0_PARTS))
def test_a_small_clients_round_is_the_same_next_to_a_larger_client(name):
  """Client 0 (5 examples: 4 steps with E = 2) alone, and as client 0 next to a client of
  30 (16 steps, so client 0 masks 12): in the rounds that sample client 0 (S = 1 of 2),
  everything its round determines (the server's models, its head, its mixture weights,
  SplitFed v2's server optimizer state) and its task_loss are the same.

  Mutations seen to fail: masked steps taking their update (`keep_if` dropped in
  local_sgd, or in SplitFed's planned step).
  """
  small, both = make_federation(SIZES[:1]), make_federation((SIZES[0], SIZES[2]))
  kwargs = {"num_components": 2} if name == "fedem" else {}
  if name == "fedrep":
    kwargs = {"fedrep_head_blocks": 1, "fedrep_head_steps": 2}
  runs = []
  for federation, fraction in ((small, 1.0), (both, 0.5)):
    config = epochs_config(name, federation.num_clients, client_fraction=fraction, **kwargs)
    algorithm = algorithms.build_algorithm(config, federation)
    runs.append((jax.jit(algorithm.step), jax.jit(algorithm.init_state)(),
                 data.to_device(federation)[0]))
  part = CLIENT0_PARTS[name]
  compared = 0
  for t in range(6):
    (step_a, init_a, data_a), (step_b, init_b, data_b) = runs
    alone, metrics_a = step_a(init_a.replace(step=jnp.asarray(t, jnp.int32)), data_a)
    paired, metrics_b = step_b(init_b.replace(step=jnp.asarray(t, jnp.int32)), data_b)
    task_loss = np.asarray(metrics_b["task_loss"])
    if not np.isclose(float(metrics_b["loss"]), task_loss[0], rtol=1e-6):
      continue  # the larger client was sampled
    compared += 1
    tree_assert_close(part(paired), part(alone), f"{name}, round {t}")
    np.testing.assert_allclose(task_loss[0], np.asarray(metrics_a["task_loss"])[0], rtol=RTOL)
  assert compared >= 1, "client 0 was never sampled; pick other rounds"


# ---- config rules and the ledger ------------------------------------------------------------


@pytest.mark.parametrize("overrides, fragment", [
    ({"algorithm": "fedavg", "fl.local_epochs": -1}, "an integer >= 0 and <= 1000"),
    ({"algorithm": "fedavg", "fl.local_epochs": 1001}, "<= 1000"),
    ({"algorithm": "mtsl", "fl.local_epochs": 1}, "must be 0 with algorithm 'mtsl'"),
    ({"algorithm": "local", "fl.local_epochs": 2}, "only fedavg, fedem, fedrep"),
])
def test_local_epochs_mistakes_name_the_field_in_one_line(overrides, fragment):
  config = config_base.base_config()
  config.update_from_flattened_dict(overrides)
  with pytest.raises(validation.ConfigError) as info:
    validation.validate_config(config)
  message = str(info.value)
  assert message.startswith("config.fl.local_epochs: ") and fragment in message, message
  assert "\n" not in message


def test_splitfed_v2_checks_its_server_steps_once_the_epochs_are_counted():
  """K depends on the data with local epochs, so the int32 bound of a decaying server
  schedule (num_steps x K x sampled clients) is checked when SplitFed v2 is built."""
  config = epochs_config("splitfed_v2", 3)
  config.num_steps = 2**31 - 1  # x 16 steps of the largest client: past int32
  config.server_optimizer.schedule = "linear"
  validation.validate_config(config)  # K is not known here
  with pytest.raises(validation.ConfigError, match=r"^config\.server_optimizer\.schedule: "
                                                   r".*int32"):
    algorithms.build_algorithm(config, make_federation(SIZES))
  config.server_optimizer.schedule = "constant"
  algorithms.build_algorithm(config, make_federation(SIZES))


def test_splitfed_ledger_counts_each_clients_epochs():
  """u_shaped D-4-4-C, E = 2, B = 4: client m's split steps carry 2 n_m examples' rows of
  smashed data and cut gradients ([4] float32 each way and each kind: 2 x 4 x 4 bytes per
  example), plus the client-side model (D-4 and 4-C: 31 parameters) each way."""
  config = epochs_config("splitfed_v1", 3)
  traffic = algorithms.build_algorithm(config, make_federation(SIZES)).traffic
  expected = [2 * n * 2 * 4 * 4 + 31 * 4 for n in SIZES]
  np.testing.assert_allclose(traffic.uplink_M, expected)
  np.testing.assert_allclose(traffic.downlink_M, expected)
