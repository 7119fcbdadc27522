"""Every nnx.Param carries logical axis names that one rules table maps onto a device mesh."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cwpo_jax.models import (
    LOGICAL_AXES,
    from_pretrained,
    logical_axes,
    reward_model_from_pretrained,
)
from tests.models.conftest import fixture_dir

RULES = {"vocab": "tensor", "embed": "fsdp", "q_heads": "tensor", "kv_heads": "tensor",
         "mlp": "tensor", "head_dim": None, "norm": None}


@pytest.mark.parametrize("name", ["llama", "qwen2", "opt350", "bert"])
def test_logical_axes_cover_every_param(name):
    model = from_pretrained(fixture_dir(name))
    axes = logical_axes(model)
    params = nnx.state(model, nnx.Param)
    is_axes = lambda x: isinstance(x, tuple)
    is_var = lambda x: isinstance(x, nnx.Variable)
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params, is_leaf=is_var)
    for names, value in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(params)):
        assert len(names) == value.ndim
        assert all(n is None or n in LOGICAL_AXES for n in names)


def test_rules_table_shards_a_model_on_8_devices():
    devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    rm = reward_model_from_pretrained(fixture_dir("llama_rm"))
    axes = logical_axes(rm)
    specs = jax.tree.map(lambda names: PartitionSpec(*(RULES.get(n) for n in names)), axes,
                         is_leaf=lambda x: isinstance(x, tuple))
    state = nnx.state(rm, nnx.Param)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    sharded = jax.device_put(state, shardings)
    nnx.update(rm, sharded)
    ids = jax.numpy.ones((4, 6), jax.numpy.int32)
    out = nnx.jit(lambda m, x: m(x))(rm, ids)
    assert out.shape == (4,)
    emb = rm.backbone.embed_tokens.embedding[...]
    assert emb.sharding.spec == PartitionSpec("tensor", "fsdp")
