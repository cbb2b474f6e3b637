"""docs/privacy.md and its figures, generated from the privacy study's records alone.

`write_report(results, document)` reads `results/privacy/runs.jsonl` (`tradeoff`), and
writes the threat model, the defences and attacks as implemented, the privacy-utility
table (accuracy and each attack's score per row, mean and 95% t-interval over seeds) and
the trade-off figures. Rows not yet recorded say so. The output depends on the records
only: writing it twice gives the same files.
"""

import collections
import math
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from mtsl_jax.comparison import records, statistics
from mtsl_jax.comparison import report_format as fmt
from mtsl_jax.privacy import attacker_choice, tradeoff
from mtsl_jax.privacy import defence_effects as effects
# pylint: enable=wrong-import-position

REGENERATE = "python launch/privacy.py --phases=report"
ATTACKS = {"label_auc": "label-inference AUC (cosine attack; 0.5 is chance)",
           "input_dcor": "dCor(inputs, smashed data)",
           "recon_psnr": "PSNR of reconstructed inputs (dB)",
           "recon_ssim": "SSIM of reconstructed inputs",
           "recon_classifier_accuracy": "a fixed classifier's accuracy on reconstructions"}
PER_WINDOW = ("label_auc", "input_dcor")   # the others: at the end of training only
FIGURES = ("label_auc", "input_dcor", "recon_classifier_accuracy")

THREAT_MODEL = """## Threat model

The server is honest but curious: it runs the protocol faithfully and keeps every message
it receives, per orientation (the ledger's messages, `split_gradients.protocol_gradients`):

- 'bottom': client m sends its smashed data B_m(x) and its labels y. At risk: the inputs
  (from the smashed data); the labels travel in the clear.
- 'u_shaped': client m sends its smashed data B_m(x) and the cut-layer gradients
  ∂f_m/∂h of its head. At risk: the inputs, and the labels (from the gradients).
- 'top': client m sends its raw inputs x and the cut-layer gradients of its head. At
  risk: the inputs travel in the clear; the labels (from the gradients).

It holds the server part G and may hold auxiliary public data from the same or a related
distribution; it knows one labelled example per class of each client for the
label-inference attack (Li et al., ICLR 2022). Under FedAvg the same server sees every
client's model update; with one local step (FedSGD) that is one gradient of the client's
minibatch loss, which the reference row inverts.

## Defences (`config.privacy`, MTSL; `mtsl_jax/cut_defences.py`)

- `smashed_noise_std`: Gaussian noise on every element of the smashed data sent up.
- `nopeek_weight`: the NoPeek penalty (Vepakomma et al. 2020): each client bottom also
  minimizes weight x dCor(inputs, smashed data) over its minibatch.
- `cut_grad_clip`, `cut_grad_noise_std`: each example's cut-layer gradient a client head
  sends up is clipped, then noised (label protection).
- The cut itself: a deeper client bottom (`split.client_bottom_blocks`). The smashed
  data's two defences also run at a second cut of each orientation that sends smashed
  data (the families marked '@2', dashed in the figures): 'bottom@2' is the MLP cut
  after its second block (the client holds 2 of 3 blocks; its undefended run is the
  'bottom' row 'client_bottom_blocks = 2'), 'u_shaped@2' gives the client bottom a hidden
  layer more (784-100-100-100-10 cut (2, 1): the server part and the head are
  u_shaped's; a three-block MLP has only one u_shaped cut). Both train at their
  orientation's rates.

Every defence trains inside the same jitted, vmapped step, in both gradient
implementations, and is the undefended step at strength 0 (tests/test_cut_defences.py).

## Attacks (`mtsl_jax/privacy/`)

- Label inference from the cut-layer gradients (`label_inference.py`): the cosine attack,
  one-vs-rest with one known example per class; the AUC per client, averaged.
- Input dependence (`distance_correlation.py`): dCor between each client's inputs and the
  smashed data it sent, a cheap leakage statistic (1: a similarity map of the inputs).
- Both read the messages of real training runs: `messages.record_window` runs a few of
  the run's own steps (a window) at the start, the middle and the end of training (the
  last window is the run's last steps) and keeps what the server received
  (tests/test_privacy_messages.py checks that the window is the run's own training). A
  column '@t' is the window of steps t to t + W - 1.
- Input reconstruction (`reconstruction.py`): the inverse network of He et al. (2019).
  The server queries client 0's bottom on its auxiliary data (the other clients' test
  examples), trains a decoder from smashed data back to inputs, and applies it to the
  smashed data it received at the end of training; PSNR and SSIM of the reconstructions
  (`image_metrics.py`) and the accuracy of a fixed classifier (trained on the auxiliary
  data) on them.
- Gradient inversion (`gradient_inversion.py`), FedAvg's reference row: "Inverting
  Gradients" (Geiping et al. 2020: the cosine distance between the dummies' gradient and
  the update, a total-variation prior, Adam, 2 restarts) with the labels read off the
  head's gradients first (iDLG, Zhao et al. 2020; for a batch, Yin et al. 2021), on
  client 0's FedSGD update of 4 training examples at the final global model, scored as
  the reconstructions are. FedAvg trains with one local step (FedSGD), so the attacked
  update is exactly what it sends, for the same client steps as the MTSL rows. The
  attacker's settings are tuned on other batches and recorded (section "The
  gradient-inversion attacker's settings"). DLG's squared distance,
  used before, reconstructs nothing at a trained model (its gradient is small, and any
  dummy with a small gradient matches it: PSNR 7 dB, SSIM 0.01, as its initial noise);
  its records are kept in the file but superseded (`tradeoff.is_current`).
- Any finished MTSL run: `python launch/privacy.py --attack=WORKDIR` records a window
  from its latest checkpoint and writes the same scores to WORKDIR/privacy.json
  (`attack_run.py`).
- SplitFed v2's row (`messages.record_splitfed_window`): one split step per round, the
  'bottom' cut; every client's smashed data and labels of each round's first split step,
  attacked as the MTSL rows' are (the reconstruction queries the global client-side model,
  which SplitFed's server side averages).
- Not run yet: CIFAR-10.
"""


