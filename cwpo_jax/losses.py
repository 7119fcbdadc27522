"""Pure preference losses: sequence log-probs, DPO-family per-pair losses, weighted reduction.

Imports only jax and numpy. Every function is pure and works under jit, vmap and grad. Inputs of
any float dtype are computed in float32 at least (float64 stays float64 when x64 is enabled), so
bf16 activations never leak into a loss.

Conventions
- Per-pair losses take *summed* log-probs over response tokens, each [B]:
  policy_chosen, policy_rejected, ref_chosen, ref_rejected.
- h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected) is the log-ratio margin.
- Each per-pair loss returns [B]; reduce with `weighted_mean` (CW-PO: mean(C * loss)).
"""
from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike


def _float(x: ArrayLike) -> Array:
    """Promote to at least float32 (bf16/fp16 -> fp32; fp64 stays fp64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# ----------------------------------------------------------------------------- log-probs


def sequence_logprobs(logits: ArrayLike, targets: ArrayLike,
                      mask: ArrayLike) -> tuple[Array, Array]:
    """Summed log-probabilities of `targets` under `logits`, over the positions in `mask`.

    logits  [B, T, V] any float dtype; position t scores targets[:, t] (caller has shifted).
    targets [B, T] int; values at masked-out positions are ignored (may be -100 or padding).
    mask    [B, T] bool/int/float; 1 selects response tokens.
    Returns (logp_sum [B] float32, n_tokens [B] float32), with
      logp_sum[b] = sum_t mask[b,t] * (logits[b,t,targets[b,t]] - logsumexp_v logits[b,t,v]).
    The log-softmax is computed in float32 whatever the input dtype.
    """
    logits = _float(logits)
    mask = mask.astype(logits.dtype)
    safe_targets = jnp.where(mask > 0, targets, 0)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
    token_logp = jnp.where(mask > 0, target_logits - log_z, 0.0)
    return jnp.sum(token_logp * mask, axis=-1), jnp.sum(mask, axis=-1)


def chunked_sequence_logprobs(hidden: Array, lm_head: Array, targets: Array, mask: Array, *,
                              chunk_size: int) -> tuple[Array, Array]:
    """`sequence_logprobs` from final hidden states, never holding [B, T, V] logits at once.

    hidden  [B, T, D] final (normed) hidden states, any float dtype.
    lm_head [D, V] the output projection (for tied embeddings pass embedding.T).
    targets [B, T] int, mask [B, T]: as in `sequence_logprobs`.
    chunk_size: sequence positions per chunk; peak logits memory is B * chunk_size * V floats.
    Returns (logp_sum [B] float32, n_tokens [B] float32).

    The sequence is split into ceil(T / chunk_size) chunks scanned with lax.scan; each chunk's body
    is rematerialised in the backward pass (jax.checkpoint), so the gradient does not store the
    per-chunk logits either. When the sequence fits in one chunk there is nothing to save (the
    backward pass needs that chunk's logits right after the forward pass made them), so the
    logits are computed once without the recomputation.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    batch, seq_len, dim = hidden.shape
    if lm_head.shape[0] != dim:
        raise ValueError(f"lm_head must be [D, V] with D={dim}; got shape {lm_head.shape}")
    if seq_len <= chunk_size:
        logits = jnp.einsum("btd,dv->btv", hidden, lm_head, preferred_element_type=jnp.float32)
        return sequence_logprobs(logits, targets, mask)
    n_chunks = -(-seq_len // chunk_size)
    pad = n_chunks * chunk_size - seq_len
    mask = mask.astype(jnp.float32)
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))

    def to_chunks(x):  # [B, n*c, ...] -> [n, B, c, ...]
        x = x.reshape((batch, n_chunks, chunk_size) + x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    @jax.checkpoint
    def chunk_logp(h, w, t, m):
        logits = jnp.einsum("bcd,dv->bcv", h, w, preferred_element_type=jnp.float32)
        return sequence_logprobs(logits, t, m)[0]

    def body(total, xs):
        h, t, m = xs
        return total + chunk_logp(h, lm_head, t, m), None

    init = jnp.zeros((batch,), jnp.promote_types(hidden.dtype, jnp.float32))
    logp, _ = jax.lax.scan(body, init, (to_chunks(hidden), to_chunks(targets), to_chunks(mask)))
    return logp, jnp.sum(mask, axis=-1)


# ----------------------------------------------------------------------------- per-pair losses


def _log_ratio_margin(policy_chosen: ArrayLike, policy_rejected: ArrayLike,
                      ref_chosen: ArrayLike, ref_rejected: ArrayLike) -> Array:
    """h = (log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-)), [B]."""
    return (_float(policy_chosen) - _float(ref_chosen)) - (
        _float(policy_rejected) - _float(ref_rejected)
    )


def dpo_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
             ref_rejected: ArrayLike, *, beta: float) -> Array:
    """Sigmoid DPO: l = -log sigmoid(beta * h). All inputs [B]; returns [B]. At h = 0, l = ln 2."""
    h = _log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -jax.nn.log_sigmoid(beta * h)


