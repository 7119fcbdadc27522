"""Every loss and option against TRL 1.16's DPOTrainer itself: values and gradients.

tests/fixtures/trl_losses.npz comes from scripts/make_trl_loss_fixtures.py, which ran TRL's own
loss code (DPOTrainer._compute_loss) on fixed per-token log-probs; no torch here. Each case's
TRL loss is the batch mean of the per-pair loss here, reduced as TRL reduces: mean(w * l) with
w the WPO weight (1 without use_weighting). The one deliberate difference is sft: TRL averages
the NLL over all chosen tokens of the batch, cwpo_jax per pair (losses.sft_loss), so the test
checks the documented relation TRL = mean(w) * sum(n+ l) / sum(n+) there.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwpo_jax import losses

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "trl_losses.npz")
DATA = np.load(FIXTURE)
CASES = json.loads(str(DATA["cases"]))
MASK = DATA["completion_mask"][:, 1:].astype(np.float64)  # the shifted completion mask
HALF = MASK.shape[0] // 2


def ours(case: dict, policy_tokens, dtype):
    """The case's batch loss from per-token policy log-probs [2B, T-1], cwpo_jax's way."""
    mask = jnp.asarray(MASK, dtype)
    ref_tokens = jnp.asarray(DATA["ref"], dtype)
    counts = mask.sum(-1)
    ld = case["ld_alpha"] is not None
    shared = jnp.tile(jnp.minimum(counts[:HALF], counts[HALF:]), 2) if ld else None
    parts = losses.logprob_parts(
        policy_tokens, mask, shared_tokens=shared,
        token_log_sum_sq=jnp.asarray(DATA["log_sum_sq"], dtype) if case["use_weighting"] else None)
    ref_parts = losses.logprob_parts(ref_tokens, mask, shared_tokens=shared)
    logp, ref = parts["logp"], ref_parts["logp"]
    if ld:
        logp = losses.length_desensitised(logp, parts["shared"], case["ld_alpha"])
        ref = losses.length_desensitised(ref, ref_parts["shared"], case["ld_alpha"])
    n_c, n_r = counts[:HALF], counts[HALF:]
    weight = (losses.wpo_weights(parts["wpo"][:HALF], parts["wpo"][HALF:], n_c, n_r)
              if case["use_weighting"] else jnp.ones_like(n_c))
    options = dict(beta=case["beta"], label_smoothing=case["label_smoothing"],
                   discopop_tau=case["discopop_tau"], f_divergence=case["f_divergence_type"],
                   f_alpha_coef=case["f_alpha_divergence_coef"])
    args = (logp[:HALF], logp[HALF:], ref[:HALF], ref[HALF:], n_c, n_r)
    kw = {"valid": jnp.ones_like(n_c), "raw_policy_chosen": parts["logp"][:HALF]}
    names = losses.loss_names(case["loss_type"])
    loss_weights = case["loss_weights"] or [1.0] * len(names)
    if "sft" not in names:  # the shipped mixture, reduced as the step reduces it
        per_pair = losses.pair_loss_fn(names, loss_weights=loss_weights, **options)(*args, **kw)
        return losses.weighted_mean(per_pair, weight)
    total = 0.0
    for name, w in zip(names, loss_weights):
        per_pair = losses.pair_loss_fn(name, **options)(*args, **kw)
        if name == "sft":  # the documented relation to TRL's token-weighted batch mean
            total += w * jnp.mean(weight) * jnp.sum(n_c * per_pair) / jnp.sum(n_c)
        else:
            total += w * losses.weighted_mean(per_pair, weight)
    return total


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_loss_and_gradient_match_trl(i):
    case = CASES[i]
    float64 = case["dtype"] == "float64"
    with jax.enable_x64(float64):
        dtype = jnp.float64 if float64 else jnp.float32
        policy = jnp.asarray(DATA["policy"], dtype)
        value, grad = jax.value_and_grad(lambda p: ours(case, p, dtype))(policy)
        assert value.dtype == dtype
    rtol, atol = (1e-10, 1e-12) if float64 else (2e-5, 2e-6)
    if "exo_pair" in case["loss_type"]:  # TRL takes log(e), log1p(-e) of a float32 tensor
        rtol = max(rtol, 1e-7)
    np.testing.assert_allclose(float(value), float(DATA[f"loss_{i}"]), rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(grad, np.float64), DATA[f"grad_{i}"], rtol=rtol,
                               atol=atol * 10)
    assert np.abs(DATA[f"grad_{i}"]).max() > 0  # the case does move the policy


def test_every_trl_loss_type_and_option_has_a_case():
    assert {t for c in CASES for t in c["loss_type"]} == {
        "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
        "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}
    assert {c["f_divergence_type"] for c in CASES} == set(losses.F_DIVERGENCES)
    assert any(len(c["loss_type"]) > 1 and c["loss_weights"] for c in CASES)
    assert any(c["ld_alpha"] is not None for c in CASES)
    assert any(c["use_weighting"] for c in CASES)
    assert any(c["discopop_tau"] != 0.05 for c in CASES)


def test_sft_differs_from_trl_only_by_its_documented_reduction():
    """Chosen lengths differ in the fixture, so the plain pair mean is not TRL's value; the
    token-count-weighted mean is."""
    i = next(k for k, c in enumerate(CASES) if c["name"] == "sft")
    with jax.enable_x64(True):
        n_c = MASK[:HALF].sum(-1)
        per_pair = np.asarray(losses.sft_loss(DATA["policy"][:HALF].sum(-1), chosen_tokens=n_c))
    assert len(set(n_c)) > 1
    assert abs(per_pair.mean() - float(DATA[f"loss_{i}"])) > 1e-3
    np.testing.assert_allclose((n_c * per_pair).sum() / n_c.sum(), float(DATA[f"loss_{i}"]),
                               rtol=1e-12)
