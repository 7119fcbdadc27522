"""A TFDS builder that stores PreferencePair splits as array_record shards.

Written and read without TensorFlow: `build_tfds` writes, and `tfds.data_source`,
`open_tfds` or `read_preferences("tfds:cwpo_preferences/<config>", format="pairs",
data_dir=...)` read random-access records that grain can index directly.
Records keep the split's list order (shuffling on write is off), so a record's position is the
pair's position in the list that was written.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import tensorflow_datasets as tfds
from etils import epath

from cwpo_jax.data.readers import _to_str, parse_pair_record
from cwpo_jax.data.records import PreferencePair, SkipRow

CONFIGS = ("hh_rlhf", "tldr", "ultrafeedback", "custom")


class CwpoPreferences(tfds.core.GeneratorBasedBuilder):
    """Preference pairs (id, prompt messages, chosen, rejected, source) per split.

    The prompt is stored as two parallel string sequences (roles, contents): flat features that
    the array_record example format encodes without TensorFlow.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "PreferencePair records."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in CONFIGS]

    # TFDS derives the builder's source path through importlib_resources, a backport that is not
    # installed on Python >= 3.9; the path only locates a checksums file, which we have none of.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(self, *, splits: Mapping[str, Iterable[PreferencePair]] | None = None, **kwargs):
        self._splits_to_write = splits
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Preference pairs in the cwpo_jax PreferencePair schema.",
            features=tfds.features.FeaturesDict(
                {
                    "id": text,
                    "prompt_roles": tfds.features.Sequence(text),
                    "prompt_contents": tfds.features.Sequence(text),
                    "chosen": text,
                    "rejected": text,
                    "source": text,
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        if self._splits_to_write is None:
            raise ValueError(
                "CwpoPreferences is built from pairs: use build_tfds(splits, data_dir)"
            )
        return {
            name: self._generate_examples(pairs) for name, pairs in self._splits_to_write.items()
        }

    def _generate_examples(self, pairs: Iterable[PreferencePair]):
        for p in pairs:
            yield (
                p.id,
                {
                    "id": p.id,
                    "prompt_roles": [m["role"] for m in p.prompt],
                    "prompt_contents": [m["content"] for m in p.prompt],
                    "chosen": p.chosen,
                    "rejected": p.rejected,
                    "source": p.source,
                },
            )


def build_tfds(
    splits: Mapping[str, Sequence[PreferencePair]], data_dir: str, *, config: str = "custom"
) -> str:
    """Writes the splits as array_record shards; returns the dataset folder.

    Writing into an existing, complete version folder is a no-op (TFDS reuses it): use a new
    data_dir or delete the folder to rewrite."""
    builder = CwpoPreferences(
        splits={k: list(v) for k, v in splits.items()},
        data_dir=data_dir,
        config=config,
        file_format="array_record",
    )
    builder.download_and_prepare()
    return str(builder.data_dir)


class PairSource:
    """Random-access PreferencePair view of one split (len / getitem), decoding lazily."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> PreferencePair:
        try:
            return parse_pair_record(_to_str(self._source[i]))
        except SkipRow as e:  # written by build_tfds, so a bad record means a damaged file
            raise ValueError(f"record {i}: {e}") from None


def open_tfds(dataset_dir: str, split: str) -> PairSource:
    """Opens a split written by build_tfds (the folder it returned) without TensorFlow."""
    builder = tfds.builder_from_directory(dataset_dir)
    return PairSource(builder.as_data_source(split=split))
