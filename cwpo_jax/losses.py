"""Pure preference losses: sequence log-probs, DPO-family per-pair losses, weighted reduction.

Imports only jax and numpy. Every function is pure and works under jit, vmap and grad. Inputs of
any float dtype are computed in float32 at least (float64 stays float64 when x64 is enabled), so
bf16 activations never leak into a loss.

Conventions
- Per-pair losses take *summed* log-probs over response tokens, each [B]:
  policy_chosen, policy_rejected, ref_chosen, ref_rejected.
- h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected) is the log-ratio margin.
- Each per-pair loss returns [B]; reduce with `weighted_mean` (CW-PO: mean(C * loss)).

Every loss_type of TRL 1.16's DPOTrainer is in PAIR_LOSS_TABLE under TRL's name (or an alias,
LOSS_ALIASES), with its options: mixtures (`pair_loss_fn` with several names and loss_weights),
f-divergence scores (`f_divergence_scores`), discopop_tau, label_smoothing, LD-DPO's
length-desensitised log-probs (`logprob_parts` "shared", `length_desensitised`) and WPO's weights
(`logprob_parts` "wpo", `wpo_weights`). tests/test_losses_trl.py checks values and gradients
against TRL's own loss code (scripts/make_trl_loss_fixtures.py). Two differ by design: sft is a
per-pair token mean (TRL: one token mean over the batch), and aot / aot_unpaired sort the batch,
so they take padding rows (valid) but no per-pair weights.
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


def token_logprobs(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> Array:
    """Per-token log-probabilities [B, T] float32 (0 where mask is 0); shapes as in
    `sequence_logprobs`."""
    logits = _float(logits)
    safe_targets = jnp.where(mask > 0, targets, 0)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
    return jnp.where(mask > 0, target_logits - log_z, 0.0)


def logprob_parts(token_logp: ArrayLike, mask: ArrayLike, *, shared_tokens: ArrayLike | None = None,
                  token_log_sum_sq: ArrayLike | None = None,
                  tokens_before: ArrayLike | None = None) -> dict[str, Array]:
    """Sums over the response tokens of a [B, T] block of per-token log-probs.

    token_logp [B, T], mask [B, T] (1 = response token).
    shared_tokens [B] optional: LD-DPO's shared length (min of the pair's two response lengths);
      adds "shared" [B], the sum over the first shared_tokens response tokens of each row.
    token_log_sum_sq [B, T] optional: log sum_v p_v^2 at each position; adds "wpo" [B], the sum of
      token_logp - token_log_sum_sq (WPO's aligned log-probs, see `wpo_weights`).
    tokens_before [B] optional: response tokens in earlier blocks of the same rows (for chunks).
    Returns {"logp": [B], "tokens": [B], ...} float32 (float64 under x64 with float64 inputs).
    """
    token_logp = _float(token_logp)
    mask = mask.astype(token_logp.dtype)
    out = {"logp": jnp.sum(token_logp * mask, axis=-1), "tokens": jnp.sum(mask, axis=-1)}
    if shared_tokens is not None:
        rank = jnp.cumsum(mask, axis=-1)  # 1-based position of each response token in its row
        if tokens_before is not None:
            rank = rank + _float(tokens_before)[:, None]
        inside = (rank <= _float(shared_tokens)[:, None]).astype(token_logp.dtype)
        out["shared"] = jnp.sum(token_logp * mask * inside, axis=-1)
    if token_log_sum_sq is not None:
        aligned = jax.lax.stop_gradient(token_logp - _float(token_log_sum_sq))
        out["wpo"] = jnp.sum(aligned * mask, axis=-1)
    return out


def log_sum_sq_probs(logits: ArrayLike) -> Array:
    """log sum_v p_v^2 over the last axis of logits [..., V] (softmax p), in float32: the
    normaliser of WPO's aligned log-probs. [..., V] -> [...]."""
    logits = _float(logits)
    return jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * jax.nn.logsumexp(logits, axis=-1)


def sequence_logprob_parts(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike, *,
                           shared_tokens: ArrayLike | None = None,
                           wpo: bool = False) -> dict[str, Array]:
    """`logprob_parts` of `targets` under `logits` [B, T, V]: "logp" and "tokens" [B] always,
    "shared" [B] with shared_tokens, "wpo" [B] with wpo (see `logprob_parts`)."""
    token_logp = token_logprobs(logits, targets, mask)
    return logprob_parts(token_logp, mask, shared_tokens=shared_tokens,
                         token_log_sum_sq=log_sum_sq_probs(logits) if wpo else None)


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
    parts = sequence_logprob_parts(logits, targets, mask)
    return parts["logp"], parts["tokens"]


def chunked_sequence_logprob_parts(hidden: Array, lm_head: Array, targets: Array, mask: Array, *,
                                   chunk_size: int, shared_tokens: Array | None = None,
                                   wpo: bool = False) -> dict[str, Array]:
    """`sequence_logprob_parts` from final hidden states, never holding [B, T, V] logits at once.

    hidden  [B, T, D] final (normed) hidden states, any float dtype.
    lm_head [D, V] the output projection (for tied embeddings pass embedding.T).
    targets [B, T] int, mask [B, T], shared_tokens [B], wpo: as in `sequence_logprob_parts`.
    chunk_size: sequence positions per chunk; peak logits memory is B * chunk_size * V floats.
    Returns {"logp": [B], "tokens": [B], "shared": [B] (with shared_tokens), "wpo": [B] (with
    wpo)} float32.

    The sequence is split into ceil(T / chunk_size) chunks scanned with lax.scan; each chunk's body
    is rematerialised in the backward pass (jax.checkpoint), so the gradient does not store the
    per-chunk logits either. When the sequence fits in one chunk there is nothing to save (the
    backward pass needs that chunk's logits right after the forward pass made them), so the
    logits are computed once without the recomputation. The shared-length split carries each
    row's response-token count from chunk to chunk.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    batch, seq_len, dim = hidden.shape
    if lm_head.shape[0] != dim:
        raise ValueError(f"lm_head must be [D, V] with D={dim}; got shape {lm_head.shape}")
    if seq_len <= chunk_size:
        logits = jnp.einsum("btd,dv->btv", hidden, lm_head, preferred_element_type=jnp.float32)
        return sequence_logprob_parts(logits, targets, mask, shared_tokens=shared_tokens, wpo=wpo)
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
    def chunk_parts(h, w, t, m, before):
        logits = jnp.einsum("bcd,dv->bcv", h, w, preferred_element_type=jnp.float32)
        return logprob_parts(token_logprobs(logits, t, m), m, shared_tokens=shared_tokens,
                             token_log_sum_sq=log_sum_sq_probs(logits) if wpo else None,
                             tokens_before=before)

    def body(total, xs):
        h, t, m = xs
        parts = chunk_parts(h, lm_head, t, m, total["tokens"])
        return {k: total[k] + parts[k] for k in total}, None

    dtype = jnp.promote_types(hidden.dtype, jnp.float32)
    names = ("logp", "tokens") + (("shared",) if shared_tokens is not None else ()) + (
        ("wpo",) if wpo else ())
    init = {k: jnp.zeros((batch,), dtype) for k in names}
    parts, _ = jax.lax.scan(body, init, (to_chunks(hidden), to_chunks(targets), to_chunks(mask)))
    return parts


def chunked_sequence_logprobs(hidden: Array, lm_head: Array, targets: Array, mask: Array, *,
                              chunk_size: int) -> tuple[Array, Array]:
    """`sequence_logprobs` from final hidden states in chunks: (logp_sum [B], n_tokens [B]);
    see `chunked_sequence_logprob_parts`."""
    parts = chunked_sequence_logprob_parts(hidden, lm_head, targets, mask, chunk_size=chunk_size)
    return parts["logp"], parts["tokens"]


def length_desensitised(logp: ArrayLike, shared: ArrayLike, ld_alpha: float) -> Array:
    """LD-DPO's log-prob (Liu et al. 2024): shared + ld_alpha * (logp - shared), [B] -> [B]:
    the tokens past the pair's shared length count ld_alpha times. ld_alpha = 1 gives logp."""
    logp, shared = _float(logp), _float(shared)
    return shared + ld_alpha * (logp - shared)


def wpo_weights(aligned_chosen: ArrayLike, aligned_rejected: ArrayLike, chosen_tokens: ArrayLike,
                rejected_tokens: ArrayLike) -> Array:
    """WPO's per-pair weight (Zhou et al. 2024, Eq. 2, as TRL): exp(mean aligned log-prob of the
    chosen response) * exp(same of the rejected), the aligned log-prob of a token being
    log p(token) - log sum_v p_v^2 (`logprob_parts`' "wpo" sums). Token counts clamped to >= 1.
    No gradient flows through the weight. All [B] -> [B]."""
    mean_c = _float(aligned_chosen) / jnp.maximum(_float(chosen_tokens), 1.0)
    mean_r = _float(aligned_rejected) / jnp.maximum(_float(rejected_tokens), 1.0)
    return jax.lax.stop_gradient(jnp.exp(mean_c + mean_r))


# ----------------------------------------------------------------------------- per-pair losses

# f-DPO (Wang et al. 2024): the log-ratio log t of a response becomes the score f'(t) of the
# f-divergence regulariser; reverse KL (f'(t) = log t + 1, the constant cancels) is plain DPO.
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def f_divergence_scores(logratio: ArrayLike, f_divergence: str = "reverse_kl",
                        f_alpha_coef: float = 0.5) -> Array:
    """f'(t) at t = exp(logratio), elementwise, up to constants that cancel in a difference:
    reverse_kl: log t; forward_kl: 1 - 1/t; js_divergence: log 2 + log sigmoid(log t);
    alpha_divergence: (t^(a-1) - 1) / (a - 1) with a = f_alpha_coef (log t when a = 1), its
    exponent clamped at 80 as TRL does, so exp stays finite in float32."""
    logratio = _float(logratio)
    if f_divergence == "reverse_kl":
        return logratio
    if f_divergence == "forward_kl":
        return 1.0 - jnp.exp(-logratio)
    if f_divergence == "js_divergence":
        return jnp.log(2.0) + jax.nn.log_sigmoid(logratio)
    if f_divergence == "alpha_divergence":
        if abs(f_alpha_coef - 1.0) < 1e-6:  # the a -> 1 limit is log t
            return logratio
        t = jnp.minimum((f_alpha_coef - 1.0) * logratio, 80.0)
        return (jnp.exp(t) - 1.0) / (f_alpha_coef - 1.0)
    raise ValueError(f"unknown f_divergence {f_divergence!r}; expected one of {F_DIVERGENCES}")


def _scores(policy_chosen, policy_rejected, ref_chosen, ref_rejected, f_divergence,
            f_alpha_coef) -> tuple[Array, Array]:
    """(chosen score, rejected score) [B]: f_divergence_scores of each response's log-ratio."""
    return (f_divergence_scores(_float(policy_chosen) - _float(ref_chosen), f_divergence,
                                f_alpha_coef),
            f_divergence_scores(_float(policy_rejected) - _float(ref_rejected), f_divergence,
                                f_alpha_coef))


def _delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, f_divergence,
           f_alpha_coef) -> Array:
    """Score margin [B]; with reverse_kl the log-ratio margin h."""
    chosen, rejected = _scores(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                               f_divergence, f_alpha_coef)
    return chosen - rejected


