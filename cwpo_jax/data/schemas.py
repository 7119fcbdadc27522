"""Row parsers: one published schema -> PreferencePair. Pure functions of a decoded row.

Each parser raises SkipRow(reason) for a row it cannot use; readers.py decides whether that
skips and counts the row or fails (strict mode).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from cwpo_jax.data.records import PreferencePair, SkipRow, check_messages, check_text, make_pair


def _field(row: Mapping[str, Any], name: str) -> Any:
    if not isinstance(row, Mapping):
        raise SkipRow("wrong_type", f"row is {type(row).__name__}, expected an object")
    if name not in row or row[name] is None:
        raise SkipRow("missing_field", f"no {name!r}")
    return row[name]


# ----------------------------------------------------------------------------- HH-RLHF
# Turns are delimited by a blank line then the speaker tag. "Human:" inside a sentence (no
# preceding blank line) is text, not a turn boundary.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ASSISTANT = "\n\nAssistant:"


def _hh_normalise(text: str) -> str:
    # Published rows start with "\n\nHuman:", but some lack the blank line or carry spaces;
    # re-anchor so every transcript starts the same way.
    text = text.lstrip()
    return "\n\n" + text


def _hh_turns(transcript: str) -> list[dict[str, str]]:
    """Splits a normalised transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into messages."""
    parts = _HH_TURN.split(transcript)
    if parts[0].strip():
        raise SkipRow("bad_transcript", "text before the first Human:/Assistant: turn")
    msgs = []
    for tag, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if tag == "Human" else "assistant", "content": content.strip()})
    return msgs


def split_hh_transcripts(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """Shared prompt turns and the two differing final responses of an HH-RLHF row.

    The prompt is the common prefix of both transcripts cut back to its last "\\n\\nAssistant:"
    tag, so tags that appear inside a response (the model continuing the dialogue) stay part of
    that response instead of moving the split point.
    """
    c, r = _hh_normalise(chosen), _hh_normalise(rejected)
    n = 0
    limit = min(len(c), len(r))
    while n < limit and c[n] == r[n]:
        n += 1
    # rfind with end=n only finds tags lying wholly inside the shared prefix.
    cut = c.rfind(_HH_ASSISTANT, 0, n)
    if cut < 0:
        raise SkipRow("bad_transcript", "no shared '\\n\\nAssistant:' turn")
    head = cut + len(_HH_ASSISTANT)
    prompt = _hh_turns(c[:cut])
    if not prompt or prompt[0]["role"] != "user":
        raise SkipRow("bad_transcript", "prompt does not start with a Human turn")
    for a, b in zip(prompt, prompt[1:]):
        if a["role"] == b["role"]:
            raise SkipRow("bad_transcript", "two consecutive turns by the same speaker")
    return prompt, c[head:].strip(), r[head:].strip()


def parse_hh_rlhf(row: Mapping[str, Any], source: str = "hh_rlhf") -> PreferencePair:
    chosen = check_text(_field(row, "chosen"), "chosen")
    rejected = check_text(_field(row, "rejected"), "rejected")
    prompt, c, r = split_hh_transcripts(chosen, rejected)
    return make_pair(source, prompt, c, r)


# ------------------------------------------------------------------- TL;DR (summarize_from_feedback)
def tldr_prompt(info: Mapping[str, Any]) -> str:
    """The standard TL;DR query (as in OpenAI's summarize-from-feedback and TRL):
    'SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:'.
    CNN/DM rows of the comparisons set carry 'article' instead of 'post' and no subreddit."""
    post = info.get("post")
    label = "POST"
    if post is None:
        post, label = info.get("article"), "ARTICLE"
    if post is None:
        raise SkipRow("missing_field", "info has neither 'post' nor 'article'")
    post = check_text(post, f"info.{label.lower()}").strip()
    parts = []
    if info.get("subreddit"):
        parts.append(f"SUBREDDIT: r/{check_text(info['subreddit'], 'info.subreddit').strip()}")
    if info.get("title"):
        parts.append(f"TITLE: {check_text(info['title'], 'info.title').strip()}")
    parts.append(f"{label}: {post}")
    return "\n\n".join(parts) + "\n\nTL;DR:"


def parse_tldr(row: Mapping[str, Any], source: str = "tldr") -> PreferencePair:
    info = _field(row, "info")
    if not isinstance(info, Mapping):
        raise SkipRow("wrong_type", "'info' is not an object")
    summaries = _field(row, "summaries")
    if not isinstance(summaries, (list, tuple)) or len(summaries) != 2:
        raise SkipRow("bad_summaries", "'summaries' must hold exactly two entries")
    texts = []
    for i, s in enumerate(summaries):
        if not isinstance(s, Mapping) or s.get("text") is None:
            raise SkipRow("missing_field", f"summaries[{i}] has no 'text'")
        texts.append(check_text(s["text"], f"summaries[{i}].text").strip())
    choice = _field(row, "choice")
    if isinstance(choice, bool) or not isinstance(choice, (int, float)) or choice not in (0, 1):
        raise SkipRow("bad_label", f"'choice' is {choice!r}, expected 0 or 1")
    choice = int(choice)  # JSON may carry 1.0
    prompt = [{"role": "user", "content": tldr_prompt(info)}]
    info_id = info.get("id")
    return make_pair(
        source,
        prompt,
        texts[choice],
        texts[1 - choice],
        source_id=str(info_id) if info_id else None,
    )


# ------------------------------------------------------------------- UltraFeedback-binarized
def _split_conversation(msgs: tuple, field: str) -> tuple[tuple, str]:
    if not msgs or msgs[-1]["role"] != "assistant":
        raise SkipRow("bad_message", f"{field!r} does not end with an assistant message")
    return msgs[:-1], msgs[-1]["content"]


def parse_ultrafeedback(row: Mapping[str, Any], source: str = "ultrafeedback") -> PreferencePair:
    chosen = check_messages(_field(row, "chosen"), "chosen")
    rejected = check_messages(_field(row, "rejected"), "rejected")
    pc, c = _split_conversation(chosen, "chosen")
    pr, r = _split_conversation(rejected, "rejected")
    if pc != pr:
        raise SkipRow(
            "prompt_mismatch",
            "chosen and rejected conversations differ before the last assistant turn",
        )
    if not pc:
        # Some exports keep the prompt only in the "prompt" column.
        pc = ({"role": "user", "content": check_text(_field(row, "prompt"), "prompt")},)
    pid = row.get("prompt_id")
    return make_pair(source, pc, c, r, source_id=str(pid)[:16] if pid else None)


# ------------------------------------------------------------------- generic (JSONL / Parquet)
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
AB_COLUMNS = ("prompt", "response_a", "response_b", "label")
_LABEL_A = (0, "0", "a", "A", "response_a")
_LABEL_B = (1, "1", "b", "B", "response_b")


def resolve_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Mapping from our field names to the file's column names.

    Either prompt/chosen/rejected, or prompt/response_a/response_b/label (label = which response
    the human preferred: 0/'a' or 1/'b'); 'id' and 'system' are optional extras."""
    columns = dict(columns or {})
    names = set(columns)
    if names & {"response_a", "response_b", "label"}:
        need = AB_COLUMNS
    else:
        need = PAIR_COLUMNS
    allowed = set(need) | {"id", "system"}
    unknown = names - allowed
    if unknown:
        raise ValueError(
            f"unknown column mapping keys {sorted(unknown)}; expected {sorted(allowed)}"
        )
    out = {k: k for k in need}
    out.update(columns)
    return out


def _response(value: Any, field: str) -> tuple[tuple | None, str]:
    """A response column: plain text, or a conversation whose last message is the response."""
    if isinstance(value, (list, tuple)):
        msgs = check_messages(value, field)
        head, text = _split_conversation(msgs, field)
        return (head or None), text
    return None, check_text(value, field)


def parse_generic(
    row: Mapping[str, Any], columns: Mapping[str, str], source: str = "jsonl"
) -> PreferencePair:
    cols = resolve_columns(columns)
    prompt_val = _field(row, cols["prompt"])
    if isinstance(prompt_val, (list, tuple)):
        prompt = check_messages(prompt_val, cols["prompt"])
    else:
        prompt = ({"role": "user", "content": check_text(prompt_val, cols["prompt"])},)
    if "system" in cols and row.get(cols["system"]):
        prompt = (
            {"role": "system", "content": check_text(row[cols["system"]], cols["system"])},
        ) + tuple(prompt)
    if "label" in cols:
        a = _response(_field(row, cols["response_a"]), cols["response_a"])[1]
        b = _response(_field(row, cols["response_b"]), cols["response_b"])[1]
        label = _field(row, cols["label"])
        if isinstance(label, bool):
            raise SkipRow("bad_label", f"label is {label!r}, expected 0/1 or 'a'/'b'")
        if label in _LABEL_A:
            chosen, rejected = a, b
        elif label in _LABEL_B:
            chosen, rejected = b, a
        else:
            raise SkipRow("bad_label", f"label is {label!r}, expected 0/1 or 'a'/'b'")
    else:
        head_c, chosen = _response(_field(row, cols["chosen"]), cols["chosen"])
        head_r, rejected = _response(_field(row, cols["rejected"]), cols["rejected"])
        # Conversations in the response columns must continue the given prompt, not a new one.
        for head, name in ((head_c, "chosen"), (head_r, "rejected")):
            if head is not None and tuple(head) != tuple(prompt):
                raise SkipRow(
                    "prompt_mismatch", f"{name!r} conversation does not start with the prompt"
                )
    pair_id = None
    if "id" in cols and row.get(cols["id"]) not in (None, ""):
        pair_id = f"{source}:{row[cols['id']]}"
    return make_pair(source, prompt, chosen, rejected, pair_id=pair_id)


# ------------------------------------------------------------------- TRL's preference layouts
def _common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _implicit_text_prompt(chosen: str, rejected: str) -> tuple[tuple, str, str]:
    """Standard layout without a prompt: the prompt is the text both responses start with, cut
    back to its last whitespace so that no word is split between prompt and response."""
    n = _common_prefix(chosen, rejected)
    cut = max(chosen.rfind(" ", 0, n), chosen.rfind("\n", 0, n))
    prompt = chosen[:cut].strip() if cut > 0 else ""
    if not prompt:
        raise SkipRow("no_prompt", "no 'prompt' and chosen and rejected share no leading text")
    return ({"role": "user", "content": prompt},), chosen[cut:].strip(), rejected[cut:].strip()


def _implicit_conversation_prompt(chosen: tuple, rejected: tuple) -> tuple[tuple, str, str]:
    """Conversational layout without a prompt: the messages both conversations share, then one
    differing assistant message each."""
    n = _common_prefix(chosen, rejected)
    if len(chosen) != n + 1 or len(rejected) != n + 1:
        raise SkipRow("prompt_mismatch", "chosen and rejected differ before their last message")
    for msgs, field in ((chosen, "chosen"), (rejected, "rejected")):
        if msgs[-1]["role"] != "assistant":
            raise SkipRow("bad_message", f"{field!r} does not end with an assistant message")
    return chosen[:n], chosen[-1]["content"], rejected[-1]["content"]


def parse_trl(
    row: Mapping[str, Any], columns: Mapping[str, str] | None, source: str = "trl"
) -> PreferencePair:
    """TRL's preference datasets, told apart per row: standard (strings) or conversational
    (lists of {"role", "content"} messages), each with an explicit prompt or an implicit one
    (no prompt column: the shared start of chosen and rejected is the prompt). `columns` may
    rename prompt, chosen and rejected and add id and system, as for the generic formats."""
    cols = resolve_columns(columns)
    if isinstance(row, Mapping) and row.get(cols["prompt"]) is not None:
        return parse_generic(row, cols, source=source)
    chosen, rejected = _field(row, cols["chosen"]), _field(row, cols["rejected"])
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt, c, r = _implicit_text_prompt(check_text(chosen, cols["chosen"]),
                                             check_text(rejected, cols["rejected"]))
    elif isinstance(chosen, (list, tuple)) and isinstance(rejected, (list, tuple)):
        prompt, c, r = _implicit_conversation_prompt(check_messages(chosen, cols["chosen"]),
                                                     check_messages(rejected, cols["rejected"]))
    else:
        raise SkipRow("wrong_type", "chosen and rejected must both be strings or both be "
                                    "lists of messages")
    if "system" in cols and row.get(cols["system"]):
        prompt = ({"role": "system",
                   "content": check_text(row[cols["system"]], cols["system"])},) + tuple(prompt)
    pair_id = None
    if "id" in cols and row.get(cols["id"]) not in (None, ""):
        pair_id = f"{source}:{row[cols['id']]}"
    return make_pair(source, prompt, c, r, pair_id=pair_id)


PARSERS: dict[str, Callable[..., PreferencePair]] = {
    "hh_rlhf": parse_hh_rlhf,
    "tldr": parse_tldr,
    "ultrafeedback": parse_ultrafeedback,
}
