"""Preference data: readers for published schemas, splits, tokenisation, batching, TFDS, grain.

Importing this package pulls in only numpy; grain (loader.py) and tensorflow-datasets
(tfds_builder.py) load only when those modules are imported. See docs/data.md.
"""

from cwpo_jax.data.records import (
    BadFileError,
    BadRowError,
    PreferencePair,
    ReadReport,
    SkipRow,
    content_id,
)
from cwpo_jax.data.readers import (
    FORMATS,
    HUB_DATASETS,
    load_preferences,
    read_preferences,
    write_preferences,
)
from cwpo_jax.data.splits import Splits, split_pairs
from cwpo_jax.data.tokenize import PairTokenizer, TokenizedPair, TokenizedSequence
from cwpo_jax.data.batching import (
    collate_packed_pairs,
    collate_packed_sequences,
    collate_pairs,
    collate_prompts,
    collate_sequences,
    default_buckets,
    pack_rows,
    padding_share,
    pair_sequences,
    plan_batches,
    shared_prefix,
)

__all__ = [
    "BadFileError",
    "BadRowError",
    "PreferencePair",
    "ReadReport",
    "SkipRow",
    "content_id",
    "FORMATS",
    "HUB_DATASETS",
    "load_preferences",
    "read_preferences",
    "write_preferences",
    "Splits",
    "split_pairs",
    "PairTokenizer",
    "TokenizedPair",
    "TokenizedSequence",
    "collate_packed_pairs",
    "collate_packed_sequences",
    "collate_pairs",
    "collate_prompts",
    "collate_sequences",
    "default_buckets",
    "pack_rows",
    "padding_share",
    "pair_sequences",
    "plan_batches",
    "shared_prefix",
]
