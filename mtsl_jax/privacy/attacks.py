"""The attack suite on a recorded window of messages: one number per client per attack.

What the server of docs/privacy.md can compute from a `messages.Window`:

  * label leakage ('up/cut_gradients': orientations 'u_shaped' and 'top', where the
    client keeps the labels): the cosine attack of Li et al. (2022), one-vs-rest, with one
    known example per class (the window's first example of each class, as if the
    attacker had labelled a handful of a client's examples); per client the mean AUC
    over its classes (`label_inference.cosine_attack_auc`). 0.5 is chance;
  * input dependence ('up/smashed': 'bottom' and 'u_shaped'): the distance correlation
    between each client's inputs and the smashed data it sent (`distance_correlation`),
    1 for an invertible-by-similarity map, near 0 for independence.

Raw inputs ('up/inputs', the 'top' orientation) and labels ('up/labels', 'bottom') are
sent in the clear: the suite reports them as fully leaked (AUC 1, dCor 1) rather than
attacking them.

With `per_client`, the suite also keeps each client's cosine AUC and scores the norm
attack of Li et al. (`label_inference.norm_attack_auc`), one-vs-rest: per client the mean
over its classes of the AUC of the gradient norms for that class. The norm attack is
built for imbalanced binary tasks (the minority class gets the larger gradients); on
balanced ten-class tasks a single score cannot rank every class first, so it sits near
0.5 there, which is why the cosine attack is the study's measure.
"""

import jax
import numpy as np

from mtsl_jax import distance_correlation
from mtsl_jax.privacy import label_inference, messages


def _per_client(window: messages.Window, score) -> np.ndarray | None:
  """score(gradients [n, ...], labels [n]) per client, NaN for a client with fewer than two
  classes in the window; None when the window holds no cut-layer gradients."""
  grads = window.messages.get("up/cut_gradients")
  if grads is None:
    return None
  out = np.full(window.y.shape[0], np.nan)
  for m in range(window.y.shape[0]):
    if len(np.unique(window.y[m])) >= 2:
      out[m] = score(grads[m], window.y[m])
  return out


def _cosine_one_vs_rest(grads: np.ndarray, labels: np.ndarray) -> float:
  """The cosine attack's mean AUC, the first example of each class known."""
  classes, first = np.unique(labels, return_index=True)
  known = {int(c): int(i) for c, i in zip(classes, first)}
  return label_inference.cosine_attack_auc(grads, labels, known)["mean"]


def _norm_one_vs_rest(grads: np.ndarray, labels: np.ndarray) -> float:
  """The norm attack's AUC for each class against the rest, averaged over the classes."""
  return float(np.mean([label_inference.norm_attack_auc(grads, labels, c)
                        for c in np.unique(labels)]))


def label_leakage(window: messages.Window) -> np.ndarray | None:
  """Per-client mean one-vs-rest AUC of the cosine attack; None when labels never travel.

  Args:
    window: a recorded window.

  Returns:
    float64 [M] (NaN for a client with fewer than two classes in the window), all ones
    when the labels themselves are sent ('bottom'), or None.
  """
  if "up/labels" in window.messages:
    return np.ones(window.y.shape[0])
  return _per_client(window, _cosine_one_vs_rest)


def norm_leakage(window: messages.Window) -> np.ndarray | None:
  """Per-client mean one-vs-rest AUC of the norm attack; None when no gradient is sent.

  Args:
    window: a recorded window.

  Returns:
    float64 [M] (NaN for a client with fewer than two classes in the window), or None
    when the window holds no cut-layer gradients.
  """
  return _per_client(window, _norm_one_vs_rest)


def input_dependence(window: messages.Window) -> np.ndarray | None:
  """Per-client dCor(inputs, what the server received of them); None when nothing is.

  Args:
    window: a recorded window.

  Returns:
    float64 [M]: dCor of each client's inputs and smashed data, all ones when the raw
    inputs are sent ('top').
  """
  if "up/inputs" in window.messages:
    return np.ones(window.x.shape[0])
  smashed = window.messages.get("up/smashed")
  if smashed is None:
    return None
  dcor = jax.jit(jax.vmap(distance_correlation.distance_correlation))(window.x, smashed)
  return np.asarray(dcor, np.float64)


def attack_all(window: messages.Window, per_client: bool = False) -> dict:
  """The suite's numbers, each the mean over clients (None where it does not apply).

  Args:
    window: a recorded window.
    per_client: also 'label_auc_clients' (each client's cosine AUC), 'label_auc_norm'
      and 'label_auc_norm_clients' (the norm attack, its mean and per client).

  Returns:
    {'label_auc', 'input_dcor'} means over the clients (NaNs ignored; None when the
    message is not sent, or no client could be scored), and the per-client keys.
  """
  def mean(values):
    # A window where no client has two classes (tiny batches) has no label score.
    if values is None or np.all(np.isnan(values)):
      return None
    return float(np.nanmean(values))

  def each(values):
    return None if values is None else [None if np.isnan(v) else float(v) for v in values]

  cosine = label_leakage(window)
  out = {"label_auc": mean(cosine), "input_dcor": mean(input_dependence(window))}
  if per_client:
    norm = norm_leakage(window)
    out.update(label_auc_clients=each(cosine), label_auc_norm=mean(norm),
               label_auc_norm_clients=each(norm))
  return out
