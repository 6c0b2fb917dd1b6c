"""How fast, and in how much memory, are stories turned into training tokens?

For each story count N it builds a folder laid out like the hub's TinyStories
download (``moe_helpers.hub_fixture.write_hub_shaped_dir``: generated stories of
TinyStories' length) and measures, side by side in one run:

* ``cold``    ``prepare_data(folder, limit=N)`` with an empty cache: stream the
              stories, train the tokenizer on the first min(N, 50 k), tokenize with
              ``datasets.map`` into ``uint16`` token files (nanoGPT's way);
* ``cached``  the same call again, in a new process: the files are only checked
              (size, content hash) and opened;
* ``old``     the in-memory way this course used before: a list of stories,
              ``encode_stories`` into one Python list, ``torch.tensor`` of it
              (the same tokenizer, trained on the same stories).

Each variant runs in its own process, so its peak resident memory
(``VmHWM`` on Linux) is its own; memory is reported above the process's baseline
after imports, and per token of the train and validation streams.  ``old`` is
checked to produce exactly the tokens of ``cold``.  With ``num_proc`` > 1 the
tokenizing workers are reported separately (``workers``); they start as copies
of their parent, so their peak is taken above the parent's baseline too.

Targets, at every story count (the script exits non-zero when one is missed): the
old way yields exactly the same tokens; the second call is at least
``TARGET_CACHED_SPEEDUP`` times faster than the first; the cached way's peak stays
under ``TARGET_PEAK_MB`` above baseline (``tests/test_data_cache.py`` asserts the
same bound); the old way's peak is at least ``TARGET_MEMORY_SAVING`` times the
cached way's.

    python benchmarks/data_prep.py                 # 20 k and 100 k stories
    python benchmarks/data_prep.py --quick         # 5 k and 20 k
    python benchmarks/data_prep.py --stories 50000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB_SIZE = 2048                # the laptop preset's vocabulary
TOKENIZER_STORIES = 50_000       # prepare_data's default tokenizer_limit
VAL_FRACTION = 0.05              # validation stories per training story (prepare_data's default)
HUB_TRAIN_STORIES = 2_100_000    # roughly the hub's train split: the `seed` preset reads all of it
VARIANTS = ("cold", "cached", "old")
TARGET_CACHED_SPEEDUP = 20       # first call's seconds / second call's
TARGET_PEAK_MB = 600             # cold's peak above baseline, MB
TARGET_MEMORY_SAVING = 4         # old way's peak above baseline / cold's


def resident_mb() -> float:
    """Current resident memory of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb(who=resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MB (10^6 bytes).

    This process: its own high-water mark (``VmHWM``) on Linux, since Linux carries
    ``ru_maxrss`` across execve (it would count the parent that started us).  Its
    children (forked workers), or this process on macOS: ``ru_maxrss`` (KiB on Linux,
    bytes on macOS).
    """
    if who == resource.RUSAGE_SELF and os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024 / 1e6
    unit = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * unit / 1e6


# ----------------------------------------------------------------- one variant
def run_variant(variant: str, folder: str, stories: int) -> dict:
    """Measure one variant in this process (the cache folder comes from $MOE_COURSE_CACHE)."""
    import datasets, numpy, pyarrow.parquet, tokenizers, torch  # noqa: E401,F401  (in the baseline)
    from moe_helpers.data import load_stories, prepare_data, train_tokenizer

    val_stories = max(1, int(stories * VAL_FRACTION))
    baseline = resident_mb()
    started = time.perf_counter()
    if variant in ("cold", "cached"):
        data = prepare_data(folder, vocab_size=VOCAB_SIZE, limit=stories, val_limit=val_stories,
                            tokenizer_limit=TOKENIZER_STORIES, verbose=False)
        train, val = data.train, data.val
        cache_bytes = sum(path.stat().st_size + path.with_suffix(".json").stat().st_size
                          for path in (data.paths["train"], data.paths["validation"]))
        cache_bytes += data.paths["tokenizer"].stat().st_size
    else:
        train_texts = load_stories(folder, "train", limit=stories, verbose=False)
        val_texts = load_stories(folder, "validation", limit=val_stories, verbose=False)
        tokenizer = train_tokenizer(train_texts[:TOKENIZER_STORIES], VOCAB_SIZE, cache=False)
        train = torch.tensor(tokenizer.encode_stories(train_texts), dtype=torch.long)
        val = torch.tensor(tokenizer.encode_stories(val_texts), dtype=torch.long)
        cache_bytes = 0
    seconds = time.perf_counter() - started
    result = {"variant": variant, "stories": stories, "seconds": seconds, "tokens": len(train) + len(val),
              "train_tokens": len(train), "baseline_mb": baseline, "peak_mb": peak_mb(),
              "workers_peak_mb": peak_mb(resource.RUSAGE_CHILDREN), "cache_bytes": cache_bytes}
    if variant == "old":      # after the measurement: the same tokens as the cached files
        cached = prepare_data(folder, vocab_size=VOCAB_SIZE, limit=stories, val_limit=val_stories,
                              tokenizer_limit=TOKENIZER_STORIES, verbose=False)
        result["same_tokens"] = bool(numpy.array_equal(cached.train, train.numpy())
                                     and numpy.array_equal(cached.val, val.numpy()))
    return result


def measure(variant: str, folder: Path, stories: int, cache: Path) -> dict:
    """``run_variant`` in a fresh Python process, for a peak memory of its own."""
    environment = {**os.environ, "MOE_COURSE_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1",
                   "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, "--variant", variant, "--folder", str(folder),
                           "--stories", str(stories)], env=environment, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} with {stories} stories failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- the table
def print_table(results: list[dict]) -> None:
    print("| stories | variant | seconds | tokens | tokens/s | peak MB above baseline | bytes/token "
          "| workers' peak MB above baseline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in results:
        above = row["peak_mb"] - row["baseline_mb"]
        workers = row["workers_peak_mb"] - row["baseline_mb"]
        print(f"| {row['stories']:,} | {row['variant']} | {row['seconds']:.2f} | {row['tokens']:,} "
              f"| {row['tokens'] / row['seconds']:,.0f} | {above:.0f} | {above * 1e6 / row['tokens']:.1f} "
              f"| {f'{workers:.0f}' if workers > 0 else '-'} |")


def above_baseline(row: dict) -> float:
    return row["peak_mb"] - row["baseline_mb"]


def by_story_count(results: list[dict]):
    """``(stories, cold, cached, old)`` for each story count measured, smallest first."""
    by = {(row["stories"], row["variant"]): row for row in results}
    for stories in sorted({row["stories"] for row in results}):
        yield (stories, *(by[(stories, variant)] for variant in VARIANTS))


def print_summary(results: list[dict], folder_bytes: dict[int, int]) -> None:
    for stories, cold, cached, old in by_story_count(results):
        print(f"{stories:,} stories: {cold['train_tokens']:,} training tokens "
              f"({cold['train_tokens'] / stories:.0f} per story); parquet shards "
              f"{folder_bytes[stories] / 1e6:.1f} MB; cache {cold['cache_bytes'] / 1e6:.1f} MB; "
              f"cold {cold['seconds']:.1f} s, cached {cached['seconds']:.2f} s "
              f"({cold['seconds'] / cached['seconds']:.0f}x faster), old {old['seconds']:.1f} s; "
              f"old way's peak / cold's peak: {above_baseline(old) / above_baseline(cold):.1f}x; "
              f"same tokens: {old['same_tokens']}")
    largest, cold, _, _ = list(by_story_count(results))[-1]
    tokens_per_story = cold["tokens"] / (largest * (1 + VAL_FRACTION))
    full_tokens = tokens_per_story * HUB_TRAIN_STORIES
    print(f"Extrapolated from {largest:,} stories to {HUB_TRAIN_STORIES:,} (the seed preset's whole train split): "
          f"~{full_tokens / 1e6:,.0f} M tokens, a {full_tokens * 2 / 1e9:.2f} GB uint16 file, "
          f"~{full_tokens / (cold['tokens'] / cold['seconds']) / 60:.0f} min to prepare at the cold rate above")


def missed_targets(results: list[dict]) -> list[str]:
    """The targets (see the module's docstring) that a run missed, one line each."""
    missed = []
    for stories, cold, cached, old in by_story_count(results):
        if not old["same_tokens"]:
            missed.append(f"{stories:,}: the old way's tokens differ from the cached files'")
        if cold["seconds"] < TARGET_CACHED_SPEEDUP * cached["seconds"]:
            missed.append(f"{stories:,}: second call only {cold['seconds'] / cached['seconds']:.1f}x faster "
                          f"(target >= {TARGET_CACHED_SPEEDUP}x)")
        if above_baseline(cold) > TARGET_PEAK_MB:
            missed.append(f"{stories:,}: cached way's peak +{above_baseline(cold):.0f} MB (target <= {TARGET_PEAK_MB})")
        if above_baseline(old) < TARGET_MEMORY_SAVING * above_baseline(cold):
            missed.append(f"{stories:,}: old / cached peak {above_baseline(old) / above_baseline(cold):.1f}x "
                          f"(target >= {TARGET_MEMORY_SAVING}x)")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stories", type=int, nargs="+", help="story counts (default 20000 100000)")
    parser.add_argument("--quick", action="store_true", help="5 k and 20 k stories")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)   # one measurement (internal)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.folder, args.stories[0])))
        return 0
    counts = args.stories or ([5_000, 20_000] if args.quick else [20_000, 100_000])
    from moe_helpers.hub_fixture import write_hub_shaped_dir

    work = Path(tempfile.mkdtemp(prefix="moe-course-data-bench-"))
    results, folder_bytes = [], {}
    try:
        for stories in counts:
            folder = write_hub_shaped_dir(work / f"hub-{stories}", stories, max(1, int(stories * VAL_FRACTION)))
            folder_bytes[stories] = sum(path.stat().st_size for path in folder.rglob("*.parquet"))
            cache = work / f"cache-{stories}"
            for variant in VARIANTS:          # cold fills the cache that cached then reads
                results.append(measure(variant, folder, stories, cache))
                row = results[-1]
                print(f"  {stories:,} {variant}: {row['seconds']:.2f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"cpu cores: {os.cpu_count()}; vocab {VOCAB_SIZE}; validation {VAL_FRACTION:.0%} of the stories; "
          f"tokenizer trained on min(N, {TOKENIZER_STORIES:,}) stories")
    print_table(results)
    print_summary(results, folder_bytes)
    missed = missed_targets(results)
    print("all targets met" if not missed else "missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