def _log_ratio_margin(policy_chosen: ArrayLike, policy_rejected: ArrayLike,
                      ref_chosen: ArrayLike, ref_rejected: ArrayLike) -> Array:
    """h = (log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-)), [B]."""
    return (_float(policy_chosen) - _float(ref_chosen)) - (
        _float(policy_rejected) - _float(ref_rejected)
    )


def dpo_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
             ref_rejected: ArrayLike, *, beta: float, f_divergence: str = "reverse_kl",
             f_alpha_coef: float = 0.5) -> Array:
    """Sigmoid DPO (TRL "sigmoid"): l = -log sigmoid(beta * h). All inputs [B]; returns [B].
    At h = 0, l = ln 2. With an f-divergence, h is the margin of the f-scores (f-DPO)."""
    h = _delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, f_divergence,
               f_alpha_coef)
    return -jax.nn.log_sigmoid(beta * h)


def cdpo_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
              ref_rejected: ArrayLike, *, beta: float, label_smoothing: float,
              f_divergence: str = "reverse_kl", f_alpha_coef: float = 0.5) -> Array:
    """Conservative DPO (label smoothing e):
    l = -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h). [B] -> [B]; e = 0 gives DPO."""
    h = _delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, f_divergence,
               f_alpha_coef)
    e = label_smoothing
    return -(1.0 - e) * jax.nn.log_sigmoid(beta * h) - e * jax.nn.log_sigmoid(-beta * h)


