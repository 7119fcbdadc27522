"""HF-format checkpoints: config.json + safetensors (single file or sharded index) <-> NNX models.

Each family (models.families) maps our module paths to HF's; loading walks our
parameters (so nothing is silently left at its random init), converts [out, in] HF matrices to
our [in..., out...] kernels, and checks every shape. No torch.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from cwpo_jax.io_utils import file_mode
from cwpo_jax.models import families, layers
from cwpo_jax.models.reward import RewardModel
from cwpo_jax.models.spec import Family

_LEAF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}

def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def hf_name(model_type: str, path: tuple) -> str:
    """Our parameter path (tuple) -> canonical HF tensor name for a *ForCausalLM / BertModel."""
    *mods, leaf = path
    return f"{families.for_model_type(model_type).hf_path(_dotted(mods))}.{_LEAF[leaf]}"


def hf_reward_name(model_type: str, path: tuple) -> str:
    """Names for RewardModel params, as *ForSequenceClassification checkpoints store them."""
    family = families.for_model_type(model_type)
    if path[0] == "score":
        return f"{family.reward_head}.{_LEAF[path[-1]]}"
    return family.reward_prefix + hf_name(model_type, path[1:])


def _alternatives(name: str) -> list[str]:
    """Other spellings of the same tensor across HF head classes (base model vs *For*)."""
    alts = [name]
    for prefix in ("model.", "bert."):
        if name.startswith(prefix):
            alts.append(name[len(prefix):])
        else:
            alts.append(prefix + name)
    if name.endswith("LayerNorm.weight"):
        alts.append(name[:-len("weight")] + "gamma")
    if name.endswith("LayerNorm.bias"):
        alts.append(name[:-len("bias")] + "beta")
    return alts


# ----------------------------------------------------------------------------------------------
# Reading


def read_config(path: str) -> dict:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"{path}: no config.json (expected an HF model directory)")
    with open(cfg_file) as f:
        return json.load(f)


class TensorStore:
    """Lazy access to an HF directory's weights under PyTorch-style names: safetensors (single
    file or sharded index), else a transformers-Flax `flax_model.msgpack` (older hub repos such
    as facebook/opt-125m ship one; it is read without torch and renamed / transposed)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        self.path = path
        self._flax = None
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.exists(single):
            files = ["model.safetensors"]
        elif os.path.exists(os.path.join(path, FLAX_MSGPACK)):
            self._flax = read_flax_msgpack(os.path.join(path, FLAX_MSGPACK))
            return
        else:
            if any(f.endswith(".bin") for f in os.listdir(path)):
                raise FileNotFoundError(f"{path}: only PyTorch .bin weights; convert them to "
                                        "safetensors (cwpo_jax reads no torch pickles)")
            raise FileNotFoundError(f"{path}: no model.safetensors, "
                                    f"model.safetensors.index.json or {FLAX_MSGPACK}")
        # framework="flax" reads bf16 too (numpy has no native bf16).
        self._handles = {fn: safe_open(os.path.join(path, fn), framework="flax") for fn in files}
        self._where = {}
        for fn, h in self._handles.items():
            for k in h.keys():  # noqa: SIM118  (safe_open handles are not iterable)
                self._where[k] = fn

    def keys(self):
        return self._flax.keys() if self._flax is not None else self._where.keys()

    def __contains__(self, name: str) -> bool:
        return name in self.keys()

    def get(self, name: str) -> np.ndarray:
        if self._flax is not None:
            return self._flax[name]
        return np.asarray(self._handles[self._where[name]].get_tensor(name))


FLAX_MSGPACK = "flax_model.msgpack"


