"""Defences at MTSL's cuts: what a client changes in the messages it sends the server.

The server of the threat model (docs/privacy.md) is honest but curious: it sees every
message of the protocol. Two kinds of message leak: the smashed data a client bottom
sends up ('bottom', 'u_shaped': they reveal the inputs) and the cut-layer gradients a
client head sends up ('u_shaped', 'top': they reveal the labels). The defences, each a
field of `config.privacy` and each off at 0:

  * `smashed_noise_std` σ: the client adds N(0, σ²) to every element of its smashed
    data before sending it; the server trains on (and sees) the noisy activations;
  * `nopeek_weight` α (NoPeek, Vepakomma et al. 2020): client m's bottom also minimizes
    α · dCor(x_m, smashed_m) over its minibatch (`distance_correlation`), which pushes
    the smashed data to be less dependent on the inputs. The server's objective is
    unchanged (the penalty does not depend on φ);
  * `cut_grad_clip` C and `cut_grad_noise_std` τ (label protection): each example's
    cut-layer gradient a client head sends up is clipped to L2 norm C (0: no clipping),
    then N(0, τ²) is added to every element. The server backpropagates what it received,
    so its update and (u_shaped) the gradient it returns to the client bottom are those
    of the protected message, exactly as on a network.

Both implementations of the gradients (`split_gradients`) apply the same defences to the
same numbers: `protocol_gradients` on the messages, `fused_gradients` inside its one
backward pass (the cut-gradient guard is a `jax.custom_vjp` identity whose backward pass
protects the per-task, unweighted gradient). Noise keys come from the run's key on a
stream of their own (`step_key`), so a defended run draws the same minibatches as the
undefended one, and with every strength 0 the step is the undefended step.
"""

import dataclasses

import jax
import jax.numpy as jnp

from mtsl_jax import distance_correlation

# The per-step minibatch keys are fold_in(rng, step) with step < 2**31; this tag is
# outside that range, so the defences' noise stream never reuses a minibatch key.
NOISE_STREAM = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class CutDefences:
  """The defences of one run (all zero: none). See the module docstring."""
  smashed_noise_std: float = 0.0
  nopeek_weight: float = 0.0
  cut_grad_clip: float = 0.0
  cut_grad_noise_std: float = 0.0

  @classmethod
  def from_config(cls, privacy_config) -> "CutDefences":
    """The defences of a config's `privacy` section."""
    return cls(float(privacy_config.smashed_noise_std), float(privacy_config.nopeek_weight),
               float(privacy_config.cut_grad_clip), float(privacy_config.cut_grad_noise_std))

  @property
  def active(self) -> bool:
    return any(v > 0 for v in dataclasses.astuple(self))

  @property
  def protects_labels(self) -> bool:
    return self.cut_grad_clip > 0 or self.cut_grad_noise_std > 0

  def noisy_smashed(self, smashed: jax.Array, key: jax.Array) -> jax.Array:
    """The smashed data as sent: plus N(0, σ²) per element when σ > 0."""
    if self.smashed_noise_std <= 0:
      return smashed
    noise = jax.random.normal(jax.random.fold_in(key, 0), smashed.shape, smashed.dtype)
    return smashed + self.smashed_noise_std * noise

  def nopeek_penalty(self, x: jax.Array, smashed: jax.Array) -> jax.Array:
    """α · dCor(x_m, smashed_m) per client [M] (zeros when α = 0)."""
    if self.nopeek_weight <= 0:
      return jnp.zeros(smashed.shape[0], smashed.dtype)
    dcor = jax.vmap(distance_correlation.distance_correlation)(x, smashed)
    return self.nopeek_weight * dcor.astype(smashed.dtype)

  def protected_cut_gradient(self, grad: jax.Array, key: jax.Array) -> jax.Array:
    """A client head's cut-layer gradient [M, B, ...] as sent: clipped, then noised."""
    if self.cut_grad_clip > 0:
      axes = tuple(range(2, grad.ndim))
      norms = jnp.sqrt(jnp.sum(grad * grad, axis=axes, keepdims=True))
      # Scale down only the examples above C; the others pass unchanged.
      grad = grad * jnp.minimum(1.0, self.cut_grad_clip / jnp.maximum(norms, 1e-12))
    if self.cut_grad_noise_std > 0:
      noise = jax.random.normal(jax.random.fold_in(key, 1), grad.shape, grad.dtype)
      grad = grad + self.cut_grad_noise_std * noise
    return grad

  def guard_head_input(self, h: jax.Array, key: jax.Array,
                       weights_M: jax.Array) -> jax.Array:
    """Identity on G's output; its backward pass protects the cut gradient (fused path).

    The fused backward pass is seeded with the task weights, so the cotangent arriving
    here is w_m ∂f_m/∂h; the message of the protocol is ∂f_m/∂h itself. The guard
    divides by w_m, protects, and multiplies back, so the server receives w_m times the
    protected message, as `protocol_gradients` computes it.
    """
    if not self.protects_labels:
      return h

    @jax.custom_vjp
    def guard(h):
      return h

    def forward(h):
      return h, None

    def backward(_, cotangent):
      w = weights_M.reshape((-1,) + (1,) * (cotangent.ndim - 1)).astype(cotangent.dtype)
      return (w * self.protected_cut_gradient(cotangent / w, key),)

    guard.defvjp(forward, backward)
    return guard(h)


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The defences' key of one step: a stream apart from the minibatch keys."""
  return jax.random.fold_in(jax.random.fold_in(rng, NOISE_STREAM), step)