def _summaries(recs: Sequence[dict]) -> dict[tuple, dict]:
  """(profile, row) -> {'accuracy': Interval, 'attacks': {window: {attack: Interval}}}."""
  latest = {}
  for r in recs:
    latest[(r["profile"], r["row"], r["seed"])] = r
  groups = collections.defaultdict(list)
  for (profile, row, _), r in sorted(latest.items(), key=lambda kv: repr(kv[0])):
    groups[(profile, row)].append(r)
  out = {}
  for key, runs in groups.items():
    accs = [r["accuracy"] for r in runs if r["accuracy"] is not None
            and math.isfinite(r["accuracy"])]
    windows = {}
    for t in runs[0]["attacks"]:
      windows[t] = {}
      for attack in (a for a in ATTACKS if a in runs[0]["attacks"][t]):
        values = [r["attacks"][t][attack] for r in runs
                  if r["attacks"].get(t, {}).get(attack) is not None
                  and math.isfinite(r["attacks"][t][attack])]
        windows[t][attack] = statistics.t_interval(values) if values else None
    out[key] = {"accuracy": statistics.t_interval(accs) if accs else None,
                "attacks": windows, "seeds": len(runs), "row": runs[0],
                "diverged": sum(bool(r.get("diverged")) for r in runs)}
  return out


def _effects_table(found: list[dict]) -> list[str]:
  """The section of `effects.defence_effects`' paired tests: readings, then one table per
  profile."""
  lines = ["## What each defence buys, paired over seeds", "",
           "Each defended row against the undefended row of its orientation, seed by seed "
           "(same data, initialization and minibatches): the accuracy change in points "
           "(defended - undefended) and the reduction of each attack score at the end of "
           "training (undefended - defended), with the 95% t-interval of the mean paired "
           "difference, the sample std (ddof = 1) of the per-seed differences and the "
           "p-value. 'holds': the defence lowers that score significantly; 'fails': it "
           "raises it significantly; on the accuracy, 'fails' is a significant cost.", ""]
  short = sorted({(e["profile"], e["n"] + e.get("left_out", 0)) for e in found
                  if e["profile"] in tradeoff.PROFILES
                  and e["n"] + e.get("left_out", 0)
                  < len(tradeoff.PROFILES[e["profile"]].seeds)})
  if short:
    lines += ["Not every seed has run yet: " + "; ".join(
        f"{profile}: rows with {n} of {len(tradeoff.PROFILES[profile].seeds)} seeds"
        for profile, n in short) + " (the same command adds the rest); with few seeds only "
        "large effects can be significant.", ""]
  if found:
    lines += ["In words (the weakest strength of each defence that lowers each score "
              "significantly):", "", *effects.readings(found), ""]
  for profile in sorted({e["profile"] for e in found}):
    lines += [f"### Profile {profile}", "",
              "| orientation | defence | strength | n | accuracy change (points) | "
              "label AUC reduction | reconstruction-classifier accuracy reduction | "
              "dCor reduction |", "|---|---|---|---|---|---|---|---|"]
    for e in (x for x in found if x["profile"] == profile):
      row = e["row"]
      cells = [effects.paired_text(e["reductions"][k]) if k in e["reductions"] else "—"
               for k in ("label_auc", "recon_classifier_accuracy", "input_dcor")]
      n = f"{e['n']}" + (f" ({e['left_out']} diverged, left out)"
                         if e.get("left_out") else "")
      lines.append(f"| {row.family} | {row.defence} | {row.strength:g} | {n} | "
                   f"{effects.paired_text(e['accuracy'], 100, 1)} | " + " | ".join(cells)
                   + " |")
    lines.append("")
  return lines