def rdpo_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
              ref_rejected: ArrayLike, *, beta: float, label_smoothing: float,
              f_divergence: str = "reverse_kl", f_alpha_coef: float = 0.5) -> Array:
    """Robust DPO (Chowdhury et al. 2024; TRL "robust"), e = assumed label-flip rate in [0, 0.5):
    l = [(1 - e) l_DPO(y+, y-) - e l_DPO(y-, y+)] / (1 - 2e)
      = [-(1 - e) log sigmoid(beta h) + e log sigmoid(-beta h)] / (1 - 2e).
    [B] -> [B]; e = 0 gives DPO. Unbiased for the clean loss under flip rate e."""
    h = _delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, f_divergence,
               f_alpha_coef)
    e = label_smoothing
    return (-(1.0 - e) * jax.nn.log_sigmoid(beta * h) + e * jax.nn.log_sigmoid(-beta * h)) / (
        1.0 - 2.0 * e
    )


def _per_token_delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens,
                     rejected_tokens, f_divergence, f_alpha_coef) -> Array:
    """Margin of the f-scores divided by each response's token count (clamped to >= 1), [B]."""
    chosen, rejected = _scores(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                               f_divergence, f_alpha_coef)
    return (chosen / jnp.maximum(_float(chosen_tokens), 1.0)
            - rejected / jnp.maximum(_float(rejected_tokens), 1.0))


