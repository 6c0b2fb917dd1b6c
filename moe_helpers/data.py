"""TinyStories: loading the stories, training a tokenizer, and token batches.

Sources, chosen with ``load_stories(source=...)``:

* ``"hub"``      — ``datasets.load_dataset("roneneldan/TinyStories")`` (Eldan & Li 2023);
* a file path    — a local TinyStories file: ``.txt`` with ``<|endoftext|>``
                   between stories, ``.jsonl`` / ``.json`` with a ``text`` field,
                   or ``.parquet``, read with ``datasets``' own local loaders;
* ``"offline"``  — a generated stand-in shipped with the package (see ``story_generator``);
* ``"auto"``     — the hub when it answers within a few seconds, else offline.

The tokenizer is a byte-level BPE (as in GPT-2) trained with ``tokenizers``
on the chosen stories and cached on disk.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .story_generator import OFFLINE_NOTICE, offline_corpus

EOT = "<|endoftext|>"
HUB_DATASET = "roneneldan/TinyStories"
HUB_PROBE_URL = "https://huggingface.co/api/datasets/roneneldan/TinyStories"
LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLITS = {"train": "train", "validation": "validation", "val": "validation"}


def cache_dir() -> Path:
    """Where tokenizers are cached: ``$MOE_COURSE_CACHE`` or ``~/.cache/moe-course``."""
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


def resolve_source(source: str, verbose: bool = True) -> str:
    """Turn ``"auto"`` into ``"hub"`` or ``"offline"`` (printing one line); other sources pass through."""
    if source != "auto":
        return source
    source = "hub" if hub_is_reachable() else "offline"
    if verbose:
        print("Data: TinyStories from the Hugging Face hub" if source == "hub"
              else f"Data: hub unreachable, using the offline corpus ({OFFLINE_NOTICE})")
    return source


def _split_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _clean(stories) -> list[str]:
    return [story.strip() for story in stories if story and story.strip()]


def _load_hub(split: str, limit: int | None) -> list[str]:
    from datasets import load_dataset

    if limit is None:
        return _clean(load_dataset(HUB_DATASET, split=split)["text"])
    stream = load_dataset(HUB_DATASET, split=split, streaming=True)
    return _clean(row["text"] for row, _ in zip(stream, range(limit)))


def _load_local(path: Path) -> list[str]:
    """Stories from a local TinyStories file, through ``datasets``' local loaders."""
    import datasets

    if not path.exists():
        raise FileNotFoundError(f"no such TinyStories file: {path}")
    suffix = path.suffix.lower()
    if suffix not in LOCAL_FORMATS:
        raise ValueError(f"unsupported file type {suffix!r} for {path}; "
                         f"accepted: {', '.join(LOCAL_FORMATS)}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty; expected stories ({', '.join(LOCAL_FORMATS)})")
    builder = LOCAL_FORMATS[suffix]
    options = {"sample_by": "document"} if builder == "text" else {}
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:
        raise ValueError(f"{path} could not be read as {builder} ({type(error).__name__}); "
                         f"accepted: {', '.join(LOCAL_FORMATS)}") from error
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if "text" not in table.column_names:
        raise ValueError(f"{path} has no 'text' field (columns: {table.column_names}); "
                         "a .jsonl/.json/.parquet file needs one story per row in 'text'")
    texts = table["text"]
    if builder == "text":   # one document: split it at the separators
        texts = [story for document in texts for story in document.split(EOT)]
    stories = _clean(texts)
    if not stories:
        hint = f"separate stories with {EOT}" if builder == "text" else "put one story per row in 'text'"
        raise ValueError(f"{path} holds no stories; {hint}")
    return stories


