"""Loading stories (local files, the offline corpus, the `auto` fallback), the BPE tokenizer
and its cache, and token batches."""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from moe_helpers import data as data_module
from moe_helpers import story_grammar
from moe_helpers.data import (EOT, LOCAL_FORMATS, OFFLINE_NOTICE, OFFLINE_UNBUDGETED_STORIES, StoryPlan, cache_dir,
                              describe_source, get_batch, hub_is_reachable, load_stories, prepare_data,
                              resolve_source, train_tokenizer)

STORIES = [
    "Once upon a time, there was a little girl named Lily. She had a red ball.",
    'One day Tom saw a big dog.\n\n"Can I pet you?" he asked.\n\nThe dog said "Woof!" and they played.',
    "Zoë found a café by the sea. 🐟 \"Yum!\" she said — and everyone smiled.",
    "Max was sad because his toy broke. Dad fixed it.\nMax was happy again. The end.",
]
ACCEPTED = list(LOCAL_FORMATS)                  # [".txt", ".jsonl", ".json", ".parquet"]


# ---------------------------------------------------------------- local files
def write_stories(path: Path, stories: list[str]) -> Path:
    """Write ``stories`` in the TinyStories layout that ``path``'s extension stands for."""
    suffix = path.suffix
    if suffix == ".txt":
        path.write_text("".join(f"{story}\n{EOT}\n" for story in stories), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": story}) + "\n" for story in stories), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps([{"text": story} for story in stories]), encoding="utf-8")
    elif suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_dict({"text": stories}).to_parquet(str(path))
    return path


@pytest.mark.parametrize("suffix", ACCEPTED)
def test_every_local_format_loads_the_same_stories(tmp_path, suffix):
    path = write_stories(tmp_path / f"stories{suffix}", STORIES)
    assert load_stories(str(path)) == STORIES
    assert load_stories(path, limit=2) == STORIES[:2]         # a Path works as well as a str


def test_txt_without_a_final_separator(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text(f"\n{EOT}\n".join(STORIES), encoding="utf-8")
    assert load_stories(str(path)) == STORIES


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "no_such_stories.txt"
    with pytest.raises(FileNotFoundError, match="no_such_stories.txt"):
        load_stories(str(missing))


@pytest.mark.parametrize("suffix", ACCEPTED)
def test_empty_file_says_what_is_accepted(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ValueError) as error:
        load_stories(str(path))
    message = str(error.value)
    assert "empty" in message and str(path) in message
    assert all(accepted in message for accepted in ACCEPTED)


@pytest.mark.parametrize("name, content", [
    ("separators_only.txt", f"{EOT}\n\n{EOT}\n"),
    ("blank.txt", "   \n\n\t\n"),
    ("blank_texts.jsonl", json.dumps({"text": ""}) + "\n" + json.dumps({"text": "   "}) + "\n"),
])
def test_file_without_stories_is_rejected(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_stories(str(path))
    message = str(error.value)
    assert "no stories" in message and str(path) in message


def test_file_without_a_text_field_is_rejected(tmp_path):
    path = tmp_path / "stories.jsonl"
    path.write_text(json.dumps({"story": STORIES[0]}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'text'") as error:
        load_stories(str(path))
    assert "story" in str(error.value)                       # it shows the columns it found


def test_unsupported_extension_says_what_is_accepted(tmp_path):
    path = tmp_path / "stories.csv"
    path.write_text("text\nOnce upon a time.\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_stories(str(path))
    message = str(error.value)
    assert "'.csv'" in message
    assert all(accepted in message for accepted in ACCEPTED)


def test_unknown_source_lists_the_choices():
    with pytest.raises(ValueError) as error:
        load_stories("tinystories")
    assert all(choice in str(error.value) for choice in ("auto", "hub", "offline", ".txt"))


@pytest.mark.parametrize("limit", [0, -3, 2.5])
def test_bad_limit_is_rejected(limit):
    with pytest.raises(ValueError, match="limit"):
        load_stories("offline", limit=limit)


def test_prepare_data_holds_out_the_end_of_a_local_file(tmp_path):
    path = write_stories(tmp_path / "stories.jsonl", STORIES * 10)   # 40 stories
    data = prepare_data(str(path), vocab_size=300, val_fraction=0.1, verbose=False)
    eot = data.tokenizer.eot_id
    assert (data.train == eot).sum().item() == 36
    assert (data.val == eot).sum().item() == 4
    assert data.source == str(path)


# ------------------------------------------------------------ offline corpus
@pytest.mark.slow
def test_offline_corpus_is_the_story_grammar_with_disjoint_splits():
    train = load_stories("offline", "train", limit=2_000)
    validation = load_stories("offline", "validation", limit=200)
    assert train == story_grammar.stories("train", 2_000)          # the grammar's stories, in order
    assert validation == story_grammar.stories("validation", 200)
    assert not set(train) & set(validation)
    assert load_stories("offline", "val", limit=200) == validation
    assert len(set(train)) == len(train)                     # no story twice
    assert "not the real" in OFFLINE_NOTICE and OFFLINE_NOTICE == story_grammar.NOTICE


def test_offline_corpus_gives_as_many_stories_as_asked():
    for limit in (1, 5, 1_234):
        assert len(load_stories("offline", limit=limit)) == limit
    first = load_stories("offline", limit=5)
    assert load_stories("offline", limit=5) == first         # the same on every call
    assert load_stories("offline", limit=6)[:5] == first     # a larger budget extends a smaller one


def test_an_unbudgeted_offline_plan_draws_a_fixed_count():
    """The grammar has no end: a budget of None means OFFLINE_UNBUDGETED_STORIES, and says so in the cache key."""
    plan = StoryPlan(describe_source("offline"), limit=None, val_limit=None, val_fraction=0.05,
                     tokenizer_limit=1_000)
    assert plan.budgets == OFFLINE_UNBUDGETED_STORIES
    assert OFFLINE_UNBUDGETED_STORIES["train"] >= 100_000
    assert list(itertools.islice(plan.stories("validation"), 3)) == story_grammar.stories("validation", 3)


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        load_stories("offline", split="test")


# ------------------------------------------------------------------ "auto"
@pytest.mark.parametrize("flag", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_auto_with_an_offline_flag_never_probes(monkeypatch, capsys, flag):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(flag, "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was probed although it is marked offline")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    load_stories("offline", limit=1)                         # build the corpus outside the timing
    capsys.readouterr()
    started = time.perf_counter()
    stories = load_stories("auto", limit=3)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    assert stories == load_stories("offline", limit=3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert "offline" in lines[0] and "not the real" in lines[0]


def hanging_server():
    """A local TCP socket that accepts connections but never answers (a hub that hangs)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


@pytest.mark.slow
def test_auto_falls_back_fast_when_the_hub_hangs(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    server = hanging_server()
    host, port = server.getsockname()
    monkeypatch.setattr(data_module, "HUB_PROBE_URL", f"http://{host}:{port}/api/datasets/roneneldan/TinyStories")
    load_stories("offline", limit=1)
    capsys.readouterr()
    try:
        started = time.perf_counter()
        stories = load_stories("auto", limit=3)
        elapsed = time.perf_counter() - started
    finally:
        server.close()
    assert elapsed < 3.0
    assert stories == load_stories("offline", limit=3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "offline" in lines[0]


@pytest.mark.parametrize("status, expected", [(200, "hub"), (404, "offline")])
def test_auto_follows_what_the_probe_answers(monkeypatch, capsys, status, expected):
    """A local stand-in for the hub's API (no network): 200 means the hub, anything else offline;
    either way the decision is announced in one line naming the source."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(data_module, "HUB_PROBE_URL", f"http://127.0.0.1:{server.server_port}/api/datasets/x")
    try:
        source = resolve_source("auto")
    finally:
        server.shutdown()
        server.server_close()
    assert source == expected
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert ("Hugging Face hub" in lines[0]) if expected == "hub" else ("offline corpus" in lines[0])


def test_hub_probe_respects_its_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    server = hanging_server()
    host, port = server.getsockname()
    monkeypatch.setattr(data_module, "HUB_PROBE_URL", f"http://{host}:{port}/")
    try:
        started = time.perf_counter()
        reachable = hub_is_reachable(timeout=0.5)
        elapsed = time.perf_counter() - started
    finally:
        server.close()
    assert reachable is False
    assert elapsed < 1.5


# ----------------------------------------------------------------- tokenizer
ROUND_TRIP_TEXTS = [
    "Once upon a time, there was a little dog named Spot.",
    '"Can I play too?" asked Mia.\n\nMom smiled and said, "Yes!"\n',
    "Zoë ate crème brûlée in Zürich — 🐉🌈 naïve façade, 日本語も。",
    "  two leading spaces,\ttabs\tand trailing spaces   ",
    "numbers 0123456789 and symbols #$%&*()[]{}<>",
    "",
]


@pytest.fixture(scope="module")
def small_tokenizer(tiny):
    return tiny.tokenizer


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS, ids=range(len(ROUND_TRIP_TEXTS)))
def test_tokenizer_round_trip(small_tokenizer, text):
    ids = small_tokenizer.encode(text)
    assert all(0 <= i < small_tokenizer.vocab_size for i in ids)
    assert small_tokenizer.decode(ids) == text
    assert small_tokenizer.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_tokenizer_compresses_story_text(small_tokenizer):
    text = load_stories("offline", "validation", limit=3)[2]
    ids = small_tokenizer.encode(text)
    assert len(ids) < 0.5 * len(text.encode("utf-8"))         # merges learnt: fewer tokens than bytes
    assert "".join(small_tokenizer.tokens(text)) == text


def test_tokenizer_vocab_size_and_separator(tiny, tiny_preset, small_tokenizer):
    assert small_tokenizer.vocab_size == tiny_preset.model.vocab_size
    assert small_tokenizer.encode(EOT) == [small_tokenizer.eot_id]
    stories = load_stories("offline", "train", limit=3)
    stream = small_tokenizer.encode_stories(stories)
    assert stream.count(small_tokenizer.eot_id) == 3 and stream[-1] == small_tokenizer.eot_id
    first_story = stream[:stream.index(small_tokenizer.eot_id)]
    assert small_tokenizer.decode(first_story) == stories[0]
    assert tiny.train[:len(first_story)].tolist() == first_story   # the train stream starts with story 0


@pytest.mark.parametrize("vocab_size", [300, 400])
def test_tokenizer_has_the_vocab_size_asked_for(vocab_size):
    tokenizer = train_tokenizer(STORIES * 20, vocab_size=vocab_size, cache=False)
    assert tokenizer.vocab_size == vocab_size


@pytest.mark.parametrize("vocab_size", [0, 100, 259, 1000.0])
def test_tokenizer_rejects_too_small_vocabularies(vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(STORIES, vocab_size=vocab_size)


def test_tokenizer_cache_is_used_on_the_second_call(monkeypatch):
    import tokenizers.trainers

    stories = load_stories("offline", "validation", limit=40)
    assert Path(cache_dir()).resolve() == Path(os.environ["MOE_COURSE_CACHE"]).resolve()
    before = set(Path(cache_dir()).glob("bpe-*-333.json"))
    first = train_tokenizer(stories, vocab_size=333)
    written = set(Path(cache_dir()).glob("bpe-*-333.json")) - before
    assert len(written) == 1                                 # one file, keyed by corpus and vocab size

    def trainer_must_not_run(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again instead of loaded from the cache")

    monkeypatch.setattr(tokenizers.trainers, "BpeTrainer", trainer_must_not_run)
    second = train_tokenizer(stories, vocab_size=333)
    text = stories[0]
    assert second.encode(text) == first.encode(text)
    assert second.vocab_size == 333
    with pytest.raises(AssertionError, match="trained again"):   # other corpus: a new tokenizer
        train_tokenizer(stories[:-1], vocab_size=333)
    with pytest.raises(AssertionError, match="trained again"):   # other vocab size: a new tokenizer
        train_tokenizer(stories, vocab_size=334)


def test_tokenizer_cache_off_writes_nothing():
    before = set(Path(cache_dir()).iterdir())
    train_tokenizer(STORIES * 5, vocab_size=290, cache=False)
    assert set(Path(cache_dir()).iterdir()) == before


# --------------------------------------------------------------------- batches
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_get_batch_shapes_shift_and_device(device):
    tokens = torch.arange(1000, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    inputs, targets = get_batch(tokens, batch_size=5, seq_len=16, device=device, generator=generator)
    assert inputs.shape == targets.shape == (5, 16)
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.device.type == targets.device.type == device
    assert torch.equal(targets, inputs + 1)                   # tokens are consecutive ids here
    steps = inputs[:, 1:] - inputs[:, :-1]
    assert torch.equal(steps, torch.ones_like(steps))         # each row is one contiguous window
    assert inputs.min() >= 0 and targets.max() <= 999


def test_get_batch_on_real_tokens_targets_are_inputs_shifted(tiny):
    inputs, targets = tiny.batch("train", 4, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    stream = torch.from_numpy(tiny.train.astype(np.int64))   # the memmap, as a tensor
    for row in range(4):                                      # each row is a window of the train stream
        window = torch.cat([inputs[row], targets[row, -1:]])
        starts = (stream.unfold(0, 33, 1) == window).all(dim=1).nonzero()
        assert len(starts) >= 1


def test_get_batch_gives_the_same_windows_from_a_memmap_and_a_tensor(tiny):
    """Same generator seed, same windows, whether the tokens are the cached memmap or a torch tensor."""
    as_tensor = torch.from_numpy(tiny.train.astype(np.int64))
    from_memmap = get_batch(tiny.train, 6, 20, generator=torch.Generator().manual_seed(5))
    from_tensor = get_batch(as_tensor, 6, 20, generator=torch.Generator().manual_seed(5))
    starts = torch.randint(0, len(tiny.train) - 20, (6,), generator=torch.Generator().manual_seed(5))
    for batch in (from_memmap, from_tensor):
        assert all(part.dtype == torch.long and part.shape == (6, 20) for part in batch)
        assert torch.equal(batch[0], torch.stack([as_tensor[s:s + 20] for s in starts.tolist()]))
        assert torch.equal(batch[1], torch.stack([as_tensor[s + 1:s + 21] for s in starts.tolist()]))
    assert torch.equal(from_memmap[0], from_tensor[0]) and torch.equal(from_memmap[1], from_tensor[1])


def test_get_batch_is_reproducible_with_a_seeded_generator(tiny):
    batch = lambda seed: tiny.batch("val", 8, 32, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    first, again, other = batch(3), batch(3), batch(4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_get_batch_reaches_every_window_and_refuses_short_streams():
    tokens = torch.arange(10)
    generator = torch.Generator().manual_seed(0)
    inputs, targets = get_batch(tokens, batch_size=200, seq_len=9, generator=generator)
    assert torch.equal(inputs, tokens[:9].expand(200, 9))     # exactly one window fits
    assert torch.equal(targets, tokens[1:].expand(200, 9))
    inputs, _ = get_batch(torch.arange(12), batch_size=200, seq_len=9, generator=generator)
    assert set(inputs[:, 0].tolist()) == {0, 1, 2}            # starts 0..2: the last window too
    with pytest.raises(ValueError, match="seq_len"):
        get_batch(tokens, batch_size=1, seq_len=10)


def test_prepared_offline_data(tiny, tiny_preset, tiny_story_limit):
    assert tiny.source == "offline"
    assert isinstance(tiny.train, np.memmap) and isinstance(tiny.val, np.memmap)   # read from the cache files
    assert tiny.train.dtype == tiny.val.dtype == np.uint16 and tiny.train.ndim == tiny.val.ndim == 1
    assert len(tiny.train) == tiny.num_tokens("train") and len(tiny.val) == tiny.num_tokens("val")
    assert 10 < len(tiny.train) / len(tiny.val) < 40          # validation: 5% of the stories
    assert int(tiny.train.max()) < tiny_preset.model.vocab_size
    eot = tiny.tokenizer.eot_id
    assert (tiny.train == eot).sum().item() == tiny_story_limit == tiny.stories["train"]
    assert (tiny.val == eot).sum().item() == int(tiny_story_limit * 0.05) == tiny.stories["validation"]
    assert tiny.paths["train"].stat().st_size == 2 * len(tiny.train)   # uint16: two bytes a token


def test_prepared_tokens_equal_the_in_memory_encoding(tiny, tiny_story_limit):
    """The cached stream is exactly what ``encode_stories`` gives: EOT after each story, stories in order."""
    train = load_stories("offline", "train", limit=tiny_story_limit)
    val = load_stories("offline", "validation", limit=int(tiny_story_limit * 0.05))
    assert tiny.train.tolist() == tiny.tokenizer.encode_stories(train)
    assert tiny.val.tolist() == tiny.tokenizer.encode_stories(val)