def ipo_loss(
    policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
    ref_rejected: ArrayLike, *, beta: float, chosen_tokens: ArrayLike, rejected_tokens: ArrayLike,
    f_divergence: str = "reverse_kl", f_alpha_coef: float = 0.5,
) -> Array:
    """IPO with per-token averaged log-ratios (as TRL):
    h_avg = (pi(y+) - ref(y+)) / n+ - (pi(y-) - ref(y-)) / n-,  l = (h_avg - 1 / (2 beta))^2.
    Token counts [B] are clamped to >= 1 so an empty response gives a finite loss. Returns [B]."""
    h = _per_token_delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens,
                         rejected_tokens, f_divergence, f_alpha_coef)
    return (h - 1.0 / (2.0 * beta)) ** 2


def sigmoid_norm_loss(
    policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
    ref_rejected: ArrayLike, *, beta: float, chosen_tokens: ArrayLike, rejected_tokens: ArrayLike,
    f_divergence: str = "reverse_kl", f_alpha_coef: float = 0.5,
) -> Array:
    """Length-normalised DPO (TRL "sigmoid_norm"): l = -log sigmoid(beta * h_avg), h_avg the
    per-token averaged margin of `ipo_loss` (counts clamped to >= 1). [B] -> [B]."""
    h = _per_token_delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens,
                         rejected_tokens, f_divergence, f_alpha_coef)
    return -jax.nn.log_sigmoid(beta * h)


def hinge_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
               ref_rejected: ArrayLike, *, beta: float, f_divergence: str = "reverse_kl",
               f_alpha_coef: float = 0.5) -> Array:
    """Hinge (SLiC-style): l = max(0, 1 - beta * h). [B] -> [B]."""
    h = _delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, f_divergence,
               f_alpha_coef)
    return jax.nn.relu(1.0 - beta * h)


def exo_pair_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
                  ref_rejected: ArrayLike, *, beta: float, label_smoothing: float,
                  f_divergence: str = "reverse_kl", f_alpha_coef: float = 0.5) -> Array:
    """EXO-pref (Ji et al. 2024, Eq. 16; TRL "exo_pair"): KL(q || p) between the policy's
    two-way softmax q = (sigmoid(beta h), sigmoid(-beta h)) and the smoothed label
    p = (1 - e, e), e = label_smoothing > 0 (the paper suggests 1e-3). [B] -> [B]."""
    if label_smoothing <= 0:
        raise ValueError(f"exo_pair needs label_smoothing > 0, got {label_smoothing}")
    z = beta * _delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, f_divergence,
                      f_alpha_coef)
    e = label_smoothing
    return (jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-e))
            + jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - jnp.log(e)))


