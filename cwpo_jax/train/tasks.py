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


def response_logprobs(model, batch, *, chunk_size: int = 0):
    """Summed log-probs of each row's response tokens, [N], and their counts [N].

    Position t of the hidden states predicts token t + 1. chunk_size > 0 uses the chunked path
    (no [N, T, V] logits); 0 projects all positions at once.
    """
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])[:, :-1]
    targets = batch["input_ids"][:, 1:]
    mask = batch["response_mask"][:, 1:]
    head = model.lm_head_matrix()
    if chunk_size:
        return losses.chunked_sequence_logprobs(hidden, head, targets, mask, chunk_size=chunk_size)
    logits = jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)
    return losses.sequence_logprobs(logits, targets, mask)


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
    """Like response_logprobs for a packed pair batch: [2B] summed log-probs and counts.

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
    head = model.lm_head_matrix()
    targets, mask = batch["response_ids"], batch["response_mask"]
    if chunk_size:
        return losses.chunked_sequence_logprobs(picked, head, targets, mask,
                                                chunk_size=min(chunk_size, r))
    logits = jnp.einsum("btd,dv->btv", picked, head, preferred_element_type=jnp.float32)
    return losses.sequence_logprobs(logits, targets, mask)


def pair_logprobs(model, batch, *, chunk_size: int = 0, start_layer: int = 0):
    """[2B] log-probs and counts of a pair batch, packed or chosen-over-rejected rows."""
    if "segment_ids" in batch:
        return packed_response_logprobs(model, batch, chunk_size=chunk_size,
                                        start_layer=start_layer)
    if start_layer:
        raise ValueError("start_layer needs packed pair rows")
    return response_logprobs(model, batch, chunk_size=chunk_size)


def split_pairs(x):
    half = x.shape[0] // 2
    return x[:half], x[half:]


def preference_task(model, batch, *, pair_loss, beta: float, normalize: bool = False,
                    chunk_size: int = 0, start_layer: int = 0):
    """CW-PO: numerator/denominator of mean(w * l) (or sum(w l)/sum(w) when normalize).
    start_layer > 0: the batch carries the frozen layers' output (packed_response_logprobs)."""
    logp, n_tokens = pair_logprobs(model, batch, chunk_size=chunk_size, start_layer=start_layer)
    policy_chosen, policy_rejected = split_pairs(logp)
    ref_chosen, ref_rejected = split_pairs(batch["ref_logps"])
    n_chosen, n_rejected = split_pairs(n_tokens)
    per_pair = pair_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, n_chosen,
                         n_rejected)
    numerator, denominator = losses.weighted_sum_and_count(
        per_pair, batch["weights"], normalize=normalize, valid=batch["valid"])
    metrics = losses.preference_metrics(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta,
        weights=batch["weights"], valid=batch["valid"])
    # sum(w l) / sum(w): the loss per unit of weight, comparable across weightings (the mean
    # over micro-batches, like every metric, when the batch is accumulated).
    metrics["loss/normalized"] = losses.weighted_mean(per_pair, batch["weights"], normalize=True,
                                                      valid=batch["valid"])
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
