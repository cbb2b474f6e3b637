"""Label inference from cut-layer gradients, and the ROC AUC that scores it.

The attack of Li et al., "Label Leakage and Protection in Two-party Split Learning" (ICLR
2022): the attacker is the party that sees, per example, the gradient g_i of the label
owner's loss with respect to the activations it sent to the label owner's head (the cut
layer). In split learning with client-held labels that is the server. It scores every
example and ranks them; the AUC of those scores against the true labels is the leakage.

  * norm attack (`norm_attack_auc`): score ||g_i||. With softmax cross-entropy the
    gradient with respect to the logits is p_i - onehot(y_i), whose norm is large when the
    head is wrong; in imbalanced binary problems the head leans to the majority class,
    so minority examples get the larger gradients (Li et al.'s norm-based scoring).
  * cosine attack (`cosine_scores`, `cosine_attack_auc`): score cos(g_i, g_ref), with
    g_ref the gradient of one example whose label the attacker knows. For 2 classes the
    logit gradients of the two classes point in opposite directions for every p, and
    still do after any linear head, so one known example separates the classes exactly
    (Li et al.'s direction-based scoring). With more classes it is run one-vs-rest.
  * AUC (`auc`): the probability that a random positive scores above a random negative,
    ties counted half, i.e. the Mann-Whitney U statistic divided by n_pos * n_neg. 0.5 is
    chance, 1.0 perfect separation.

Everything here is numpy (float64) on gradients already computed, e.g. by jax.grad.
"""

from typing import Hashable, Mapping

import numpy as np
from scipy import stats


def _flat_gradients(grads: np.ndarray) -> np.ndarray:
  """grads [n, ...] as float64 [n, d]; ValueError without examples or non-finite values."""
  g = np.asarray(grads, np.float64)
  if g.ndim < 1 or g.shape[0] < 1:
    raise ValueError(f"grads must be [n, ...] with n >= 1 examples, got shape {g.shape}")
  if not np.all(np.isfinite(g)):
    raise ValueError("grads must be finite")
  return g.reshape(g.shape[0], -1)


def _labels_for(labels: np.ndarray, n: int) -> np.ndarray:
  """labels as a 1-D array of n entries; ValueError otherwise."""
  y = np.asarray(labels)
  if y.shape != (n,):
    raise ValueError(f"labels must be one per example, shape ({n},), got shape {y.shape}")
  return y


def norm_scores(grads: np.ndarray) -> np.ndarray:
  """The per-example L2 norm of the flattened gradient.

  Args:
    grads: [n, ...] one cut-layer gradient per example.

  Returns:
    float64 [n].

  Raises:
    ValueError: grads without an example axis or with non-finite values.
  """
  return np.linalg.norm(_flat_gradients(grads), axis=1)


