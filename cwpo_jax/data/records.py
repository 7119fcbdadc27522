"""The one record type every reader produces, its stable ids, and the skip report.

Nothing here imports jax, grain or tensorflow-datasets: records are plain Python.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Any, Iterable, Mapping

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One human-labelled comparison.

    id:       stable identifier (source id, or a content hash); unique within a dataset.
    prompt:   tuple of {"role", "content"} messages shared by both responses; ends with a
              user turn (the responses are the next assistant turn).
    chosen:   the response the human label prefers.
    rejected: the other response.
    source:   dataset label, e.g. "hh_rlhf", "tldr", "ultrafeedback", "jsonl".
    """

    id: str
    prompt: tuple[Mapping[str, str], ...]
    chosen: str
    rejected: str
    source: str

    def __post_init__(self):
        # Copy into fresh dicts so later edits to the caller's lists cannot reach the record.
        object.__setattr__(
            self, "prompt", tuple({"role": m["role"], "content": m["content"]} for m in self.prompt)
        )

    def __hash__(self) -> int:
        # Messages are dicts (unhashable); id + responses identify a pair well enough for sets.
        return hash((self.id, self.chosen, self.rejected))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": [dict(m) for m in self.prompt],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PreferencePair":
        return cls(
            id=d["id"],
            prompt=tuple(d["prompt"]),
            chosen=d["chosen"],
            rejected=d["rejected"],
            source=d["source"],
        )

    def prompt_key(self) -> str:
        """Content hash of the prompt alone: pairs sharing a prompt share this key."""
        return _digest({"prompt": [[m["role"], m["content"]] for m in self.prompt]})


def _digest(obj: Any, n: int = 16) -> str:
    blob = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=n).hexdigest()


def content_id(
    source: str,
    prompt: Iterable[Mapping[str, str]],
    chosen: str,
    rejected: str,
    source_id: str | None = None,
) -> str:
    """Stable id: '<source>:[<source_id>:]<hash of prompt, chosen, rejected>'.

    The hash keeps the label order, so the same two responses labelled both ways by different
    annotators stay two pairs; the position of the row in its file plays no part.
    """
    h = _digest({"p": [[m["role"], m["content"]] for m in prompt], "c": chosen, "r": rejected})
    return f"{source}:{source_id}:{h}" if source_id else f"{source}:{h}"


class SkipRow(Exception):
    """A row that cannot become a PreferencePair; `reason` is a short snake_case key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BadRowError(ValueError):
    """Raised in strict mode: names the file, the line (or row) and the reason."""

    def __init__(self, where: str, reason: str, detail: str = ""):
        msg = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        super().__init__(msg)
        self.where = where
        self.reason = reason


class BadFileError(ValueError):
    """A data file that cannot be read at all (corrupt gzip or parquet); names the file."""


@dataclasses.dataclass
class ReadReport:
    """Counts of rows read, kept and skipped (per reason), with a few locations per reason.

    Pass one to read_preferences(report=...) and print it when the generator is exhausted;
    several reads may share one report.
    """

    rows: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    max_examples: int = 3

    def ok(self) -> None:
        self.rows += 1
        self.kept += 1

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        self.rows += 1
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(f"{where}" + (f" ({detail})" if detail else ""))

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        lines = [f"read {self.rows} rows: kept {self.kept}, skipped {self.n_skipped}"]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason}: {n}  e.g. " + "; ".join(self.examples.get(reason, [])))
        return "\n".join(lines)


def check_text(value: Any, field: str) -> str:
    """A response or message text must be a str that encodes as UTF-8 (no lone surrogates)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SkipRow("undecodable_text", f"field {field!r}: {e}") from None
    if not isinstance(value, str):
        raise SkipRow("wrong_type", f"field {field!r} is {type(value).__name__}, expected str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SkipRow("undecodable_text", f"field {field!r}: {e.reason}") from None
    return value


def check_messages(messages: Any, field: str) -> tuple[dict[str, str], ...]:
    """Validates a list of chat messages: dicts with a known role and str content."""
    if not isinstance(messages, (list, tuple)):
        raise SkipRow(
            "wrong_type",
            f"field {field!r} is {type(messages).__name__}, expected a list of messages",
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise SkipRow("bad_message", f"{field}[{i}] lacks 'role' or 'content'")
        role = check_text(m["role"], f"{field}[{i}].role")
        if role not in ROLES:
            raise SkipRow("bad_message", f"{field}[{i}] has unknown role {role!r}")
        out.append({"role": role, "content": check_text(m["content"], f"{field}[{i}].content")})
    return tuple(out)


def make_pair(
    source: str,
    prompt: Iterable[Mapping[str, str]],
    chosen: str,
    rejected: str,
    source_id: str | None = None,
    pair_id: str | None = None,
) -> PreferencePair:
    """Builds a pair after the checks every reader shares (empty / identical responses)."""
    prompt = tuple(prompt)
    if not prompt:
        raise SkipRow("empty_prompt")
    if prompt[-1]["role"] != "user":
        raise SkipRow(
            "bad_prompt", f"prompt ends with a {prompt[-1]['role']!r} turn, expected user"
        )
    if not chosen.strip():
        raise SkipRow("empty_response", "chosen is empty")
    if not rejected.strip():
        raise SkipRow("empty_response", "rejected is empty")
    if chosen.strip() == rejected.strip():
        raise SkipRow("identical_responses")
    if pair_id is None:
        pair_id = content_id(source, prompt, chosen, rejected, source_id)
    return PreferencePair(
        id=pair_id, prompt=prompt, chosen=chosen, rejected=rejected, source=source
    )