def _attack_cell(attacks: dict, window: str, end: str, attack: str, digits: int = 3) -> str:
  """One attack's score at one window; the end of training carries the verdicts, so its
  cells also print the sample std (the earlier windows keep the t-interval alone, to keep
  the table readable)."""
  text = fmt.interval_with_std if window == end else fmt.interval_text
  return text(attacks[window].get(attack), 1, digits)


def _table(summ: dict) -> list[str]:
  lines = ["## Privacy-utility table", "",
           "Final mean per-task test accuracy (%) and each attack's score at the start, the "
           "middle and the end of training (window steps), mean ± 95% t half-width over "
           "seeds (accuracy and every end-of-training score also with its sample std, "
           "ddof = 1); '—' where the message the attack reads is not sent.", ""]
  for profile in sorted({k[0] for k in summ}):
    mine = {k[1]: v for k, v in summ.items() if k[0] == profile}
    windows = list(next(iter(mine.values()))["attacks"])
    end = windows[-1]
    recon = ("recon_psnr", "recon_ssim", "recon_classifier_accuracy")
    lines += [f"### Profile {profile}", "",
              "| orientation | defence | strength | seeds | accuracy | "
              + " | ".join(f"label AUC @{t}" for t in windows) + " | "
              + " | ".join(f"dCor @{t}" for t in windows)
              + f" | PSNR @{end} | SSIM @{end} | classifier on reconstructions @{end} |",
              "|---|---|---|---|---|" + "---|" * (2 * len(windows) + 3)]
    for row in tradeoff.rows():
      s = mine.get(row.name)
      if s is None:
        lines.append(f"| {row.family} | {row.defence} | {row.strength:g} | 0 | not run "
                     "|" + " |" * (2 * len(windows) + 3))
        continue
      cells = [_attack_cell(s["attacks"], t, end, "label_auc") for t in windows]
      cells += [_attack_cell(s["attacks"], t, end, "input_dcor") for t in windows]
      cells += [_attack_cell(s["attacks"], end, end, k, 2 if k == "recon_psnr" else 3)
                for k in recon]
      seeds = f"{s['seeds']}" + (f" ({s['diverged']} diverged)" if s["diverged"] else "")
      lines.append(f"| {row.family} | {row.defence} | {row.strength:g} | {seeds} | "
                   f"{fmt.interval_with_std(s['accuracy'], 100)} | " + " | ".join(cells) + " |")
    lines.append("")
  return lines


