"""Building blocks shared by the model families: dense, embedding, norms, RoPE, attention.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds *logical* axis names from
LOGICAL_AXES (None for axes never sharded). `eager_sharding=False` keeps construction mesh-free;
a sharding module maps the names to mesh axes with one rules table (see `logical_axes`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwpo_jax.sharding import AXES_KEY, variable_axes

LOGICAL_AXES = ("vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "norm", "layers")

DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
          "bf16": jnp.bfloat16, "float16": jnp.float16, "fp16": jnp.float16}


def as_dtype(d):
    """'bf16' / 'float32' / jnp dtype -> jnp dtype."""
    if isinstance(d, str):
        if d not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {d!r}")
        return DTYPES[d]
    return jnp.dtype(d).type if d is not None else jnp.float32


def make_param(value, axes: Sequence[str | None], *, kind=nnx.Param) -> nnx.Param:
    """A Param with logical axis names; validates names and rank so mistakes surface early."""
    axes = tuple(axes)
    if len(axes) != value.ndim:
        raise ValueError(f"logical axes {axes} do not match parameter shape {value.shape}")
    for a in axes:
        if a is not None and a not in LOGICAL_AXES:
            raise ValueError(f"unknown logical axis {a!r}; allowed: {LOGICAL_AXES} or None")
    return kind(value, **{AXES_KEY: axes}, eager_sharding=False)


def logical_axes(model: nnx.Module):
    """Pytree of logical-axis tuples, same structure as `nnx.state(model, nnx.Param)`."""
    state = nnx.state(model, nnx.Param)
    return jax.tree.map(variable_axes, state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


REMAT_POLICIES = ("none", "full", "dots")


def remat_policy(value) -> str:
    """A model config's `remat` as a policy name: "none" (keep every activation), "full"
    (recompute each layer in the backward pass, keep only its input) or "dots" (keep the
    matmul outputs, recompute the elementwise ops). False / True mean "none" / "full"."""
    if isinstance(value, bool):
        return "full" if value else "none"
    if value not in REMAT_POLICIES:
        raise ValueError(f"remat={value!r} is not one of {REMAT_POLICIES} (or a bool)")
    return value


def set_remat(model: nnx.Module, remat) -> nnx.Module:
    """In place: every module in `model` that holds a config with a `remat` field (decoders,
    encoders; not wrappers that only forward their backbone's) gets remat_policy(remat)."""
    policy = remat_policy(remat)
    for _, node in nnx.iter_graph(model):
        config = vars(node).get("config") if isinstance(node, nnx.Module) else None
        if dataclasses.is_dataclass(config) and hasattr(config, "remat"):
            node.config = dataclasses.replace(config, remat=policy)
    return model


def maybe_remat(fn, remat):
    """fn with the layer's activations rematerialised per `remat` (remat_policy)."""
    policy = remat_policy(remat)
    if policy == "none":
        return fn
    if policy == "dots":
        return nnx.remat(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return nnx.remat(fn)


def _normal(rngs: nnx.Rngs, shape, std, dtype):
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def _contract(x, kernel, n_in: int):
    """x [..., *in] . kernel [*in, *out] -> [..., *out]."""
    return jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - n_in, x.ndim)),
                                            tuple(range(n_in))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x, kernel, n_in: int):
    """`_contract` whose weight gradient is x^T . dy with x^T materialised first on CPU.

    Autodiff leaves the operand order of the weight-gradient matmul to XLA, and XLA:CPU chose to
    transpose each (larger) output gradient, fused into its producer as a strided write: for
    SmolLM2's MLP that was 60 fusions and 0.21 s of a 2.4 s DPO step. Transposing the input
    instead (one small copy per projection) measured the step 8-10% faster. The barrier keeps
    XLA from folding the transpose back into the dot. Accelerators keep XLA's own choice."""
    return _contract(x, kernel, n_in)


def _project_fwd(x, kernel, n_in):
    return _contract(x, kernel, n_in), (x, kernel)


def _project_bwd(n_in, residuals, dy):
    x, kernel = residuals
    n_lead = x.ndim - n_in
    dx = jax.lax.dot_general(dy, kernel, ((tuple(range(n_lead, dy.ndim)),
                                           tuple(range(n_in, kernel.ndim))), ((), ())))
    xt = x.transpose(tuple(range(n_lead, x.ndim)) + tuple(range(n_lead)))  # [*in, *lead]
    if jax.default_backend() == "cpu":
        xt = jax.lax.optimization_barrier(xt)
    dkernel = jax.lax.dot_general(xt, dy, ((tuple(range(n_in, xt.ndim)), tuple(range(n_lead))),
                                           ((), ())))
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


project.defvjp(_project_fwd, _project_bwd)


