"""Attacks on one finished MTSL run: its workdir in, what its server could learn out.

`attack_workdir(workdir)` reads the run's config.json and latest checkpoint, continues the
run for a window of its own steps from there (`messages.record_window`: the messages its
server would receive next, with the run's defences), runs the attack suite on them (label
inference, input dependence, and the inverse-network reconstruction of one client's
inputs), and writes the scores to <workdir>/privacy.json. The workdir is only read (and
locked while it is, so a run still training there is refused rather than raced).

  python launch/privacy.py --attack=WORKDIR        # e.g. after launch/train.py
"""

import json
import pathlib

import jax

from mtsl_jax import checkpointing, config_files, fingerprint, train, validation
from mtsl_jax import workdir as workdirs
from mtsl_jax.privacy import attacks, messages, reconstruction


def attack_workdir(workdir: str | pathlib.Path, window_steps: int = 8, client: int = 0,
                   budget: reconstruction.AttackBudget | None = None) -> dict:
  """Scores what the server of an MTSL run could learn, at the run's latest checkpoint.

  Args:
    workdir: the run's workdir (config.json and checkpoints/ of a single run).
    window_steps: steps of the recorded window.
    client: the client whose inputs the reconstruction attack targets.
    budget: the reconstruction attacker's training (None: `AttackBudget()`).

  Returns:
    {'step', 'window_steps', 'orientation', 'defences', 'label_auc', 'input_dcor',
     'recon_psnr', 'recon_ssim', 'recon_classifier_accuracy', 'client'} (None where the
    orientation does not send the attacked message); also written to privacy.json.

  Raises:
    validation.ConfigError: not an MTSL run (and the errors of
      `config_files.load_run_config`); workdir.WorkdirError: no checkpoint, or the run
      still holds the workdir; ValueError: a client outside the run's.
  """
  workdir = pathlib.Path(workdir)
  config = config_files.load_run_config(workdir)
  if config.algorithm != "mtsl":
    raise validation.ConfigError("algorithm", f"the run in {workdir} is {config.algorithm!r}; "
                                 "the split-message attacks read MTSL runs (FedAvg's "
                                 "reference is in the privacy study)")
  if not 0 <= client < config.data.num_clients:
    raise ValueError(f"client must be in [0, {config.data.num_clients}), got {client}")
  federation, algorithm = train.prepare_run(config)
  with workdirs.locked(workdirs.check_workdir(workdir)):
    checkpointer = checkpointing.Checkpointer(workdir / "checkpoints",
                                              fingerprint.of_run(config, federation))
    step = checkpointer.check_compatible()
    if step is None:
      raise workdirs.WorkdirError(f"{workdir}: no checkpoint to attack (a seed of a replica "
                                  "group keeps its checkpoints in the group's directory)")
    state = checkpointer.restore(jax.eval_shape(algorithm.init_state))
    checkpointer.close()
  window, _ = messages.record_window(config, state, federation, window_steps)
  recon = reconstruction.attack_client(config, state, federation, window, client,
                                       budget or reconstruction.AttackBudget()) or {}
  scores = {"step": int(step), "window_steps": window_steps, "client": client,
            "orientation": config.split.orientation,
            "defences": dict(config.privacy), **attacks.attack_all(window),
            **{f"recon_{k}": recon.get(k) for k in ("psnr", "ssim", "classifier_accuracy")}}
  (workdir / "privacy.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
  return scores
