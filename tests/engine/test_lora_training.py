"""LoRA-only training through the engine: only adapters change, dropout RNG advances, the
merged export equals the adapted model."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwpo_jax import losses, models, sharding
from cwpo_jax.stages import model_sources, prepare
from cwpo_jax.train import optim, steps, tasks
from cwpo_jax.train.state import init_train_state, split_model

from tests.engine.toy import pair_batch


def test_lora_only_step_updates_adapters_and_advances_dropout(tmp_path):
    prepare.train_word_tokenizer([" ".join(f"w{i}" for i in range(40)), "Human:", "Assistant:"],
                                 str(tmp_path / "tok"))
    tok = models.load_tokenizer(str(tmp_path / "tok"))
    model_sources.create_tiny_model("llama", str(tmp_path / "m"), tok, seed=0)
    model = models.from_pretrained(str(tmp_path / "m"))
    model = models.apply_lora(model, models.LoRAConfig(rank=4, dropout=0.5), rngs=nnx.Rngs(1))
    model.train()
    parts = split_model(model, models.trainable_filter(model))
    assert all("lora" in "/".join(map(str, path)) for path, _ in nnx.to_flat_state(parts.params))
    optimizer, _ = optim.make_optimizer(learning_rate=1e-2, total_steps=4)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state, frozen, *_ = init_train_state(parts, optimizer, mesh)
    task = lambda m, b: tasks.preference_task(m, b, pair_loss=losses.pair_loss_fn("dpo", beta=0.5),
                                              beta=0.5)
    step = jax.jit(steps.make_train_step(parts.graphdef, task, optimizer))
    batch = {k: v[None] for k, v in pair_batch(0, vocab=len(tok)).items()}
    before_frozen = [np.asarray(x).copy() for x in jax.tree.leaves(frozen)]
    before_b = [np.asarray(x).copy() for x in jax.tree.leaves(state.params)]
    counts = [np.asarray(x) for x in jax.tree.leaves(state.mutable) if x.dtype == jnp.uint32]
    state, metrics = step(state, frozen, batch)
    assert metrics["finite"] == 1.0
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), before_b))
    for a, b in zip(jax.tree.leaves(frozen), before_frozen):
        np.testing.assert_array_equal(a, b)
    new_counts = [np.asarray(x) for x in jax.tree.leaves(state.mutable) if x.dtype == jnp.uint32]
    assert counts and all((n > c).all() for n, c in zip(new_counts, counts))