class Linear(nnx.Module):
    """y = x . W (+ b) contracting x's trailing `in_shape` dims; W has shape in_shape + out_shape.

    Multi-dim shapes keep heads and head_dim as separate (shardable) axes, e.g. q_proj kernel
    [embed, q_heads, head_dim]. HF stores the same weight as [prod(out), prod(in)].
    """

    def __init__(self, in_shape, out_shape, *, in_axes, out_axes, use_bias=False,
                 dtype=jnp.float32, param_dtype=jnp.float32, init_std=0.02,
                 rngs: nnx.Rngs | None = None, kernel: nnx.Param | None = None,
                 bias: nnx.Param | None = None):
        """`kernel` / `bias`: existing Params to adopt instead of initialising (LoRA merge)."""
        self.in_shape = tuple(np.atleast_1d(in_shape).tolist())
        self.out_shape = tuple(np.atleast_1d(out_shape).tolist())
        self.dtype = dtype
        if kernel is None:
            kernel = make_param(_normal(rngs, self.in_shape + self.out_shape, init_std,
                                        param_dtype), tuple(in_axes) + tuple(out_axes))
        elif tuple(kernel.shape) != self.in_shape + self.out_shape:
            raise ValueError(f"kernel shape {kernel.shape} != {self.in_shape + self.out_shape}")
        self.kernel = kernel
        if bias is None and use_bias:
            bias = make_param(jnp.zeros(self.out_shape, param_dtype), out_axes)
        self.bias = bias

    @property
    def axes(self) -> tuple:
        """(in_axes, out_axes) logical names of the kernel."""
        names = variable_axes(self.kernel)
        return names[:len(self.in_shape)], names[len(self.in_shape):]

    def __call__(self, x):
        y = project(x.astype(self.dtype), self.kernel[...].astype(self.dtype), len(self.in_shape))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token (or position) embedding table [num, features]."""

    def __init__(self, num, features, *, axes=("vocab", "embed"), dtype=jnp.float32,
                 param_dtype=jnp.float32, init_std=0.02, rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = make_param(_normal(rngs, (num, features), init_std, param_dtype), axes)

    def __call__(self, ids):
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm; statistics in fp32, then scaled in the input dtype like HF."""

    def __init__(self, dim, *, eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32):
        self.eps, self.dtype = eps, dtype
        self.scale = make_param(jnp.ones((dim,), param_dtype), ("norm",))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(jnp.float32) * x32).astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with bias; statistics in fp32."""

    def __init__(self, dim, *, eps=1e-5, dtype=jnp.float32, param_dtype=jnp.float32):
        self.eps, self.dtype = eps, dtype
        self.scale = make_param(jnp.ones((dim,), param_dtype), ("norm",))
        self.bias = make_param(jnp.zeros((dim,), param_dtype), ("norm",))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32)
                + self.bias[...].astype(jnp.float32)).astype(self.dtype)


# ----------------------------------------------------------------------------------------------
# Rotary position embeddings


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] float64, with optional HF-style rope scaling.

    Supported `scaling["rope_type"]`: default, linear, llama3, freq_factors (GGUF). Others raise: a silently wrong
    RoPE is the classic porting bug.
    """
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return inv
    if rope_type == "linear":
        return inv / float(scaling["factor"])
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, out)
    if rope_type == "freq_factors":  # GGUF rope_freqs tensor: per-dimension divisors
        factors = np.asarray(scaling["factors"], np.float64)
        if factors.shape != inv.shape:
            raise ValueError(f"rope freq factors have shape {factors.shape}, expected {inv.shape}")
        return inv / factors
    raise ValueError(f"rope_scaling.rope_type={rope_type!r} is not supported "
                     "(supported: default, linear, llama3, freq_factors)")


def apply_rope(x, positions, inv_freq):
    """Rotate-half RoPE (HF layout). x [B, T, H, hd], positions [B, T] int; math in fp32."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, hd]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Attention


def positions_from_mask(attention_mask):
    """Position ids that respect left padding: cumsum(mask) - 1, pads clipped to 0. [B, T] int32."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0)


