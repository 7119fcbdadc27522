"""FLOPs per trained token: 6 N full fine-tuning, 2 N + 2 N' with LoRA (N' from the lowest
adapted layer up), counted against the parameter shapes by hand."""
import numpy as np
from flax import nnx

from cwpo_jax.models import LoRAConfig, apply_lora, from_pretrained
from cwpo_jax.train.flops import matmul_params, train_flops_per_token
from tests.models.conftest import fixture_dir


def _layer_params(layer) -> int:
    return sum(int(np.prod(np.shape(v.get_value())))
               for _, v in nnx.to_flat_state(nnx.state(layer, nnx.Param)))


def test_flops_per_token_by_hand():
    model = from_pretrained(fixture_dir("llama"))  # two layers, tied head
    head = int(np.prod(model.lm_head_matrix().shape))
    layer0, layer1 = (_layer_params(layer) for layer in model.layers)
    norm = _layer_params(model.norm)
    everything = layer0 + layer1 + norm + head
    assert matmul_params(model, lm_head=True) == everything
    assert train_flops_per_token(model, lm_head=True, frozen_weights=False) == 6 * everything
    apply_lora(model, LoRAConfig(layers=(-1,)), rngs=nnx.Rngs(0))
    lora = _layer_params(model.layers[1]) - layer1  # LoRAParam counts as a Param
    assert train_flops_per_token(model, lm_head=True, frozen_weights=True) == (
        2 * (everything + lora) + 2 * (layer1 + lora + norm + head))