def cosine_scores(grads: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """The per-example cosine similarity with one reference gradient.

  Args:
    grads: [n, ...] one cut-layer gradient per example.
    reference: [...] one gradient of the same shape as an example's (e.g. grads[k] for an
      example k whose label the attacker knows).

  Returns:
    float64 [n] in [-1, 1]; 0 where the example's or the reference's norm is 0 (a zero
    gradient has no direction).

  Raises:
    ValueError: grads as `norm_scores` refuses, or a reference of another shape.
  """
  g = _flat_gradients(grads)
  r = np.asarray(reference, np.float64)
  if r.shape != np.shape(grads)[1:]:
    raise ValueError(f"reference must have one example's shape {np.shape(grads)[1:]}, got "
                     f"shape {r.shape}")
  if not np.all(np.isfinite(r)):
    raise ValueError("reference must be finite")
  r = r.reshape(-1)
  norms = np.linalg.norm(g, axis=1) * np.linalg.norm(r)
  dots = g @ r
  safe = np.where(norms > 0, norms, 1.0)
  return np.where(norms > 0, np.clip(dots / safe, -1.0, 1.0), 0.0)


def auc(scores: np.ndarray, positives: np.ndarray) -> float:
  """The ROC AUC of `scores` for the examples marked in `positives`, ties counted half.

  Computed as Mann-Whitney U / (n_pos n_neg) from average ranks, which counts a tied
  positive-negative pair as half a win.

  Args:
    scores: [n] finite scores, higher meaning "more likely positive".
    positives: [n] booleans (or 0/1), True for the positive examples.

  Returns:
    The AUC in [0, 1].

  Raises:
    ValueError: scores not 1-D or not finite, positives of another length or not boolean,
      or no positive or no negative example.
  """
  s = np.asarray(scores, np.float64)
  p = np.asarray(positives)
  if s.ndim != 1 or not np.all(np.isfinite(s)):
    raise ValueError(f"scores must be a 1-D array of finite numbers, got shape {s.shape}")
  if p.shape != s.shape:
    raise ValueError(f"positives must have one entry per score, shape {s.shape}, got "
                     f"shape {p.shape}")
  if p.dtype != bool and not np.all(np.isin(p, (0, 1))):
    raise ValueError("positives must be booleans (or 0/1)")
  p = p.astype(bool)
  n_pos, n_neg = int(p.sum()), int((~p).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"positives must mark at least one positive and one negative example, "
                     f"got {n_pos} positives and {n_neg} negatives")
  ranks = stats.rankdata(s)  # average ranks: each tie shares its ranks equally
  u = ranks[p].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def cosine_attack_auc(grads: np.ndarray, labels: np.ndarray,
                      known: Mapping[Hashable, int]) -> dict:
  """One-vs-rest cosine attack: one known example per class, AUC per class and mean.

  For every class c in `known`, the other examples (all but known[c]) are scored by
  cosine similarity with the gradient of example known[c], and the AUC of those scores
  for labels == c is that class's leakage.

  Args:
    grads: [n, ...] one cut-layer gradient per example.
    labels: [n] the true labels (only used to score the attack).
    known: class -> index of one example of that class whose label the attacker knows.

  Returns:
    {'per_class': {c: auc}, 'mean': float}: the AUC per class in `known` (NaN for a class
    whose remaining examples are all positive or all negative), and the mean over the
    classes with both (NaN when there is none).

  Raises:
    ValueError: grads or labels of the wrong shape, an empty `known`, or a known index out
      of range or of an example whose label is not its class.
  """
  g = _flat_gradients(grads)
  n = g.shape[0]
  y = _labels_for(labels, n)
  if not known:
    raise ValueError("known must name at least one class with a known example")
  per_class = {}
  for c, index in known.items():
    if not (isinstance(index, (int, np.integer)) and 0 <= index < n):
      raise ValueError(f"known[{c!r}] must be an example index in [0, {n}), got {index!r}")
    if y[index] != c:
      raise ValueError(f"known[{c!r}] = {index} is an example of class {y[index]!r}, "
                       f"not {c!r}")
    others = np.arange(n) != index  # the known example would score 1 against itself
    positives = y[others] == c
    if positives.all() or not positives.any():
      per_class[c] = float("nan")
    else:
      per_class[c] = auc(cosine_scores(g[others], g[index]), positives)
  scored = [v for v in per_class.values() if not np.isnan(v)]
  return {"per_class": per_class, "mean": float(np.mean(scored)) if scored else float("nan")}


def norm_attack_auc(grads: np.ndarray, labels: np.ndarray, positive_class: Hashable) -> float:
  """The AUC of the gradient norms for labels == positive_class (Li et al.'s norm attack).

  Args:
    grads: [n, ...] one cut-layer gradient per example.
    labels: [n] the true labels.
    positive_class: the class predicted to have the larger norms (in a binary imbalanced
      problem, the minority class).

  Returns:
    The AUC in [0, 1].

  Raises:
    ValueError: grads or labels of the wrong shape, or labels with no example of
      positive_class or none of another class.
  """
  g = _flat_gradients(grads)
  y = _labels_for(labels, g.shape[0])
  positives = y == positive_class
  if positives.all() or not positives.any():
    raise ValueError(f"labels must contain positive_class {positive_class!r} and another "
                     f"class")
  return auc(norm_scores(g), positives)
