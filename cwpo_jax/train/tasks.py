"""Per-task losses on a merged model and one batch: pure functions, no optimizer, no I/O.

Every task returns (numerator, denominator, metrics): the loss is numerator / denominator, and
since the denominator never depends on the parameters, summing numerators, denominators and
gradients over micro-batches gives exactly the large-batch result (gradient accumulation).

Batch keys (from cwpo_jax.data): input_ids, attention_mask, response_mask [N, T]; pair batches
stack chosen rows [:B] over rejected rows [B:]. Pair-level keys are [B]: weights, valid,
ref_logps ([2B], the cached reference log-probs in the same row order). A packed pair batch
(data.collate_packed_pairs: one prompt + chosen + rejected row per pair, marked by its
segment_ids key) gives the same [2B] log-probs through packed_response_logprobs.
"""
from __future__ import annotations

import jax.numpy as jnp

from cwpo_jax import losses


def _logprob_parts(hidden, head, targets, mask, *, chunk_size: int, shared: bool, wpo: bool):
    """losses.(chunked_)sequence_logprob_parts of a pair batch's [2B] response rows; shared:
    the "shared" sums over the first min(n+, n-) tokens of each pair's responses (LD-DPO)."""
    shared_tokens = None
    if shared:
        counts = jnp.sum(mask.astype(jnp.float32), axis=-1)
        half = counts.shape[0] // 2
        shared_tokens = jnp.tile(jnp.minimum(counts[:half], counts[half:]), 2)
    if chunk_size:
        return losses.chunked_sequence_logprob_parts(hidden, head, targets, mask,
                                                     chunk_size=chunk_size,
                                                     shared_tokens=shared_tokens, wpo=wpo)
    logits = jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)
    return losses.sequence_logprob_parts(logits, targets, mask, shared_tokens=shared_tokens,
                                         wpo=wpo)


def response_logprob_parts(model, batch, *, chunk_size: int = 0, shared: bool = False,
                           wpo: bool = False) -> dict:
    """{"logp", "tokens"} [N] of each row's response tokens, plus "shared" [N] (shared: rows
    [:B] and [B:] are a pair batch's chosen and rejected) and "wpo" [N] (wpo); see
    losses.logprob_parts.

    Position t of the hidden states predicts token t + 1. chunk_size > 0 uses the chunked path
    (no [N, T, V] logits); 0 projects all positions at once.
    """
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])[:, :-1]
    return _logprob_parts(hidden, model.lm_head_matrix(), batch["input_ids"][:, 1:],
                          batch["response_mask"][:, 1:], chunk_size=chunk_size, shared=shared,
                          wpo=wpo)


def response_logprobs(model, batch, *, chunk_size: int = 0):
    """Summed log-probs of each row's response tokens, [N], and their counts [N]
    (response_logprob_parts' "logp" and "tokens")."""
    parts = response_logprob_parts(model, batch, chunk_size=chunk_size)
    return parts["logp"], parts["tokens"]


def packed_visibility(segment_ids, attention_mask):
    """[B, L, L] bool: key j is visible to query i when it is a real token of the prompt or of
    i's own response (the causal rule is applied by the attention itself)."""
    key_real = attention_mask.astype(bool)[:, None, :]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return key_real & (same | (segment_ids == 0)[:, None, :])


def prefix_cache(model, prefix_ids, rows: int, length: int):
    """Per layer (k, v) [rows, P + length, KV, hd]: the keys and values of the P shared prefix
    tokens, from one forward of the prefix alone, in slots [0, P) of every row; zeros after."""
    p = prefix_ids.shape[0]
    _, cache = model.forward(prefix_ids[None], None, positions=jnp.arange(p)[None],
                             cache=model.init_cache(1, p), cache_index=0,
                             kv_valid=jnp.ones((1, p), bool))

    def widen(x):
        return jnp.pad(jnp.broadcast_to(x, (rows,) + x.shape[1:]),
                       ((0, 0), (0, length), (0, 0), (0, 0)))

    return [(widen(k), widen(v)) for k, v in cache]


