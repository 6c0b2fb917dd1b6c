"""Does every phase of ``make run`` still teach the model something?  The three-phase run, phase by phase.

On a corpus with too little to learn, phases 2 and 3 only polish what phase 1 already
knew, and the course's claim -- a bigger, upcycled and grown model keeps learning -- is
not tested.  This script runs exactly what ``make run`` runs (``run_pipeline`` with the
``laptop`` preset: 300 + 100 + 100 steps) on the offline corpus, or on the data given
with ``--data``, into a temporary folder, prints each phase's validation loss at its
start and end, and exits non-zero unless phases 2 and 3 each lower it by at least
``--margin`` nats (default 0.05).  It also checks what the run measures at each
transition (upcycling, then growth): the validation loss moves by less than 1e-5 and
no logit by 1e-4 or more (the run itself stops only at a jump of 1e-3).

    OMP_NUM_THREADS=2 python benchmarks/phase_gains.py            # ~2.5 min on 2 CPU cores
    OMP_NUM_THREADS=2 python benchmarks/phase_gains.py --data /shared/tinystories
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile

from moe_helpers.pipeline import run_pipeline

JUMP_TARGET, LOGITS_TARGET = 1e-5, 1e-4     # |loss after - loss before|, max |delta logits| at a transition


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="offline", help="offline (default), hub, a hub-shaped folder or a file")
    parser.add_argument("--margin", type=float, default=0.05, help="nats phases 2 and 3 must each gain")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        summary = run_pipeline("laptop", args.data, out=f"{out}/run", progress=False)
    print(f"make run (laptop preset) on {summary['data']}: validation loss by phase")
    failed = False
    for entry in summary["phases"]:
        gain = entry["start_val_loss"] - entry["final_val_loss"]
        needed = args.margin if entry["phase"] > 1 else 0.0
        failed |= gain < needed
        print(f"  phase {entry['phase']} ({entry['steps']} steps): {entry['start_val_loss']:.3f} -> "
              f"{entry['final_val_loss']:.3f}, {gain:.3f} nats lower"
              + (f" (target >= {needed})" if needed else ""))
        if entry["jump"] is not None:
            kept = abs(entry["jump"]) < JUMP_TARGET and entry["max_abs_logit_diff"] < LOGITS_TARGET
            failed |= not kept
            print(f"    entering it: loss jump {abs(entry['jump']):.1e} (target < {JUMP_TARGET:g}), "
                  f"max |delta logits| {entry['max_abs_logit_diff']:.1e} (target < {LOGITS_TARGET:g})")
    print("FAIL: a phase learned too little or a transition changed the model's function" if failed
          else "OK: every phase lowered the validation loss enough, every transition kept the function")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
