"""HF-format checkpoints: config.json + safetensors (single file or sharded index) <-> NNX models.

Each family has a function mapping our parameter path to the HF tensor name; loading walks our
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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwpo_jax.io_utils import file_mode
from cwpo_jax.models import layers
from cwpo_jax.models.bert import BertConfig, BertModel
from cwpo_jax.models.llama import LLAMA_MODEL_TYPES, LlamaConfig, LlamaForCausalLM
from cwpo_jax.models.opt import OPTConfig, OPTForCausalLM
from cwpo_jax.models.reward import RewardModel

# model_type -> (config class, model class)
FAMILIES = {
    **{mt: (LlamaConfig, LlamaForCausalLM) for mt in LLAMA_MODEL_TYPES},
    "opt": (OPTConfig, OPTForCausalLM),
    "bert": (BertConfig, BertModel),
}

_LEAF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}

_BERT_RENAMES = {
    "word_embeddings": "embeddings.word_embeddings",
    "position_embeddings": "embeddings.position_embeddings",
    "token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings_norm": "embeddings.LayerNorm",
    "layers": "encoder.layer",
    "attention.q_proj": "attention.self.query",
    "attention.k_proj": "attention.self.key",
    "attention.v_proj": "attention.self.value",
    "attention.o_proj": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output_norm": "output.LayerNorm",
    "output": "output.dense",
    "pooler": "pooler.dense",
}


def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def hf_name(model_type: str, path: tuple) -> str:
    """Our parameter path (tuple) -> canonical HF tensor name for a *ForCausalLM / BertModel."""
    *mods, leaf = path
    name = _dotted(mods)
    if model_type in LLAMA_MODEL_TYPES:
        full = name if name.startswith("lm_head") else "model." + name
    elif model_type == "opt":
        full = "model.decoder." + name.replace("self_attn.o_proj", "self_attn.out_proj")
    elif model_type == "bert":
        parts = name.split(".")
        out, i = [], 0
        while i < len(parts):  # longest-match rename of dotted segments
            for span in (2, 1):
                key = ".".join(parts[i:i + span])
                if key in _BERT_RENAMES:
                    out.append(_BERT_RENAMES[key])
                    i += span
                    break
            else:
                out.append(parts[i])
                i += 1
        full = ".".join(out)
    else:
        raise ValueError(f"unknown model_type {model_type!r}; supported: {sorted(FAMILIES)}")
    return f"{full}.{_LEAF[leaf]}"


def hf_reward_name(model_type: str, path: tuple) -> str:
    """Names for RewardModel params, as *ForSequenceClassification checkpoints store them."""
    if path[0] == "score":
        return ("classifier." if model_type == "bert" else "score.") + _LEAF[path[-1]]
    name = hf_name(model_type, path[1:])
    return "bert." + name if model_type == "bert" else name


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


def build_config(hf: dict, *, dtype="float32", param_dtype=None, **overrides):
    mt = hf.get("model_type")
    if mt not in FAMILIES:
        raise ValueError(f"config model_type={mt!r} (architectures={hf.get('architectures')}) "
                         f"is not supported; supported: {sorted(FAMILIES)}")
    cfg_cls, model_cls = FAMILIES[mt]
    param_dtype = param_dtype or dtype
    cfg = cfg_cls.from_hf(hf, dtype=str(jnp.dtype(layers.as_dtype(dtype))),
                          param_dtype=str(jnp.dtype(layers.as_dtype(param_dtype))), **overrides)
    return cfg, model_cls


def _store_getter(store: TensorStore):
    keys = set(store.keys())
    return lambda name: store.get(name) if name in keys else None


def _detect_overrides(hf: dict, store: TensorStore, overrides: dict) -> dict:
    """Config facts only the weights tell: BERT saved without its pooler."""
    if hf.get("model_type") == "bert" and "has_pooler" not in overrides:
        overrides = {**overrides, "has_pooler": any(
            n in store for n in ("pooler.dense.weight", "bert.pooler.dense.weight"))}
    return overrides


def load_hf_model(path: str, *, dtype="float32", param_dtype=None, **overrides):
    """HF directory -> causal LM (Llama family / OPT) or BertModel, weights loaded."""
    hf = read_config(path)
    store = TensorStore(path)
    cfg, model_cls = build_config(hf, dtype=dtype, param_dtype=param_dtype,
                                  **_detect_overrides(hf, store, overrides))
    abstract = nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0)))
    return load_params(abstract, _store_getter(store), lambda p: hf_name(cfg.model_type, p))


def load_hf_reward_model(path: str, *, dtype="float32", param_dtype=None, seed: int = 0,
                         **overrides):
    """HF directory -> RewardModel. A *ForSequenceClassification checkpoint with one label
    loads its head; a base / causal-LM checkpoint gets a fresh small head (seeded)."""
    hf = read_config(path)
    if hf.get("model_type") in LLAMA_MODEL_TYPES:
        # The LM head is unused under a reward head; tying drops it (and its memory).
        overrides.setdefault("tie_word_embeddings", True)
    store = TensorStore(path)
    cfg, model_cls = build_config(hf, dtype=dtype, param_dtype=param_dtype,
                                  **_detect_overrides(hf, store, overrides))
    get = _store_getter(store)
    head_names = ("classifier.weight",) if cfg.model_type == "bert" else ("score.weight",)
    has_head = any(n in store for n in head_names)
    if has_head and get(head_names[0]).shape[0] != 1:
        raise ValueError(f"{path}: {head_names[0]} has {get(head_names[0]).shape[0]} labels; "
                         "a reward model needs exactly 1")
    # Encoders score like BertForSequenceClassification: tanh(pooler(CLS)) -> Linear with bias,
    # for loaded and fresh heads alike, so a trained annotator exports to HF exactly.
    head_bias = cfg.model_type == "bert"
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
        arch = {"llama": "LlamaForSequenceClassification",
                "mistral": "MistralForSequenceClassification",
                "qwen2": "Qwen2ForSequenceClassification",
                "opt": "OPTForSequenceClassification",
                "bert": "BertForSequenceClassification"}[cfg.model_type]
        hf.update(architectures=[arch], num_labels=1, id2label={"0": "LABEL_0"},
                  label2id={"LABEL_0": 0})
        if cfg.model_type == "bert" and model.score.bias is None:
            raise ValueError("BertForSequenceClassification needs a head bias; build the "
                             "RewardModel with head_bias=True to export it")
        if cfg.model_type == "bert" and cfg.pooling != "pooler":
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
