"""TinyStories: where stories come from, the BPE tokenizer, the token cache, and batches.

Sources, chosen with ``source=``:

* ``"hub"``      -- ``roneneldan/TinyStories`` (Eldan & Li 2023), *streamed*: only the
                   stories a budget asks for are fetched (the whole ~2.1 M-story split
                   only when the budget is None);
* a folder       -- laid out like the hub's download (``data/train-*.parquet`` and
                   ``data/validation-*.parquet``, column ``text``), as
                   ``hf download --repo-type dataset roneneldan/TinyStories
                   --local-dir DIR`` leaves it; read by the same code as the hub;
* a file         -- one TinyStories file: ``.txt`` with ``<|endoftext|>`` between
                   stories, ``.jsonl`` / ``.json`` with a ``text`` field, or ``.parquet``;
                   its last ``val_fraction`` of stories is held out for validation;
* ``"offline"``  -- a generated stand-in shipped with the package: stories drawn from a
                   grammar of children's stories (``story_grammar``), as many as the budget
                   asks for (a budget of None stops at ``OFFLINE_UNBUDGETED_STORIES``);
* ``"auto"``     -- the folder or file named by ``$MOE_COURSE_DATA`` if set (a classroom
                   points everyone at one shared download), else the hub when it
                   answers within a few seconds, else offline.  One line says which.

``prepare_data`` works the way nanoGPT prepares OpenWebText (``data/openwebtext/
prepare.py``): the stories of a split are tokenized once with ``datasets.map(batched=True,
num_proc=N)`` and written to a file of ``uint16`` token ids in the cache folder
(``$MOE_COURSE_CACHE`` or ``~/.cache/moe-course``).  Training reads random windows
straight from that file through a NumPy memmap, so memory stays small however many
stories there are, and every later call with the same arguments -- in this notebook,
the next one, or the command line -- only opens the file.  ``prepare_preset_data``
takes the vocabulary and the story budget from a preset, so that notebooks, widgets
and the command line share one tokenizer and one set of token files.

A cache entry is named by what made it, known before reading any story: the source's
identity (hub name; a folder's or file's path with its files' sizes and modification
times; the offline grammar's source code), the split, the story budget and the
tokenizer's settings.  Files are written to a temporary name and renamed, so a crash
or two processes preparing the same data at once never leave half a file; a file that
is damaged anyway (wrong size, wrong content hash, unreadable metadata, another
tokenizer) is noticed when it is opened and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from . import story_grammar
from .story_grammar import NOTICE as OFFLINE_NOTICE

EOT = "<|endoftext|>"
HUB_DATASET = "roneneldan/TinyStories"
HUB_PROBE_URL = "https://huggingface.co/api/datasets/roneneldan/TinyStories"
HUB_SHARDS = {"train": "data/train-*.parquet", "validation": "data/validation-*.parquet"}
DATA_ENV_VAR = "MOE_COURSE_DATA"
LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLITS = {"train": "train", "validation": "validation", "val": "validation"}
TOKEN_CACHE_VERSION = 1           # part of every cache key: bump it when the file layout changes
STORIES_PER_CHUNK = 20_000        # stories tokenized at a time: ~20 MB of text bounds the memory
PARALLEL_FROM_STORIES = 20_000    # chunks this large are tokenized by several processes
MAX_WORKERS = 8
WORKDIR_PREFIX = "prepare-"       # temporary folders inside the cache, one per preparation
STALE_WORKDIR_HOURS = 12.0        # such a folder this old was left by a killed process
# The offline grammar has no end: a budget of None (the whole split) draws this many stories.
OFFLINE_UNBUDGETED_STORIES = {"train": 200_000, "validation": 10_000}


def cache_dir() -> Path:
    """Where tokenizers and token files are cached: ``$MOE_COURSE_CACHE`` or ``~/.cache/moe-course``."""
    default = Path.home() / ".cache" / "moe-course"
    path = Path(os.environ.get("MOE_COURSE_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------- sources
def hub_is_reachable(timeout: float = 2.0) -> bool:
    """One short probe of the Hugging Face hub; never waits longer than ``timeout``.

    Honours ``HF_HUB_OFFLINE`` and ``HF_DATASETS_OFFLINE``.  The probe runs in
    a daemon thread so that a slow DNS lookup cannot hold the caller up.
    """
    if any(os.environ.get(flag, "0").lower() in ("1", "true", "yes")
           for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    answer = []

    def probe():
        try:
            with urllib.request.urlopen(HUB_PROBE_URL, timeout=timeout) as response:
                answer.append(response.status == 200)
        except Exception:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def resolve_source(source, verbose: bool = True):
    """Turn ``"auto"`` into ``$MOE_COURSE_DATA``, ``"hub"`` or ``"offline"`` (printing one line).

    Other sources pass through unchanged.
    """
    if source != "auto":
        return source
    shared = os.environ.get(DATA_ENV_VAR, "").strip()
    if shared:
        if not Path(shared).expanduser().exists():
            raise FileNotFoundError(f"${DATA_ENV_VAR} names {shared}, which does not exist; point it at a "
                                    "folder laid out like the hub's TinyStories or at a TinyStories file")
        if verbose:
            print(f"Data: TinyStories from ${DATA_ENV_VAR} = {shared}")
        return shared
    source = "hub" if hub_is_reachable() else "offline"
    if verbose:
        print("Data: TinyStories from the Hugging Face hub" if source == "hub"
              else f"Data: hub unreachable, using the offline corpus ({OFFLINE_NOTICE})")
    return source


def _split_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _clean(stories: Iterable[str]) -> Iterator[str]:
    """Stories without surrounding white space; empty ones dropped."""
    for story in stories:
        if story and story.strip():
            yield story.strip()


def hub_shaped_shards(folder) -> dict[str, list[Path]]:
    """The parquet shards of a folder laid out like the hub's TinyStories, per split.

    ``ValueError`` saying what layout is expected when either split has no shard.
    Anything else in the folder (the download's big ``.txt`` files) is ignored.
    """
    folder = Path(folder)
    shards = {split: sorted(folder.glob(pattern)) for split, pattern in HUB_SHARDS.items()}
    if not all(shards.values()):
        found = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())[:8]
        raise ValueError(
            f"{folder} is not laid out like the hub's TinyStories: expected parquet shards "
            f"{HUB_SHARDS['train']} and {HUB_SHARDS['validation']} with a 'text' column, as "
            f"`hf download --repo-type dataset {HUB_DATASET} --local-dir {folder}` leaves "
            f"them; found {found or 'no files'}")
    return shards


@dataclass(frozen=True)
class StorySource:
    """Where stories come from, and what names them in the cache.

    ``identity`` is known without reading a single story, so a cached result is
    found without touching the data: the hub's dataset name, a folder's or file's
    resolved path with the names, sizes and modification times of its files, or
    a hash of the offline grammar's source code.
    """

    kind: str        # "hub", "folder", "file" or "offline"
    location: str    # HUB_DATASET, a resolved path, or "offline"
    identity: str
    name: str        # what the caller called it ("hub", "offline", or the path as given)

    @property
    def slug(self) -> str:
        """A short, file-name-safe label for the cache files."""
        label = {"hub": "tinystories-hub", "offline": "offline"}.get(self.kind) or Path(self.location).stem
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:40] or "stories"


def _file_identity(paths: list[Path]) -> list[tuple[str, int, int]]:
    return [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in paths]


def describe_source(source, verbose: bool = True) -> StorySource:
    """A ``StorySource`` for ``"auto"``, ``"hub"``, ``"offline"``, a folder or a file.

    ``"auto"`` prints one line saying which source it chose.  A folder must be
    hub-shaped (``ValueError`` otherwise); a file must exist and have an accepted
    extension.
    """
    given = resolve_source(source, verbose)
    if given == "hub":
        return StorySource("hub", HUB_DATASET, f"hub:{HUB_DATASET}", "hub")
    if given == "offline":
        version = hashlib.blake2b(Path(story_grammar.__file__).read_bytes(), digest_size=8).hexdigest()
        return StorySource("offline", "offline", f"offline:{version}", "offline")
    if not isinstance(given, (str, Path)):
        raise ValueError(f"source must be a string or a path, got {given!r}")
    path = Path(given).expanduser()
    if path.is_dir():
        shards = hub_shaped_shards(path)
        files = {split: _file_identity(paths) for split, paths in shards.items()}
        return StorySource("folder", str(path.resolve()), json.dumps([str(path.resolve()), files]), str(given))
    if path.suffix or os.sep in str(given) or "/" in str(given):
        _check_local_file(path)
        return StorySource("file", str(path.resolve()), json.dumps([str(path.resolve()), _file_identity([path])]),
                           str(given))
    raise ValueError(f"unknown data source {given!r}; choose auto, hub, offline, a folder laid out like the "
                     f"hub's TinyStories ({', '.join(HUB_SHARDS.values())}) or a file path "
                     f"({', '.join(LOCAL_FORMATS)})")


# ------------------------------------------------------------------ reading
def stream_hub_shaped(location: str, split: str) -> Iterator[str]:
    """Every story of one split of the hub's TinyStories or of a hub-shaped folder, streamed.

    The one reader of both: ``location`` is ``"roneneldan/TinyStories"`` or the
    folder.  Streaming reads the parquet shards 1000 rows at a time, so a slice
    costs what the slice holds (never the whole split), and the validation split is
    the dataset's own.
    """
    from datasets import load_dataset

    rows = load_dataset(location, data_files=HUB_SHARDS, split=split, streaming=True,
                        **parquet_streaming_options())
    for batch in rows.iter(batch_size=1000):
        yield from batch["text"]


def parquet_streaming_options() -> dict:
    """How the parquet shards are streamed: 1000 rows at a time, no whole-shard pre-buffering.

    By default pyarrow pre-buffers all the row groups of a shard it opens, so the
    reader's memory grows with the shard's size; without it, with the row group.
    """
    import pyarrow.dataset

    return {"batch_size": 1000,
            "fragment_scan_options": pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=False)}


def _check_local_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such TinyStories file or folder: {path}")
    suffix = path.suffix.lower()
    if suffix not in LOCAL_FORMATS:
        raise ValueError(f"unsupported file type {suffix!r} for {path}; "
                         f"accepted: {', '.join(LOCAL_FORMATS)}, or a folder laid out like the hub's")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty; expected stories ({', '.join(LOCAL_FORMATS)})")


@contextlib.contextmanager
def _datasets_quietly():
    """``datasets`` without its progress bars (restored afterwards): our own lines say what happens."""
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _load_local(path: Path) -> list[str]:
    """Stories from a local TinyStories file, through ``datasets``' local loaders."""
    import datasets

    _check_local_file(path)
    builder = LOCAL_FORMATS[path.suffix.lower()]
    options = {"sample_by": "document"} if builder == "text" else {}
    with _datasets_quietly():
        try:
            table = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
        except Exception as error:
            raise ValueError(f"{path} could not be read as {builder} ({type(error).__name__}); "
                             f"accepted: {', '.join(LOCAL_FORMATS)}") from error
    if "text" not in table.column_names:
        raise ValueError(f"{path} has no 'text' field (columns: {table.column_names}); "
                         "a .jsonl/.json/.parquet file needs one story per row in 'text'")
    texts = table["text"]
    if builder == "text":   # one document: split it at the separators
        texts = [story for document in texts for story in document.split(EOT)]
    stories = list(_clean(texts))
    if not stories:
        hint = f"separate stories with {EOT}" if builder == "text" else "put one story per row in 'text'"
        raise ValueError(f"{path} holds no stories; {hint}")
    return stories


def _check_count(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def _story_stream(source: StorySource, split: str) -> Iterator[str]:
    """Every story of one split of the hub, a folder or the offline corpus, lazily."""
    if source.kind in ("hub", "folder"):
        return _clean(stream_hub_shaped(source.location, split))
    if source.kind == "offline":
        return itertools.islice(story_grammar.iter_stories(split), OFFLINE_UNBUDGETED_STORIES[split])
    raise ValueError(f"{source.name} is a single file: it has no {split} split of its own")


def load_stories(source="auto", split: str = "train", limit: int | None = None,
                 verbose: bool = True) -> list[str]:
    """A list of stories from the hub, a hub-shaped folder, a local file, or the offline corpus.

    ``limit`` keeps the first ``limit`` stories; the hub and folders are streamed,
    so only those are read.  ``"auto"`` prints one line saying which source it
    used.  A local file is returned whole whatever the split (``prepare_data``
    holds part of it out).
    """
    _check_count("limit", limit)
    split = _split_name(split)
    source = describe_source(source, verbose)
    if source.kind == "file":
        return _load_local(Path(source.location))[:limit]
    return list(itertools.islice(_story_stream(source, split), limit))


# ------------------------------------------------------------------ tokenizer
class StoryTokenizer:
    """A byte-level BPE tokenizer with ``<|endoftext|>`` as its one special token."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer        # a ``tokenizers.Tokenizer``
        self.eot_id = tokenizer.token_to_id(EOT)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of token ids; ``<|endoftext|>`` is kept visible unless skipped."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def tokens(self, text: str) -> list[str]:
        """The pieces a text is cut into, as readable strings."""
        return [self.decode([token_id]) for token_id in self.encode(text)]

    def encode_batch(self, stories: list[str]) -> list[list[int]]:
        """Each story's token ids followed by ``<|endoftext|>``."""
        return [encoding.ids + [self.eot_id] for encoding in self._tokenizer.encode_batch(stories)]

    def encode_stories(self, stories: list[str]) -> list[int]:
        """All stories as one token stream, ``<|endoftext|>`` after each story."""
        return [token for ids in self.encode_batch(stories) for token in ids]

    def to_json(self) -> str:
        """The whole tokenizer as JSON text (what ``save`` writes and the cache hashes)."""
        return self._tokenizer.to_str()

    def save(self, path) -> None:
        self._tokenizer.save(str(path))

    @classmethod
    def from_json(cls, text: str) -> "StoryTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    @classmethod
    def load(cls, path) -> "StoryTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))


def corpus_fingerprint(stories: list[str]) -> str:
    digest = hashlib.sha256()
    for story in stories:
        digest.update(story.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _check_vocab_size(vocab_size) -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 260:
        raise ValueError(f"vocab_size must be an integer >= 260 (256 bytes + merges), got {vocab_size!r}")


def train_tokenizer(stories: list[str], vocab_size: int = 4096, cache: bool = True) -> StoryTokenizer:
    """Train a byte-level BPE tokenizer (Sennrich et al. 2016; GPT-2's byte level).

    Cached under ``cache_dir()`` keyed by the corpus and ``vocab_size``: the
    second call with the same stories loads it instead of training again.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    _check_vocab_size(vocab_size)
    if not stories:
        raise ValueError("train_tokenizer needs at least one story")
    path = cache_dir() / f"bpe-{corpus_fingerprint(stories)}-{vocab_size}.json"
    if cache and path.exists():
        return StoryTokenizer.load(path)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(stories, trainer=trainer)
    result = StoryTokenizer(tokenizer)
    if cache:
        _write_atomically(path, result.to_json().encode("utf-8"))
    return result


# ---------------------------------------------------------------- file helpers
def _digest(data=b"") -> "hashlib.blake2b":
    return hashlib.blake2b(data, digest_size=16)


def _file_digest(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """blake2b of a file, read 4 MB at a time (the page cache, not the process, holds the file)."""
    digest = _digest()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while True:
            read = file.readinto(buffer)
            if not read:
                return digest.hexdigest()
            digest.update(view[:read])


def _temporary_name(path: Path) -> Path:
    """A name next to ``path``, private to this process (same folder: renaming is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def _publish(temporary: Path, path: Path) -> None:
    """Rename a finished file to its final name in one step.

    Another process may have published the same file first; the rename replaces it
    with identical bytes.  Where the OS refuses to replace an open file (Windows),
    the other process's copy is kept.
    """
    try:
        os.replace(temporary, path)
    except PermissionError:
        if not path.exists():
            raise
        temporary.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _publish(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _key(*parts) -> str:
    """A short hash naming a cache entry, from JSON-serialisable parts."""
    return _digest(json.dumps([TOKEN_CACHE_VERSION, *parts], sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------ what is read
class StoryPlan:
    """Which stories ``prepare_data`` encodes, split by split, and how to read them.

    ``budgets[split]`` is what selects a split's stories, and goes into the cache
    key: a story count for the hub, a folder or the offline corpus (None: the
    whole split; for the endless offline grammar, ``OFFLINE_UNBUDGETED_STORIES``),
    or the ``limit`` and ``val_fraction`` of a single file, which is read whole on
    first need and kept for its other split.
    """

    def __init__(self, source: StorySource, limit: int | None, val_limit: int | None, val_fraction: float,
                 tokenizer_limit: int):
        self.source = source
        self.tokenizer_stories = tokenizer_limit if limit is None else min(limit, tokenizer_limit)
        if source.kind == "file":
            rule = {"limit": limit, "val_fraction": val_fraction}
            self.budgets = {"train": rule, "validation": rule}
        else:
            if val_limit is None and limit is not None:
                val_limit = max(1, int(limit * val_fraction))
            self.budgets = {"train": limit, "validation": val_limit}
            if source.kind == "offline":     # an endless grammar: "the whole split" is a fixed count
                self.budgets = {split: OFFLINE_UNBUDGETED_STORIES[split] if budget is None else budget
                                for split, budget in self.budgets.items()}
        self._file_splits: dict[str, list[str]] | None = None

    @property
    def tokenizer_budget(self) -> list:
        """What the tokenizer depends on besides the source and the vocabulary size."""
        return [self.tokenizer_stories, self.budgets["train"] if self.source.kind == "file" else None]

    def stories(self, split: str) -> Iterator[str]:
        """The split's stories, read lazily (a single file: all at once, the first time)."""
        if self.source.kind != "file":
            return itertools.islice(_story_stream(self.source, split), self.budgets[split])
        if self._file_splits is None:
            rule = self.budgets["train"]
            self._file_splits = _file_splits(Path(self.source.location), rule["limit"], rule["val_fraction"])
        return iter(self._file_splits[split])


def _file_splits(path: Path, limit: int | None, val_fraction: float) -> dict[str, list[str]]:
    """A single file's first ``limit`` stories, the last ``val_fraction`` of them held out."""
    stories = _load_local(path)[:limit]
    if len(stories) < 2:
        raise ValueError(f"{path} needs at least 2 stories to hold one out for validation")
    held_out = max(1, int(len(stories) * val_fraction))
    return {"train": stories[:-held_out], "validation": stories[-held_out:]}


# ------------------------------------------------------------ cached tokenizer
def _tokenizer_path(plan: StoryPlan, vocab_size: int) -> Path:
    key = _key("tokenizer", plan.source.identity, vocab_size, plan.tokenizer_budget)
    return cache_dir() / "tokenizers" / f"{plan.source.slug}-bpe{vocab_size}-{plan.tokenizer_stories}-{key}.json"


def _cached_tokenizer(path: Path) -> tuple[StoryTokenizer, str] | None:
    """The tokenizer stored at ``path`` and its hash, or None (printing why when the file is damaged)."""
    if not path.exists():
        return None
    try:
        text = path.read_bytes()
        return StoryTokenizer.from_json(text.decode("utf-8")), _digest(text).hexdigest()
    except Exception as error:
        print(f"Data: cached tokenizer {path.name} is unreadable ({type(error).__name__}); training it again")
        return None


def _prepared_tokenizer(plan: StoryPlan, vocab_size: int, verbose: bool) -> tuple[StoryTokenizer, str, Path]:
    """The BPE tokenizer of the plan's first training stories, trained once per source and budget.

    Returns the tokenizer, the hash of its JSON file (recorded in every token file
    it encodes) and the file's path.  Training goes through ``train_tokenizer``,
    so a tokenizer trained by hand on the same stories is reused too.
    """
    path = _tokenizer_path(plan, vocab_size)
    cached = _cached_tokenizer(path)
    if cached is not None:
        return (*cached, path)
    started = time.perf_counter()
    texts = list(itertools.islice(plan.stories("train"), plan.tokenizer_stories))
    if not texts:
        raise ValueError(f"{plan.source.name} has no training stories to train a tokenizer on")
    tokenizer = train_tokenizer(texts, vocab_size)
    text = tokenizer.to_json().encode("utf-8")
    _write_atomically(path, text)
    if verbose:
        print(f"Data: trained a {tokenizer.vocab_size:,}-token BPE tokenizer on {len(texts):,} stories "
              f"in {time.perf_counter() - started:.1f} s")
    return tokenizer, _digest(text).hexdigest(), path


# ---------------------------------------------------------------- token files
def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` while every id fits (vocab_size <= 65536, as nanoGPT), else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _story_rows(stories: list[str]) -> Iterator[dict]:
    """Rows for ``datasets.Dataset.from_generator``: one ``{"text": story}`` per story."""
    for story in stories:
        yield {"text": story}


def _encode_rows(batch: dict, tokenizer: StoryTokenizer, dtype: str) -> dict:
    """``datasets.map`` function: a batch of stories -> their ids (EOT after each) and lengths."""
    ids = [np.asarray(story_ids, dtype=dtype) for story_ids in tokenizer.encode_batch(batch["text"])]
    return {"ids": ids, "len": [len(story_ids) for story_ids in ids]}


def _map_workers(stories: int, num_proc: int | None) -> int:
    """Processes for one chunk's ``map``: the caller's choice, else 1 for small chunks, else the cores (<= 8)."""
    if num_proc is not None:
        return num_proc
    if stories < PARALLEL_FROM_STORIES:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


@contextlib.contextmanager
def _tokenizers_single_threaded(active: bool):
    """``TOKENIZERS_PARALLELISM=false`` while worker processes are forked (no deadlock warning)."""
    if not active:
        yield
        return
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _tokenized_chunk(stories: list[str], tokenizer: StoryTokenizer, folder: Path,
                     num_proc: int | None, dtype: np.dtype):
    """A chunk of stories, tokenized: a ``datasets.Dataset`` of ``ids`` and ``len`` on disk.

    Both steps write to files inside ``folder``: ``from_generator`` the stories,
    ``map(batched=True, num_proc=N)`` their ids, a writer batch (1000 rows) at a
    time; worker processes read their share of the chunk from the file.
    """
    import datasets

    ids_feature = datasets.List(datasets.Value(dtype.name))
    texts = datasets.Dataset.from_generator(
        _story_rows, gen_kwargs={"stories": stories},
        features=datasets.Features({"text": datasets.Value("string")}), cache_dir=str(folder))
    workers = _map_workers(len(texts), num_proc)
    with _tokenizers_single_threaded(workers > 1):
        return texts.map(_encode_rows, batched=True, num_proc=workers if workers > 1 else None,
                         remove_columns=["text"], fn_kwargs={"tokenizer": tokenizer, "dtype": dtype.name},
                         features=datasets.Features({"ids": ids_feature, "len": datasets.Value("int64")}),
                         new_fingerprint=f"{folder.name}-ids", load_from_cache_file=False)


def _append_chunk(path: Path, chunk, start: int, dtype: np.dtype, digest) -> int:
    """Write a tokenized chunk after the first ``start`` tokens of ``path``; returns the new length.

    As in nanoGPT: the file is grown to its new length and filled through a memmap,
    a contiguous shard of stories at a time (at most ~1 M tokens in memory).
    """
    import pyarrow.compute as pc

    added = int(pc.sum(chunk.with_format("arrow")[:]["len"]).as_py() or 0)
    with open(path, "r+b") as file:
        file.truncate((start + added) * dtype.itemsize)
    window = np.memmap(path, dtype=dtype, mode="r+", offset=start * dtype.itemsize, shape=(added,))
    shards = max(1, len(chunk) // 4096)
    filled = 0
    for index in range(shards):
        shard = chunk.shard(num_shards=shards, index=index, contiguous=True).with_format("arrow")[:]
        ids = shard["ids"].combine_chunks().flatten().to_numpy()       # (tokens of the shard,)
        window[filled:filled + len(ids)] = ids
        digest.update(memoryview(np.ascontiguousarray(ids)).cast("B"))
        filled += len(ids)
    window.flush()
    del window
    return start + added


def _encode_to_file(stories: Iterator[str], tokenizer: StoryTokenizer, path: Path, workdir: Path,
                    num_proc: int | None, dtype: np.dtype, progress) -> tuple[int, int, str]:
    """Tokenize ``stories`` into the token file ``path``, a chunk at a time.

    Returns (stories, tokens, blake2b of the file).  Each chunk's on-disk datasets
    are deleted once its tokens are in the file, so neither memory nor the temporary
    folder grows with the corpus.
    """
    stories, digest = iter(stories), _digest()
    path.touch()
    story_count = token_count = 0
    for index in itertools.count():
        texts = list(itertools.islice(stories, STORIES_PER_CHUNK))      # ~20 MB of text at most
        if not texts:
            return story_count, token_count, digest.hexdigest()
        folder = workdir / f"chunk-{index:05d}"
        chunk = _tokenized_chunk(texts, tokenizer, folder, num_proc, dtype)
        del texts
        token_count = _append_chunk(path, chunk, token_count, dtype, digest)
        story_count += len(chunk)
        progress.update(len(chunk))
        del chunk
        shutil.rmtree(folder, ignore_errors=True)


def _token_paths(plan: StoryPlan, split: str, tokenizer_path: Path, vocab_size: int) -> tuple[Path, Path]:
    """The token file and its metadata file for one split of one plan and tokenizer."""
    budget = plan.budgets[split]
    key = _key("tokens", plan.source.identity, split, budget, tokenizer_path.name)
    stories = budget if isinstance(budget, int) else "all"
    stem = f"{plan.source.slug}-{split}-{stories}-bpe{vocab_size}-{key}"
    folder = cache_dir() / "tokens"
    return folder / f"{stem}.bin", folder / f"{stem}.json"


def _open_token_file(path: Path, metadata: dict) -> np.memmap:
    """The token file as a read-only 1-D memmap."""
    return np.memmap(path, dtype=np.dtype(metadata["dtype"]), mode="r", shape=(metadata["tokens"],))


def _check_cache_entry(path: Path, metadata_path: Path, tokenizer_hash: str) -> tuple[dict | None, str | None]:
    """(metadata, None) for a sound cache entry, (None, reason) for a damaged one, (None, None) if absent."""
    if not metadata_path.exists():
        return None, None
    try:
        metadata = json.loads(metadata_path.read_text())
        expected_bytes = int(metadata["tokens"]) * np.dtype(metadata["dtype"]).itemsize
        recorded_hash, recorded_tokenizer = metadata["blake2b"], metadata["tokenizer_blake2b"]
    except Exception as error:
        return None, f"metadata unreadable: {type(error).__name__}"
    if not path.exists():
        return None, "token file missing"
    if path.stat().st_size != expected_bytes:
        return None, f"{path.stat().st_size:,} bytes instead of {expected_bytes:,}"
    if recorded_tokenizer != tokenizer_hash:
        return None, "encoded with another tokenizer"
    if _file_digest(path) != recorded_hash:
        return None, "content hash mismatch"
    return metadata, None


def _cached_tokens(path: Path, metadata_path: Path, tokenizer_hash: str, split: str) -> tuple | None:
    """(memmap, metadata) of a sound cache entry, else None (printing one line if it was damaged)."""
    metadata, reason = _check_cache_entry(path, metadata_path, tokenizer_hash)
    if reason is not None:
        print(f"Data: cached {split} tokens {path.name} are damaged ({reason}); rebuilding them")
    if metadata is None:
        return None
    return _open_token_file(path, metadata), metadata


def _remove_stale_workdirs(folder: Path, max_age_hours: float = STALE_WORKDIR_HOURS) -> list[Path]:
    """Delete what a process that was killed (``kill -9``, a lost Colab runtime) left behind:
    its temporary preparation folder and half-written ``.tmp`` files, once older than
    ``max_age_hours`` -- far longer than preparing the whole split takes, so a
    preparation still running is never touched."""
    cutoff = time.time() - max_age_hours * 3600
    leftovers = [*folder.glob(f"{WORKDIR_PREFIX}*"), *folder.glob("*/.*.tmp")]
    stale = [path for path in leftovers if path.stat().st_mtime < cutoff]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def _build_tokens(plan: StoryPlan, split: str, tokenizer: StoryTokenizer, tokenizer_hash: str, path: Path,
                  num_proc: int | None, verbose: bool) -> tuple[np.memmap, dict]:
    """Tokenize one split into ``path``, working in a temporary folder inside the cache.

    The token file is renamed into place first and its metadata written last, so a
    metadata file always describes a complete token file.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_workdirs(cache_dir())
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=cache_dir()))
    dtype = token_dtype(tokenizer.vocab_size)
    temporary = _temporary_name(path)
    budget = plan.budgets[split]
    try:
        one_chunk = isinstance(budget, int) and budget <= STORIES_PER_CHUNK     # no bar for a few seconds' work
        with _datasets_quietly(), tqdm(total=budget if isinstance(budget, int) else None, unit=" stories",
                                       desc=f"tokenizing {split}", disable=not verbose or one_chunk,
                                       leave=False) as bar:
            stories, tokens, content_hash = _encode_to_file(plan.stories(split), tokenizer, temporary, workdir,
                                                            num_proc, dtype, bar)
        if stories == 0:
            raise ValueError(f"{plan.source.name} has no {split} stories")
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        _publish(temporary, path)
        metadata = {"version": TOKEN_CACHE_VERSION, "source": plan.source.name, "split": split, "budget": budget,
                    "stories": stories, "tokens": tokens, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size,
                    "eot_id": tokenizer.eot_id, "blake2b": content_hash, "tokenizer_blake2b": tokenizer_hash}
        _write_atomically(path.with_suffix(".json"), json.dumps(metadata, indent=1).encode())
    finally:
        temporary.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    if verbose:
        print(f"Data: {stories:,} {split} stories -> {tokens:,} tokens ({dtype.name}, "
              f"{tokens * dtype.itemsize / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return _open_token_file(path, metadata), metadata


def _split_tokens(plan: StoryPlan, split: str, tokenizer: StoryTokenizer, tokenizer_hash: str,
                  tokenizer_path: Path, num_proc: int | None, verbose: bool) -> tuple[np.memmap, dict, Path]:
    """One split's token file: opened from the cache when sound, else (re)built."""
    path, metadata_path = _token_paths(plan, split, tokenizer_path, tokenizer.vocab_size)
    cached = _cached_tokens(path, metadata_path, tokenizer_hash, split)
    if cached is None:
        cached = _build_tokens(plan, split, tokenizer, tokenizer_hash, path, num_proc, verbose)
    return (*cached, path)


# ------------------------------------------------------------------ token data
@dataclass
class TokenData:
    """The train and validation token streams and the tokenizer that made them.

    ``train`` and ``val`` are read-only NumPy memmaps of the cached token files
    (1-D, ``uint16``): ``len(data.train)`` is the number of training tokens, and
    nothing is read into memory until a batch asks for it.
    """

    train: np.ndarray          # (N_train,) token ids, <|endoftext|> after each story
    val: np.ndarray            # (N_val,)
    tokenizer: StoryTokenizer
    source: str
    paths: dict[str, Path] = field(default_factory=dict)    # "train" / "validation" / "tokenizer" -> file
    stories: dict[str, int] = field(default_factory=dict)   # "train" / "validation" -> stories encoded

    def tokens(self, split: str) -> np.ndarray:
        """The token stream of ``"train"`` or ``"val"`` / ``"validation"``."""
        return self.train if _split_name(split) == "train" else self.val

    def num_tokens(self, split: str) -> int:
        return len(self.tokens(split))

    def batch(self, split: str, batch_size: int, seq_len: int, device="cpu",
              generator: torch.Generator | None = None):
        """``get_batch`` on one split: ``(inputs, targets)``, each (batch_size, seq_len) int64."""
        return get_batch(self.tokens(split), batch_size, seq_len, device, generator)


def _check_settings(vocab_size, limit, val_limit, tokenizer_limit, val_fraction, num_proc) -> None:
    _check_vocab_size(vocab_size)
    _check_count("limit", limit)
    _check_count("val_limit", val_limit)
    _check_count("tokenizer_limit", tokenizer_limit, allow_none=False)
    _check_count("num_proc", num_proc)
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")


def prepare_data(source="auto", vocab_size: int = 4096, limit: int | None = None, *,
                 val_limit: int | None = None, tokenizer_limit: int = 50_000, val_fraction: float = 0.05,
                 num_proc: int | None = None, verbose: bool = True) -> TokenData:
    """Token files of both splits, and their tokenizer, prepared once and cached.

    * ``limit``: training stories (None: the whole split);
    * ``val_limit``: validation stories (None: ``max(1, int(limit * val_fraction))``
      when ``limit`` is given, else the whole split);
    * ``tokenizer_limit``: the tokenizer is trained on the first
      ``min(limit, tokenizer_limit)`` training stories, whatever the corpus size;
    * ``num_proc``: processes that tokenize (None: 1 for small corpora, else the
      cores, at most 8).

    The hub, a hub-shaped folder and the offline corpus have their own validation
    split.  A single file keeps its first ``limit`` stories and holds out the last
    ``val_fraction`` of them for validation (``val_limit`` does not apply).

    The second call with the same arguments (and unchanged data) opens the cached
    files without reading a story or training anything.
    """
    _check_settings(vocab_size, limit, val_limit, tokenizer_limit, val_fraction, num_proc)
    plan = StoryPlan(describe_source(source, verbose), limit, val_limit, val_fraction, tokenizer_limit)
    tokenizer, tokenizer_hash, tokenizer_path = _prepared_tokenizer(plan, vocab_size, verbose)
    splits = {split: _split_tokens(plan, split, tokenizer, tokenizer_hash, tokenizer_path, num_proc, verbose)
              for split in ("train", "validation")}
    (train, train_info, train_path), (val, val_info, val_path) = splits["train"], splits["validation"]
    if verbose:
        print(f"Data: {len(train):,} training and {len(val):,} validation tokens of "
              f"{train_info['stories']:,} + {val_info['stories']:,} stories, cached in {train_path.parent}")
    return TokenData(train=train, val=val, tokenizer=tokenizer, source=plan.source.name,
                     paths={"train": train_path, "validation": val_path, "tokenizer": tokenizer_path},
                     stories={"train": train_info["stories"], "validation": val_info["stories"]})


def prepare_preset_data(chosen_preset, source="auto", verbose: bool = True) -> TokenData:
    """``prepare_data`` with a preset's vocabulary and story budget (``Preset.data``).

    Notebooks, widgets and the command line all call this, so they share one
    tokenizer and one set of token files per preset and source.
    """
    budget = chosen_preset.data
    return prepare_data(source, vocab_size=chosen_preset.model.vocab_size, limit=budget.train_stories,
                        val_limit=budget.val_stories, tokenizer_limit=budget.tokenizer_stories, verbose=verbose)


# --------------------------------------------------------------------- batches
def get_batch(tokens, batch_size: int, seq_len: int, device="cpu", generator: torch.Generator | None = None):
    """Random windows of ``seq_len + 1`` tokens, split into inputs and next-token targets.

    ``tokens`` is a 1-D NumPy array or memmap, or a 1-D torch tensor.  Window starts
    are ``torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=generator)``,
    so a seeded generator gives the same batches whatever holds the tokens.
    Returns ``(inputs, targets)``, each (batch_size, seq_len) int64, on ``device``
    (through pinned memory and a non-blocking copy on CUDA).
    """
    length = len(tokens)
    if length < seq_len + 1:
        raise ValueError(f"need more than seq_len={seq_len} tokens, have {length}")
    starts = torch.randint(0, length - seq_len, (batch_size,), generator=generator)            # (B,)
    index = starts[:, None] + torch.arange(seq_len + 1)                                         # (B, T+1)
    if isinstance(tokens, torch.Tensor):
        windows = tokens[index.to(tokens.device)].long()                                        # (B, T+1)
    else:
        windows = torch.from_numpy(tokens[index.numpy()].astype(np.int64))                     # (B, T+1)
    inputs, targets = windows[:, :-1], windows[:, 1:]                                           # (B, T) each
    if windows.device.type == "cpu" and torch.device(device).type == "cuda":
        return (inputs.contiguous().pin_memory().to(device, non_blocking=True),
                targets.contiguous().pin_memory().to(device, non_blocking=True))
    return inputs.to(device), targets.to(device)
