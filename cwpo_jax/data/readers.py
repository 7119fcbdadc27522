"""read_preferences: local files, the Hugging Face hub or TFDS -> PreferencePair, with a report.

Containers (by file name): .jsonl / .json (JSON lines, or one JSON array), optionally .gz, and
.parquet. Schemas (by `format`): hh_rlhf, tldr, ultrafeedback, jsonl / parquet (generic, with a
column mapping), trl (TRL's standard and conversational preference layouts, explicit or implicit
prompt) and pairs (our own PreferencePair JSON lines, see write_preferences).
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import re
import zlib
from typing import Any, Iterable, Iterator, Mapping

from cwpo_jax.data import schemas
from cwpo_jax.data.records import (
    BadFileError,
    BadRowError,
    PreferencePair,
    ReadReport,
    SkipRow,
    check_messages,
    check_text,
    make_pair,
)

log = logging.getLogger(__name__)

FORMATS = ("hh_rlhf", "tldr", "ultrafeedback", "jsonl", "parquet", "trl", "pairs")
COLUMN_FORMATS = ("jsonl", "parquet", "trl")  # the formats that take a column mapping
_EXTS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


# ----------------------------------------------------------------------------- containers
def _is_data_file(name: str) -> bool:
    return name.endswith(_EXTS)


def _loads(text: str | bytes) -> Any:
    """json.loads, with every way a line can fail to parse as a ValueError: malformed JSON,
    integers over Python's digit limit, nesting deeper than the recursion limit."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _iter_json_lines(path: str) -> Iterator[tuple[str, Any]]:
    """(where, row) per non-blank line; row is a SkipRow for undecodable or malformed lines.
    Streams line by line; a file whose first non-blank byte is '[' is read as one JSON array.
    A file that cannot be read at all (corrupt or truncated gzip) raises BadFileError."""
    try:
        yield from _json_rows(path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise BadFileError(f"{path}: cannot read the file ({type(e).__name__}: {e})") from None


def _json_rows(path: str) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(4096).lstrip()
        while not head:  # leading blank space longer than one read
            chunk = f.read(4096)
            if not chunk:
                return
            head = chunk.lstrip()
        f.seek(0)
        if head[:1] == b"[":
            try:
                rows = _loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                yield f"{path}", SkipRow("malformed_json", str(e))
                return
            for i, row in enumerate(rows):
                yield f"{path} item {i}", row
            return
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue  # blank lines carry no row
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, SkipRow("undecodable_text", str(e))
                continue
            try:
                yield where, _loads(text)
            except json.JSONDecodeError as e:
                yield where, SkipRow("malformed_json", f"{e.msg} (column {e.colno})")
            except ValueError as e:
                yield where, SkipRow("malformed_json", str(e)[:200])


def _iter_parquet(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq  # optional dependency, only for parquet files

    i = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                i += 1
                yield f"{path} row {i}", row
    except (pa.ArrowException, OSError) as e:  # not parquet, truncated, corrupt pages
        raise BadFileError(
            f"{path}: cannot read the parquet file after {i} rows ({type(e).__name__}: {e})"
        ) from None


def iter_rows(path: str) -> Iterator[tuple[str, Any]]:
    if path.endswith(".parquet"):
        return _iter_parquet(path)
    return _iter_json_lines(path)


def split_matches(relpath: str, split: str) -> bool:
    """Whether a file belongs to `split`: a folder named like the split, or a file name whose
    stem up to the first '-' or '.' is the split (train.jsonl.gz, train_prefs-00000-of-1.parquet,
    comparisons/train/0000.parquet)."""
    parts = relpath.replace("\\", "/").split("/")
    if split in parts[:-1]:
        return True
    return re.split(r"[-.]", parts[-1], maxsplit=1)[0] == split


def local_files(path: str, split: str | None) -> list[str]:
    """Data files for a file, a folder (recursively) or a glob pattern, sorted for determinism."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        found = []
        for root, _, names in os.walk(path):
            found += [os.path.join(root, n) for n in names if _is_data_file(n)]
        if split is not None:
            found = [f for f in found if split_matches(os.path.relpath(f, path), split)]
    else:
        found = [f for f in glob.glob(path, recursive=True) if _is_data_file(f)]
    if not found:
        raise FileNotFoundError(
            f"no data files at {path!r}" + (f" for split {split!r}" if split else "")
        )
    return sorted(found)


# ----------------------------------------------------------------------------- hub and TFDS
def _hub_list(repo_id: str, revision: str | None) -> list[str]:
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision)


def _hub_download(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision)


# Where the paper's datasets live on the hub. summarize_from_feedback is a script dataset; its
# parquet conversion keeps the comparison rows in the published schema.
HUB_DATASETS = {
    "hh_rlhf": "hf:Anthropic/hh-rlhf",
    "tldr": "hf:openai/summarize_from_feedback/comparisons@refs/convert/parquet",
    "ultrafeedback": "hf:HuggingFaceH4/ultrafeedback_binarized",
}


def parse_hub_name(name: str) -> tuple[str, str, str | None]:
    """'hf:owner/repo[/sub/folder][@revision]' -> (repo_id, subfolder, revision)."""
    spec = name[3:] if name.startswith("hf:") else name
    revision = None
    if "@" in spec:
        spec, revision = spec.split("@", 1)
    parts = spec.strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"hub dataset {name!r} must look like 'hf:owner/name[/folder][@revision]'")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def _hub_cached_snapshot(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True)


def hub_files(name: str, split: str | None) -> list[str]:
    """Downloads (or finds in the HF cache) the data files of a hub dataset split. Offline, a
    snapshot already in the HF cache serves instead."""
    repo_id, sub, revision = parse_hub_name(name)
    try:
        listing = _hub_list(repo_id, revision)
        fetch = lambda f: _hub_download(repo_id, f, revision)
    except Exception as online_error:  # no network, or HF_HUB_OFFLINE=1
        try:
            root = _hub_cached_snapshot(repo_id, revision)
        except Exception:
            raise FileNotFoundError(
                f"hub dataset {name!r}: cannot list it ({online_error}) and no "
                "snapshot is in the local HF cache"
            ) from online_error
        listing = sorted(
            os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
            for d, _, names in os.walk(root)
            for n in names
        )
        fetch = lambda f: os.path.join(root, f)
    chosen = []
    for f in listing:
        if sub and not f.startswith(sub.rstrip("/") + "/"):
            continue
        rel = f[len(sub) + 1 :] if sub else f
        if _is_data_file(f) and (split is None or split_matches(rel, split)):
            chosen.append(f)
    if not chosen:
        raise FileNotFoundError(f"hub dataset {name!r} has no data files for split {split!r}")
    return [fetch(f) for f in sorted(chosen)]


def _to_str(x: Any) -> Any:
    """TFDS data sources return bytes for Text features; decode them (undecodable -> left as
    bytes, which check_text then reports)."""
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            return x
    if isinstance(x, Mapping):
        return {k: _to_str(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_str(v) for v in x]
    if hasattr(x, "tolist"):  # numpy arrays of bytes / numbers
        return _to_str(x.tolist())
    return x


def tfds_rows(
    name: str, split: str | None, data_dir: str | None = None
) -> Iterator[tuple[str, Any]]:
    """Rows of a TFDS dataset through tfds.data_source (array_record, no TensorFlow)."""
    import tensorflow_datasets as tfds

    spec = name[5:] if name.startswith("tfds:") else name
    source = tfds.data_source(spec, split=split or "train", data_dir=data_dir)
    for i in range(len(source)):
        yield f"tfds:{spec}[{split}] record {i}", _to_str(source[i])


# ----------------------------------------------------------------------------- parsing
def parse_pair_record(row: Mapping[str, Any]) -> PreferencePair:
    """Our own schema: {"id", "prompt": [messages] or prompt_roles/prompt_contents, "chosen",
    "rejected", "source"} (JSON lines from write_preferences, or TFDS records)."""
    if not isinstance(row, Mapping):
        raise SkipRow("wrong_type", "row is not an object")
    for k in ("id", "chosen", "rejected", "source"):
        if row.get(k) is None:
            raise SkipRow("missing_field", f"no {k!r}")
    if "prompt" in row:
        prompt = check_messages(row["prompt"], "prompt")
    elif "prompt_roles" in row and "prompt_contents" in row:
        roles, contents = row["prompt_roles"], row["prompt_contents"]
        if not isinstance(roles, (list, tuple)) or not isinstance(contents, (list, tuple)):
            raise SkipRow("wrong_type", "prompt_roles / prompt_contents are not lists")
        if len(roles) != len(contents):
            raise SkipRow("bad_message", "prompt_roles and prompt_contents differ in length")
        prompt = check_messages(
            [
                {"role": r, "content": c}
                for r, c in zip(roles, contents)
            ],
            "prompt",
        )
    else:
        raise SkipRow("missing_field", "no 'prompt'")
    # The checks every reader applies (non-empty prompt ending with a user turn, non-empty and
    # different responses): a hand-edited or foreign pairs file gets no free pass.
    return make_pair(
        check_text(row["source"], "source"),
        prompt,
        check_text(row["chosen"], "chosen"),
        check_text(row["rejected"], "rejected"),
        pair_id=check_text(row["id"], "id"),
    )


def check_format(format: str, columns: Mapping[str, str] | None) -> None:
    """ValueError (one line) for an unknown format or a column mapping it cannot take."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    if not columns:
        return
    if format not in COLUMN_FORMATS:
        raise ValueError(f"a column mapping applies to the formats {COLUMN_FORMATS}, not "
                         f"{format!r}")
    if format == "trl" and set(columns) & {"response_a", "response_b", "label"}:
        raise ValueError("format 'trl' takes prompt/chosen/rejected columns, not "
                         "response_a/response_b/label")
    schemas.resolve_columns(columns)


def _parser(format: str, columns: Mapping[str, str] | None, source: str | None):
    check_format(format, columns)  # fail on a bad mapping before reading anything
    if format == "pairs":
        return parse_pair_record
    if format == "trl":
        return lambda row: schemas.parse_trl(row, columns, source=source or format)
    if format in ("jsonl", "parquet"):
        src = source or format
        return lambda row: schemas.parse_generic(row, columns, source=src)
    fn = schemas.PARSERS[format]
    return lambda row: fn(row, source=source or format)


def _rows_for(
    path_or_name: str, split: str | None, data_dir: str | None
) -> Iterator[tuple[str, Any]]:
    if path_or_name.startswith("tfds:"):
        yield from tfds_rows(path_or_name, split, data_dir)
        return
    if os.path.exists(path_or_name) or glob.has_magic(path_or_name):
        files = local_files(path_or_name, split)
    elif path_or_name.startswith("hf:"):
        files = hub_files(path_or_name, split)
    elif path_or_name in HUB_DATASETS:  # "hh_rlhf", "tldr", "ultrafeedback": the paper's data
        files = hub_files(HUB_DATASETS[path_or_name], split)
    else:
        raise FileNotFoundError(
            f"{path_or_name!r} is not a local file, folder or glob; use "
            "'hf:owner/name' for a hub dataset or 'tfds:name' for TFDS"
        )
    for f in files:
        yield from iter_rows(f)


def read_preferences(
    path_or_name: str,
    *,
    format: str,
    split: str | None = None,
    strict: bool = False,
    columns: Mapping[str, str] | None = None,
    report: ReadReport | None = None,
    source: str | None = None,
    data_dir: str | None = None,
) -> Iterator[PreferencePair]:
    """Yields PreferencePair from a local file/folder/glob, 'hf:owner/name[/folder][@rev]',
    'tfds:name[/config]' (data_dir: the TFDS data dir), or a short name of the paper's hub
    datasets (HUB_DATASETS: hh_rlhf, tldr, ultrafeedback).

    format:  hh_rlhf | tldr | ultrafeedback | jsonl | parquet | trl | pairs
    split:   for folders and hub datasets, selects files by split name; for TL;DR rows that carry
             a 'split' field, also selects rows.
    strict:  raise BadRowError (file, line, reason) on the first bad row instead of skipping.
    columns: jsonl, parquet and trl only, e.g. {"prompt": "question", "chosen": "good",
             "rejected": "bad"} or (not trl) {"prompt": ..., "response_a": ..., "response_b":
             ..., "label": ...}; optional "id" and "system".
    report:  a ReadReport that counts kept and skipped rows per reason. Without one, skips are
             logged as a warning when the generator finishes.
    source:  label stored in PreferencePair.source (default: the format name).
    Exact duplicate rows (same id) are skipped as 'duplicate'.
    Arguments are checked when called, before the first row is read.
    """
    parse = _parser(format, columns, source)
    own_report = report is None
    return _read(
        path_or_name,
        format,
        split,
        strict,
        parse,
        ReadReport() if own_report else report,
        own_report,
        data_dir,
    )


def _read(
    path_or_name, format, split, strict, parse, report, own_report, data_dir
) -> Iterator[PreferencePair]:
    seen: set[str] = set()
    for where, row in _rows_for(path_or_name, split, data_dir):
        try:
            if isinstance(row, SkipRow):
                raise row
            if (
                format == "tldr"
                and split is not None
                and isinstance(row, Mapping)
                and isinstance(row.get("split"), str)
                and row["split"] != split
            ):
                raise SkipRow("other_split", f"row split {row['split']!r}")
            pair = parse(row)
            if pair.id in seen:
                raise SkipRow("duplicate", f"id {pair.id}")
            seen.add(pair.id)
        except SkipRow as e:
            if strict:
                raise BadRowError(where, e.reason, e.detail) from None
            report.skip(where, e.reason, e.detail)
            continue
        report.ok()
        yield pair
    if own_report and report.n_skipped:
        log.warning("read_preferences(%r): %s", path_or_name, report)


def write_preferences(pairs: Iterable[PreferencePair], path: str) -> int:
    """Writes pairs as JSON lines (format='pairs'); returns the count. Stages hand data on
    through such files."""
    from cwpo_jax.io_utils import atomic_open  # stdlib only

    n = 0
    # Temp file + rename: a crash never leaves a half-written file under the final name.
    with atomic_open(path, "wb") as raw:
        if path.endswith(".gz"):
            f = gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0)
        else:
            f = raw
        for p in pairs:
            f.write((json.dumps(p.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))
            n += 1
        if f is not raw:
            f.close()  # writes the gzip trailer; leaves `raw` open for atomic_open
    return n


def load_preferences(path_or_name: str, **kwargs) -> tuple[list[PreferencePair], ReadReport]:
    """read_preferences into a list, returning the report alongside."""
    report = kwargs.pop("report", None) or ReadReport()
    return list(read_preferences(path_or_name, report=report, **kwargs)), report