def read_flax_msgpack(file: str) -> dict[str, np.ndarray]:
    """transformers-Flax params -> {PyTorch-style name: array}: Dense `kernel` [in, out] becomes
    `weight` [out, in]; `embedding` and LayerNorm `scale` become `weight`."""
    from flax import serialization
    from flax.traverse_util import flatten_dict

    with open(file, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    tree = tree.get("params", tree)
    out = {}
    for path, value in flatten_dict(tree).items():
        *mods, leaf = (str(p) for p in path)
        value = np.asarray(value)
        if leaf == "kernel":
            if value.ndim != 2:
                raise ValueError(f"{file}: {'.'.join(path)} is a {value.ndim}-D kernel; only "
                                 "Dense (2-D) kernels are supported")
            value, leaf = value.T, "weight"
        elif leaf in ("embedding", "scale"):
            leaf = "weight"
        out[".".join([*mods, leaf])] = np.ascontiguousarray(value)
    return out


def _linear_modules(model) -> dict:
    return {tuple(p): m for p, m in nnx.iter_graph(model) if isinstance(m, layers.Linear)}


def to_ours(hf_value: np.ndarray, var_shape, linear: layers.Linear | None, leaf: str, name: str):
    """HF tensor -> our layout; raises naming the parameter on any shape mismatch."""
    if leaf == "kernel":
        n_in = math.prod(linear.in_shape)
        n_out = math.prod(linear.out_shape)
        if hf_value.shape != (n_out, n_in):
            raise ValueError(f"{name}: checkpoint shape {hf_value.shape}, expected "
                             f"{(n_out, n_in)} for kernel {tuple(var_shape)}")
        return hf_value.T.reshape(var_shape)
    if hf_value.size != math.prod(var_shape) or (leaf != "bias" and
                                                 hf_value.shape != tuple(var_shape)):
        raise ValueError(f"{name}: checkpoint shape {hf_value.shape}, expected "
                         f"{tuple(var_shape)}")
    return hf_value.reshape(var_shape)


def from_hf_kernel(value: np.ndarray, linear: layers.Linear) -> np.ndarray:
    """Our [in..., out...] kernel -> HF [out, in]."""
    return value.reshape(math.prod(linear.in_shape), math.prod(linear.out_shape)).T


def load_params(model: nnx.Module, get: Callable[[str], np.ndarray | None],
                name_fn: Callable[[tuple], str]) -> nnx.Module:
    """Fill every nnx.Param of `model` (concrete or abstract from nnx.eval_shape) from `get`.

    `get(name)` returns the HF tensor or None. Missing tensors raise, naming them all.
    """
    linears = _linear_modules(model)
    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    missing = []
    for path, var in flat:
        if not isinstance(var, nnx.Param):
            continue
        name = name_fn(tuple(path))
        value = None
        for alt in _alternatives(name):
            value = get(alt)
            if value is not None:
                break
        if value is None:
            missing.append(name)
            continue
        leaf = path[-1]
        linear = linears.get(tuple(path[:-1])) if leaf == "kernel" else None
        arr = to_ours(value, var.shape, linear, leaf, name)
        var.set_value(jnp.asarray(arr, dtype=var.dtype))
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} parameter(s): {missing[:8]}"
                       + (" ..." if len(missing) > 8 else ""))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def family_of(hf: dict) -> Family:
    """The family that loads HF config `hf`; ValueError naming the supported model_types."""
    family = families.get(hf.get("model_type"))
    if family is None:
        raise ValueError(f"config model_type={hf.get('model_type')!r} "
                         f"(architectures={hf.get('architectures')}) is not supported; "
                         f"supported: {families.model_types()}")
    return family


def build_config(hf: dict, *, dtype: DTypeLike = "float32", param_dtype: DTypeLike | None = None,
                 **overrides: Any) -> tuple[Any, type[nnx.Module]]:
    """HF config dict -> (our config, model class); `overrides` replace config fields."""
    family = family_of(hf)
    cfg_cls, model_cls = family.config_cls, family.model_cls
    param_dtype = param_dtype or dtype
    cfg = cfg_cls.from_hf(hf, dtype=str(jnp.dtype(layers.as_dtype(dtype))),
                          param_dtype=str(jnp.dtype(layers.as_dtype(param_dtype))), **overrides)
    return cfg, model_cls


def _store_getter(store: TensorStore):
    keys = set(store.keys())
    return lambda name: store.get(name) if name in keys else None


def _detect_overrides(hf: dict, store: TensorStore, overrides: dict) -> dict:
    """Config facts only the weights tell (BERT saved without its pooler); `overrides` win."""
    family = families.get(hf.get("model_type"))
    if family is None or family.weight_overrides is None:
        return overrides
    return {**family.weight_overrides(store), **overrides}


def load_hf_model(path: str, *, dtype: DTypeLike = "float32", param_dtype: DTypeLike | None = None,
                  **overrides: Any) -> nnx.Module:
    """HF directory -> causal LM (Llama family / OPT) or BertModel, weights loaded."""
    hf = read_config(path)
    store = TensorStore(path)
    cfg, model_cls = build_config(hf, dtype=dtype, param_dtype=param_dtype,
                                  **_detect_overrides(hf, store, overrides))
    abstract = nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0)))
    return load_params(abstract, _store_getter(store), lambda p: hf_name(cfg.model_type, p))


