"""Each baseline's own logic, checked against a reference computed by hand on a tiny case.

What the known answers of test_algorithms.py cannot see (they reduce each method to another
one: FedEM with one component to FedAvg, FedRep without a head to FedAvg, SplitFed with one
client to split learning) is checked here on the full method, one round at a time:

  * FedAvg with client sampling: the new global model is the weighted mean of exactly the S
    sampled clients' local models, weights renormalized over them;
  * FedEM: the E-step responsibilities, the mixture-weight update, the responsibility-
    weighted M-step and the component averaging;
  * FedRep: head steps first (body frozen as broadcast), then body steps (new head frozen);
    heads personal, kept by unsampled clients, never averaged;
  * SplitFed v1 (parallel server copies, averaged) and v2 (one server part updated by the
    sampled clients in turn), client-side parts averaged in both.

Only public interfaces are used, so the tests survive a reorganisation of the internals:
`algorithms.build_algorithm`, the Algorithm's `init_state`, `step` and `logits`, the state
fields, and `data.Federation` / `data.to_device`. The reference differentiates the
algorithm's own `logits` (with the state's parameters replaced) with `jax.grad`, so it
shares the forward model with the library but none of its training logic.

The minibatches a round draws do not matter by construction: every client holds copies of
ONE example (`make_federation`), so each minibatch is that example B times, whatever keys
draw it, and a client's minibatch loss is that example's loss. Clients hold different
numbers of copies so that `fl.aggregation_weights = 'data_size'` (the default) gives
unequal, known weights.

Which clients a round samples (and, in SplitFed v2, in which order) is read from the result
instead of re-deriving the library's keys: every candidate set (or ordered sequence) of S
clients is computed by hand and exactly one must match, the others being far apart.

Every test below was checked to fail under the mutation its docstring names (the library
line edited in a scratch checkout, the test run, the edit reverted).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import algorithms, config_base, data

D, C = 3, 3  # input features and classes of every task
RTOL, ATOL = 1e-4, 1e-5  # float32, the library's vmapped/jitted sums against ours
# Candidates closer than this to each other could not be told apart at the tolerance above.
SEPARATION = 1e-3


@pytest.fixture(autouse=True)
def full_precision_matmuls():
  """float32 matmuls at full precision, for the library's step and the reference alike.

  On GPUs XLA may run float32 matmuls in TF32 (about 1e-3 relative), coarser than RTOL;
  on CPU this changes nothing.
  """
  with jax.default_matmul_precision("highest"):
    yield


# ---- tiny federations and configs -----------------------------------------------------------


def make_federation(labels, copies, seed=0, examples=None):
  """Client m holds `copies[m]` copies of one example (drawn from `seed`) with label
  `labels[m]`; its test set is the same (only training is looked at here)."""
  rng = np.random.default_rng(seed)
  if examples is None:
    examples = rng.normal(0.0, 2.0, size=(len(labels), D)).astype(np.float32)
  xs = tuple(np.repeat(examples[m][None], n, axis=0) for m, n in enumerate(copies))
  ys = tuple(np.full((n,), labels[m], np.int32) for m, n in enumerate(copies))
  return data.Federation(train_x=xs, train_y=ys, test_x=xs, test_y=ys,
                         num_classes=np.full(len(labels), C, np.int32), input_shape=(D,),
                         description="one example per client, repeated")


def tiny_config(algorithm, num_clients, hidden=(5,), **fl):
  """An MLP D-hidden-C, plain SGD on both sides, data-size aggregation weights."""
  c = config_base.base_config()
  c.algorithm = algorithm
  c.data.num_clients = num_clients
  c.model.name = "mlp"
  c.model.hidden_sizes = hidden
  # Data-size weights come from the fl section (split.task_weights, MTSL's, stays uniform).
  c.fl.aggregation_weights = "data_size"
  c.client_optimizer.name = c.server_optimizer.name = "sgd"
  # Large steps, so that a wrong update rule misses by far more than the tolerance.
  c.client_optimizer.learning_rate = 0.5
  c.server_optimizer.learning_rate = 1.0  # plain averaging for the FedOpt methods
  c.batch_size = 3
  c.num_steps = 10
  c.fl.client_fraction = 1.0
  c.fl.local_steps = 2
  for key, value in fl.items():
    c.fl[key] = value
  return c


class Run:
  """An algorithm on a federation: its initial state, its jitted step, the examples."""

  def __init__(self, config, federation):
    self.algorithm = algorithms.build_algorithm(config, federation)
    self.train_data, _ = data.to_device(federation)
    self.state = jax.jit(self.algorithm.init_state)()
    self._step = jax.jit(self.algorithm.step)
    self.x = jnp.asarray(np.stack([x[0] for x in federation.train_x]))[:, None]  # [M, 1, D]
    self.y = jnp.asarray([y[0] for y in federation.train_y])  # [M]
    self.weights = np.asarray(federation.train_counts, np.float64)  # data-size weights

  def round(self, state):
    return self._step(state, self.train_data)[0]

  def log_likelihoods(self, state):
    """log p(y_m | x_m) of every client's model in `state`, [M]: the log-softmax of the
    Algorithm's logits (FedEM's are normalized already; log-softmax leaves them as they
    are)."""
    logits = self.algorithm.logits(state, self.x)[:, 0]
    return jnp.take_along_axis(jax.nn.log_softmax(logits), self.y[:, None], axis=1)[:, 0]


# ---- tree helpers -------------------------------------------------------------------------


def tree_max_diff(a, b) -> float:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_close(a, b) -> bool:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return all(np.allclose(np.asarray(u), np.asarray(v), rtol=RTOL, atol=ATOL)
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_tree_close(actual, expected, what):
  assert jax.tree.structure(actual) == jax.tree.structure(expected), what
  assert tree_close(actual, expected), f"{what}: off by {tree_max_diff(actual, expected):.3g}"


def weighted_tree_mean(trees, weights):
  """Σ_i w_i tree_i / Σ_i w_i, in float64."""
  w = np.asarray(weights, np.float64) / np.sum(weights)
  return jax.tree.map(lambda *leaves: sum(wi * np.asarray(l, np.float64)
                                          for wi, l in zip(w, leaves)), *trees)


def client_row(tree, m):
  return jax.tree.map(lambda leaf: leaf[m], tree)


def the_one_match(actual, candidates: dict):
  """The key of the only candidate equal to `actual`; the candidates must be separable."""
  keys = list(candidates)
  for i, j in itertools.combinations(range(len(keys)), 2):
    assert tree_max_diff(candidates[keys[i]], candidates[keys[j]]) > SEPARATION, (
        f"candidates {keys[i]} and {keys[j]} cannot be told apart; change the tiny case")
  matches = [k for k in keys if tree_close(actual, candidates[k])]
  closest = min(keys, key=lambda k: tree_max_diff(actual, candidates[k]))
  assert len(matches) == 1, (
      f"{len(matches)} candidates match; closest {closest} off by "
      f"{tree_max_diff(actual, candidates[closest]):.3g}")
  return matches[0]


def sgd(grad_fn, params, lr, steps):
  """`steps` plain gradient steps, each from the gradient at the current point."""
  for _ in range(steps):
    params = jax.tree.map(lambda p, g: p - lr * g, params, grad_fn(params))
  return params


# ---- FedAvg -------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["data_size", "uniform"])
def test_fedavg_averages_exactly_the_sampled_clients_with_renormalized_weights(aggregation):
  """S = 2 of 4 clients: θ' = Σ_{m in S} w_m θ_m / Σ_{m in S} w_m, θ_m = K local SGD steps,
  w_m = n_m ('data_size') or 1 ('uniform').

  The four clients' examples and labels differ, so their local models move in different
  directions and each of the six pairs gives a different mean; exactly one must be the
  new global model, in each of five rounds (from each round's own start), and not always
  the same one.

  Mutations seen to fail: the mask ignored in fedavg's server step (all four clients
  averaged: "0 candidates match"); weights not renormalized over the sampled clients in
  federated.renormalized_weights (Σ_S w_m < 1 shortens the step: "0 candidates match");
  split.task_weights read instead of fl.aggregation_weights (uniform: "0 candidates
  match" with data-size weights).
  """
  config = tiny_config("fedavg", 4, client_fraction=0.5, local_steps=2,
                       aggregation_weights=aggregation)
  run = Run(config, make_federation(labels=[0, 1, 2, 1], copies=[1, 2, 3, 4]))
  if aggregation == "uniform":
    run.weights = np.ones(4)
  lr, k = config.client_optimizer.learning_rate, config.fl.local_steps

  def loss(params, m):
    state = run.state.replace(server=run.state.server.replace(params=params))
    return -run.log_likelihoods(state)[m]

  grad = jax.jit(jax.grad(loss))
  state, seen = run.state, set()
  for _ in range(5):
    start = state.server.params
    local = [sgd(lambda p, m=m: grad(p, m), start, lr, k) for m in range(4)]
    candidates = {pair: weighted_tree_mean([local[m] for m in pair], run.weights[list(pair)])
                  for pair in itertools.combinations(range(4), 2)}
    state = run.round(state)
    seen.add(the_one_match(state.server.params, candidates))
  assert len(seen) > 1, "the same pair every round: sampling ignores the round"


# ---- FedEM --------------------------------------------------------------------------------


def component_log_likelihoods(run, state, components=None):
  """log p_c(y_m | x_m) for every client m and component c, [M, C], through the Algorithm's
  mixture logits with π one-hot on c (log p_m is then log p_c)."""
  components = state.server.params if components is None else components
  num_components = jax.tree.leaves(components)[0].shape[0]
  num_clients = run.x.shape[0]
  columns = []
  for c in range(num_components):
    one_hot = jnp.zeros((num_clients, num_components)).at[:, c].set(1.0)
    columns.append(run.log_likelihoods(state.replace(
        pi=one_hot, server=state.server.replace(params=components))))
  return jnp.stack(columns, axis=1)


def responsibilities(pi, log_lik):
  """The E-step in NumPy: q_mc = π_mc p_c(y_m|x_m) / Σ_c' π_mc' p_c'(y_m|x_m)."""
  joint = np.asarray(pi, np.float64) * np.exp(np.asarray(log_lik, np.float64))
  return joint / joint.sum(axis=1, keepdims=True)


def test_fedem_e_step_and_mixture_weights_of_the_sampled_clients():
  """π_m' = q_m, q_mc ∝ π_mc p_c(y_m|x_m) at the broadcast components; unsampled keep π_m.

  Every example of client m is the same, so the mean of the responsibilities over the
  round's K x B examples is q_m itself. Two rounds with S = 2 of 4: the second starts from
  non-uniform π (so π must enter the E-step) and from components moved by round one. In
  each round exactly S rows change, each to the NumPy E-step (rows summing to one), and
  the others are bitwise unchanged.

  Mutations seen to fail: π left as it was after the round ("π changed for clients []");
  responsibilities not normalized (q = π_c p_c, the exp of the joint: the changed rows
  miss the NumPy E-step, and would not sum to one); π left out of the E-step (q ∝ p_c:
  round two misses).
  """
  config = tiny_config("fedem", 4, client_fraction=0.5, num_components=2)
  run = Run(config, make_federation(labels=[0, 1, 2, 1], copies=[1, 2, 3, 4]))
  state = run.state
  np.testing.assert_allclose(np.asarray(state.pi), 0.5)
  for _ in range(2):
    expected = responsibilities(state.pi, component_log_likelihoods(run, state))
    new = run.round(state)
    pi_old, pi_new = np.asarray(state.pi), np.asarray(new.pi)
    changed = [m for m in range(4) if not np.array_equal(pi_new[m], pi_old[m])]
    assert len(changed) == 2, f"π changed for clients {changed}, expected 2 sampled"
    np.testing.assert_allclose(pi_new[changed], expected[changed], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(pi_new.sum(axis=1), 1.0, rtol=1e-5)
    # The tiny case must make the check sharp: responsibilities far from uniform.
    assert np.abs(expected[changed] - 0.5).max() > 0.05
    state = new


def test_fedem_components_take_responsibility_weighted_steps_then_are_averaged():
  """Component c' = Σ_m w_m θ_cm, θ_cm = K SGD steps on q_mc CE_c(x_m, y_m) from c.

  All clients sampled (weights n_m / Σ n); the responsibilities q are those of the E-step
  at the broadcast components (checked above), fixed during the local steps.

  Mutation seen to fail: the components' local loss not weighted by the responsibilities
  (example_weights dropped: plain mean cross-entropy; off by 0.14).
  """
  config = tiny_config("fedem", 3, num_components=2, local_steps=2)
  run = Run(config, make_federation(labels=[0, 2, 1], copies=[1, 2, 3], seed=1))
  lr, k = config.client_optimizer.learning_rate, config.fl.local_steps
  state = run.state
  components = state.server.params
  q = responsibilities(state.pi, component_log_likelihoods(run, state))
  assert np.abs(q - 0.5).max() > 0.05

  def weighted_loss(theta, c, m, q_mc):
    stacked = jax.tree.map(lambda s, p: s.at[c].set(p), components, theta)
    return -q_mc * component_log_likelihoods(run, state, stacked)[m, c]

  grad = jax.jit(jax.grad(weighted_loss), static_argnums=(1,))
  expected = []
  for c in range(2):
    local = [sgd(lambda p, m=m, c=c: grad(p, c, m, q[m, c]), client_row(components, c), lr, k)
             for m in range(3)]
    expected.append(weighted_tree_mean(local, run.weights))
  expected = jax.tree.map(lambda *leaves: np.stack(leaves), *expected)
  assert_tree_close(run.round(state).server.params, expected, "components after a round")


# ---- FedRep -------------------------------------------------------------------------------


def fedrep_reference(run, state, config):
  """Every client's (body, head) after its round, by hand: head steps at the broadcast
  body, then body steps with the new head. Returns ([bodies], [heads])."""
  lr = config.client_optimizer.learning_rate

  def loss(body, heads, m):
    s = state.replace(server=state.server.replace(params=body), heads=heads)
    return -run.log_likelihoods(s)[m]

  grad_body = jax.jit(jax.grad(loss, argnums=0))
  grad_heads = jax.jit(jax.grad(loss, argnums=1))
  body0 = state.server.params
  bodies, heads = [], []
  for m in range(run.x.shape[0]):
    # Client m's loss depends on its own head only, so a step on the stacked heads moves
    # row m alone: plain SGD on head m.
    heads_m = sgd(lambda h, m=m: grad_heads(body0, h, m), state.heads, lr,
                  config.fl.fedrep_head_steps)
    bodies.append(sgd(lambda b, m=m, h=heads_m: grad_body(b, h, m), body0, lr,
                      config.fl.local_steps))
    heads.append(client_row(heads_m, m))
  return bodies, heads


def test_fedrep_trains_the_head_first_then_the_body_and_averages_bodies_only():
  """All 3 clients sampled: head m' = 3 head steps at the broadcast body; body' = Σ w_m
  (2 body steps from the broadcast body with head m'), weights n_m / Σ n.

  Mutations seen to fail: heads never trained (the head phase skipped: off by 0.78); the
  phases swapped (body steps with the old head first, then head steps at the new body:
  off by 0.05); heads averaged over the clients after the round (off by 0.64).
  """
  config = tiny_config("fedrep", 3, fedrep_head_blocks=1, fedrep_head_steps=3,
                       local_steps=2)
  run = Run(config, make_federation(labels=[0, 2, 1], copies=[1, 2, 3]))
  bodies, heads = fedrep_reference(run, run.state, config)
  new = run.round(run.state)
  for m in range(3):
    assert_tree_close(client_row(new.heads, m), heads[m], f"head of client {m}")
  assert_tree_close(new.server.params, weighted_tree_mean(bodies, run.weights), "body")
  # Personal heads: the reference heads differ, so averaged heads could not pass above.
  assert tree_max_diff(heads[0], heads[1]) > SEPARATION


def test_fedrep_head_of_a_client_depends_on_its_own_data_only():
  """Changing client 2's example changes its head and nobody else's (after one round).

  Mutation seen to fail: heads averaged over the clients after the round (client 0's
  head then moves by 0.4 with client 2's data).
  """
  config = tiny_config("fedrep", 3, fedrep_head_blocks=1, fedrep_head_steps=3)
  examples = np.random.default_rng(0).normal(0.0, 2.0, size=(3, D)).astype(np.float32)
  heads = []
  for last in (examples[2], -examples[2]):
    federation = make_federation([0, 2, 1], [1, 2, 3], examples=np.stack(
        [examples[0], examples[1], last]))
    run = Run(config, federation)
    heads.append(run.round(run.state).heads)
  for m in (0, 1):
    assert tree_max_diff(client_row(heads[0], m), client_row(heads[1], m)) == 0.0
  assert tree_max_diff(client_row(heads[0], 2), client_row(heads[1], 2)) > SEPARATION


def test_fedrep_unsampled_clients_keep_their_heads():
  """S = 2 of 4: exactly two heads move, each to the hand-computed one; the others are
  bitwise unchanged; the body is the mean of exactly those two clients' bodies.

  Mutations seen to fail: heads never trained ("heads of clients [] moved"); heads
  averaged, and the mask ignored when keeping heads (both: all four heads moved).
  """
  config = tiny_config("fedrep", 4, client_fraction=0.5, fedrep_head_blocks=1,
                       fedrep_head_steps=2)
  run = Run(config, make_federation(labels=[0, 1, 2, 1], copies=[1, 2, 3, 4]))
  state = run.round(run.state)  # heads differ from here on: a second round is sharper
  bodies, heads = fedrep_reference(run, state, config)
  new = run.round(state)
  moved = [m for m in range(4)
           if tree_max_diff(client_row(new.heads, m), client_row(state.heads, m)) > 0]
  assert len(moved) == 2, f"heads of clients {moved} moved, expected the 2 sampled"
  for m in moved:
    assert_tree_close(client_row(new.heads, m), heads[m], f"head of client {m}")
  assert_tree_close(new.server.params,
                    weighted_tree_mean([bodies[m] for m in moved], run.weights[moved]),
                    "body: mean over the sampled clients")


# ---- SplitFed -----------------------------------------------------------------------------


def splitfed_grad(run):
  """Gradients of client m's loss w.r.t. (server part, global client-side model)."""
  def loss(server, client, m):
    s = run.state.replace(server=run.state.server.replace(params=server),
                          client_params=client)
    return -run.log_likelihoods(s)[m]
  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def splitfed_client(grad, config, m, server, client):
  """Client m's K split steps from (server part, client-side model): each step takes the
  gradients of client m's loss at the current point and steps both sides."""
  lr_s = config.server_optimizer.learning_rate
  lr_c = config.client_optimizer.learning_rate
  for _ in range(config.fl.local_steps):
    g_s, g_c = grad(server, client, m)
    server = jax.tree.map(lambda p, g: p - lr_s * g, server, g_s)
    client = jax.tree.map(lambda p, g: p - lr_c * g, client, g_c)
  return server, client


def splitfed_run(version):
  # U-shaped MLP D-4-4-C: client bottom (first block), server (second), client head.
  config = tiny_config(version, 3, hidden=(4, 4), client_fraction=0.67, local_steps=3)
  config.split.orientation = "u_shaped"
  config.split.client_bottom_blocks = config.split.client_top_blocks = 1
  # Steps large enough (and examples, seed 1, that keep every client's server gradient
  # alive for two rounds) that the two orders of a pair end 0.05 or more apart.
  config.server_optimizer.learning_rate = 1.0
  return config, Run(config, make_federation(labels=[0, 2, 1], copies=[1, 2, 3], seed=1))


def test_splitfed_v1_averages_parallel_server_copies_and_client_models():
  """S = 2 of 3: every sampled client runs K split steps from the same broadcast server
  part and client-side model; both are then the weighted means over the sampled clients.

  Mutations seen to fail: client-side averaging skipped (the global client-side model left
  as it was); the server copies averaged over all three clients (mask ignored). Both:
  "0 candidates match".
  """
  config, run = splitfed_run("splitfed_v1")
  grad, state = splitfed_grad(run), run.state
  for _ in range(2):
    after = [splitfed_client(grad, config, m, state.server.params, state.client_params)
             for m in range(3)]
    candidates = {pair: (weighted_tree_mean([after[m][0] for m in pair],
                                            run.weights[list(pair)]),
                         weighted_tree_mean([after[m][1] for m in pair],
                                            run.weights[list(pair)]))
                  for pair in itertools.combinations(range(3), 2)}
    state = run.round(state)
    the_one_match((state.server.params, state.client_params), candidates)


def test_splitfed_v2_updates_one_server_part_by_the_sampled_clients_in_turn():
  """S = 2 of 3, in an order drawn by the round: the first client runs its K split steps
  from the broadcast server part, the second from where the first left it (each from the
  broadcast client-side model); the server part is the second's, the client-side model
  the weighted mean of both. Exactly one of the 6 ordered pairs matches, and the parallel
  average (v1's rule) does not.

  Mutations seen to fail: every client starting from the broadcast server part and the
  results averaged (v1's rule in v2); client-side averaging skipped. Both: "0 candidates
  match".
  """
  config, run = splitfed_run("splitfed_v2")
  grad, state = splitfed_grad(run), run.state
  for _ in range(2):
    server0, client0 = state.server.params, state.client_params
    candidates = {}
    for first, second in itertools.permutations(range(3), 2):
      s1, c1 = splitfed_client(grad, config, first, server0, client0)
      s2, c2 = splitfed_client(grad, config, second, s1, client0)
      candidates[(first, second)] = (s2, weighted_tree_mean(
          [c1, c2], run.weights[[first, second]]))
    state = run.round(state)
    first, second = the_one_match((state.server.params, state.client_params), candidates)
    parallel = [splitfed_client(grad, config, m, server0, client0)[0]
                for m in (first, second)]
    averaged = weighted_tree_mean(parallel, run.weights[[first, second]])
    assert tree_max_diff(state.server.params, averaged) > SEPARATION
