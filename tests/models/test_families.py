"""Golden parity against transformers (PyTorch) on tiny random checkpoints, fp32 at 1e-4."""
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from cwpo_jax import losses
from cwpo_jax.models import BertModel, RewardModel, from_pretrained, reward_model_from_pretrained
from tests.models.conftest import CAUSAL_FAMILIES, fixture_dir, golden

ATOL = 1e-4


def _logits(model, g):
    return np.asarray(model(jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_causal_lm_logits_match_transformers(family):
    g = golden(f"{family}_golden")
    model = from_pretrained(fixture_dir(family))
    out = _logits(model, g)
    assert out.dtype == np.float32 and out.shape == g["logits"].shape
    real = g["attention_mask"].astype(bool)  # left pad, right pad and full rows
    np.testing.assert_allclose(out[real], g["logits"][real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_transformers_4x_config_style_gives_same_logits(family, tmp_path):
    # config_v4.json: top-level rope_theta / rope_scaling ("type" key), as 4.x wrote them.
    d = tmp_path / family
    shutil.copytree(fixture_dir(family), d)
    shutil.copy(d / "config_v4.json", d / "config.json")
    assert "rope_parameters" not in json.loads((d / "config.json").read_text())
    g = golden(f"{family}_golden")
    model = from_pretrained(str(d))
    real = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(_logits(model, g)[real], g["logits"][real], atol=ATOL, rtol=0)


def test_llama3_rope_scaling_is_read():
    cfg = from_pretrained(fixture_dir("llama")).config
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling_dict["rope_type"] == "llama3"


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_hidden_states_and_lm_head_give_logits_and_chunked_logprobs(family):
    g = golden(f"{family}_golden")
    model = from_pretrained(fixture_dir(family))
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    hidden = model.hidden_states(ids, mask)
    head = model.lm_head_matrix()
    assert hidden.shape[:2] == ids.shape and head.shape == (hidden.shape[-1], g["logits"].shape[-1])
    targets = jnp.roll(ids, -1, axis=1)
    tmask = mask * jnp.roll(mask, -1, axis=1)
    full, n_full = losses.sequence_logprobs(jnp.asarray(g["logits"]), targets, tmask)
    chunked, n_chunk = losses.chunked_sequence_logprobs(hidden, head, targets, tmask, chunk_size=3)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), atol=5e-4, rtol=0)
    np.testing.assert_array_equal(np.asarray(n_chunk), np.asarray(n_full))


@pytest.mark.parametrize("family", CAUSAL_FAMILIES + ["bert"])
def test_reward_model_matches_sequence_classification(family):
    g = golden(f"{family}_rm_golden")
    rm = reward_model_from_pretrained(fixture_dir(f"{family}_rm"))
    assert isinstance(rm, RewardModel)
    scores = np.asarray(rm(jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))
    assert scores.shape == (g["input_ids"].shape[0],)
    np.testing.assert_allclose(scores, g["rewards"], atol=ATOL, rtol=0)


def test_reward_head_on_causal_checkpoint_starts_small_and_uses_last_real_token():
    rm = reward_model_from_pretrained(fixture_dir("llama"), seed=3)
    ids = jnp.asarray([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7]], jnp.int32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]], jnp.int32)
    scores = np.asarray(rm(ids, mask))
    assert np.all(np.abs(scores) < 0.05)  # small head: BT loss starts near ln 2
    # Same tokens, right vs left padding -> same score (positions follow the mask).
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)


def test_bert_hidden_and_pooling_match():
    g = golden("bert_golden")
    model = from_pretrained(fixture_dir("bert"))
    assert isinstance(model, BertModel)
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    real = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(model(ids, mask))[real], g["hidden"][real], atol=ATOL)
    np.testing.assert_allclose(np.asarray(model.pooled(ids, mask)), g["mean_pooled"], atol=ATOL)
    pooler = from_pretrained(fixture_dir("bert"), pooling="pooler")
    np.testing.assert_allclose(np.asarray(pooler.pooled(ids, mask)), g["pooler_output"],
                               atol=ATOL)
    cls = from_pretrained(fixture_dir("bert"), pooling="cls")
    np.testing.assert_allclose(np.asarray(cls.pooled(ids, mask)), g["hidden"][:, 0], atol=ATOL)


def test_bf16_params_and_compute():
    g = golden("llama_golden")
    model = from_pretrained(fixture_dir("llama"), dtype="bfloat16")
    assert model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    out = _logits(model, g)
    assert out.dtype == np.float32  # logits come back in fp32 for the losses
    real = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[real], g["logits"][real], atol=0.05)
    mixed = from_pretrained(fixture_dir("llama"), dtype="bfloat16", param_dtype="float32")
    assert mixed.embed_tokens.embedding[...].dtype == jnp.float32
    assert mixed.hidden_states(jnp.asarray(g["input_ids"])).dtype == jnp.bfloat16


@pytest.mark.parametrize("name", ["opt", "bert"])
def test_reward_model_trains_with_bradley_terry(name):
    import optax
    from flax import nnx

    rm = reward_model_from_pretrained(fixture_dir(name), seed=0)  # fresh small head
    g = golden(f"{name}_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    # Pairs (row0 > row1), (row1 > row2): consistent, so the loss can go down.
    chosen, rejected, mask_c, mask_r = ids[:2], ids[1:], mask[:2], mask[1:]
    opt = nnx.Optimizer(rm, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(rm, opt):
        def loss_fn(m):
            return losses.bradley_terry_loss(m(chosen, mask_c), m(rejected, mask_r)).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(rm)
        opt.update(rm, grads)
        return loss

    first = float(step(rm, opt))
    assert abs(first - np.log(2)) < 0.02  # small head: rewards ~0 at init
    for _ in range(5):
        last = float(step(rm, opt))
    assert np.isfinite(last) and last < first


@pytest.mark.parametrize("family", ["llama", "opt350", "bert"])
def test_remat_gives_the_same_gradients(family):
    import jax
    from flax import nnx

    g = golden(f"{family}_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])

    def grads(model):
        def loss_fn(m):
            out = m(ids, mask)
            return jnp.mean(out.astype(jnp.float32) ** 2)
        return nnx.jit(lambda m: nnx.grad(loss_fn)(m))(model)

    plain = grads(from_pretrained(fixture_dir(family)))
    remat_model = from_pretrained(fixture_dir(family), remat=True)
    assert remat_model.config.remat
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         atol=1e-6, rtol=1e-5),
                 plain, grads(remat_model))
