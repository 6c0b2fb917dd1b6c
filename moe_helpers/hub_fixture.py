"""A folder laid out like the hub's TinyStories download, filled with generated stories.

``hf download --repo-type dataset roneneldan/TinyStories --local-dir DIR``
leaves the stories in parquet shards with one ``text`` column::

    DIR/data/train-00000-of-00004-2d5a1467fff1081b.parquet
    DIR/data/validation-00000-of-00001-869c898b519ad725.parquet

``write_hub_shaped_dir`` writes the same layout with as many stories as asked, in
seconds and without a network, so the tests, ``benchmarks/data_prep.py`` and a
teacher trying a classroom set-up can run the real code path on a corpus of
TinyStories' size.  Each story is a random sequence of sentences from the offline
corpus (``story_grammar``'s first stories): TinyStories-like in length (17-27 sentences,
about 180 words or 0.95 kB on average, 90% of them 133-232 words) and all
distinct, but meaningless as stories -- good for measuring the data pipeline,
useless for judging a model.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import story_grammar

SENTENCES_PER_STORY = (17, 28)     # 17..27 sentences of ~8.2 words: ~180 words a story
STORIES_PER_ROW_GROUP = 10_000     # parquet row groups: what a streaming reader holds at a time
SENTENCE_END = re.compile(r"(?<=[.!?\"])\s+")
SOURCE_STORIES = 2_500             # grammar stories whose sentences are shuffled (~1 s to draw)


@lru_cache(maxsize=1)
def offline_sentences() -> tuple[str, ...]:
    """The distinct sentences of the offline corpus's first stories, sorted so that every machine agrees."""
    sentences = set()
    for story in story_grammar.stories("train", SOURCE_STORIES):
        sentences.update(part.strip() for part in SENTENCE_END.split(story.replace("\n", " ")) if part.strip())
    return tuple(sorted(sentences))


def generated_stories(count: int, rng: np.random.Generator, seen: set[bytes]) -> list[str]:
    """``count`` new stories, none of them already in ``seen`` (a set of digests it extends)."""
    sentences = offline_sentences()
    stories = []
    while len(stories) < count:
        length = int(rng.integers(*SENTENCES_PER_STORY))
        story = " ".join([sentences[i] for i in rng.integers(0, len(sentences), length)])
        digest = hashlib.blake2b(story.encode("utf-8"), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            stories.append(story)
    return stories


def _shard_names(split: str, shards: int, seed: int) -> list[str]:
    """Names like the hub's: ``train-00000-of-00002-<16 hex digits>.parquet``."""
    return [f"{split}-{index:05d}-of-{shards:05d}-"
            f"{hashlib.blake2b(f'{split}{index}{seed}'.encode(), digest_size=8).hexdigest()}.parquet"
            for index in range(shards)]


def _write_shard(path: Path, count: int, rng: np.random.Generator, seen: set[bytes]) -> None:
    """One parquet file of ``count`` stories in row groups, so memory holds one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, STORIES_PER_ROW_GROUP):
            stories = generated_stories(min(STORIES_PER_ROW_GROUP, count - start), rng, seen)
            writer.write_table(pa.table({"text": stories}, schema=schema))


def write_hub_shaped_dir(path, train_stories: int = 100_000, val_stories: int = 5_000, seed: int = 0,
                         train_shards: int = 2) -> Path:
    """Write ``path/data/{train,validation}-*.parquet`` as the hub's TinyStories download does.

    ``train_stories`` are spread over ``train_shards`` files, ``val_stories`` go in one
    validation file; no story appears twice in the folder.  The same arguments always
    write the same stories.  100 k stories take a few seconds and ~40 MB of disk.
    """
    for name, value in (("train_stories", train_stories), ("val_stories", val_stories),
                        ("train_shards", train_shards)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if train_shards > train_stories:
        raise ValueError(f"train_shards ({train_shards}) cannot exceed train_stories ({train_stories})")
    folder = Path(path) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rng, seen = np.random.default_rng(seed), set()
    per_shard = [train_stories // train_shards + (index < train_stories % train_shards)
                 for index in range(train_shards)]
    for name, count in zip(_shard_names("train", train_shards, seed), per_shard):
        _write_shard(folder / name, count, rng, seen)
    _write_shard(folder / _shard_names("validation", 1, seed)[0], val_stories, rng, seen)
    return Path(path)