def packed_hidden(model, batch, *, start_layer: int = 0, stop_layer: int | None = None):
    """Hidden states [B, L, D] of a packed pair batch: the final normed ones, or with stop_layer
    the residual stream leaving layer stop_layer - 1; start_layer > 0 starts from
    batch["residual"], the stream entering that layer.

    With batch["prefix_ids"] (data.shared_prefix) the prefix runs once and the tokens of the
    rows that continue it (batch["prefix_rows"]) see its keys and values through the KV-cache
    path: the result equals that of rows holding the prefix themselves."""
    visible = packed_visibility(batch["segment_ids"], batch["attention_mask"])
    if "prefix_ids" in batch:
        if start_layer or stop_layer is not None:
            raise ValueError("a shared prefix runs the whole stack; it cannot start or stop at "
                             "a layer")
        b, length = batch["input_ids"].shape
        p = batch["prefix_ids"].shape[1]
        hidden, _ = model.forward(
            batch["input_ids"], batch["attention_mask"], positions=batch["positions"],
            cache=prefix_cache(model, batch["prefix_ids"][0], b, length), cache_index=p,
            kv_valid=jnp.concatenate(
                [jnp.broadcast_to(batch["prefix_rows"][:, None, None] > 0, (b, length, p)),
                 visible], axis=2))
        return hidden
    partial = {"start_layer": start_layer, "residual": batch["residual"]} if start_layer else {}
    if stop_layer is not None:
        partial["stop_layer"] = stop_layer
    hidden, _ = model.forward(batch["input_ids"], batch["attention_mask"],
                              positions=batch["positions"], kv_valid=visible, **partial)
    return hidden


def packed_response_logprobs(model, batch, *, chunk_size: int = 0, start_layer: int = 0):
    """Like response_logprobs for a packed pair batch: [2B] summed log-probs and counts
    (packed_response_logprob_parts' "logp" and "tokens")."""
    parts = packed_response_logprob_parts(model, batch, chunk_size=chunk_size,
                                          start_layer=start_layer)
    return parts["logp"], parts["tokens"]


def packed_response_logprob_parts(model, batch, *, chunk_size: int = 0, start_layer: int = 0,
                                  shared: bool = False, wpo: bool = False) -> dict:
    """Like response_logprob_parts for a packed pair batch: [2B] sums, chosen rows first.

    The prompt runs once per pair (prefix sharing), and only the hidden states that predict a
    response token go through the LM head. start_layer > 0: batch["residual"] [B, L, D] is the
    residual stream entering that layer (the frozen layers below, run once beforehand).
    """
    hidden = packed_hidden(model, batch, start_layer=start_layer)
    b, r = batch["input_ids"].shape[0], batch["response_ids"].shape[1]
    # Rows [:B] of response_source index pair b's chosen, rows [B:] its rejected.
    source = batch["response_source"].reshape(2, b, r).transpose(1, 0, 2).reshape(b, 2 * r)
    picked = jnp.take_along_axis(hidden, source[:, :, None], axis=1)
    picked = picked.reshape(b, 2, r, -1).transpose(1, 0, 2, 3).reshape(2 * b, r, -1)
    return _logprob_parts(picked, model.lm_head_matrix(), batch["response_ids"],
                          batch["response_mask"], chunk_size=min(chunk_size, r), shared=shared,
                          wpo=wpo)


def pair_logprob_parts(model, batch, *, chunk_size: int = 0, start_layer: int = 0,
                       shared: bool = False, wpo: bool = False) -> dict:
    """[2B] {"logp", "tokens"} (+ "shared", "wpo") of a pair batch, packed or
    chosen-over-rejected rows."""
    if "segment_ids" in batch:
        return packed_response_logprob_parts(model, batch, chunk_size=chunk_size,
                                             start_layer=start_layer, shared=shared, wpo=wpo)
    if start_layer:
        raise ValueError("start_layer needs packed pair rows")
    return response_logprob_parts(model, batch, chunk_size=chunk_size, shared=shared, wpo=wpo)


def pair_logprobs(model, batch, *, chunk_size: int = 0, start_layer: int = 0,
                  ld_alpha: float = 1.0):
    """[2B] log-probs and counts of a pair batch, packed or chosen-over-rejected rows;
    ld_alpha < 1: length-desensitised log-probs (losses.length_desensitised)."""
    parts = pair_logprob_parts(model, batch, chunk_size=chunk_size, start_layer=start_layer,
                               shared=ld_alpha != 1.0)
    logp = parts["logp"]
    if ld_alpha != 1.0:
        logp = losses.length_desensitised(logp, parts["shared"], ld_alpha)
    return logp, parts["tokens"]


