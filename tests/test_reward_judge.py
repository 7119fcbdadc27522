"""The reward-model gold judge on a tiny checkpoint: batched scores equal one-by-one scores."""
import numpy as np

from cwpo_jax import gold
from cwpo_jax.stages import model_sources, prepare


def test_reward_model_judge_scores_match_unbatched(tmp_path):
    prepare.train_word_tokenizer(["hello good day", "bad night here", "Human:", "Assistant:"],
                                 str(tmp_path / "tok"))
    from cwpo_jax import models

    tok = models.load_tokenizer(str(tmp_path / "tok"))
    model_sources.create_tiny_model("llama", str(tmp_path / "rm"), tok, seed=0)
    judge = gold.make_judge(f"reward_model:{tmp_path / 'rm'}")
    prompts = ["hello", "bad", "hello good"]
    responses = ["good day", "bad night here here", "day"]
    batched = judge.score(prompts, responses)
    single = np.concatenate([judge.score([p], [r]) for p, r in zip(prompts, responses)])
    assert np.isfinite(batched).all()
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(batched, 6))) == 3  # different texts, different scores
