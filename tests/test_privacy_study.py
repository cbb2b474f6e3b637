"""The privacy study end to end on the embedded data: rows run, records, document, resume."""

import json

from mtsl_jax.privacy import defence_effects, report, tradeoff


def test_every_row_builds_a_valid_config_in_every_profile():
  for profile in tradeoff.PROFILES.values():
    for row in tradeoff.rows():
      c = tradeoff.make_config(profile, row)
      if row.orientation in ("fedavg", "splitfed_v2"):
        assert c.algorithm == row.orientation
      else:
        assert c.algorithm == "mtsl" and c.split.orientation == row.orientation
      if row.defence not in ("none", "client_bottom_blocks"):
        assert c.privacy[row.defence] == row.strength > 0
      cut = (c.split.client_bottom_blocks, c.split.client_top_blocks)
      hidden = tuple(profile.model["hidden_sizes"])
      if row.family == "bottom@2":  # the 'bottom' family's deeper-cut run, defended
        assert cut == (2, 0) and tuple(c.model.hidden_sizes) == hidden
        base = tradeoff.make_config(profile, tradeoff.base_row(row))
        assert base.split.client_bottom_blocks == 2 and not any(base.privacy.values())
      if row.family == "u_shaped@2":  # a hidden layer more, in the client bottom
        assert cut == (2, 1) and tuple(c.model.hidden_sizes) == hidden + hidden[-1:]
  # Each defence at 4 strengths where its message is sent, the deeper cut, 3 undefended
  # MTSL rows, FedAvg's and SplitFed's; the smashed data's 2 defences at the second cuts
  # of 'bottom' (paired with the deeper-cut row) and of u_shaped (with its own 'none').
  assert len(tradeoff.rows()) == 3 + 4 * 3 + 4 * 2 + 1 + 4 + 2 + 2 * 4 + (1 + 2 * 4)