def cdpo_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
              ref_rejected: ArrayLike, *, beta: float, label_smoothing: float) -> Array:
    """Conservative DPO (label smoothing e):
    l = -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h). [B] -> [B]; e = 0 gives DPO."""
    h = _log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    e = label_smoothing
    return -(1.0 - e) * jax.nn.log_sigmoid(beta * h) - e * jax.nn.log_sigmoid(-beta * h)


def rdpo_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
              ref_rejected: ArrayLike, *, beta: float, label_smoothing: float) -> Array:
    """Robust DPO (Chowdhury et al. 2024), e = assumed label-flip rate in [0, 0.5):
    l = [(1 - e) l_DPO(y+, y-) - e l_DPO(y-, y+)] / (1 - 2e)
      = [-(1 - e) log sigmoid(beta h) + e log sigmoid(-beta h)] / (1 - 2e).
    [B] -> [B]; e = 0 gives DPO. Unbiased for the clean loss under flip rate e."""
    h = _log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    e = label_smoothing
    return (-(1.0 - e) * jax.nn.log_sigmoid(beta * h) + e * jax.nn.log_sigmoid(-beta * h)) / (
        1.0 - 2.0 * e
    )


def ipo_loss(
    policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
    ref_rejected: ArrayLike, *, beta: float, chosen_tokens: ArrayLike, rejected_tokens: ArrayLike,
) -> Array:
    """IPO with per-token averaged log-ratios (as TRL):
    h_avg = (pi(y+) - ref(y+)) / n+ - (pi(y-) - ref(y-)) / n-,  l = (h_avg - 1 / (2 beta))^2.
    Token counts [B] are clamped to >= 1 so an empty response gives a finite loss. Returns [B]."""
    n_chosen = jnp.maximum(_float(chosen_tokens), 1.0)
    n_rejected = jnp.maximum(_float(rejected_tokens), 1.0)
    h = (_float(policy_chosen) - _float(ref_chosen)) / n_chosen - (
        _float(policy_rejected) - _float(ref_rejected)
    ) / n_rejected
    return (h - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
               ref_rejected: ArrayLike, *, beta: float) -> Array:
    """Hinge (SLiC-style): l = max(0, 1 - beta * h). [B] -> [B]."""
    h = _log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return jax.nn.relu(1.0 - beta * h)


def simpo_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, *, beta: float, gamma: float,
               chosen_tokens: ArrayLike, rejected_tokens: ArrayLike) -> Array:
    """SimPO (reference-free, Meng et al. 2024), gamma the target reward margin:
    l = -log sigmoid(beta * (pi(y+) / n+ - pi(y-) / n-) - gamma). Counts clamped to >= 1. [B]."""
    n_chosen = jnp.maximum(_float(chosen_tokens), 1.0)
    n_rejected = jnp.maximum(_float(rejected_tokens), 1.0)
    z = beta * (_float(policy_chosen) / n_chosen - _float(policy_rejected) / n_rejected) - gamma
    return -jax.nn.log_sigmoid(z)


def bradley_terry_loss(reward_chosen: ArrayLike, reward_rejected: ArrayLike, *,
                       margin: float = 0.0) -> Array:
    """Bradley-Terry reward-model loss: l = -log sigmoid(r(y+) - r(y-) - margin). [B] -> [B]."""
    return -jax.nn.log_sigmoid(_float(reward_chosen) - _float(reward_rejected) - margin)


# ----------------------------------------------------------------------------- loss by name

PairLossFn = Callable[..., Array]

# name -> per-pair loss. Adding a loss is one entry here (plus a test): `pair_loss_fn` passes
# each loss only what its signature names (the reference log-probs, beta, label_smoothing,
# gamma, chosen_tokens, rejected_tokens).
PAIR_LOSS_TABLE: dict[str, PairLossFn] = {
    "dpo": dpo_loss,
    "cdpo": cdpo_loss,
    "rdpo": rdpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
}
PAIR_LOSSES = tuple(PAIR_LOSS_TABLE)