def discopop_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
                  ref_rejected: ArrayLike, *, beta: float, discopop_tau: float,
                  f_divergence: str = "reverse_kl", f_alpha_coef: float = 0.5) -> Array:
    """DiscoPOP's log-ratio modulated loss (Lu et al. 2024, Eq. 5; TRL "discopop"): with
    z = beta h and m = sigmoid(z / tau), l = (1 - m) (-log sigmoid(z)) + m exp(-z). [B] -> [B]."""
    z = beta * _delta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, f_divergence,
                      f_alpha_coef)
    m = jax.nn.sigmoid(z / discopop_tau)
    # m exp(-z) in log space: exp(-z) alone overflows where m is 0 (z << 0), giving 0 * inf.
    return (1.0 - m) * -jax.nn.log_sigmoid(z) + jnp.exp(
        jax.nn.log_sigmoid(z / discopop_tau) - z)


def nca_pair_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
                  ref_rejected: ArrayLike, *, beta: float) -> Array:
    """NCA (Chen et al. 2024; TRL "nca_pair"), r = beta * log-ratio of each response:
    l = -log sigmoid(r+) - 0.5 log sigmoid(-r+) - 0.5 log sigmoid(-r-). [B] -> [B]."""
    r_c = beta * (_float(policy_chosen) - _float(ref_chosen))
    r_r = beta * (_float(policy_rejected) - _float(ref_rejected))
    return (-jax.nn.log_sigmoid(r_c) - 0.5 * jax.nn.log_sigmoid(-r_c)
            - 0.5 * jax.nn.log_sigmoid(-r_r))


def bco_pair_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
                  ref_rejected: ArrayLike, *, beta: float) -> Array:
    """BCO on pairs (Jung et al. 2024; TRL "bco_pair"): each response classified on its own,
    l = -log sigmoid(r+) - log sigmoid(-r-), r = beta * log-ratio. [B] -> [B].

    TRL 1.16's bco_pair has no running reward mean (its shift delta is 0), so this loss is
    per-pair: micro-batching, sharding and per-pair weights act on it as on DPO."""
    r_c = beta * (_float(policy_chosen) - _float(ref_chosen))
    r_r = beta * (_float(policy_rejected) - _float(ref_rejected))
    return -jax.nn.log_sigmoid(r_c) - jax.nn.log_sigmoid(-r_r)


def sppo_hard_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
                   ref_rejected: ArrayLike, *, beta: float) -> Array:
    """SPPO with hard win probabilities (Wu et al. 2024; TRL "sppo_hard"), log-ratios l+, l-:
    l = (l+ - 1 / (2 beta))^2 + (l- + 1 / (2 beta))^2. [B] -> [B]."""
    l_c = _float(policy_chosen) - _float(ref_chosen)
    l_r = _float(policy_rejected) - _float(ref_rejected)
    return (l_c - 0.5 / beta) ** 2 + (l_r + 0.5 / beta) ** 2


def apo_zero_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
                  ref_rejected: ArrayLike, *, beta: float) -> Array:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7; TRL "apo_zero"): raise the chosen, lower the
    rejected likelihood: l = 1 - sigmoid(beta l+) + sigmoid(beta l-). [B] -> [B]."""
    l_c = _float(policy_chosen) - _float(ref_chosen)
    l_r = _float(policy_rejected) - _float(ref_rejected)
    return 1.0 - jax.nn.sigmoid(beta * l_c) + jax.nn.sigmoid(beta * l_r)


def apo_down_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
                  ref_rejected: ArrayLike, *, beta: float) -> Array:
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8; TRL "apo_down"): lower both, the rejected
    more: l = sigmoid(beta l+) + 1 - sigmoid(beta (l+ - l-)). [B] -> [B]."""
    l_c = _float(policy_chosen) - _float(ref_chosen)
    l_r = _float(policy_rejected) - _float(ref_rejected)
    return jax.nn.sigmoid(beta * l_c) + 1.0 - jax.nn.sigmoid(beta * (l_c - l_r))


def _sorted_pair_loss(policy: Array, ref: Array, valid: ArrayLike | None, beta: float,
                      label_smoothing: float) -> Array:
    """The AOT loss of ascending-sorted `policy` against ascending-sorted `ref` [B], sorting only
    the valid rows; the k-th sorted loss lands on the k-th valid row, 0 on padding rows."""
    invalid = (jnp.zeros(policy.shape, jnp.int32) if valid is None
               else (_float(valid) <= 0).astype(jnp.int32))
    # lexsort: the last key is the primary one, so padding rows sort after every valid row.
    policy_sorted = policy[jnp.lexsort((policy, invalid))]
    ref_sorted = ref[jnp.lexsort((ref, invalid))]
    z = beta * (policy_sorted - ref_sorted)
    e = label_smoothing
    per_rank = -(1.0 - e) * jax.nn.log_sigmoid(z) - e * jax.nn.log_sigmoid(-z)
    rank_valid = jnp.arange(policy.shape[0]) < jnp.sum(1 - invalid)
    rows = jnp.argsort(invalid, stable=True)  # valid rows first, in order
    return jnp.zeros_like(per_rank).at[rows].set(jnp.where(rank_valid, per_rank, 0.0))


