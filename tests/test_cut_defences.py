"""Defences at the cuts: off at zero, the same numbers in both implementations, each doing
what it says to the messages, and every defended step jitted once and vmapped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import cut_defences, distance_correlation, split_gradients, validation
from tests.test_algorithms import run_steps
from tests.test_replicas import _tiny
from tests.test_split import _assert_trees_close, _problem

KEY = jax.random.PRNGKey(7)
# orientation -> a defence of each kind it allows. The clip 0.1 lies inside the range of
# the problem's per-example cut-gradient norms (about 0.08 to 0.22), so some examples are
# clipped and others pass: both branches of the clip are compared.
DEFENDED = {
    "bottom": cut_defences.CutDefences(smashed_noise_std=0.3, nopeek_weight=0.5),
    "u_shaped": cut_defences.CutDefences(0.3, 0.5, cut_grad_clip=0.1, cut_grad_noise_std=0.02),
    "top": cut_defences.CutDefences(cut_grad_clip=0.1, cut_grad_noise_std=0.02),
}


@pytest.mark.parametrize("orientation", list(DEFENDED))
def test_zero_strength_is_the_undefended_step(orientation):
  model, sp, cp, x, y, k, w = _problem(orientation)
  for impl in (split_gradients.fused_gradients, split_gradients.protocol_gradients):
    plain = impl(model, sp, cp, x, y, k, w)
    zero = impl(model, sp, cp, x, y, k, w, defences=cut_defences.CutDefences(), key=KEY)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(zero)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("orientation", list(DEFENDED))
def test_fused_and_protocol_defend_with_the_same_numbers(orientation):
  model, sp, cp, x, y, k, w = _problem(orientation)
  d = DEFENDED[orientation]
  fused = split_gradients.fused_gradients(model, sp, cp, x, y, k, w, defences=d, key=KEY)
  protocol = split_gradients.protocol_gradients(model, sp, cp, x, y, k, w, defences=d,
                                                key=KEY)
  _assert_trees_close(fused, protocol[:4], atol=1e-5)
  plain = split_gradients.fused_gradients(model, sp, cp, x, y, k, w)
  # The defences change the server's gradient (what it receives changed).
  assert not np.allclose(jax.tree.leaves(fused[0])[0], jax.tree.leaves(plain[0])[0])


def test_smashed_noise_is_what_the_server_sees():
  model, sp, cp, x, y, k, w = _problem("bottom")
  d = cut_defences.CutDefences(smashed_noise_std=2.0)
  clean = split_gradients.protocol_gradients(model, sp, cp, x, y, k, w)[4]["up/smashed"]
  sent = split_gradients.protocol_gradients(model, sp, cp, x, y, k, w, defences=d,
                                            key=KEY)[4]["up/smashed"]
  noise = np.asarray(sent - clean)
  assert noise.std() == pytest.approx(2.0, rel=0.1) and abs(noise.mean()) < 0.2


def test_label_protection_clips_each_examples_cut_gradient():
  model, sp, cp, x, y, k, w = _problem("top")
  d = cut_defences.CutDefences(cut_grad_clip=1e-3)
  plain = split_gradients.protocol_gradients(model, sp, cp, x, y, k, w)[4]
  sent = split_gradients.protocol_gradients(model, sp, cp, x, y, k, w, defences=d,
                                            key=KEY)[4]["up/cut_gradients"]
  before = np.linalg.norm(np.asarray(plain["up/cut_gradients"]), axis=-1)
  after = np.linalg.norm(np.asarray(sent), axis=-1)
  assert before.min() > 1e-3  # every example is clipped here, so the test can fail
  np.testing.assert_allclose(after, 1e-3, rtol=1e-4)
  # Clipping scales each example's gradient: its direction is kept.
  cos = np.sum(np.asarray(sent) * np.asarray(plain["up/cut_gradients"]), -1) / (after * before)
  np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


def test_nopeek_adds_its_penalty_gradient_to_the_client_bottom_only():
  model, sp, cp, x, y, k, w = _problem("u_shaped")
  alpha = 0.5
  d = cut_defences.CutDefences(nopeek_weight=alpha)
  g_s, g_c, losses, _ = split_gradients.fused_gradients(model, sp, cp, x, y, k, w,
                                                        defences=d, key=KEY)
  p_s, p_c, p_losses, _ = split_gradients.fused_gradients(model, sp, cp, x, y, k, w)
  _assert_trees_close(g_s, p_s)             # the server's objective is unchanged
  _assert_trees_close(g_c["top"], p_c["top"])
  np.testing.assert_array_equal(np.asarray(losses), np.asarray(p_losses))  # task losses

  def penalty(bottom):
    smashed = model.client_bottom(bottom, x)
    return alpha * jnp.sum(jax.vmap(distance_correlation.distance_correlation)(x, smashed))
  expected = jax.tree.map(jnp.add, p_c["bottom"], jax.grad(penalty)(cp["bottom"]))
  # dCor's gradient cancels much in its double centring: float32 rounding of ~1e-6.
  _assert_trees_close(g_c["bottom"], expected, atol=1e-5)


def test_a_defended_step_is_one_trace_and_draws_the_undefended_minibatches():
  base = {"split.orientation": "u_shaped", "num_steps": 4}
  defended = _tiny(**base, **{"privacy.smashed_noise_std": 0.5, "privacy.nopeek_weight": 0.1,
                              "privacy.cut_grad_clip": 1.0,
                              "privacy.cut_grad_noise_std": 0.01})
  # run_steps runs chunks of 1 and 3 steps through the loop, which must trace once.
  state, _ = run_steps(defended, 4)
  plain, _ = run_steps(_tiny(**base), 4)
  assert int(state.step) == 4 and all(
      np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state))
  assert not np.allclose(np.asarray(jax.tree.leaves(state.server.params)[0]),
                         np.asarray(jax.tree.leaves(plain.server.params)[0]))
  # A clip no example reaches takes the defended path (its key stream included) and
  # changes no number: the defended step samples the undefended minibatches.
  inert, _ = run_steps(_tiny(**base, **{"privacy.cut_grad_clip": 1e9}), 4)
  for a, b in zip(jax.tree.leaves(inert), jax.tree.leaves(plain)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  keys = {int(cut_defences.step_key(state.rng, t)[1]) for t in range(4)}
  batch_keys = {int(jax.random.fold_in(state.rng, t)[1]) for t in range(4)}
  assert len(keys) == 4 and not keys & batch_keys


@pytest.mark.parametrize("field,orientation,algorithm,message", [
    ("privacy.smashed_noise_std", "top", "mtsl", "no client bottom"),
    ("privacy.nopeek_weight", "top", "mtsl", "no client bottom"),
    ("privacy.cut_grad_clip", "bottom", "mtsl", "server holds the head"),
    ("privacy.cut_grad_noise_std", "u_shaped", "fedavg", "'mtsl' only"),
])
def test_a_defence_without_its_message_is_refused_in_one_line(field, orientation, algorithm,
                                                               message):
  config = _tiny(**{field: 0.1, "split.orientation": orientation, "algorithm": algorithm,
                    "split.client_bottom_blocks": int(orientation != "top"),
                    "split.client_top_blocks": int(orientation != "bottom")})
  with pytest.raises(validation.ConfigError, match=message) as info:
    validation.validate_config(config)
  assert field in str(info.value) and "\n" not in str(info.value)
  with pytest.raises(validation.ConfigError, match="privacy.nopeek_weight"):
    validation.validate_config(_tiny(**{"privacy.nopeek_weight": -1.0}))
