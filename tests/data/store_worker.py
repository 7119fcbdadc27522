"""Worker for the multi-process token-store test: writes the fixture pairs' store through the
stages' helper with 3 items a chunk and records the chunk sizes this process tokenised.

Run as `python -m tests.data.store_worker OUT TOKENIZER_DIR [PROCESS_ID NUM_PROCESSES PORT]`;
with process arguments it joins a jax.distributed job on 127.0.0.1 (CPU, gloo).
"""
import json
import os
import sys
import types

if len(sys.argv) > 3:
    os.environ["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{sys.argv[5]}"
    os.environ["JAX_PROCESS_ID"] = sys.argv[3]
    os.environ["JAX_NUM_PROCESSES"] = sys.argv[4]
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from cwpo_jax import sharding  # noqa: E402


def main():
    sharding.maybe_initialize_distributed()
    from transformers import PreTrainedTokenizerFast

    from cwpo_jax.data import load_preferences
    from cwpo_jax.data.tokenize import PairTokenizer
    from cwpo_jax.stages import common
    from tests.data.conftest import fixture

    out_dir, sizes = sys.argv[1], []

    class ChunkEncoder(PairTokenizer):
        def encode_pairs(self, chunk):
            sizes.append(len(chunk))
            return super().encode_pairs(chunk)

    hh, _ = load_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf")
    uf, _ = load_preferences(fixture("ultrafeedback.jsonl"), format="ultrafeedback")
    common.STORE_CHUNK = 3
    tok = PreTrainedTokenizerFast.from_pretrained(sys.argv[2])
    store = common.pair_store(types.SimpleNamespace(output_dir=out_dir),
                              ChunkEncoder(tok, max_prompt_len=24, max_len=40), hh + uf)
    with open(os.path.join(out_dir, f"calls-{jax.process_index()}.json"), "w") as f:
        json.dump({"sizes": sizes, "store": os.path.basename(store.directory),
                   "items": len(store)}, f)


if __name__ == "__main__":
    main()