def test_tiny_study_records_utility_and_leakage_and_writes_the_document(tmp_path,
                                                                        monkeypatch):
  chosen = [tradeoff.Row("u_shaped", "none", 0.0),
            tradeoff.Row("u_shaped", "cut_grad_noise_std", 0.03),
            tradeoff.Row("bottom", "client_bottom_blocks", 2.0),
            tradeoff.Row("fedavg", "none", 0.0),
            tradeoff.Row("splitfed_v2", "none", 0.0)]
  monkeypatch.setattr(tradeoff, "rows", lambda: chosen)
  results = tmp_path / "runs.jsonl"
  tradeoff.run_profile(results, tmp_path / "scratch", "test", verbose=False)
  recs = [json.loads(line) for line in results.read_text().splitlines()]
  assert sorted((r["row"], r["seed"]) for r in recs) == sorted(
      (row.name, s) for row in chosen for s in tradeoff.PROFILES["test"].seeds)
  for r in recs:
    assert set(r["attacks"]) == {"0", "18"} and 0 <= r["accuracy"] <= 1
    assert r["where"]["backend"] == "cpu" and r["reductions"]
    end = r["attacks"]["18"]
    if r["orientation"] == "fedavg":  # the update, inverted: no split messages
      assert end["label_auc"] is None and end["input_dcor"] is None
      assert end["recon_psnr"] is not None and 0 <= end["recon_label_accuracy"] <= 1
      assert r["attack"] == tradeoff.INVERSION_ATTACK
      continue
    if r["orientation"] in ("bottom", "splitfed_v2"):
      assert end["label_auc"] == 1.0  # the labels travel with the smashed data
    assert 0 <= end["input_dcor"] <= 1
    assert 0 <= end["recon_classifier_accuracy"] <= 1 and end["recon_ssim"] is None
    # The inverse network: at every window for the undefended runs, else at the end.
    undefended = r["row"] in ("u_shaped/none=0", "bottom/client_bottom_blocks=2",
                              "splitfed_v2/none=0")
    assert ("recon_psnr" in r["attacks"]["0"]) == undefended
    if undefended:
      assert 0 <= r["attacks"]["0"]["recon_classifier_accuracy"] <= 1
    # Each client's label AUC and the norm attack: every window of the undefended runs
    # whose clients send cut-layer gradients.
    per_client = r["row"] == "u_shaped/none=0"
    assert all(("label_auc_clients" in w) == per_client for w in r["attacks"].values())
    if per_client:
      assert len(r["attacks"]["0"]["label_auc_clients"]) == 3  # the profile's clients
  before = results.read_text()
  tradeoff.run_profile(results, tmp_path / "scratch", "test", verbose=False)
  assert results.read_text() == before  # recorded rows do not run again
  # An undefended record without the reconstruction at every window (the records from
  # before it ran there) is superseded: scored again from the row's checkpoints.
  (first,) = [r for r in recs if r["row"] == "u_shaped/none=0" and r["seed"] == 0]
  assert tradeoff.is_current(first)
  stale = json.loads(json.dumps(first))
  for key in ("recon_psnr", "recon_ssim", "recon_classifier_accuracy"):
    del stale["attacks"]["0"][key]
  assert not tradeoff.is_current(stale)
  # A FedAvg record scored by an earlier inversion attack is superseded: its row runs
  # again, appended after it, and only the new one is reported.
  old = [dict(r, accuracy=0.0) for r in recs if r["orientation"] == "fedavg"]
  for r in old:
    del r["attack"]
  kept = [r for r in recs if r["orientation"] != "fedavg"]
  results.write_text("".join(json.dumps(r) + "\n" for r in kept + old))
  tradeoff.run_profile(results, tmp_path / "scratch", "test", verbose=False)
  rerun = [json.loads(line) for line in results.read_text().splitlines()][len(kept + old):]
  assert [(r["row"], r["seed"], r["attack"]) for r in rerun] == [
      (r["row"], r["seed"], tradeoff.INVERSION_ATTACK) for r in old]
  assert all(r["accuracy"] > 0 for r in rerun)
  document = tmp_path / "privacy.md"
  report.write_report(results, document)
  text = document.read_text()
  assert "## Threat model" in text and "| u_shaped | cut_grad_noise_std | 0.03 | 2 |" in text
  assert "| fedavg | none | 0 | 2 | 0.0" not in text  # the superseded records' accuracy
  assert "FedAvg's gradient inversion restored" in text
  assert "## Reconstruction over training" in text and "## Label inference over training" in text
  for attack in report.FIGURES:
    assert (tmp_path / "figures" / "privacy" / f"privacy_test_{attack}.png").exists()
  report.write_report(results, document)
  assert document.read_text() == text


def _scored_then_unrecorded(tmp_path, row):
  """Runs `row` on the test profile, then loses its records (its scratch stays).

  Returns:
    (the first run's records, the path of its windows.json, that file's scores).
  """
  results, scratch = tmp_path / "runs.jsonl", tmp_path / "scratch"
  first = tradeoff.run_row(results, scratch, "test", row, verbose=False)
  results.unlink()
  partial = next(scratch.rglob("windows.json"))
  return first, partial, json.loads(partial.read_text())


def test_an_interrupted_row_resumes_at_its_first_unscored_window(tmp_path):
  row = tradeoff.Row("top", "none", 0.0)
  # A crash after the last window was scored but before the record was written.
  first, partial, scores = _scored_then_unrecorded(tmp_path, row)
  results, scratch = tmp_path / "runs.jsonl", tmp_path / "scratch"
  again = tradeoff.run_row(results, scratch, "test", row, verbose=False)
  assert [r["attacks"] for r in again] == [r["attacks"] for r in first]
  # A crash before the last window was scored: only its segment trains again.
  results.unlink()
  del scores["18"]
  partial.write_text(json.dumps(scores))
  third = tradeoff.run_row(results, scratch, "test", row, verbose=False)
  assert [r["accuracy"] for r in third] == [r["accuracy"] for r in first]
  assert [r["attacks"]["0"] for r in third] == [r["attacks"]["0"] for r in first]