def attend(q, k, v, *, kv_valid, q_slots, causal: bool, scale: float, sliding_window=None):
    """Grouped-query attention. q [B,T,H,hd]; k, v [B,S,KV,hd].

    kv_valid [B,S] bool (which keys exist), or [B,T,S] (which keys each query may see: packed
    rows such as prompt + chosen + rejected, where rejected must not see chosen).
    q_slots [T] int: each query's index along S (its own slot), so the causal rule is
    key_slot <= query_slot. Logits and softmax in fp32. Rows with no visible key (pad queries)
    get a uniform distribution instead of NaN; their outputs are ignored downstream.
    """
    b, t, h, hd = q.shape
    kvh = k.shape[2]
    g = h // kvh
    # Heads-major 4-D operands ([B,KV,G*T,hd] against [B,KV,S,hd]) so both products are plain
    # batched matmuls, the layout XLA:CPU runs fastest (BENCHMARKS.md, "Optimisations:
    # prediction and outcome"). The scale is folded into q (T x hd multiplies instead of T x S).
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kvh, g, hd).transpose(0, 2, 3, 1, 4)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    logits = jnp.einsum("bktd,bksd->bkts", qg.reshape(b, kvh, g * t, hd), kt,
                        preferred_element_type=jnp.float32)
    if kv_valid.ndim == 3:
        if sliding_window:
            # The window below is measured in slots, which packed rows do not keep contiguous.
            raise ValueError("per-query masks (packed pair rows) do not support sliding-window "
                             "attention; use separate chosen/rejected rows for this model")
        visible = kv_valid.astype(bool)  # [B, T, S]
    else:
        visible = kv_valid[:, None, :].astype(bool)  # [B, 1, S]
    if causal:
        s_ids = jnp.arange(k.shape[1])
        visible = visible & (s_ids[None, None, :] <= q_slots[None, :, None])  # [B, T, S]
        if sliding_window:
            # Slot distance equals position distance for real tokens (pads only on the left).
            visible = visible & (s_ids[None, None, :] > q_slots[None, :, None] - sliding_window)
    # An additive bias (0 or fp32 min) rather than a select, which XLA:CPU did not fuse as
    # well. Logits are O(100), so min + logit stays finite and its exp() is exactly 0.
    bias = jnp.where(visible, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    logits = (logits.reshape(b, kvh, g, t, -1) + bias[:, None, None]).reshape(b, kvh, g * t, -1)
    # Softmax with the normalisation after the value product: T x hd divides instead of T x S.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    out = jnp.einsum("bkts,bksd->bktd", weights.astype(v.dtype), vt,
                     preferred_element_type=jnp.float32)
    out = (out / weights.sum(axis=-1)[..., None]).astype(v.dtype)
    return out.reshape(b, kvh, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def update_cache(cache_kv, new, index):
    """Write new [B,T,KV,hd] into cache [B,S,KV,hd] at slot `index` (scalar)."""
    return jax.lax.dynamic_update_slice(cache_kv, new.astype(cache_kv.dtype), (0, index, 0, 0))


class Attention(nnx.Module):
    """Multi-head / grouped-query self-attention with optional RoPE, biases and a KV cache.

    Projections are named like HF (q_proj, k_proj, v_proj, o_proj) so LoRA targets match.
    """

    def __init__(self, dim, num_heads, num_kv_heads, head_dim, *, qkv_bias=False, o_bias=False,
                 causal=True, sliding_window=None, dtype=jnp.float32, param_dtype=jnp.float32, init_std=0.02,
                 rngs: nnx.Rngs):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads={num_heads} is not a multiple of "
                             f"num_key_value_heads={num_kv_heads}")
        kw = {"dtype": dtype, "param_dtype": param_dtype, "init_std": init_std, "rngs": rngs}
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal, self.sliding_window = causal, sliding_window
        self.q_proj = Linear(dim, (num_heads, head_dim), in_axes=("embed",),
                             out_axes=("q_heads", "head_dim"), use_bias=qkv_bias, **kw)
        self.k_proj = Linear(dim, (num_kv_heads, head_dim), in_axes=("embed",),
                             out_axes=("kv_heads", "head_dim"), use_bias=qkv_bias, **kw)
        self.v_proj = Linear(dim, (num_kv_heads, head_dim), in_axes=("embed",),
                             out_axes=("kv_heads", "head_dim"), use_bias=qkv_bias, **kw)
        self.o_proj = Linear((num_heads, head_dim), dim, in_axes=("q_heads", "head_dim"),
                             out_axes=("embed",), use_bias=o_bias, **kw)

    def __call__(self, x, *, positions, kv_valid, inv_freq=None, cache=None, cache_index=None):
        """x [B,T,D]; positions [B,T]; kv_valid [B,S] (S = T without cache, cache length with).

        Returns (out [B,T,D], new cache (k, v) or None).
        """
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if inv_freq is not None:
            q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        t = x.shape[1]
        if cache is None:
            q_slots = jnp.arange(t)
            new_cache = None
        else:
            k = update_cache(cache[0], k, cache_index)
            v = update_cache(cache[1], v, cache_index)
            q_slots = cache_index + jnp.arange(t)
            new_cache = (k, v)
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), kv_valid=kv_valid, q_slots=q_slots,
                     causal=self.causal, scale=1.0 / math.sqrt(self.head_dim),
                     sliding_window=self.sliding_window)
        return self.o_proj(out), new_cache


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]