def aot_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike, ref_chosen: ArrayLike,
             ref_rejected: ArrayLike, *, beta: float, label_smoothing: float,
             valid: ArrayLike | None = None) -> Array:
    """AOT, paired (Melnyk et al. 2024; TRL "aot"): the batch's policy margins
    pi(y+) - pi(y-) and reference margins ref(y+) - ref(y-) are each sorted, and the k-th
    smallest of each are compared with the cDPO loss (label_smoothing e). [B] -> [B].

    A batch-level loss: the value at a row is the loss of a rank, not of that row's pair, so only
    its sum over the batch means anything. valid [B] (0 = padding row) keeps padding out of the
    sort. Under micro-batching each micro-batch is sorted on its own (as TRL sorts each
    per-device batch of each accumulation step); under data sharding the whole micro-batch is
    sorted across devices (one global program). Per-pair weights other than 1 (confidence
    weights, WPO) cannot be matched to ranks; the align config refuses them."""
    return _sorted_pair_loss(_float(policy_chosen) - _float(policy_rejected),
                             _float(ref_chosen) - _float(ref_rejected), valid, beta,
                             label_smoothing)


def aot_unpaired_loss(policy_chosen: ArrayLike, policy_rejected: ArrayLike,
                      ref_chosen: ArrayLike, ref_rejected: ArrayLike, *, beta: float,
                      label_smoothing: float, valid: ArrayLike | None = None) -> Array:
    """AOT, unpaired (TRL "aot_unpaired"): the chosen log-ratios and the rejected log-ratios
    are each sorted across the batch and the k-th smallest of each compared with the cDPO loss.
    [B] -> [B]. Batch-level exactly as `aot_loss` (padding, micro-batches, sharding, weights)."""
    return _sorted_pair_loss(_float(policy_chosen) - _float(ref_chosen),
                             _float(policy_rejected) - _float(ref_rejected), valid, beta,
                             label_smoothing)


def sft_loss(raw_policy_chosen: ArrayLike, *, chosen_tokens: ArrayLike) -> Array:
    """Negative log-likelihood of the chosen response per token (TRL "sft"; RPO's NLL term in a
    mixture): l = -pi(y+) / n+, counts clamped to >= 1. [B] -> [B]. raw_policy_chosen is the
    plain summed log-prob (never length-desensitised). Reference-free.

    Deliberate difference: TRL averages over all chosen tokens of the batch (a token-weighted
    mean), which no per-pair loss can be; this is the per-pair token mean, so the batch mean of
    this loss equals TRL's when every chosen response has the same length, and in general TRL's
    value is the token-count-weighted mean sum(n+ l) / sum(n+)."""
    return -_float(raw_policy_chosen) / jnp.maximum(_float(chosen_tokens), 1.0)


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
# each loss only what its signature names (the policy and reference log-probs, beta,
# label_smoothing, gamma, discopop_tau, f_divergence, f_alpha_coef, chosen_tokens,
# rejected_tokens, valid, raw_policy_chosen). Names follow TRL's DPOTrainer loss_type where TRL
# has the loss; LOSS_ALIASES maps TRL's other names onto ours.
PAIR_LOSS_TABLE: dict[str, PairLossFn] = {
    "dpo": dpo_loss,
    "cdpo": cdpo_loss,
    "rdpo": rdpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
    "bco_pair": bco_pair_loss,
    "sppo_hard": sppo_hard_loss,
    "aot": aot_loss,
    "aot_unpaired": aot_unpaired_loss,
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "discopop": discopop_loss,
    "sft": sft_loss,
    "sigmoid_norm": sigmoid_norm_loss,
}
PAIR_LOSSES = tuple(PAIR_LOSS_TABLE)
# TRL's loss_type -> the name here, where the two differ.
LOSS_ALIASES = {"sigmoid": "dpo", "robust": "rdpo"}
LOSS_NAMES = PAIR_LOSSES + tuple(LOSS_ALIASES)
# Losses of a whole batch (they sort it): a row's value is not its pair's loss, so they take
# no per-pair weights.
BATCH_LOSSES = frozenset({"aot", "aot_unpaired"})
# Losses that take an f-divergence (those that read only the score margin; sft reads no
# log-ratio at all), as TRL allows.
F_DIVERGENCE_LOSSES = frozenset(
    n for n, f in PAIR_LOSS_TABLE.items() if "f_divergence" in inspect.signature(f).parameters
) | {"sft"}