def test_defence_effects_are_paired_over_seeds_against_the_undefended_row():
  """Hand-made records: u_shaped undefended and with cut-gradient noise, 3 seeds.

  Accuracy 0.90, 0.91, 0.93 -> 0.85, 0.87, 0.88: per-seed changes -5, -4, -5 points,
  mean -4.67, sd 0.577, t(2) half-width 4.303 x 0.577 / sqrt(3) = 1.43: 'fails' (a cost).
  Label AUC 1.0, 0.99, 1.0 -> 0.6, 0.5, 0.55: reductions 0.40, 0.49, 0.45, mean 0.447:
  'holds' (t = 17.2, p = 0.0034). dCor equal on every seed: reduction exactly 0, 'not
  significant'. A seed without its undefended twin is left out.
  """
  def rec(row, seed, acc, auc, dcor):
    family, rest = row.split("/")
    return {"profile": "cpu", "row": row, "seed": seed, "accuracy": acc,
            "orientation": family.split("@")[0], "defence": rest.split("=")[0],
            "attacks": {"0": {"label_auc": 1.0, "input_dcor": 0.5},
                        "292": {"label_auc": auc, "input_dcor": dcor}}}

  base, noised = "u_shaped/none=0", "u_shaped/cut_grad_noise_std=0.01"
  recs = [rec(base, s, a, u, 0.9) for s, a, u in ((0, 0.90, 1.0), (1, 0.91, 0.99),
                                                  (2, 0.93, 1.0))]
  recs += [rec(noised, s, a, u, 0.9) for s, a, u in ((0, 0.85, 0.6), (1, 0.87, 0.5),
                                                     (2, 0.88, 0.55), (3, 0.5, 0.5))]
  (effect,) = defence_effects.defence_effects(recs)
  assert effect["row"] == tradeoff.Row("u_shaped", "cut_grad_noise_std", 0.01)
  assert effect["n"] == 3
  acc = effect["accuracy"].difference
  assert abs(100 * acc.mean + 4.667) < 1e-3 and abs(100 * acc.half_width - 1.434) < 2e-3
  assert defence_effects.statistics.verdict(effect["accuracy"]) == "fails"
  auc = effect["reductions"]["label_auc"]
  assert abs(auc.difference.mean - 0.44667) < 1e-4
  assert defence_effects.statistics.verdict(auc) == "holds"
  assert defence_effects.statistics.verdict(effect["reductions"]["input_dcor"]) == "not significant"
  assert "recon_classifier_accuracy" not in effect["reductions"]  # not recorded
  assert defence_effects.readings([effect]) == [
      "- cpu, u_shaped, cut_grad_noise_std: at strength 0.01 (the weakest tried that does) "
      "it lowers label-inference AUC by 0.447 (p=0.0034), with a significant accuracy cost "
      "of -4.7 points.",
      "- cpu, u_shaped, cut_grad_noise_std: no strength tried (0.01) lowers "
      "dCor(inputs, smashed data) significantly."]
  # The profile asks for five seeds; the section says this row has three.
  section = "\n".join(report._effects_table([effect]))  # pylint: disable=protected-access
  assert "Not every seed has run yet: cpu: rows with 3 of 5 seeds" in section


def test_a_second_cut_of_bottom_pairs_with_the_deeper_cut_run():
  """'bottom@2' rows are the deeper-cut run defended: paired with its records."""
  def rec(row, seed, acc):
    return {"profile": "cpu", "row": row, "seed": seed, "accuracy": acc,
            "orientation": "bottom", "defence": row.split("/")[1].split("=")[0],
            "attacks": {"292": {"label_auc": 1.0, "input_dcor": 0.8 - acc / 10,
                                "recon_classifier_accuracy": acc}}}

  deeper, noised = "bottom/client_bottom_blocks=2", "bottom@2/smashed_noise_std=3"
  recs = [rec(deeper, s, 0.9 + s / 100) for s in range(3)]
  recs += [rec(noised, s, 0.8 + s / 50) for s in range(3)]
  effects = {e["row"].name: e for e in defence_effects.defence_effects(recs)}
  assert set(effects) == {noised}  # the deeper cut itself pairs with bottom/none: absent
  effect = effects[noised]
  # Per seed 0.80-0.90, 0.82-0.91, 0.84-0.92: -10, -9, -8 points.
  assert abs(100 * effect["accuracy"].difference.mean + 9.0) < 1e-9
  assert abs(effect["reductions"]["recon_classifier_accuracy"].difference.mean - 0.09) < 1e-9


