"""Numerical checks of docs/theory.md against known answers, with the library's real step.

Quadratic problems (a split least-squares model, whose minimizer and Hessian are known in
closed form) check the descent lemma step by step, convergence to the optimum, divergence
above the bound and the predicted best ratio η_c/η_s. A small split MLP with deterministic
full-batch gradients checks the non-convex bound on min_t ||∇f||². Every update goes through
`split.apply_gradients` with optax SGD; the quadratics get their gradients from
`smoothness.mtsl_gradients`, which is checked here to equal `split_gradients.fused_gradients`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtsl_jax import config_base, smoothness, split
from mtsl_jax import split_gradients, split_model, split_state
from mtsl_jax import step_sizes

WEIGHTS = np.array([0.5, 0.3, 0.2], np.float32)


# ---- a split least-squares problem with a closed-form optimum ---------------------------


class LeastSquares:
  """f_m(φ, ψ_m) = ½ mean_i (x_mi·φ + z_mi·ψ_m − y_mi)²: M tasks sharing the server block φ.

  f = Σ w_m f_m is a convex quadratic; its Hessian, block constants and minimizer are
  computed here with numpy, independently of the code under test.
  """

  def __init__(self, server_scale=1.0, client_scale=1.0, ds=4, dc=3, n=24, seed=0):
    rng = np.random.default_rng(seed)
    m = WEIGHTS.shape[0]
    self.x = (rng.normal(size=(m, n, ds)) * server_scale).astype(np.float32)
    self.z = (rng.normal(size=(m, n, dc)) * client_scale).astype(np.float32)
    self.y = rng.normal(size=(m, n)).astype(np.float32)
    self.m, self.ds, self.dc, self.n = m, ds, dc, n
    a = np.zeros((m, n, ds + m * dc))  # task m's rows of the joint design [X_m, 0, Z_m, 0]
    for k in range(m):
      a[k, :, :ds] = self.x[k]
      a[k, :, ds + k * dc: ds + (k + 1) * dc] = self.z[k]
    self.hessian = sum(WEIGHTS[k] * a[k].T @ a[k] / n for k in range(m))
    rhs = sum(WEIGHTS[k] * a[k].T @ self.y[k] / n for k in range(m))
    self.theta_star = np.linalg.solve(self.hessian, rhs)
    self.f_star = self.f_of(self.theta_star)
    self.server_l = np.linalg.eigvalsh(self.hessian[:ds, :ds])[-1]
    self.client_l = np.array([np.linalg.eigvalsh(self.z[k].T @ self.z[k] / n)[-1]
                              for k in range(m)])
    self.cross = np.array([np.linalg.norm(self.x[k].T @ self.z[k] / n, 2) for k in range(m)])
    self.batch = (jnp.asarray(self.x), jnp.asarray(self.z), jnp.asarray(self.y))

  def f_of(self, theta):
    phi, psi = theta[:self.ds], theta[self.ds:].reshape(self.m, self.dc)
    r = np.einsum("mnd,d->mn", self.x, phi) + np.einsum("mnd,md->mn", self.z, psi) - self.y
    return float(np.sum(WEIGHTS * 0.5 * np.mean(r**2, axis=1)))

  @staticmethod
  def task_loss(phi, psi_m, batch_m):
    x, z, y = batch_m
    return 0.5 * jnp.mean((x @ phi["w"] + z @ psi_m["w"] - y) ** 2)

  def preconditioner(self, server_lr, client_lrs):
    return np.concatenate([np.full(self.ds, server_lr),
                           np.repeat(np.asarray(client_lrs) / WEIGHTS, self.dc)])

  def exact_sharpness(self, server_lr, client_lrs):
    """λ_max and λ_min of P^½ H P^½ from the explicit Hessian."""
    s = np.sqrt(self.preconditioner(server_lr, client_lrs))
    eig = np.linalg.eigvalsh(s[:, None] * self.hessian * s[None, :])
    return eig[-1], eig[0]


def _state(params_s, params_c, server_tx, client_tx):
  return split_state.SplitState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0),
      server=split_state.SideState(params_s, server_tx.init(params_s)),
      clients=split_state.SideState(params_c, jax.vmap(client_tx.init)(params_c)))


def run_least_squares(problem, server_lr, client_lrs, num_steps):
  """MTSL SGD on the full data through split.apply_gradients.

  Client m's rate is `client_lrs[m]`, applied as the library applies a per-client rate:
  the multiplier of a unit-rate SGD update. Parameters start at zero.

  Returns:
    (f_t [T+1], ||∇f(θ_t)||²_P [T+1], θ_T flattened) as numpy.
  """
  server_tx, client_tx = optax.sgd(server_lr), optax.sgd(1.0)
  # apply_gradients reads only the optimizers, the weights and the multipliers.
  ctx = split.StepContext(split=None, server_tx=server_tx, client_tx=client_tx,
                          num_classes_M=None, weights_M=jnp.asarray(WEIGHTS),
                          lr_multipliers_M=jnp.asarray(client_lrs, jnp.float32),
                          batch_size=0)
  state = _state({"w": jnp.zeros(problem.ds)}, {"w": jnp.zeros((problem.m, problem.dc))},
                 server_tx, client_tx)
  args = (problem.task_loss,)

  def measure(state):
    sp, cp = state.server.params, state.clients.params
    f = smoothness.objective(*args, sp, cp, problem.batch, ctx.weights_M)
    g_s, g_c = smoothness.mtsl_gradients(*args, sp, cp, problem.batch, ctx.weights_M)
    # ||∇f||²_P = η_s ||∇_φ f||² + Σ_m (η_c,m / w_m) ||w_m ∇_ψm f_m||².
    g_p = server_lr * jnp.sum(g_s["w"] ** 2) + jnp.sum(
        ctx.lr_multipliers_M * ctx.weights_M * jnp.sum(g_c["w"] ** 2, axis=1))
    return f, g_p, (g_s, g_c)

  def body(state, _):
    f, g_p, (g_s, g_c) = measure(state)
    state, _ = split.apply_gradients(ctx, state, g_s, g_c)
    return state, (f, g_p)

  @jax.jit
  def run(state):
    state, (f, g_p) = jax.lax.scan(body, state, None, length=num_steps)
    f_last, g_last, _ = measure(state)
    theta = jnp.concatenate([state.server.params["w"], state.clients.params["w"].ravel()])
    return jnp.append(f, f_last), jnp.append(g_p, g_last), theta

  return jax.tree.map(np.asarray, run(state))


# ---- the estimator against known spectra ------------------------------------------------


@pytest.mark.parametrize("eigenvalues", [[7.0, 3.0, -1.0, 0.5, 0.0],
                                         [-9.0, 4.0, 1.0, 2.0, -3.0]])
def test_power_iteration_finds_the_largest_absolute_eigenvalue(eigenvalues):
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))
  hess = (q * np.array(eigenvalues)) @ q.T
  fn = lambda v: 0.5 * v["a"] @ jnp.asarray(hess, jnp.float32) @ v["a"] + jnp.sum(v["a"])
  lam, vec = smoothness.power_iteration(
      lambda t: smoothness.hvp(fn, {"a": jnp.ones(5)}, t), {"a": jnp.arange(1.0, 6.0)}, 200)
  top = max(eigenvalues, key=abs)
  np.testing.assert_allclose(lam, top, rtol=1e-4)
  np.testing.assert_allclose(abs(vec["a"] @ q[:, eigenvalues.index(top)]), 1.0, rtol=1e-4)


def test_block_constants_and_sharpness_match_the_closed_form():
  p = LeastSquares(seed=3)
  params = ({"w": jnp.zeros(p.ds)}, {"w": jnp.zeros((p.m, p.dc))})
  est = jax.jit(lambda: smoothness.block_smoothness(
      p.task_loss, *params, p.batch, jnp.asarray(WEIGHTS), jax.random.PRNGKey(0),
      num_iters=300))()
  np.testing.assert_allclose(est.server, p.server_l, rtol=1e-4)
  np.testing.assert_allclose(est.clients, p.client_l, rtol=1e-4)
  np.testing.assert_allclose(est.cross, p.cross, rtol=1e-4)
  eta_s, eta_c = 0.3, np.array([0.2, 0.5, 0.1])
  lam = smoothness.preconditioned_sharpness(p.task_loss, *params, p.batch,
                                            jnp.asarray(WEIGHTS), eta_s, jnp.asarray(eta_c),
                                            jax.random.PRNGKey(1), num_iters=300)
  exact, _ = p.exact_sharpness(eta_s, eta_c)
  np.testing.assert_allclose(lam, exact, rtol=1e-4)
  # Lemma 2: the arrow matrix of block norms bounds the exact sharpness from above.
  bound = step_sizes.sharpness_bound(p.server_l, p.client_l, p.cross, WEIGHTS, eta_s, eta_c)
  assert exact <= bound * (1 + 1e-6)


def test_mtsl_gradients_equal_the_library_fused_gradients():
  c = config_base.base_config()
  c.model.hidden_sizes = (8, 7)
  model = split_model.make_split_model(c.model, c.split, 4)
  sp, cp = split_model.init_params(model, jax.random.PRNGKey(0), (6,), 3)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 6))
  k = jnp.array([4, 2, 3])
  y = jax.random.randint(jax.random.PRNGKey(2), (3, 5), 0, k[:, None])
  w = jnp.asarray(WEIGHTS)
  expected = jax.jit(lambda: split_gradients.fused_gradients(model, sp, cp, x, y, k, w)[:2])()
  got = jax.jit(lambda: smoothness.mtsl_gradients(smoothness.split_task_loss(model), sp, cp,
                                                  (x, y, k), w))()
  for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


# ---- convex quadratics: descent, convergence, divergence, best ratio --------------------


def test_rates_inside_the_bound_descend_every_step_and_reach_the_optimum():
  p = LeastSquares(seed=0)
  # Block-Jacobi rates with bound 1 (Cor. 1), then stretched to bound 1.9: inside Thm 1.
  eta_s, eta_c = step_sizes.jacobi_rates(p.server_l, p.client_l, p.cross, WEIGHTS, level=1.9)
  lam, mu = p.exact_sharpness(eta_s, eta_c)
  assert lam <= 1.9 * (1 + 1e-6)
  f, g_p, theta = run_least_squares(p, eta_s, eta_c, 400)
  # Theorem 1, step by step: f(θ+) ≤ f(θ) − (1 − Λ/2)·||∇f||²_P.
  promised = (1 - lam / 2) * g_p[:-1]
  assert np.all(f[1:] <= f[:-1] - promised + 1e-6 * f[0]), np.max(f[1:] - f[:-1] + promised)
  assert np.all(promised > 0)
  # Theorem 4 (strongly convex): f_t − f* ≤ (1 − 2 μ_P (1 − Λ/2))^t (f_0 − f*).
  rate = 1 - 2 * mu * (1 - lam / 2)
  gap = f - p.f_star
  t = np.arange(len(f))
  assert np.all(gap <= rate**t * gap[0] + 1e-6 * gap[0])
  np.testing.assert_allclose(theta, p.theta_star, atol=2e-4)
  assert gap[-1] < 1e-6 * gap[0]


def test_convex_one_over_t_bound_with_level_one_rates():
  """Theorem 3: with Λ ≤ 1, f_T − f* ≤ ||θ_0 − θ*||²_{P⁻¹} / (2T) for every T."""
  p = LeastSquares(seed=4)
  eta_s, eta_c = step_sizes.jacobi_rates(p.server_l, p.client_l, p.cross, WEIGHTS, level=1.0)
  assert p.exact_sharpness(eta_s, eta_c)[0] <= 1.0 + 1e-6
  f, _, _ = run_least_squares(p, eta_s, eta_c, 200)
  dist = np.sum(p.theta_star**2 / p.preconditioner(eta_s, eta_c))  # θ_0 = 0
  t = np.arange(1, len(f))
  assert np.all(f[1:] - p.f_star <= dist / (2 * t) + 1e-6)


@pytest.mark.parametrize("block", ["server", "client"])
def test_rates_above_the_bound_diverge(block):
  p = LeastSquares(seed=1)
  eta_s, eta_c = step_sizes.jacobi_rates(p.server_l, p.client_l, p.cross, WEIGHTS, level=1.0)
  if block == "server":
    eta_s = 2.5 / p.server_l  # Λ ≥ η_s L_φ = 2.5
  else:
    eta_c = eta_c.copy()
    eta_c[1] = 2.5 / p.client_l[1]  # Λ ≥ η_c,m L_m = 2.5
  assert p.exact_sharpness(eta_s, eta_c)[0] >= 2.5 - 1e-6
  f, _, _ = run_least_squares(p, eta_s, eta_c, 100)
  assert not np.all(np.isfinite(f)) or f[-1] > 1e6 * f[0]
  # Just inside the boundary (the exact Λ scaled to 1.95) the same problem converges.
  s = 1.95 / p.exact_sharpness(eta_s, eta_c)[0]
  f, _, _ = run_least_squares(p, s * eta_s, s * eta_c, 2000)
  assert f[-1] - p.f_star < 1e-3 * (f[0] - p.f_star)


def _steps_to_target(f, f_star, target):
  hit = np.flatnonzero(f - f_star <= target * (f[0] - f_star))
  return int(hit[0]) if hit.size else len(f)


def test_predicted_ratio_beats_equal_rates_on_a_heterogeneous_problem():
  """Server features 10x smaller than client features: L_φ / L_m ≈ 1/100.

  The predicted ratio η_c/η_s = L_φ / max L_m at its own bound-1 scale must reach
  f − f* ≤ 1e-4 (f_0 − f*) in at least 10x fewer steps than the BEST equal-rate run
  (η_s = η_c, tuned over a grid up to divergence).
  """
  p = LeastSquares(server_scale=0.2, client_scale=2.0, seed=2)
  ratio = step_sizes.predicted_ratio(p.server_l, p.client_l)
  assert 1e-3 < ratio < 3e-2
  num_steps, target = 3000, 1e-4
  ones = np.ones(p.m)
  # One client rate shared by all clients at the predicted ratio, scaled to bound 1: the
  # rates follow from the block constants alone, with no tuning.
  scale = 1.0 / step_sizes.sharpness_bound(p.server_l, p.client_l, p.cross, WEIGHTS, 1.0,
                                           ratio * ones)
  f, _, _ = run_least_squares(p, scale, scale * ratio * ones, num_steps)
  predicted_steps = _steps_to_target(f, p.f_star, target)
  equal_steps = []
  for eta in np.geomspace(0.01, 2.0 / p.client_l.max(), 12):
    f, _, _ = run_least_squares(p, eta, eta * ones, num_steps)
    equal_steps.append(_steps_to_target(f, p.f_star, target) if np.all(np.isfinite(f))
                       else num_steps)
  assert predicted_steps < num_steps
  assert 10 * predicted_steps <= min(equal_steps), (predicted_steps, equal_steps)


# ---- non-convex: a small split MLP with full-batch gradients ----------------------------


def test_nonconvex_gradient_bound_holds_along_an_mlp_run():
  """Theorem 2 along a real run: min_t ||∇f_t||² ≤ (f_0 − f_inf) / ((1 − Λ/2) T p_min).

  Deterministic full-batch gradients (every client's whole data each step) through
  StepContext.gradients (fused) and split.apply_gradients. Λ is the largest local
  sharpness measured at every iterate, times a safety factor 1.25 for the points between
  iterates and the power-iteration underestimate; f_inf = 0 (cross-entropy ≥ 0).
  """
  c = config_base.base_config()
  c.model.hidden_sizes = (8, 8)
  model = split_model.make_split_model(c.model, c.split, 3)
  num_clients, n, dim = 3, 16, 6
  x = jax.random.normal(jax.random.PRNGKey(1), (num_clients, n, dim))
  y = jax.random.randint(jax.random.PRNGKey(2), (num_clients, n), 0, 3)
  k = jnp.full((num_clients,), 3)
  w = jnp.asarray(WEIGHTS)
  task_loss = smoothness.split_task_loss(model)
  batch = (x, y, k)
  sp, cp = split_model.init_params(model, jax.random.PRNGKey(0), (dim,), num_clients)
  consts = jax.jit(lambda: smoothness.block_smoothness(task_loss, sp, cp, batch, w,
                                                       jax.random.PRNGKey(3)))()
  eta_s, eta_c = step_sizes.jacobi_rates(consts.server, consts.clients, consts.cross,
                                         WEIGHTS, level=0.5)
  server_tx, client_tx = optax.sgd(eta_s), optax.sgd(1.0)
  ctx = split.StepContext(model, server_tx, client_tx, k, w,
                          jnp.asarray(eta_c, jnp.float32), n)
  state = _state(sp, cp, server_tx, client_tx)

  def body(state, key):
    sp, cp = state.server.params, state.clients.params
    g_s, g_c, losses, _ = ctx.gradients(sp, cp, x, y)
    lam = smoothness.preconditioned_sharpness(task_loss, sp, cp, batch, w, eta_s,
                                              ctx.lr_multipliers_M, key, num_iters=30)
    sq = jax.vmap(lambda t: optax.tree.norm(t) ** 2)(g_c)
    g_p = eta_s * optax.tree.norm(g_s) ** 2 + jnp.sum(ctx.lr_multipliers_M * w * sq)
    g_sq = optax.tree.norm(g_s) ** 2 + jnp.sum(w**2 * sq)  # Euclidean ||∇f||²
    state, _ = split.apply_gradients(ctx, state, g_s, g_c)
    return state, (jnp.sum(w * losses), g_p, g_sq, lam)

  num_steps = 60
  run = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.PRNGKey(4),
                                                                 num_steps + 1)))
  _, (f, g_p, g_sq, lam) = jax.tree.map(np.asarray, run(state))
  # The sharpness grows along the run (progressive sharpening: about 2x here), so the
  # rates start at bound 0.5 to stay inside Theorem 1's condition Λ < 2 throughout.
  big_lam = 1.25 * lam.max()
  assert big_lam < 2.0
  decrease = 1 - big_lam / 2
  # Per step (Theorem 1) and telescoped: Σ_t (1 − Λ/2) ||∇f_t||²_P ≤ f_0 − f_T.
  assert np.all(f[1:] <= f[:-1] - decrease * g_p[:-1] + 1e-7)
  assert decrease * g_p[:-1].sum() <= f[0] - f[-1] + 1e-6
  p_min = min(eta_s, float(np.min(eta_c / WEIGHTS)))
  assert g_sq[:-1].min() <= f[0] / (decrease * num_steps * p_min)
  assert f[-1] < f[0]