def _plot(summ: dict, profile: str, attack: str, out: pathlib.Path) -> pathlib.Path | None:
  """Accuracy against one attack's end-of-training score, a line per defence."""
  mine = {k[1]: v for k, v in summ.items() if k[0] == profile}
  if not mine:
    return None
  end = list(next(iter(mine.values()))["attacks"])[-1]

  def point(row):
    s = mine.get(row.name)
    score = None if s is None else s["attacks"][end].get(attack)
    if s is None or s["accuracy"] is None or score is None:
      return None
    return score, s["accuracy"], row.strength

  lines = collections.defaultdict(list)
  for row in tradeoff.rows():
    if row.defence != "none" and point(row) is not None:
      lines[(row.family, row.defence)].append(point(row))
  references = [(row.family, point(row)) for row in tradeoff.rows()
                if not tradeoff.DEFENCES_OF.get(row.family) and point(row) is not None]
  if not lines and not references:
    return None
  fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
  for (family, defence), points in lines.items():
    base = point(tradeoff.base_row(tradeoff.Row(family, defence, 0.0)))
    points = ([base] if base else []) + points
    ax.errorbar([p[0].mean for p in points], [100 * p[1].mean for p in points],
                xerr=[p[0].half_width if p[0].n > 1 else 0 for p in points],
                yerr=[100 * p[1].half_width if p[1].n > 1 else 0 for p in points],
                marker="o", ms=4, capsize=2, ls="--" if "@" in family else "-",
                label=f"{family}: {defence}")
  for family, (score, accuracy, _) in references:  # without defences: a point
    ax.plot([score.mean], [100 * accuracy.mean], marker="*", ms=12, ls="none",
            label=f"{family} (reference)")
  ax.set_xlabel(f"{ATTACKS[attack]} at step {end}", fontsize=8)
  ax.set_ylabel("test accuracy (%)", fontsize=8)
  ax.legend(fontsize=7)
  ax.set_title(f"{profile}: accuracy against {attack} (each line: 0, then rising strength)",
               fontsize=8)
  path = out / f"{fmt.slug('privacy', profile, attack)}.png"
  fig.savefig(path, dpi=80, metadata={"Software": None})
  plt.close(fig)
  return path


def _reconstruction_over_training(summ: dict) -> list[str]:
  """The inverse network's scores at every window of the undefended smashed-data runs."""
  lines = []
  for profile in sorted({k[0] for k in summ}):
    mine = {k[1]: v for k, v in summ.items() if k[0] == profile}
    windows = sorted(next(iter(mine.values()))["attacks"], key=int)
    table = []
    for row in tradeoff.rows():
      s = mine.get(row.name)
      if s is None or len(tradeoff.reconstruction_windows(row, windows)) < 2:
        continue
      cells = [fmt.interval_with_std(s["attacks"][t].get(k), 1, 3) for k in
               ("recon_classifier_accuracy", "recon_ssim") for t in windows]
      table.append(f"| {row.family} | {row.defence} | {row.strength:g} | {s['seeds']} | "
                   + " | ".join(cells) + " |")
    if table:
      lines += [f"### Profile {profile}", "",
                "| family | defence | strength | seeds | "
                + " | ".join(f"classifier on reconstructions @{t}" for t in windows) + " | "
                + " | ".join(f"SSIM @{t}" for t in windows) + " |",
                "|---|---|---|---|" + "---|" * (2 * len(windows)), *table, ""]
  if not lines:
    return []
  return ["## Reconstruction over training", "",
          "The inverse network at every window of each undefended run that sends smashed "
          "data (the decoder is trained anew at each window, against the client bottom "
          "of that point of training): does the leak grow or shrink as the bottom "
          "learns? Mean ± 95% t half-width over seeds (sd: the sample std, ddof = 1).", "", *lines]


def _seed_mean_text(values: Sequence[float | None]) -> str:
  """'mean ± half-width' over the seeds with a value (3 digits), or '—'."""
  values = [v for v in values if v is not None]
  return fmt.interval_with_std(statistics.t_interval(values) if values else None, 1, 3)


def _labels_over_training(recs: Sequence[dict]) -> list[str]:
  """Per window of the undefended label-sending runs: the cosine attack's AUC (mean over
  seeds of the client mean, and the range over every seed's clients) and the norm
  attack's."""
  latest = {(r["profile"], r["row"], r["seed"]): r for r in recs}
  lines = []
  for profile in sorted({k[0] for k in latest}):
    table = []
    for row in tradeoff.rows():
      runs = [r for (p, name, _), r in sorted(latest.items()) if p == profile
              and name == row.name
              and all("label_auc_clients" in w for w in r["attacks"].values())]
      if not runs:
        continue
      windows = sorted(runs[0]["attacks"], key=int)
      cells = []
      for t in windows:
        scores = [r["attacks"][t] for r in runs]
        clients = [v for w in scores for v in w["label_auc_clients"] or [] if v is not None]
        spread = f" (clients {min(clients):.3f}-{max(clients):.3f})" if clients else ""
        cells.append(_seed_mean_text([w["label_auc"] for w in scores]) + spread + " | "
                     + _seed_mean_text([w["label_auc_norm"] for w in scores]))
      table.append(f"| {row.family} | {len(runs)} | " + " | ".join(cells) + " |")
    if table:
      lines += [f"### Profile {profile}", "",
                "| family | seeds | " + " | ".join(f"cosine AUC @{t} | norm AUC @{t}"
                                                  for t in windows) + " |",
                "|---|---|" + "---|---|" * len(windows), *table, ""]
  if not lines:
    return []
  return ["## Label inference over training", "",
          "The undefended runs whose clients send the cut-layer gradients of their own head "
          "('u_shaped', 'top'), at every window: the cosine attack's AUC (mean over seeds "
          "of the mean over clients ± 95% t half-width and its sample std, and the lowest "
          "and highest single client over every seed) and the norm attack's, one-vs-rest "
          "(it is built for imbalanced binary tasks; on balanced ten-class tasks its mean "
          "over classes sits near 0.5 by construction: a single score cannot rank every "
          "class first).", "",
          *lines]