def load_stories(source: str = "auto", split: str = "train", limit: int | None = None,
                 verbose: bool = True) -> list[str]:
    """A list of stories from the hub, a local file, or the offline corpus.

    ``limit`` keeps the first ``limit`` stories (the hub is then streamed).
    ``"auto"`` prints one line saying which source it used.  A local file is
    returned whole whatever the split (``prepare_data`` holds part of it out).
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    source = resolve_source(source, verbose)
    if source == "hub":
        stories = _load_hub(_split_name(split), limit)
    elif source == "offline":
        stories = offline_corpus(_split_name(split))
    elif isinstance(source, (str, Path)) and (Path(source).suffix or os.sep in str(source)):
        stories = _load_local(Path(source))
    else:
        raise ValueError(f"unknown data source {source!r}; choose auto, hub, offline or a file path "
                         f"({', '.join(LOCAL_FORMATS)})")
    return stories[:limit] if limit is not None else stories


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
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def tokens(self, text: str) -> list[str]:
        """The pieces a text is cut into, as readable strings."""
        return [self.decode([token_id]) for token_id in self.encode(text)]

    def encode_stories(self, stories: list[str]) -> list[int]:
        """All stories as one token stream, ``<|endoftext|>`` after each story."""
        stream = []
        for ids in self._tokenizer.encode_batch(stories):
            stream += ids.ids + [self.eot_id]
        return stream

    def save(self, path) -> None:
        self._tokenizer.save(str(path))

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


def train_tokenizer(stories: list[str], vocab_size: int = 4096, cache: bool = True) -> StoryTokenizer:
    """Train a byte-level BPE tokenizer (Sennrich et al. 2016; GPT-2's byte level).

    Cached under ``cache_dir()`` keyed by the corpus and ``vocab_size``: the
    second call with the same stories loads it instead of training again.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not isinstance(vocab_size, int) or vocab_size < 260:
        raise ValueError(f"vocab_size must be an integer >= 260 (256 bytes + merges), got {vocab_size!r}")
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
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        result.save(temporary)
        temporary.replace(path)
    return result


# ---------------------------------------------------------------- token data
@dataclass
class TokenData:
    """The train and validation token streams and the tokenizer that made them."""

    train: torch.Tensor        # (N_train,) int64 token ids
    val: torch.Tensor          # (N_val,)
    tokenizer: StoryTokenizer
    source: str

    def batch(self, split: str, batch_size: int, seq_len: int, device="cpu",
              generator: torch.Generator | None = None):
        tokens = self.train if split == "train" else self.val
        return get_batch(tokens, batch_size, seq_len, device, generator)


def prepare_data(source: str = "auto", vocab_size: int = 4096, limit: int | None = None,
                 val_fraction: float = 0.05, verbose: bool = True) -> TokenData:
    """Load stories, train (or load) the tokenizer, and encode both splits.

    The hub and the offline corpus have their own validation split; a local
    file keeps its last ``val_fraction`` of stories for validation.
    """
    if source not in ("auto", "hub", "offline"):
        stories = load_stories(source, limit=limit, verbose=verbose)
        held_out = max(1, int(len(stories) * val_fraction))
        if len(stories) < 2:
            raise ValueError(f"{source} needs at least 2 stories to hold one out for validation")
        train_stories, val_stories = stories[:-held_out], stories[-held_out:]
        used = str(source)
    else:
        source = resolve_source(source, verbose)
        train_stories = load_stories(source, "train", limit, verbose=False)
        val_limit = None if limit is None else max(1, int(limit * val_fraction))
        val_stories = load_stories(source, "validation", val_limit, verbose=False)
        used = source
    tokenizer = train_tokenizer(train_stories, vocab_size)
    encode = lambda stories: torch.tensor(tokenizer.encode_stories(stories), dtype=torch.long)  # noqa: E731
    return TokenData(train=encode(train_stories), val=encode(val_stories), tokenizer=tokenizer, source=used)


def get_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, device="cpu",
              generator: torch.Generator | None = None):
    """Random windows of ``seq_len + 1`` tokens, split into inputs and next-token targets.

    Returns ``(inputs, targets)``, each (batch_size, seq_len), on ``device``.
    """
    if tokens.numel() < seq_len + 1:
        raise ValueError(f"need more than seq_len={seq_len} tokens, have {tokens.numel()}")
    starts = torch.randint(0, tokens.numel() - seq_len, (batch_size,), generator=generator)  # (B,)
    windows = torch.stack([tokens[start:start + seq_len + 1] for start in starts.tolist()])   # (B, T+1)
    return windows[:, :-1].to(device), windows[:, 1:].to(device)
