"""Recorded messages are the run's own, and the attack suite's numbers on known cases."""

import jax
import numpy as np
import pytest

from mtsl_jax import cut_defences, data, split_gradients, train, validation
from mtsl_jax.algorithms import mtsl
from mtsl_jax.privacy import attacks, messages
from tests.test_replicas import _tiny


def _run(tmp_path, steps, **overrides):
  config = _tiny(**{"split.orientation": "u_shaped", "num_steps": steps, **overrides})
  result = train.train_and_evaluate(config, tmp_path / f"steps={steps}", verbose=False)
  return config, result.state, data.build_federation(config.data, config.seed)


@pytest.mark.parametrize("defended", [False, True])
def test_a_window_is_the_runs_own_steps_and_messages(tmp_path, defended):
  extra = {"privacy.smashed_noise_std": 0.1, "privacy.cut_grad_clip": 0.5} if defended else {}
  config, state, federation = _run(tmp_path, 3, **extra)
  window, after = messages.record_window(config, state, federation, 3)
  # Recording does not change training: three recorded steps end where the loop does.
  _, longer, _ = _run(tmp_path, 6, **extra)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(longer)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # The first step's messages are the protocol's on that step's minibatch and key.
  ctx = mtsl.make_step_context(config, federation)
  train_data, _ = data.to_device(federation)
  x, y = data.sample_batches(train_data, jax.random.fold_in(state.rng, state.step), 4)
  key = cut_defences.step_key(state.rng, state.step)
  sent = split_gradients.protocol_gradients(ctx.split, state.server.params,
                                            state.clients.params, x, y, ctx.num_classes_M,
                                            ctx.weights_M, defences=ctx.defences, key=key)[4]
  assert window.start_step == 3 and window.x.shape[:2] == (3, 12)
  np.testing.assert_array_equal(window.y[:, :4], np.asarray(y))
  for name, value in sent.items():
    np.testing.assert_allclose(window.messages[name][:, :4], np.asarray(value), rtol=1e-5,
                               atol=1e-6)


def test_what_travels_in_the_clear_counts_as_leaked(tmp_path):
  config, state, federation = _run(tmp_path, 2, **{"split.orientation": "bottom",
                                                   "split.client_top_blocks": 0})
  window, _ = messages.record_window(config, state, federation, 2)
  assert attacks.attack_all(window)["label_auc"] == 1.0  # the labels go up with the data
  config, state, federation = _run(tmp_path / "top", 2, **{"split.orientation": "top",
                                                           "split.client_bottom_blocks": 0})
  window, _ = messages.record_window(config, state, federation, 2)
  out = attacks.attack_all(window)
  assert out["input_dcor"] == 1.0 and 0 <= out["label_auc"] <= 1  # raw inputs go up


def _window(grads, labels, x=None, smashed=None):
  msgs = {"up/cut_gradients": grads}
  if smashed is not None:
    msgs["up/smashed"] = smashed
  x = np.zeros(labels.shape + (1,), np.float32) if x is None else x
  return messages.Window(0, x, labels, msgs)


def test_label_leakage_is_perfect_on_logit_gradients_and_chance_on_noise():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, size=(2, 400))
  # The gradient of cross-entropy w.r.t. the logits, p - onehot(y), at a uniform p: each
  # class has its own direction, so one known example per class separates it exactly.
  grads = np.full((2, 400, 4), 0.25) - np.eye(4)[labels]
  np.testing.assert_allclose(attacks.label_leakage(_window(grads, labels)), 1.0)
  noise = rng.normal(size=(2, 400, 4))
  assert np.all(np.abs(attacks.label_leakage(_window(noise, labels)) - 0.5) < 0.1)


def test_input_dependence_is_one_for_a_copy_and_small_for_independent_messages():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 300, 3)).astype(np.float32)
  labels = np.zeros((2, 300), np.int64)
  copy = _window(np.zeros((2, 300, 1)), labels, x=x, smashed=2 * x + 1)
  np.testing.assert_allclose(attacks.input_dependence(copy), 1.0, atol=1e-5)
  independent = _window(np.zeros((2, 300, 1)), labels, x=x,
                        smashed=rng.normal(size=(2, 300, 3)).astype(np.float32))
  assert np.all(attacks.input_dependence(independent) < 0.2)