def _inversion_lines(recs: Sequence[dict]) -> list[str]:
  """The share of FedAvg's batch labels the inversion restored, per profile."""
  lines = []
  for profile in sorted({r["profile"] for r in recs}):
    values = [effects.end_score(r, "recon_label_accuracy") for r in recs
              if r["profile"] == profile and r["orientation"] == "fedavg"]
    values = [v for v in values if v is not None]
    if values:
      share = fmt.interval_with_std(statistics.t_interval(values), 100, 0)
      lines.append(f"- {profile}: FedAvg's gradient inversion restored {share} % of the "
                   f"attacked batch's labels ({len(values)} seeds).")
  return (["Labels restored from FedAvg's update (before the inputs are searched):", ""]
          + lines + [""]) if lines else []


def _attacker_section(tuning: Sequence[dict]) -> list[str]:
  """Every attacker setting tried, per profile, and the one the study uses."""
  lines = ["## The gradient-inversion attacker's settings", "",
           "FedAvg's reference attack has hyperparameters; they are tuned like a method's "
           "(`mtsl_jax/privacy/attacker_choice.py`, run by `attacker_tuning.py`): at the "
           f"end of the profile's FedAvg run (seed {attacker_choice.TUNING_SEED}), on up to "
           f"{attacker_choice.TUNING_BATCHES} batches of "
           f"{tradeoff.INVERTED_BATCH} of client 0's training examples that are not the "
           "batch the study attacks. Each round varies its centre one axis at a time (rate "
           "and TV weight x 1/3 and x 3, iterations x 1/2 and x 2); the best by mean PSNR "
           "becomes the next centre, until the centre itself is best, so the setting "
           "chosen is interior on every axis. Mean ± 95% t half-width over the batches "
           "(sd: sample std, ddof = 1); ★ the setting chosen, which FedAvg's rows use "
           "(a record scored at another setting is superseded).", ""]
  summary = attacker_choice.summarize(list(tuning))
  if not summary:
    return lines + ["Not run yet (`python launch/privacy.py --phases=tune_attack "
                    "--profile=cpu --tfds_data_dir=DIR`); FedAvg's rows use the profile's "
                    "setting.", ""]
  for profile, settings in sorted(summary.items()):
    known = tradeoff.PROFILES.get(profile)
    state = attacker_choice.walk(settings, known.inversion_budget) if known else None
    chosen = (attacker_choice.setting_name(state.chosen)
              if state is not None and state.chosen is not None else None)
    lines += [f"### Profile {profile}", "",
              "| setting | batches | PSNR (dB) | SSIM | classifier on reconstructions "
              "| labels restored |", "|---|---|---|---|---|---|"]
    for name, row in settings.items():
      lines.append(f"| {name}{' ★' if name == chosen else ''} | {row['batches']} | "
                   f"{fmt.interval_with_std(row['psnr'], 1, 2)} | "
                   f"{fmt.interval_with_std(row['ssim'], 1, 3)} | "
                   f"{fmt.interval_with_std(row['classifier_accuracy'], 1, 3)} | "
                   f"{fmt.interval_with_std(row['label_accuracy'], 1, 3)} |")
    if state is None:
      verdict = "The profile is no longer defined."
    elif chosen is None:
      verdict = (f"The tuning is not finished ({len(state.centres)} round(s) begun): rerun "
                 "`--phases=tune_attack`; FedAvg's rows use the profile's setting meanwhile.")
    else:
      path = " → ".join(attacker_choice.setting_name(c) for c in state.centres)
      centre_best = chosen == attacker_choice.setting_name(state.centres[-1])
      verdict = (f"Centres: {path}. Chosen: {chosen}"
                 + (", the best of its round: interior on every axis." if centre_best else
                    f", after {attacker_choice.MAX_ROUNDS} rounds, the walk's limit: the "
                    "optimum may lie further out."))
      start = attacker_choice.setting_name(known.inversion_budget)
      gain = attacker_choice.paired_gain(tuning, profile, chosen, start)
      if chosen != start and gain is not None:
        verdict += (f" Against the starting setting on the same batches (PSNR, dB; paired "
                    f"over {gain.difference.n} batches): {effects.paired_text(gain, 1, 2)}.")
    lines += ["", verdict, ""]
  return lines