def loss_names(spec) -> tuple[str, ...]:
    """The loss names of align.loss: one name, a comma-separated list ("sigmoid,sft"), or a
    sequence of names, TRL's aliases resolved. Refuses unknown, repeated or no names."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in parts if isinstance(n, str)]
    if len(names) != len(parts) or not names or not all(names):
        raise ValueError(f"loss {spec!r} must be one or more names separated by commas")
    for n in names:
        if n not in LOSS_NAMES:
            raise ValueError(f"unknown preference loss {n!r}; expected one of {LOSS_NAMES}")
    resolved = tuple(LOSS_ALIASES.get(n, n) for n in names)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"loss {spec!r} names a loss twice")
    return resolved


def pair_loss_fn(name, *, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0,
                 loss_weights=(), discopop_tau: float = 0.05, f_divergence: str = "reverse_kl",
                 f_alpha_coef: float = 0.5) -> PairLossFn:
    """A per-pair loss with one uniform signature, chosen once (outside the jitted step):
    fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens,
       *, valid=None, raw_policy_chosen=None) -> [B].
    Arguments a loss does not use are ignored (SimPO ignores the reference). valid [B] marks
    padding rows (0) for the batch-level losses; raw_policy_chosen [B] is the chosen log-prob
    before length desensitisation (sft's NLL; policy_chosen when None).

    name: one loss or several (see `loss_names`); several give the mixture
    sum_k loss_weights[k] * l_k per pair (MPO's combination; loss_weights empty = all 1), which
    TRL computes as sum_k loss_weights[k] * mean(l_k) -- the same after the batch mean.
    f_divergence (F_DIVERGENCES) and f_alpha_coef: the f-DPO score, for F_DIVERGENCE_LOSSES only.
    """
    names = loss_names(name)
    weights = tuple(float(w) for w in loss_weights) or (1.0,) * len(names)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if len(weights) != len(names):
        raise ValueError(f"loss_weights {tuple(loss_weights)} must give one weight per loss of "
                         f"{names}")
    if discopop_tau <= 0:
        raise ValueError(f"discopop_tau must be > 0, got {discopop_tau}")
    if f_divergence not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence {f_divergence!r}; expected one of {F_DIVERGENCES}")
    if f_divergence != "reverse_kl" and not set(names) <= F_DIVERGENCE_LOSSES:
        raise ValueError(f"f_divergence {f_divergence!r} needs losses among "
                         f"{sorted(F_DIVERGENCE_LOSSES)}; got {names}")
    if "exo_pair" in names and label_smoothing <= 0:
        raise ValueError("exo_pair needs label_smoothing > 0 (the EXO paper suggests 1e-3)")
    hyper = {"beta": beta, "label_smoothing": label_smoothing, "gamma": gamma,
             "discopop_tau": discopop_tau, "f_divergence": f_divergence,
             "f_alpha_coef": f_alpha_coef}
    picked = []
    for n in names:
        params = inspect.signature(PAIR_LOSS_TABLE[n]).parameters
        picked.append((PAIR_LOSS_TABLE[n], {k: v for k, v in hyper.items() if k in params},
                       tuple(params)))

    def fn(pc, pr, rc, rr, nc, nr, *, valid=None, raw_policy_chosen=None):
        inputs = {"policy_chosen": pc, "policy_rejected": pr, "ref_chosen": rc,
                  "ref_rejected": rr, "chosen_tokens": nc, "rejected_tokens": nr,
                  "valid": valid, "raw_policy_chosen": pc if raw_policy_chosen is None
                  else raw_policy_chosen}
        total = 0.0
        for (loss, kw, params), w in zip(picked, weights, strict=True):
            total = total + w * loss(**{k: inputs[k] for k in params if k in inputs}, **kw)
        return total

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
