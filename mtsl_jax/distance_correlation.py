"""Sample distance correlation: how much a message depends on the data it was computed from.

Used as a leakage statistic between a client's inputs and the smashed data it sends, and as
the NoPeek training penalty (Vepakomma et al., "NoPeek: Information leakage reduction to
share activations in distributed deep learning", ICDMW 2020), so it is pure jax.numpy,
jit-able, differentiable and vmap-able over a leading client axis.

Definitions (Székely, Rizzo & Bakirov, "Measuring and testing dependence by correlation of
distances", Ann. Statist. 2007), for n paired examples x_i, z_i, each flattened to a vector:

  * a_ij = ||x_i - x_j||, the Euclidean distance matrix, double-centred:
    A_ij = a_ij - mean_k a_kj - mean_l a_il + mean_kl a_kl (B likewise from z);
  * dCov^2(x, z) = mean_ij A_ij B_ij, the V-statistic (biased) estimate, which is >= 0;
    dVar^2(x) = dCov^2(x, x);
  * dCor(x, z) = sqrt(dCov^2(x, z) / sqrt(dVar^2(x) dVar^2(z))), in [0, 1], and 0 when
    either variance is 0 (a constant variable). dCor is 1 when z is a similarity
    transform of x (e.g. z = 3x + 1), and tends to 0 with n only for independent x, z
    (the V-statistic has a positive bias of order 1/sqrt(n) for independent variables).
"""

import jax
import jax.numpy as jnp

# Squared distances at or below this are taken as exact ties (distance 0). sqrt has an
# infinite derivative at 0, so two identical examples (a duplicate in a batch, or every
# diagonal entry) would give NaN gradients; below the threshold the distance is set to 0
# with gradient 0 instead (its subgradient at the tie). Distances below 1e-6 are far below
# the scale of any data or activation this is used on.
_TIE_SQUARED_DISTANCE = 1e-12


def _centred_distances(x: jax.Array) -> jax.Array:
  """The double-centred Euclidean distance matrix A of the rows of x [n, d]."""
  # Distances do not depend on a common shift; removing the mean first keeps the Gram
  # form below accurate for data far from the origin (e.g. pixels in [0, 255]).
  x = x - jnp.mean(x, axis=0, keepdims=True)
  # The Gram form needs O(n^2) memory where differences x_i - x_j would need O(n^2 d),
  # too much for a batch of images; rounding can make it slightly negative, hence max.
  squares = jnp.sum(x * x, axis=1)
  d2 = jnp.maximum(squares[:, None] + squares[None, :] - 2.0 * (x @ x.T), 0.0)
  # The double where keeps the gradient finite: sqrt only ever sees values above the tie
  # threshold, so its derivative is never evaluated at 0 (see _TIE_SQUARED_DISTANCE).
  apart = d2 > _TIE_SQUARED_DISTANCE
  a = jnp.where(apart, jnp.sqrt(jnp.where(apart, d2, 1.0)), 0.0)
  return (a - jnp.mean(a, axis=0, keepdims=True) - jnp.mean(a, axis=1, keepdims=True)
          + jnp.mean(a))


def distance_correlation(x: jax.Array, z: jax.Array) -> jax.Array:
  """The sample distance correlation dCor(x, z) (V-statistic; see the module docstring).

  Jit-able and differentiable in x and z, with finite gradients also when examples
  coincide; under jax.vmap over a leading client axis each client gets its own dCor.

  Args:
    x: [n, ...] n examples (each flattened to one vector), n >= 2.
    z: [n, ...] the n paired examples of the other variable (any feature shape).

  Returns:
    A scalar in [0, 1] (float32 unless the inputs are float64).

  Raises:
    ValueError: x or z without an example axis, different numbers of examples, or n < 2.
  """
  if jnp.ndim(x) < 1 or jnp.ndim(z) < 1:
    raise ValueError(f"x and z need a leading example axis, got shapes {jnp.shape(x)} "
                     f"and {jnp.shape(z)}")
  n = jnp.shape(x)[0]
  if jnp.shape(z)[0] != n or n < 2:
    raise ValueError(f"x and z need the same number n >= 2 of examples, got shapes "
                     f"{jnp.shape(x)} and {jnp.shape(z)}")
  dtype = jnp.promote_types(jnp.result_type(x, z), jnp.float32)
  a = _centred_distances(jnp.reshape(x, (n, -1)).astype(dtype))
  b = _centred_distances(jnp.reshape(z, (n, -1)).astype(dtype))
  # max(., 0): the V-statistics are >= 0 in exact arithmetic, rounding can undercut it.
  dcov2 = jnp.maximum(jnp.mean(a * b), 0.0)
  variances = jnp.mean(a * a) * jnp.mean(b * b)
  # Double wheres again: a constant variable has variance 0, where both the division and
  # the square roots would otherwise put NaN or infinity into the gradient.
  dependent = variances > 0
  ratio = jnp.where(dependent, dcov2 / jnp.sqrt(jnp.where(dependent, variances, 1.0)), 0.0)
  ratio = jnp.minimum(ratio, 1.0)  # Cauchy-Schwarz bound, against rounding above 1
  positive = ratio > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, ratio, 1.0)), 0.0)
