"""Worker for the multi-process export test: a tiny Llama whose parameters are sharded over an
fsdp=2 mesh that spans two processes (one CPU device each), exported with save_hf.

Run through launch/multiprocess.py: `python -m tests.engine.export_worker OUT MAX_SHARD_BYTES`.
"""
import sys

import jax
from flax import nnx

from cwpo_jax import sharding
from cwpo_jax.models.checkpoint_hf import save_hf
from cwpo_jax.models.llama import LlamaConfig, LlamaForCausalLM
from cwpo_jax.train.state import place, variable_shardings

CONFIG = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              tie_word_embeddings=False)


def tiny_model() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**CONFIG), rngs=nnx.Rngs(0))


def main():
    sharding.maybe_initialize_distributed()
    out, max_shard = sys.argv[1], int(sys.argv[2])
    mesh = sharding.make_mesh(1, jax.device_count(), 1)
    model = tiny_model()
    params = nnx.state(model, nnx.Param)
    params = place(params, variable_shardings(params, mesh))
    nnx.update(model, params)
    spans = [not v.get_value().is_fully_addressable
             for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert jax.process_count() == 1 or any(spans), "no parameter is sharded over processes"
    save_hf(model, out, max_shard_size=max_shard)


if __name__ == "__main__":
    main()
