"""Step-size bounds of docs/theory.md from block smoothness constants (host numpy).

With P = diag(η_s I, η_c,m / w_m I) (the MTSL step: client m steps on its own loss), the
sharpness Λ = λ_max(P^½ ∇²f P^½) is bounded by the largest eigenvalue of the
(M+1) x (M+1) "arrow" matrix of block norms

    K = [[η_s L_φ,   b_1, ..., b_M],        b_m = sqrt(η_s η_c,m w_m) ρ_m,
         [b_1,   η_c,1 L_1,        ],
         [...                 ...  ],
         [b_M,          η_c,M L_M  ]]

(theory.md, Lemma 2). Every quantity here follows from that matrix: the bound itself, the
largest server rate for given client rates (its Schur complement), and the block-Jacobi
rates η_s = c / L_φ, η_c,m = c / L_m whose ratio is the predicted best one.
"""

import numpy as np


def _arrays(server_l, client_l, cross, weights, client_lrs):
  client_l, cross, weights = (np.asarray(a, np.float64) for a in (client_l, cross, weights))
  lrs = np.broadcast_to(np.asarray(client_lrs, np.float64), client_l.shape)
  return float(server_l), client_l, cross, weights, lrs


def arrow_matrix(server_l, client_l, cross, weights, server_lr, client_lrs) -> np.ndarray:
  """K of the module docstring.

  Args:
    server_l: L_φ.
    client_l: L_m, [M].
    cross: ρ_m, [M].
    weights: w_m, [M].
    server_lr: η_s.
    client_lrs: η_c,m, [M] or a scalar shared by all clients.

  Returns:
    The symmetric (M+1) x (M+1) matrix K.
  """
  ls, lc, rho, w, eta_c = _arrays(server_l, client_l, cross, weights, client_lrs)
  m = lc.shape[0]
  k = np.zeros((m + 1, m + 1))
  k[0, 0] = server_lr * ls
  k[np.arange(1, m + 1), np.arange(1, m + 1)] = eta_c * lc
  k[0, 1:] = k[1:, 0] = np.sqrt(server_lr * eta_c * w) * rho
  return k


def sharpness_bound(server_l, client_l, cross, weights, server_lr, client_lrs) -> float:
  """λ_max(K) ≥ Λ: descent is guaranteed when this is below 2 (theory.md, Thm 1)."""
  return float(np.linalg.eigvalsh(
      arrow_matrix(server_l, client_l, cross, weights, server_lr, client_lrs))[-1])


def max_server_lr(server_l, client_l, cross, weights, client_lrs, level: float = 2.0):
  """The largest η_s with λ_max(K) ≤ level for the given client rates.

  By the Schur complement of `level·I − K` (its client block is diagonal):
  η_s ≤ level / (L_φ + Σ_m w_m ρ_m² η_c,m / (level − η_c,m L_m)), provided every
  η_c,m L_m < level; otherwise no server rate qualifies and 0 is returned.

  Args:
    server_l, client_l, cross, weights: block constants and task weights.
    client_lrs: η_c,m, [M] or a scalar.
    level: 2 for the descent boundary, 1 for the rates with the best guaranteed decrease.

  Returns:
    The bound on η_s (float; inf when L_φ and all cross terms are zero).
  """
  ls, lc, rho, w, eta_c = _arrays(server_l, client_l, cross, weights, client_lrs)
  if np.any(eta_c * lc >= level):
    return 0.0
  denom = ls + np.sum(w * rho**2 * eta_c / (level - eta_c * lc))
  return float(level / denom) if denom > 0 else float("inf")


def jacobi_rates(server_l, client_l, cross, weights, level: float = 1.0):
  """Block-Jacobi rates η_s = c / L_φ, η_c,m = c / L_m with λ_max(K) = level.

  With these rates K = c [[1, βᵀ], [β, I]], β_m = ρ_m sqrt(w_m / (L_φ L_m)), whose top
  eigenvalue is c (1 + ||β||); so c = level / (1 + ||β||). Level 1 maximizes the
  guaranteed decrease (1 − Λ/2)·||∇f||²_P over c (theory.md, Cor. 1).

  Returns:
    (η_s, η_c [M]).
  """
  ls, lc, rho, w, _ = _arrays(server_l, client_l, cross, weights, 0.0)
  beta = np.sqrt(np.sum(w * rho**2 / (ls * lc)))
  c = level / (1.0 + beta)
  return c / ls, c / lc


def predicted_ratio(server_l, client_l) -> float:
  """η_c / η_s predicted best for ONE client rate shared by all clients: L_φ / max_m L_m.

  The shared client rate is limited by the sharpest client block, so the Jacobi ratio
  uses the largest L_m (theory.md, Sec. 6).
  """
  return float(server_l) / float(np.max(np.asarray(client_l)))
