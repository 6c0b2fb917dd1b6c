"""The story grammar: an offline corpus of any size, deterministic, with disjoint splits and
TinyStories-like variety (distinct words, length, dialogue)."""

from __future__ import annotations

import re
import types

import pytest

from moe_helpers import story_grammar as grammar
from moe_helpers.story_grammar import NOTICE, corpus_statistics, iter_stories, split_of, stories, story_at

DRAW = 50_000        # checked for duplicates
STATS_DRAW = 20_000  # checked for vocabulary, length and dialogue


@pytest.fixture(scope="module")
def train_draw() -> list[str]:
    return stories("train", DRAW)


@pytest.fixture(scope="module")
def validation_draw() -> list[str]:
    return stories("validation", 2_000)


def test_same_arguments_give_the_same_stories():
    assert stories("train", 30, seed=5) == stories("train", 30, seed=5)
    assert stories("validation", 10) == stories("val", 10)
    assert stories("train", 30, seed=5) != stories("train", 30, seed=6)


@pytest.mark.slow
def test_a_slice_built_alone_equals_the_same_slice_of_a_larger_draw(train_draw):
    assert stories("train", 25, start=1_000) == train_draw[1_000:1_025]
    assert [story_at("train", index) for index in (0, 7, 49_999)] == [train_draw[i] for i in (0, 7, 49_999)]
    iterator = iter_stories("train", start=300)
    assert isinstance(iterator, types.GeneratorType)            # lazy: nothing is built before it is asked for
    assert [next(iterator) for _ in range(3)] == train_draw[300:303]


def test_any_index_is_built_without_the_ones_before_it():
    """Story i depends only on (seed, split, i): a far index costs no more than the first (the speed guarantee)."""
    far = stories("train", 3, start=10**12)
    assert len(far) == 3 and len(set(far)) == 3
    assert far[1] == story_at("train", 10**12 + 1)


def test_requested_sizes_are_honoured():
    for count in (0, 1, 37):
        assert len(stories("train", count)) == count
        assert len(stories("validation", count)) == count
    with pytest.raises(ValueError):
        stories("train", -1)
    with pytest.raises(ValueError):
        stories("test", 3)


@pytest.mark.slow
def test_splits_are_disjoint_by_construction(train_draw, validation_draw):
    assert {split_of(story) for story in train_draw[:5_000]} == {"train"}
    assert {split_of(story) for story in validation_draw} == {"validation"}
    assert not set(train_draw) & set(validation_draw)


@pytest.mark.slow
def test_no_duplicates_in_a_large_draw(train_draw):
    assert len(train_draw) == DRAW
    assert len(set(train_draw)) == DRAW


@pytest.mark.slow
def test_vocabulary_length_and_dialogue_are_tinystories_like(train_draw):
    stats = corpus_statistics(train_draw[:STATS_DRAW])
    assert stats["stories"] == STATS_DRAW
    assert stats["distinct_words"] >= 3_000
    assert 150 <= stats["mean_words_per_story"] <= 210
    assert stats["min_words"] >= 60 and stats["max_words"] <= 450
    assert 3 <= stats["mean_paragraphs"] <= 7
    assert stats["dialogue_story_share"] >= 0.9
    assert 0.1 <= stats["dialogue_sentence_share"] <= 0.6
    assert stats["notice"] == NOTICE and "stand-in" in NOTICE


@pytest.mark.slow
def test_stories_are_well_formed(train_draw):
    bad = re.compile(r"[{}]|\ban an? |\ba an? |\s{3,}| \.|\.\.|\bnone\b")
    for story in train_draw[:3_000]:
        assert not bad.search(story), story
        assert story[0].isupper() and story.rstrip()[-1] in '.!?"'
        for paragraph in story.split("\n\n"):
            assert paragraph == paragraph.strip() and paragraph.lstrip('"')[0].isupper()


def test_the_hero_is_named_again_later():
    """Characters are referred back to: the hero's name comes back after the first paragraph."""
    for story in stories("train", 200, seed=1):
        first, rest = story.split("\n\n", 1)
        opening = first.split(". ")[0]                 # the hero is introduced in the first sentence
        name = re.search(r"(?:named|called) ([A-Z][a-z]+)", opening) or re.search(r"^([A-Z][a-z]+) was ", opening)
        assert name, opening
        assert name.group(1) in rest


def test_corpus_statistics_counts_what_it_says():
    stats = corpus_statistics(['Tom ran. "Hi!" said Sue.', "The dog ran home.\n\nIt slept."])
    assert stats["stories"] == 2 and stats["words"] == 11
    assert stats["distinct_words"] == 10              # "ran" twice
    assert stats["mean_words_per_story"] == 5.5
    assert stats["dialogue_story_share"] == 0.5
    assert stats["dialogue_sentence_share"] == pytest.approx(1 / 4)   # '"Hi!" said Sue.' is one sentence
    assert stats["mean_paragraphs"] == 1.5


def test_the_module_says_it_is_a_stand_in():
    assert "not the real" in grammar.__doc__.lower() and "not the real dataset" in NOTICE


@pytest.mark.slow
def test_a_bigger_model_learns_more_from_the_offline_corpus():
    """Headroom, the fast version of ``benchmarks/offline_headroom.py``: at equal steps a model with
    3.5x the ``tiny`` model's parameters ends at least 0.15 nats lower (measured: about 0.6)."""
    import dataclasses

    import torch

    from moe_helpers.accounting import count_parameters
    from moe_helpers.config import preset
    from moe_helpers.data import prepare_data
    from moe_helpers.model import GPT
    from moe_helpers.train import evaluate, train_phase

    tiny = preset("tiny")
    data = prepare_data("offline", vocab_size=tiny.model.vocab_size, limit=3_000, val_limit=200, verbose=False)
    config = tiny.train.replace(steps_phase1=200, eval_every=200, log_every=200, batch_size=16, seq_len=64,
                                device="cpu", precision="fp32")
    small_cfg = tiny.model
    big_cfg = dataclasses.replace(small_cfg, d_model=64, d_ff=128, n_heads=4, n_layers=3)
    losses, sizes = {}, {}
    for name, cfg in (("small", small_cfg), ("big", big_cfg)):
        torch.manual_seed(0)
        model = GPT(cfg)
        sizes[name] = count_parameters(model).total
        train_phase(model, data, config, progress=False, verbose=False)
        losses[name] = evaluate(model, data, 16, 64, batches=20)
    assert 3 <= sizes["big"] / sizes["small"] <= 4
    assert losses["big"] < losses["small"] - 0.15, losses


def test_a_character_is_the_same_in_every_story():
    """The world stays the same: a name of a kind always comes with the same pronouns, trait, toy, food, hobby."""
    import random

    facts_of = {}
    for index in range(3_000):
        story = grammar.Story(random.Random(index))
        for character in (story.h, story.f):
            facts = (character.he, character.trait, character.toy_full, character.food, character.hobby)
            assert facts_of.setdefault((character.kind, character.name), facts) == facts
    assert len(facts_of) > 400                                   # many characters, each met several times
    assert len({facts[2] for facts in facts_of.values()}) > 0.9 * len(facts_of)   # but not all alike
