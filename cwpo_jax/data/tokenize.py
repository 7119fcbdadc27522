"""PreferencePair -> token ids with a HF-style tokenizer (PreTrainedTokenizerFast interface).

Prompts are rendered with the tokenizer's chat template (generation prompt on) when it has one,
else with a plain "Human: / Assistant:" template. Each response is tokenised as the text the
template appends after the prompt (its end-of-turn marks included), so the loss mask covers
exactly what the model must produce. Prompts are truncated from the left (keeping a leading
BOS), responses from the right; a truncated response loses its EOS, so the model is never taught
to stop where the text was cut.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from cwpo_jax.data.records import PreferencePair

# Plain template for tokenizers without a chat template (base models): the HH-RLHF layout.
_PLAIN_ROLE = {"system": "{}\n\n", "user": "Human: {}\n\n", "assistant": "Assistant: {}\n\n"}
_PLAIN_GENERATION = "Assistant:"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def pad_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def plain_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    return (
        "".join(_PLAIN_ROLE[m["role"]].format(m["content"]) for m in messages) + _PLAIN_GENERATION
    )


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
    """prompt, chosen, rejected: int32 ids after truncation; chosen/rejected are response ids."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    @property
    def length(self) -> int:
        """Longest of the two full sequences (what a pair batch must fit)."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


@dataclasses.dataclass(frozen=True)
class TokenizedSequence:
    """One prompt + response (SFT, scoring); response may be empty for prompt-only use."""

    prompt: np.ndarray
    response: np.ndarray

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)


@dataclasses.dataclass
class TokenizeStats:
    prompts: int = 0
    prompts_truncated: int = 0
    responses: int = 0
    responses_truncated: int = 0
    template_fallbacks: int = 0  # chat template re-rendered earlier turns; used text + EOS

    def __str__(self) -> str:
        return (
            f"prompts {self.prompts} ({self.prompts_truncated} truncated), responses "
            f"{self.responses} ({self.responses_truncated} truncated), template fallbacks "
            f"{self.template_fallbacks}"
        )


class PairTokenizer:
    """Renders and tokenises pairs; lengths in tokens.

    max_prompt_len: prompts longer than this keep their last tokens (and a leading BOS).
    max_len: prompt + response budget; each response keeps its first max_len - len(prompt)
      tokens (and at most max_response_len when given).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_prompt_len: int,
        max_len: int,
        max_response_len: int | None = None,
        chunk: int = 512,
    ):
        if not 0 < max_prompt_len < max_len:
            raise ValueError(f"need 0 < max_prompt_len ({max_prompt_len}) < max_len ({max_len})")
        # The end mark closing each response: EOS, or SEP for BERT-style encoders (annotators).
        self.end_id = tokenizer.eos_token_id
        if self.end_id is None:
            self.end_id = getattr(tokenizer, "sep_token_id", None)
        if self.end_id is None:
            raise ValueError(
                "the tokenizer has neither eos_token_id nor sep_token_id; responses "
                "need an end mark"
            )
        self.tok = tokenizer
        self.max_prompt_len = max_prompt_len
        self.max_len = max_len
        self.max_response_len = max_response_len
        self.chunk = chunk
        self.templated = has_chat_template(tokenizer)
        self.stats = TokenizeStats()

    # -- rendering (strings) ------------------------------------------------------------------
    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        if self.templated:
            return self.tok.apply_chat_template(
                list(map(dict, messages)), tokenize=False, add_generation_prompt=True
            )
        return plain_prompt(messages)

    def render_response(
        self, messages: Sequence[Mapping[str, str]], prompt_text: str, response: str
    ) -> str:
        if not self.templated:
            return " " + response
        full = self.tok.apply_chat_template(
            list(map(dict, messages)) + [{"role": "assistant", "content": response}], tokenize=False
        )
        if full.startswith(prompt_text):
            return full[len(prompt_text) :]
        # Some templates rewrite earlier turns once an answer follows (e.g. strip reasoning);
        # the prompt tokens must stay those the model sees at generation time.
        self.stats.template_fallbacks += 1
        return response

    # -- encoding (ids) -----------------------------------------------------------------------
    def _encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        out: list[list[int]] = []
        for i in range(0, len(texts), self.chunk):
            enc = self.tok(texts[i : i + self.chunk], add_special_tokens=add_special_tokens)
            out.extend(enc["input_ids"])
        return out

    def _cut_prompt(self, ids: list[int]) -> np.ndarray:
        self.stats.prompts += 1
        if len(ids) > self.max_prompt_len:
            self.stats.prompts_truncated += 1
            bos = self.tok.bos_token_id
            if bos is not None and ids and ids[0] == bos:
                ids = [bos] + ids[len(ids) - self.max_prompt_len + 1 :]
            else:
                ids = ids[len(ids) - self.max_prompt_len :]
        return np.asarray(ids, np.int32)

    def _cut_response(self, ids: list[int], prompt_len: int) -> np.ndarray:
        self.stats.responses += 1
        eos = self.end_id
        if eos not in ids:
            ids = ids + [eos]
        budget = self.max_len - prompt_len
        if self.max_response_len is not None:
            budget = min(budget, self.max_response_len)
        if len(ids) > budget:
            self.stats.responses_truncated += 1
            ids = ids[:budget]
        return np.asarray(ids, np.int32)

    def encode_prompts(
        self, prompts: Sequence[Sequence[Mapping[str, str]]]
    ) -> tuple[list[str], list[np.ndarray]]:
        texts = [self.render_prompt(m) for m in prompts]
        ids = self._encode(texts, add_special_tokens=not self.templated)
        return texts, [self._cut_prompt(x) for x in ids]

    def encode_pairs(self, pairs: Sequence[PreferencePair]) -> list[TokenizedPair]:
        """Batch-tokenises pairs (the Rust tokenizer does the work in chunks)."""
        texts, prompts = self.encode_prompts([p.prompt for p in pairs])
        chosen = self._encode(
            [self.render_response(p.prompt, t, p.chosen) for p, t in zip(pairs, texts)],
            add_special_tokens=False,
        )
        rejected = self._encode(
            [self.render_response(p.prompt, t, p.rejected) for p, t in zip(pairs, texts)],
            add_special_tokens=False,
        )
        return [
            TokenizedPair(
                prompt=pr,
                chosen=self._cut_response(c, len(pr)),
                rejected=self._cut_response(r, len(pr)),
            )
            for pr, c, r in zip(prompts, chosen, rejected)
        ]

    def encode_sequences(
        self, prompts: Sequence[Sequence[Mapping[str, str]]], responses: Sequence[str]
    ) -> list[TokenizedSequence]:
        """prompt + response sequences, e.g. SFT on chosen responses or scoring one response."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts, ids = self.encode_prompts(prompts)
        resp = self._encode(
            [self.render_response(m, t, r) for m, t, r in zip(prompts, texts, responses)],
            add_special_tokens=False,
        )
        return [
            TokenizedSequence(prompt=p, response=self._cut_response(r, len(p)))
            for p, r in zip(ids, resp)
        ]

    def encode_prompt_only(
        self, prompts: Sequence[Sequence[Mapping[str, str]]]
    ) -> list[TokenizedSequence]:
        """Prompts for sampling (no response)."""
        _, ids = self.encode_prompts(prompts)
        return [TokenizedSequence(prompt=p, response=np.zeros((0,), np.int32)) for p in ids]
