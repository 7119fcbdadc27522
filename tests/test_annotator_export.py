"""A mean-pooled encoder annotator round-trips through save_pretrained with identical scores."""
import jax.numpy as jnp
import numpy as np

from cwpo_jax import models
from cwpo_jax.stages import model_sources, prepare


def test_mean_pooled_encoder_reward_model_round_trip(tmp_path):
    prepare.train_word_tokenizer(["a b c d e f g h", "Human:", "Assistant:"], str(tmp_path / "t"))
    tok = models.load_tokenizer(str(tmp_path / "t"))
    model_sources.create_tiny_model("bert", str(tmp_path / "enc"), tok, seed=0)
    ids = jnp.asarray([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0]], jnp.int32)
    mask = (ids > 0).astype(jnp.int32)
    for pooling in ("mean", "pooler"):
        rm = models.reward_model_from_pretrained(str(tmp_path / "enc"), pooling=pooling, seed=1)
        rm.score.kernel[...] = rm.score.kernel[...] * 1000  # a trained-looking head
        models.save_pretrained(rm, str(tmp_path / pooling))
        again = models.reward_model_from_pretrained(str(tmp_path / pooling))
        assert again.config.pooling == pooling
        np.testing.assert_allclose(again(ids, mask), rm(ids, mask), rtol=1e-6, atol=1e-6)
