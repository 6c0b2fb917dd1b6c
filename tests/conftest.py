"""Shared set-up for the unit tests.

The whole test session runs offline and away from the user's home directory:

* ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1``, so no test waits on the
  network (a test that wants the real hub probe unsets them itself);
* ``MOE_COURSE_CACHE`` (cached tokenizers and token files) and the Hugging
  Face caches point at a temporary folder that is removed when the session
  ends, and ``MOE_COURSE_DATA`` is unset, so ``"auto"`` never picks up a
  classroom's shared download;
* torch uses one CPU thread unless ``OMP_NUM_THREADS`` says otherwise: the
  test models are tiny, and on a busy 2-core machine two spinning OpenMP
  threads per process made single forward passes up to a hundred times slower.

The environment is set in ``pytest_configure``, before any test module is
imported, because ``datasets`` reads its offline flag and cache folder once,
when it is first imported.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from moe_helpers.config import ModelConfig, preset

# The repository's tools (tools/locked_versions.py, tools/render_notebooks.py) are tested too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

TINY_STORY_LIMIT = 600      # stories of the offline corpus used by the `tiny` data set
HUB_TRAIN_STORIES = 100_000  # stories in the hub-shaped folder's two train shards
HUB_VAL_STORIES = 5_000      # and in its validation shard

_session_folder: Path | None = None


def pytest_configure(config):
    global _session_folder
    _session_folder = Path(tempfile.mkdtemp(prefix="moe-course-tests-"))
    os.environ["MOE_COURSE_CACHE"] = str(_session_folder / "moe-course")
    os.environ["HF_HOME"] = str(_session_folder / "huggingface")
    os.environ["HF_DATASETS_CACHE"] = str(_session_folder / "huggingface" / "datasets")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.pop("MOE_COURSE_DATA", None)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def pytest_unconfigure(config):
    if _session_folder is not None:
        shutil.rmtree(_session_folder, ignore_errors=True)


# ------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def tiny_preset():
    """The ``tiny`` preset: model and training settings that run in seconds."""
    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_story_limit():
    """How many training stories of the offline corpus the `tiny` data set uses."""
    return TINY_STORY_LIMIT


@pytest.fixture(scope="session")
def tiny(tiny_preset):
    """Token data from the offline corpus with the ``tiny`` preset's vocabulary.

    Built once per session: the first ``TINY_STORY_LIMIT`` training stories,
    a tokenizer trained on them, and the validation stories it holds out.
    """
    from moe_helpers.data import prepare_data

    return prepare_data("offline", vocab_size=tiny_preset.model.vocab_size,
                        limit=TINY_STORY_LIMIT, verbose=False)


@pytest.fixture(scope="session")
def hub_dir(tmp_path_factory):
    """A folder laid out like the hub's TinyStories download, built once per session (~2 s).

    ``HUB_TRAIN_STORIES`` distinct generated stories of TinyStories' length in
    ``data/train-0000{0,1}-of-00002-*.parquet`` and ``HUB_VAL_STORIES`` in
    ``data/validation-00000-of-00001-*.parquet``, plus a top-level ``.txt`` as
    the real download has, which must never be read.
    """
    from moe_helpers.data import EOT
    from moe_helpers.hub_fixture import write_hub_shaped_dir

    folder = write_hub_shaped_dir(tmp_path_factory.mktemp("tinystories-hub"), HUB_TRAIN_STORIES,
                                  HUB_VAL_STORIES, seed=0, train_shards=2)
    (folder / "TinyStories-train.txt").write_text(f"A decoy story in the wrong file.\n{EOT}\n")
    return folder


@pytest.fixture(scope="session")
def hub_story_counts():
    """(train, validation) stories in ``hub_dir``."""
    return HUB_TRAIN_STORIES, HUB_VAL_STORIES


# ------------------------------------------------------------ command runs
@pytest.fixture(scope="session")
def tiny_run() -> list[str]:
    """Arguments of ``python -m moe_helpers train`` for a three-phase run of the ``tiny`` preset
    in seconds (30 + 20 + 20 steps, no progress bars); the session's environment keeps it offline
    and its caches in the session's folder. Append options to change it (the last one wins)."""
    return ["--preset", "tiny", "--no-progress", "--steps-phase1", "30", "--steps-phase2", "20",
            "--steps-phase3", "20"]


# ----------------------------------------------------------------- configs
@pytest.fixture(scope="session")
def tiny_dense_config():
    """A dense model small enough for exact, fast checks."""
    return ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=16)


@pytest.fixture(scope="session")
def tiny_moe_config(tiny_dense_config):
    """The dense config upcycled into 4 experts, top-2."""
    return tiny_dense_config.upcycled(num_experts=4, top_k=2)


@pytest.fixture(scope="session")
def tiny_gqa_config(tiny_dense_config):
    """Grouped-query attention: 4 query heads share 2 key/value heads."""
    return tiny_dense_config.replace(n_kv_heads=2)


@pytest.fixture
def token_ids(tiny_dense_config):
    """A fixed batch of token ids (2, 12) for the tiny configs' vocabulary."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, tiny_dense_config.vocab_size, (2, 12), generator=generator)
