"""Preference data: readers for published schemas, splits, tokenisation, batching, TFDS, grain.

Importing this package pulls in only numpy; tokenizers, grain and tensorflow-datasets load in the
modules that need them.
"""
from cwpo_jax.data.records import (BadRowError, PreferencePair, ReadReport, SkipRow,
                                   content_id)
from cwpo_jax.data.readers import (FORMATS, HUB_DATASETS, load_preferences, read_preferences,
                                   write_preferences)