def test_the_inverse_network_attacks_every_window_of_the_undefended_smashed_runs():
  windows = (0, 150, 292)
  every = {row.name for row in tradeoff.rows()
           if tradeoff.reconstruction_windows(row, windows) == windows}
  assert every == {"u_shaped/none=0", "bottom/none=0", "bottom/client_bottom_blocks=2",
                   "splitfed_v2/none=0", "u_shaped@2/none=0"}
  for row in tradeoff.rows():
    if row.name not in every:
      assert tradeoff.reconstruction_windows(row, windows) == (292,)


def test_a_window_scored_without_the_reconstruction_it_now_needs_is_scored_again(tmp_path):
  row = tradeoff.Row("u_shaped", "none", 0.0)
  first, partial, scores = _scored_then_unrecorded(tmp_path, row)
  results, scratch = tmp_path / "runs.jsonl", tmp_path / "scratch"
  for seed_scores in scores["0"].values():  # as scored before it ran at every window
    for key in ("recon_psnr", "recon_ssim", "recon_classifier_accuracy"):
      del seed_scores[key]
  partial.write_text(json.dumps(scores))
  again = tradeoff.run_row(results, scratch, "test", row, verbose=False)
  assert [r["attacks"] for r in again] == [r["attacks"] for r in first]


def test_a_diverged_seed_is_left_out_of_the_pairing_and_said():
  def rec(row, seed, acc, recon):
    return {"profile": "cpu", "row": row, "seed": seed, "accuracy": acc,
            "orientation": "bottom", "defence": row.split("/")[1].split("=")[0],
            "diverged": acc is None,
            "attacks": {"292": {"label_auc": 1.0, "input_dcor": 0.8,
                                "recon_classifier_accuracy": recon}}}

  base, defended = "bottom/none=0", "bottom/nopeek_weight=3"
  recs = [rec(base, s, 0.9, 0.8) for s in range(3)]
  recs += [rec(defended, 0, None, None), rec(defended, 1, 0.5, 0.1), rec(defended, 2, 0.6, 0.2)]
  (effect,) = defence_effects.defence_effects(recs)
  assert effect["n"] == 2 and effect["left_out"] == 1
  assert abs(100 * effect["accuracy"].difference.mean + 35.0) < 1e-9  # -40 and -30 points
  (reading,) = [r for r in defence_effects.readings([effect]) if "reconstructed" in r]
  assert reading.endswith("; and 1 seed(s) diverged, left out of both tests.")


def test_the_table_prints_the_sample_std_of_every_end_of_training_score():
  """Label AUC at the end 0.90, 0.92, 0.94: mean 0.920, sd 0.020, t(2) half-width
  4.303 x 0.020 / sqrt(3) = 0.050; at the first window 0.5, 0.6, 0.7 (sd 0.1) the cell
  keeps the t-interval alone."""
  recs = [{"profile": "cpu", "row": "u_shaped/none=0", "seed": s, "accuracy": 0.9,
           "orientation": "u_shaped", "defence": "none",
           "attacks": {"0": {"label_auc": a0, "input_dcor": 0.5},
                       "292": {"label_auc": a, "input_dcor": 0.5}}}
          for s, a0, a in ((0, 0.5, 0.90), (1, 0.6, 0.92), (2, 0.7, 0.94))]
  table = "\n".join(report._table(report._summaries(recs)))  # pylint: disable=protected-access
  (line,) = [l for l in table.splitlines() if l.startswith("| u_shaped | none |")]
  assert "| 0.600 ± 0.248 |" in line  # first window: no sd
  assert "| 0.920 ± 0.050 (sd 0.020) |" in line


def test_a_tiny_significant_reduction_is_not_written_as_zero():
  assert defence_effects._size(0.447) == "0.447"  # pylint: disable=protected-access
  assert defence_effects._size(0.00017) == "0.00017"  # pylint: disable=protected-access