def load_hf_reward_model(path: str, *, dtype: DTypeLike = "float32",
                         param_dtype: DTypeLike | None = None, seed: int = 0,
                         **overrides: Any) -> RewardModel:
    """HF directory -> RewardModel. A *ForSequenceClassification checkpoint with one label
    loads its head; a base / causal-LM checkpoint gets a fresh small head (seeded)."""
    hf = read_config(path)
    family = families.get(hf.get("model_type"))
    if family is not None:
        overrides = {**family.reward_overrides, **overrides}
    store = TensorStore(path)
    cfg, model_cls = build_config(hf, dtype=dtype, param_dtype=param_dtype,
                                  **_detect_overrides(hf, store, overrides))
    family = families.for_model_type(cfg.model_type)
    get = _store_getter(store)
    head_name = f"{family.reward_head}.weight"
    has_head = head_name in store
    if has_head and get(head_name).shape[0] != 1:
        raise ValueError(f"{path}: {head_name} has {get(head_name).shape[0]} labels; "
                         "a reward model needs exactly 1")
    # Encoders score like BertForSequenceClassification: tanh(pooler(CLS)) -> Linear with bias,
    # for loaded and fresh heads alike, so a trained annotator exports to HF exactly.
    head_bias = family.pooled_reward_head
    if head_bias and "pooling" not in overrides:
        # A cwpo_jax export of a mean/CLS-pooled annotator records its pooling (see save_hf).
        cfg = dataclasses.replace(cfg, pooling=hf.get("cwpo_pooling", "pooler"))
    backbone = load_params(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0))),
                           get, lambda p: hf_name(cfg.model_type, p))
    rm = RewardModel(backbone, rngs=nnx.Rngs(seed), head_bias=head_bias)
    if has_head:
        rm = load_params(rm, get, lambda p: hf_reward_name(cfg.model_type, p))
    return rm


# ----------------------------------------------------------------------------------------------
# Writing


def _on_host(x) -> np.ndarray:
    """The whole array in this process. When its shards span processes (fsdp over hosts) this is
    a collective: every process must call it, for the same arrays in the same order."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def export_tensors(model: nnx.Module, name_fn: Callable[[tuple], str],
                   names: set[str] | None = None) -> dict:
    """nnx.Params (those named in `names`, default all) -> {HF name: numpy array in HF layout}.
    A collective on several processes (see _on_host)."""
    linears = _linear_modules(model)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        path = tuple(path)
        if names is not None and name_fn(path) not in names:
            continue
        value = _on_host(var.get_value())
        if path[-1] == "kernel":
            value = from_hf_kernel(value, linears[path[:-1]])
        elif path[-1] == "bias":
            value = value.reshape(-1)
        out[name_fn(path)] = np.ascontiguousarray(value)
    return out


# Larger exports are split into files of at most this size, the common layout of hub repos
# (transformers 4's default; a 7B model in fp32 gives six files).
MAX_SHARD_BYTES = 5 * 10**9
INDEX_FILE = "model.safetensors.index.json"


def save_hf(model: nnx.Module, path: str, *, max_shard_size: int = MAX_SHARD_BYTES) -> None:
    """Write config.json + model.safetensors that transformers (and `from_pretrained`) load.

    Above `max_shard_size` bytes the weights go to transformers' sharded layout instead:
    model-00001-of-0000N.safetensors ... plus model.safetensors.index.json (huggingface_hub
    plans the split, as transformers does). On several processes every process must call this
    (the sharded parameters are gathered one file at a time) and only process 0 writes."""
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors.flax import save_file

    if isinstance(model, RewardModel):
        backbone = model.backbone
        cfg = backbone.config
        hf = cfg.to_hf()
        family = families.for_model_type(cfg.model_type)
        arch = family.hf_classes[cfg.model_type] + "ForSequenceClassification"
        hf.update(architectures=[arch], num_labels=1, id2label={"0": "LABEL_0"},
                  label2id={"LABEL_0": 0})
        if family.pooled_reward_head and model.score.bias is None:
            raise ValueError(f"{arch} needs a head bias; build the "
                             "RewardModel with head_bias=True to export it")
        if family.pooled_reward_head and cfg.pooling != "pooler":
            # transformers' classifier always reads tanh(pooler(CLS)); cwpo_jax reloads this
            # pooling exactly, other tools see the weights but not the pooling.
            hf["cwpo_pooling"] = cfg.pooling
        name_fn = functools.partial(hf_reward_name, cfg.model_type)
    else:
        cfg = model.config
        hf = cfg.to_hf()
        name_fn = functools.partial(hf_name, cfg.model_type)
    params = {name_fn(tuple(p)): v.get_value()
              for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    split = split_state_dict_into_shards_factory(
        params, get_storage_size=lambda x: x.size * x.dtype.itemsize,
        filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):  # weights of an earlier export in another layout
            if name == INDEX_FILE or re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", name):
                os.remove(os.path.join(path, name))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
    for filename, names in split.filename_to_tensors.items():
        tensors = export_tensors(model, name_fn, set(names))
        if writer:
            target = os.path.join(path, filename)
            save_file({k: jnp.asarray(v) for k, v in tensors.items()}, target,
                      metadata={"format": "pt"})
            os.chmod(target, file_mode())  # safetensors creates it 0600 whatever the umask
        del tensors  # one file's tensors in host memory at a time
    if writer and split.is_sharded:
        with open(os.path.join(path, INDEX_FILE), "w") as f:
            json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, f,
                      indent=2, sort_keys=True)
    if jax.process_count() > 1:  # the files exist for every process once this returns
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("cwpo_save_hf")
