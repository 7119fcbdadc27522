"""LoRA adapters on named projections (paper: r=8, alpha=16, dropout 0.05 on q_proj, v_proj).

`apply_lora` swaps each targeted `Linear` for a `LoRALinear` that keeps the same `kernel`/`bias`
Params (so their paths do not change) and adds `lora_a` / `lora_b` as `nnx.LoRAParam`s. Train
them alone with the filter `nnx.LoRAParam` (`nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`,
`nnx.split(model, nnx.LoRAParam, ...)`); `merge_lora` folds them into the base for export.
LoRA dropout is active only after `model.train()` (it is created deterministic).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from cwpo_jax.models import layers
from cwpo_jax.models.stacking import is_stacked

LORA_FILTER = nnx.LoRAParam  # trainable-only filter when adapters are present


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    # Decoder layers that get adapters (PEFT's layers_to_transform); negative indices count from
    # the top, () = every layer. Adapters only in the top k layers also stop the backward pass
    # there: the frozen layers below run forward only.
    layers: tuple[int, ...] = ()

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(layers.Linear):
    """Linear + (dropout(x) . A . B) * alpha / rank; B starts at zero so the output is unchanged."""

    def __init__(self, base: layers.Linear, cfg: LoRAConfig, *, rngs: nnx.Rngs):
        in_axes, out_axes = base.axes
        super().__init__(base.in_shape, base.out_shape, in_axes=in_axes, out_axes=out_axes,
                         dtype=base.dtype, kernel=base.kernel, bias=base.bias)
        pdtype = base.kernel[...].dtype
        fan_in = 1
        for d in base.in_shape:
            fan_in *= d
        # PEFT's default: A ~ kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / fan_in ** 0.5
        a = jax.random.uniform(rngs.params(), base.in_shape + (cfg.rank,), jnp.float32,
                               -bound, bound)
        self.lora_a = layers.make_param(a.astype(pdtype), tuple(in_axes) + (None,),
                                        kind=nnx.LoRAParam)
        self.lora_b = layers.make_param(jnp.zeros((cfg.rank,) + base.out_shape, pdtype),
                                        (None,) + tuple(out_axes), kind=nnx.LoRAParam)
        self.scaling = cfg.scaling
        self.lora_dropout = nnx.Dropout(cfg.dropout, deterministic=True, rngs=rngs)

    def delta_kernel(self):
        """scaling * A . B in the kernel's [in..., out...] shape, float32."""
        return self.scaling * jnp.tensordot(self.lora_a[...].astype(jnp.float32),
                                            self.lora_b[...].astype(jnp.float32), axes=1)

    def __call__(self, x):
        y = super().__call__(x)
        n_in = len(self.in_shape)
        h = self.lora_dropout(x).astype(self.dtype)
        contract = tuple(range(x.ndim - n_in, x.ndim))
        h = jax.lax.dot_general(h, self.lora_a[...].astype(self.dtype),
                                ((contract, tuple(range(n_in))), ((), ())))
        h = jnp.tensordot(h, self.lora_b[...].astype(self.dtype), axes=1)
        return y + (self.scaling * h).astype(y.dtype)


def _targets(model: nnx.Module, cls, names=None):
    found = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, cls) and path and (names is None or path[-1] in names):
            found.append((tuple(path), node))
    return found


def _set(model, path, value):
    parent = model
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    setattr(parent, path[-1], value)


def layer_index(path) -> int | None:
    """The layer number in a module path (the first integer: layers.<i>.self_attn.q_proj)."""
    return next((p for p in path if isinstance(p, int)), None)


def adapted_layers(model: nnx.Module, wanted: tuple[int, ...]) -> set[int] | None:
    """LoRAConfig.layers resolved against the model's layer count (None = every layer)."""
    if not wanted:
        return None
    n = model.config.num_hidden_layers
    bad = [i for i in wanted if not -n <= i < n]
    if bad:
        raise ValueError(f"LoRA layers {bad} out of range for a model with {n} layers "
                         f"(use 0..{n - 1} or -{n}..-1)")
    return {i % n for i in wanted}


def apply_lora(model: nnx.Module, cfg: LoRAConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """Add adapters in place to every Linear whose attribute name is in cfg.targets (in the
    layers cfg.layers names, when given)."""
    if is_stacked(model):
        raise ValueError("apply_lora: the model's layers are stacked; add adapters before "
                         "stack_layers (or after unstack_layers)")
    chosen = adapted_layers(model, cfg.layers)
    found = [(p, m) for p, m in _targets(model, layers.Linear, set(cfg.targets))
             if not isinstance(m, LoRALinear)
             and (chosen is None or layer_index(p) in chosen)]
    if not found:
        names = sorted({str(p[-1]) for p, _ in _targets(model, layers.Linear)})
        raise ValueError(f"LoRA targets {cfg.targets} match no Linear; available: {names}")
    for path, lin in found:
        _set(model, path, LoRALinear(lin, cfg, rngs=rngs))
    return model


def has_lora(model: nnx.Module) -> bool:
    return bool(_targets(model, LoRALinear))


def trainable_filter(model: nnx.Module):
    """nnx.LoRAParam when the model has adapters, else every nnx.Param."""
    return LORA_FILTER if has_lora(model) else nnx.Param


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy with each LoRALinear folded into a plain Linear (kernel += scaling * A.B)."""
    merged = nnx.clone(model)
    for path, lin in _targets(merged, LoRALinear):
        kernel = lin.kernel[...]
        new_kernel = (kernel.astype(jnp.float32) + lin.delta_kernel()).astype(kernel.dtype)
        in_axes, out_axes = lin.axes
        _set(merged, path, layers.Linear(
            lin.in_shape, lin.out_shape, in_axes=in_axes, out_axes=out_axes, dtype=lin.dtype,
            kernel=layers.make_param(new_kernel, tuple(in_axes) + tuple(out_axes)),
            bias=lin.bias))
    return merged