def split_pairs(x):
    half = x.shape[0] // 2
    return x[:half], x[half:]


def preference_task(model, batch, *, pair_loss, beta: float, normalize: bool = False,
                    chunk_size: int = 0, start_layer: int = 0, ld_alpha: float = 1.0,
                    wpo: bool = False):
    """CW-PO: numerator/denominator of mean(w * l) (or sum(w l)/sum(w) when normalize).
    start_layer > 0: the batch carries the frozen layers' output (packed_response_logprobs).

    pair_loss: a losses.pair_loss_fn. ld_alpha < 1: the policy log-probs are length-desensitised
    (batch["ref_logps"] must be too, with the same ld_alpha). wpo: each pair's loss is first
    multiplied by its WPO weight (losses.wpo_weights, no gradient), as TRL's use_weighting
    does, and then by its confidence weight w: the pair counts with w * w_WPO; the denominator
    (pairs, or sum(w) when normalize) holds no WPO weight, so it stays parameter-free."""
    parts = pair_logprob_parts(model, batch, chunk_size=chunk_size, start_layer=start_layer,
                               shared=ld_alpha != 1.0, wpo=wpo)
    logp = parts["logp"]
    if ld_alpha != 1.0:
        logp = losses.length_desensitised(logp, parts["shared"], ld_alpha)
    policy_chosen, policy_rejected = split_pairs(logp)
    ref_chosen, ref_rejected = split_pairs(batch["ref_logps"])
    n_chosen, n_rejected = split_pairs(parts["tokens"])
    per_pair = pair_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, n_chosen,
                         n_rejected, valid=batch["valid"],
                         raw_policy_chosen=split_pairs(parts["logp"])[0])
    if wpo:
        wpo_weight = losses.wpo_weights(*split_pairs(parts["wpo"]), n_chosen, n_rejected)
        per_pair = per_pair * wpo_weight
    numerator, denominator = losses.weighted_sum_and_count(
        per_pair, batch["weights"], normalize=normalize, valid=batch["valid"])
    metrics = losses.preference_metrics(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta,
        weights=batch["weights"], valid=batch["valid"])
    # sum(w l) / sum(w): the loss per unit of weight, comparable across weightings (the mean
    # over micro-batches, like every metric, when the batch is accumulated).
    metrics["loss/normalized"] = losses.weighted_mean(per_pair, batch["weights"], normalize=True,
                                                      valid=batch["valid"])
    if wpo:
        metrics["weights/wpo"] = losses.weighted_mean(wpo_weight, batch["valid"], normalize=True)
    return numerator, denominator, metrics


def reward_task(model, batch, *, margin: float = 0.0):
    """Bradley-Terry reward-model training: model(input_ids, attention_mask) -> scores [2B]."""
    scores = model(batch["input_ids"], batch["attention_mask"]).astype(jnp.float32)
    chosen, rejected = split_pairs(scores)
    per_pair = losses.bradley_terry_loss(chosen, rejected, margin=margin)
    valid = batch["valid"].astype(jnp.float32)
    numerator, denominator = losses.weighted_sum_and_count(per_pair, jnp.ones_like(valid),
                                                           valid=valid)
    correct = (chosen > rejected).astype(jnp.float32)
    metrics = {  # the names preference_task logs, here for the model's own scores
        "rewards/accuracies": losses.weighted_mean(correct, valid, normalize=True),
        "rewards/margins": losses.weighted_mean(chosen - rejected, valid, normalize=True),
    }
    return numerator, denominator, metrics


def sft_task(model, batch, *, chunk_size: int = 0):
    """Token-level negative log-likelihood of response tokens (mean over all response tokens)."""
    logp, n_tokens = response_logprobs(model, batch, chunk_size=chunk_size)
    valid = batch["valid"].astype(jnp.float32)
    numerator = -jnp.sum(logp * valid)
    denominator = jnp.sum(n_tokens * valid)
    return numerator, denominator, {"tokens": denominator}
