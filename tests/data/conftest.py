"""Shared fixtures: fixture paths and two tiny tokenizers trained on the fixture text."""

import glob
import os

import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


def fixture(name):
    return os.path.join(FIXTURES, name)


def _train_tokenizer(bos_post_processor: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*.json*"))):
        with open(path, "rb") as f:
            texts.append(f.read().decode("utf-8", "replace"))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    if bos_post_processor:  # like Llama base tokenizers: BOS prepended by encode()
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


@pytest.fixture(scope="session")
def chat_tokenizer():
    """ChatML template, EOS </s> (not the end-of-turn mark), no BOS."""
    tok = _train_tokenizer(bos_post_processor=False)
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def plain_tokenizer():
    """No chat template; encode() prepends BOS."""
    return _train_tokenizer(bos_post_processor=True)