def pair_loss_fn(name: str, *, beta: float, label_smoothing: float = 0.0,
                 gamma: float = 0.0) -> PairLossFn:
    """A per-pair loss with one uniform signature, chosen once (outside the jitted step):
    fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
    -> [B]. Arguments a loss does not use are ignored (SimPO ignores the reference)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if name not in PAIR_LOSS_TABLE:
        raise ValueError(f"unknown preference loss {name!r}; expected one of {PAIR_LOSSES}")
    loss = PAIR_LOSS_TABLE[name]
    params = inspect.signature(loss).parameters
    hyper = {k: v for k, v in
             {"beta": beta, "label_smoothing": label_smoothing, "gamma": gamma}.items()
             if k in params}
    uses_ref = "ref_chosen" in params
    uses_tokens = "chosen_tokens" in params

    def fn(pc, pr, rc, rr, nc, nr):
        refs = (rc, rr) if uses_ref else ()
        tokens = {"chosen_tokens": nc, "rejected_tokens": nr} if uses_tokens else {}
        return loss(pc, pr, *refs, **hyper, **tokens)

    return fn


# ----------------------------------------------------------------------------- reduction


def weighted_sum_and_count(values: ArrayLike, weights: ArrayLike, *, normalize: bool = False,
                           valid: ArrayLike | None = None) -> tuple[Array, Array]:
    """Numerator and denominator of the CW-PO reduction, for accumulation across micro-batches.

    values, weights [B]; valid [B] optional (0 marks padding rows that must not count).
    normalize=False: (sum(valid * w * v), sum(valid))  -> the paper's mean(w * loss).
    normalize=True:  (sum(valid * w * v), sum(valid * w)).
    """
    values = _float(values)
    weights = _float(weights)
    valid = jnp.ones_like(values) if valid is None else _float(valid)
    numerator = jnp.sum(valid * weights * values)
    denominator = jnp.sum(valid * weights) if normalize else jnp.sum(valid)
    return numerator, denominator


def weighted_mean(values: ArrayLike, weights: ArrayLike, *, normalize: bool = False,
                  valid: ArrayLike | None = None) -> Array:
    """CW-PO reduction. values, weights [B] -> scalar.

    normalize=False: mean(w * values) (paper's E[C * l]).
    normalize=True:  sum(w * values) / sum(w); 0 (with zero gradient) when every weight is 0.
    valid [B] optional: rows with valid = 0 (batch padding) are excluded from both sums.
    """
    numerator, denominator = weighted_sum_and_count(
        values, weights, normalize=normalize, valid=valid
    )
    return numerator / jnp.where(denominator > 0, denominator, 1.0)


# ----------------------------------------------------------------------------- metrics


def preference_metrics(
    policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
    ref_rejected: ArrayLike, *, beta: float, weights: ArrayLike | None = None,
    valid: ArrayLike | None = None,
) -> dict[str, Array]:
    """The numbers a DPO run logs, under the names TRL uses, as scalar batch means (padding
    rows with valid = 0 excluded). All inputs [B]; log-probs are summed over response tokens.

    With implicit rewards r+ = beta (pi(y+) - ref(y+)), r- = beta (pi(y-) - ref(y-)):
      rewards/chosen, rewards/rejected   mean r+, mean r-
      rewards/margins                    mean of r+ - r-
      rewards/accuracies                 share with r+ > r- (ties are not correct)
      logps/chosen, logps/rejected       mean policy log-probs pi(y+), pi(y-)
    and what CW-PO adds, for weights w (all 1 when None):
      rewards/weighted_accuracies        sum w [r+ > r-] / sum w
      weights/mean                       mean w
      weights/effective                  effective sample share (sum w)^2 / (n sum w^2) over
                                         the n valid rows: Kish's effective sample size over n;
                                         1 when all weights are equal, 1/n when one pair holds
                                         all the weight, 0 when every weight is 0.
    """
    rewards_chosen = beta * (_float(policy_chosen) - _float(ref_chosen))
    rewards_rejected = beta * (_float(policy_rejected) - _float(ref_rejected))
    valid = jnp.ones_like(rewards_chosen) if valid is None else _float(valid)
    weights = jnp.ones_like(rewards_chosen) if weights is None else _float(weights)
    correct = (rewards_chosen > rewards_rejected).astype(rewards_chosen.dtype)

    def mean(x):  # masked mean over the valid rows
        return weighted_mean(x, valid, normalize=True)

    total = jnp.sum(valid * weights)
    spread = jnp.sum(valid) * jnp.sum(valid * weights**2)
    return {
        "rewards/chosen": mean(rewards_chosen),
        "rewards/rejected": mean(rewards_rejected),
        "rewards/margins": mean(rewards_chosen - rewards_rejected),
        "rewards/accuracies": mean(correct),
        "rewards/weighted_accuracies": weighted_mean(correct, weights * valid, normalize=True),
        "logps/chosen": mean(_float(policy_chosen)),
        "logps/rejected": mean(_float(policy_rejected)),
        "weights/mean": mean(weights),
        "weights/effective": total**2 / jnp.where(spread > 0, spread, 1.0),
    }