def test_nopeek_and_smashed_noise_lower_the_input_dependence_the_server_sees(tmp_path):
  measured = {}
  for name, extra in {"none": {}, "noise": {"privacy.smashed_noise_std": 5.0},
                      "nopeek": {"privacy.nopeek_weight": 1.0}}.items():
    config, state, federation = _run(tmp_path / name, 30, batch_size=16, **extra)
    window, _ = messages.record_window(config, state, federation, 10)
    measured[name] = attacks.attack_all(window)["input_dcor"]
  assert measured["noise"] < measured["none"] - 0.1
  assert measured["nopeek"] < measured["none"] - 0.1


def test_a_finished_run_is_attacked_from_its_workdir(tmp_path):
  # pylint: disable=import-outside-toplevel
  import json
  from mtsl_jax import config_files
  from mtsl_jax.privacy import attack_run, reconstruction
  config = _tiny(**{"split.orientation": "u_shaped", "num_steps": 6,
                    "privacy.smashed_noise_std": 0.5, "model.hidden_sizes": (8, 6)})
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, workdir, verbose=False)
  # The recorded config comes back whole, tuples and all.
  loaded = config_files.load_run_config(workdir)
  assert loaded.to_dict() == config.to_dict()
  scores = attack_run.attack_workdir(workdir, window_steps=2,
                                     budget=reconstruction.AttackBudget((8,), 5, (8,), 5, 8))
  assert scores["step"] == 6 and scores["orientation"] == "u_shaped"
  assert scores["defences"]["smashed_noise_std"] == 0.5
  assert 0 <= scores["label_auc"] <= 1 and 0 <= scores["input_dcor"] <= 1
  assert json.loads((workdir / "privacy.json").read_text()) == scores
  fedavg = tmp_path / "fedavg"
  train.train_and_evaluate(_tiny(algorithm="fedavg"), fedavg, verbose=False)
  with pytest.raises(validation.ConfigError, match="'fedavg'"):
    attack_run.attack_workdir(fedavg)
  with pytest.raises(config_files.ConfigFileError, match="no such file"):
    attack_run.attack_workdir(tmp_path / "nothing")


def test_a_splitfed_window_is_the_runs_own_rounds_and_first_step_messages(tmp_path):
  overrides = {"algorithm": "splitfed_v2", "split.orientation": "bottom",
               "split.client_top_blocks": 0, "fl.local_steps": 2}
  config, state, federation = _run(tmp_path, 3, **overrides)
  window, after = messages.record_splitfed_window(config, state, federation, 2)
  _, longer, _ = _run(tmp_path, 5, **overrides)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(longer)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # Round 3's first split step is split step 6: its minibatch through the global bottom.
  train_data, _ = data.to_device(federation)
  x, y = data.sample_batches(train_data, jax.random.fold_in(state.rng, 6), 4)
  bottom = messages.client_bottom(config, state, federation, 0)
  np.testing.assert_array_equal(window.y[:, :4], np.asarray(y))
  np.testing.assert_allclose(window.messages["up/smashed"][0, :4], np.asarray(bottom(x[0])),
                             rtol=1e-5, atol=1e-6)
  assert attacks.attack_all(window)["label_auc"] == 1.0  # labels go up under this cut


def test_per_client_scores_and_the_norm_attacks_one_vs_rest_mean():
  # Client 0: 3 balanced classes whose gradient norms are 3, 2, 1: one-vs-rest AUCs 1,
  # 0.5 (norm 2 sits between the others), 0; mean 0.5: a single score cannot rank every
  # class first. Client 1: one class only, no score.
  labels = np.array([[0, 1, 2] * 4, [1] * 12])
  norms = np.array([3.0, 2.0, 1.0])[labels]
  grads = norms[..., None] * np.array([1.0, 0.0])  # [2, 12, 2]
  np.testing.assert_allclose(attacks.norm_leakage(_window(grads, labels)), [0.5, np.nan])
  out = attacks.attack_all(_window(grads, labels), per_client=True)
  assert out["label_auc_norm"] == 0.5 and out["label_auc_norm_clients"] == [0.5, None]
  assert out["label_auc_clients"][1] is None and out["label_auc"] == out["label_auc_clients"][0]
  assert set(attacks.attack_all(_window(grads, labels))) == {"label_auc", "input_dcor"}