def _rates_section() -> list[str]:
  """The learning rates every row trains at, and where they come from."""
  lines = ["## Learning rates", "",
           "Every row of an orientation trains at the same (server, client) rates, so a "
           "defence's accuracy cost is measured at the undefended run's rates. They are the "
           "server map's tuned points on MNIST (2-D grids, each optimum interior: "
           "docs/when_mtsl_helps.md, 'Tuning'), not re-tuned per defence, and reused for "
           "Fashion-MNIST; SplitFed v2, which the map does not tune, takes the rates of MTSL "
           "'bottom' (the same cut).", "",
           "| row | server rate | client rate |", "|---|---|---|"]
  lines += [f"| {name} | {server:g} | {client:g} |"
            for name, (server, client) in tradeoff.RATES.items()]
  return lines + [""]


def write_report(results: pathlib.Path, document: pathlib.Path,
                 attacker_results: pathlib.Path | None = None) -> None:
  """Writes docs/privacy.md (or `document`) and its figures from the records.

  Args:
    results: the JSONL of privacy records.
    document: the markdown file; figures go to <its dir>/figures/privacy/.
    attacker_results: the attacker-tuning records (None: attacker_tuning.jsonl beside
      `results`).
  """
  attacker_results = attacker_results or results.parent / attacker_choice.RESULTS_NAME
  tuning = records.ResultsFile(attacker_results).load()
  settings = {profile: attacker_choice.setting_name(tradeoff.fedavg_budget(tuning, profile))
              for profile in {r["profile"] for r in tuning} if profile in tradeoff.PROFILES}
  recs = [r for r in records.ResultsFile(results).load()
          if tradeoff.is_current(r, settings)]
  summ = _summaries(recs)
  figures = document.parent / "figures" / "privacy"
  figures.mkdir(parents=True, exist_ok=True)
  lines = ["# Privacy of what travels", "",
           "What an honest-but-curious server learns from MTSL's messages, and what each "
           "defence costs in accuracy. Every number below is computed from "
           f"`{results.as_posix()}` by `{REGENERATE}`; the records come from "
           "`python launch/privacy.py --profile=cpu --tfds_data_dir=DIR` (resumable).", "",
           THREAT_MODEL]
  lines += _rates_section()
  lines += ["## Trade-off figures", ""]
  for profile in sorted({k[0] for k in summ}):
    for attack in FIGURES:
      path = _plot(summ, profile, attack, figures)
      if path is not None:
        lines += [f"![{profile} {attack}]({path.relative_to(document.parent).as_posix()})",
                  ""]
  if not summ:
    lines += ["No records yet.", ""]
  lines += _table(summ)
  lines += _reconstruction_over_training(summ)
  lines += _labels_over_training(recs)
  lines += _inversion_lines(recs)
  lines += _attacker_section(tuning)
  lines += _effects_table(effects.defence_effects(recs))
  # What each recorded profile leaves out, as the study defines it now (a record keeps
  # the text of when it was written, which later rows may have made stale).
  profiles = sorted({k[0] for k in summ})
  if profiles:
    lines += ["## Reductions", ""]
    for profile in profiles:
      known = tradeoff.PROFILES.get(profile)
      text = "; ".join(known.reductions) if known else "profile no longer defined"
      lines.append(f"- {profile}: {text}")
    lines.append("")
  document.parent.mkdir(parents=True, exist_ok=True)
  document.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
