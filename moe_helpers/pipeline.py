"""The three-phase TinyStories run of the original note, as a command.

    python -m moe_helpers train --preset laptop --out runs/laptop

Phase 1 trains a dense model; ``upcycle`` turns it into an MoE (phase 2);
``grow`` widens and deepens that MoE ("bilateral growth", phase 3).  Each
phase prints the note's banner and log lines; each transition measures the
loss jump on fixed held-out batches and stops the run if it exceeds the
tolerance (a jump means the growth operator is broken).  Checkpoints are
written atomically, and ``--resume`` continues from the newest one.  At the
end of each phase the model is also saved for Hugging Face ``transformers``
(``hf/phaseN``: ``LlamaForCausalLM`` / ``MixtralForCausalLM`` and the tokenizer).

    python -m moe_helpers export runs/laptop --phase 2 --out export/laptop-moe

writes the same from a finished run's checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from .accounting import count_parameters, phase_banner, training_memory
from .distributed import DataParallel, full_state_dict, leave_process_group
from .config import PRECISIONS, ModelConfig, Preset, preset, preset_names
from .data import prepare_preset_data
from .growth import grow, preservation_report, upcycle
from .model import GPT
from .train import History, evaluate_config, pick_device, resolve_precision, train_phase

PHASE_TITLES = {1: "Phase 1 \u2014 Dense", 2: "Phase 2 \u2014 MoE",
                3: "Phase 3 \u2014 Large MoE (Bilateral Growth)"}
DATA_CHOICES = ("auto", "offline", "hub")
JUMP_TOLERANCE = 1e-3          # the original note: "if it's < 0.001, bilateral growth is working"
TOKENIZER_FILE = "tokenizer.json"


class RunError(Exception):
    """A run that cannot start or go on; the message says why and what to do."""


class CheckpointError(RunError):
    pass


class JumpError(RunError):
    pass


# ----------------------------------------------------------------- settings
def configure(preset_name: str = "laptop", *, experts: int | None = None, top_k: int | None = None,
              width_factor: int | None = None, new_layers: int | None = None, **train_overrides) -> Preset:
    """The named preset with command-line overrides applied (and validated)."""
    base = preset(preset_name)
    changes = {name: value for name, value in dict(num_experts=experts, top_k=top_k, width_factor=width_factor,
                                                   new_layers=new_layers).items() if value is not None}
    train_changes = {name: value for name, value in train_overrides.items() if value is not None}
    chosen = dataclasses.replace(base, train=base.train.replace(**train_changes), **changes)
    chosen.phase_configs()   # validates experts / top-k / growth factors
    return chosen


def print_banner(chosen: Preset, phase: int, counts, device: torch.device) -> str:
    """The phase banner, with the memory the phase needs at the run's precision."""
    train = chosen.train
    precision = resolve_precision(train.precision, device)
    memory = training_memory(chosen.phase_configs()[phase - 1], train.micro_batch_size, train.seq_len, precision)
    return phase_banner(PHASE_TITLES[phase], counts, train.steps(phase), train.lr(phase), device.type,
                        memory=memory)


def dry_run(chosen: Preset) -> list:
    """Print the three banners from models built on the meta device (no memory, no training)."""
    counts = []
    for phase, cfg in enumerate(chosen.phase_configs(), start=1):
        with torch.device("meta"):
            model = GPT(cfg)
        counts.append(count_parameters(model))
        print_banner(chosen, phase, counts[-1], pick_device(chosen.train.device))
    print("(dry run: models built on the meta device; nothing was trained)")
    return counts


# -------------------------------------------------------------- checkpoints
def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)


def save_checkpoint(path: Path, payload: dict) -> None:
    _atomic_write(path, lambda target: torch.save(payload, target))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with ``weights_only=True``; a clear error if it is unreadable."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    missing = {"phase", "completed", "model_config", "model", "history", "summary", "settings"} - set(payload)
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a moe-course checkpoint (missing {sorted(missing)})")
    return payload


def _settings(chosen: Preset, data_source: str) -> dict:
    """What must match between a checkpoint and the run that resumes it."""
    # the device and the micro-batching may change between a run and its resumption
    return {"preset": chosen.name, "data": data_source, "num_experts": chosen.num_experts,
            "top_k": chosen.top_k, "width_factor": chosen.width_factor, "new_layers": chosen.new_layers,
            "train": dataclasses.asdict(chosen.train) | {"device": None, "grad_accum": None}}


# -------------------------------------------------------------------- run
class Run:
    """One three-phase run writing into ``out``."""

    def __init__(self, chosen: Preset, out: Path, data_source: str, progress: bool = True,
                 parallel: DataParallel | None = None):
        self.chosen, self.out, self.progress, self.parallel = chosen, Path(out), progress, parallel
        self.is_main = parallel is None or parallel.is_main       # the rank that prints and writes
        self.device = pick_device(chosen.train.device) if parallel is None else parallel.device
        self.configs = chosen.phase_configs()
        self.checkpoints = self.out / "checkpoints"
        self.data_source = data_source
        self.history = History()
        self.summary: list[dict] = []
        self.data = None                          # TokenData, prepared once the run starts
        self.pending_jump: dict | None = None     # the jump into the phase being trained

    # ---- files
    def _payload(self, model: GPT, phase: int, completed: bool, train_state: dict | None) -> dict:
        return {"phase": phase, "completed": completed, "model_config": dataclasses.asdict(model.cfg),
                "model": full_state_dict(model), "train_state": train_state, "history": self.history.records,
                "summary": self.summary, "pending_jump": self.pending_jump,
                "settings": _settings(self.chosen, self.data_source)}

    def write_checkpoint(self, model: GPT, phase: int, completed: bool, train_state: dict | None = None):
        """Every rank calls it (a sharded model's weights are gathered); rank 0 writes.  The file
        is the same whatever the number of ranks, so a run can resume with another number."""
        payload = self._payload(model, phase, completed, train_state)
        if not self.is_main:
            return
        save_checkpoint(self.checkpoints / "latest.pt", payload)
        if completed:
            save_checkpoint(self.checkpoints / f"phase{phase}.pt", payload)
        self.write_metrics()

    def write_metrics(self) -> None:
        lines = "".join(json.dumps(record) + "\n" for record in self.history.records)
        _atomic_write(self.out / "metrics.jsonl", lambda target: target.write_text(lines))

    def write_summary(self, ok: bool) -> dict:
        report = {"preset": self.chosen.name, "data": self.data.source, "device": str(self.device),
                  "precision": resolve_precision(self.chosen.train.precision, self.device),
                  "ok": ok, "phases": self.summary}
        _atomic_write(self.out / "summary.json", lambda target: target.write_text(json.dumps(report, indent=2)))
        return report

    def write_plots(self) -> None:
        """loss_curve.png and expert_utilisation.png, drawn without pyplot so that
        the caller's backend and open figures (a notebook's) are left alone."""
        from matplotlib.figure import Figure

        from .plots import plot_expert_utilisation, plot_phases

        jumps = {entry["phase"]: entry["jump"] for entry in self.summary if entry.get("jump") is not None}
        figure = Figure(figsize=(9, 4.5), layout="constrained")
        plot_phases(self.history, jumps, ax=figure.subplots())
        figure.savefig(self.out / "loss_curve.png", dpi=120, bbox_inches="tight")
        loads = [(f"end of phase {r['phase']}", r["expert_load"]) for r in self._last_records() if r["expert_load"]]
        if loads:
            figure = Figure(figsize=(6 * len(loads), 3.5), layout="constrained")
            for ax, (title, load) in zip(figure.subplots(1, len(loads), squeeze=False)[0], loads):
                plot_expert_utilisation(load, ax=ax, title=f"Expert utilisation, {title}")
            figure.savefig(self.out / "expert_utilisation.png", dpi=120, bbox_inches="tight")

    def _last_records(self) -> list[dict]:
        """The last log record of each phase."""
        return [[r for r in self.history.records if r["phase"] == phase][-1] for phase in self.history.phases]

    # ---- phases
    def start(self, resume: bool) -> tuple[GPT, int, dict | None]:
        """The model to train, its phase, and the mid-phase training state (None at a phase start)."""
        if not resume:
            torch.manual_seed(self.chosen.train.seed)
            return GPT(self.configs[0]), 1, None
        state = load_checkpoint(self.checkpoints / "latest.pt")
        expected = _settings(self.chosen, self.data_source)
        if state["settings"] != expected:
            differing = sorted(k for k in expected if state["settings"].get(k) != expected[k])
            raise CheckpointError(f"checkpoint {self.checkpoints / 'latest.pt'} was written with other "
                                  f"settings ({', '.join(differing)}); resume with the same options")
        model = GPT(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        self.history, self.summary = History(list(state["history"])), list(state["summary"])
        self.pending_jump = state.get("pending_jump")
        print(f"Resuming from {self.checkpoints / 'latest.pt'}: phase {state['phase']}"
              + (" (completed)" if state["completed"] else f", step {state['train_state']['step']}"))
        if state["completed"]:
            return model, state["phase"] + 1, None
        return model, state["phase"], state["train_state"]

    def transition(self, model: GPT, phase: int) -> GPT:
        """Upcycle (phase 2) or grow (phase 3), measuring the jump on fixed held-out batches
        in float32 whatever the training precision."""
        chosen, train = self.chosen, self.chosen.train.replace(device=str(self.device))
        if phase == 2:
            grown = upcycle(model, chosen.num_experts, chosen.top_k, seed=train.seed)
        else:
            grown = grow(model, chosen.width_factor, chosen.new_layers, seed=train.seed)
        grown.to(self.device)
        model.to(self.device)
        loss_before, loss_after = evaluate_config(model, self.data, train), evaluate_config(grown, self.data, train)
        batch = self.data.batch("val", train.micro_batch_size, train.seq_len, self.device,
                                torch.Generator().manual_seed(99))
        report = preservation_report(model, grown, *batch)
        jump = loss_after - loss_before
        ok = abs(jump) < JUMP_TOLERANCE
        verdict = "\u2713 <" if ok else "\u2717 >="
        print(f"\n  Phase {phase - 1}\u2192{phase} jump: {abs(jump):.6f}  {verdict} {JUMP_TOLERANCE}"
              f"   (max |\u0394logits| {report.max_abs_logit_diff:.1e})\n")
        self.pending_jump = {"jump": jump, "loss_before": loss_before, "loss_after": loss_after,
                             "max_abs_logit_diff": report.max_abs_logit_diff}
        if not ok:
            raise JumpError(f"the phase {phase - 1}\u2192{phase} loss jump {jump:+.6f} exceeds {JUMP_TOLERANCE}: "
                            "the growth step did not preserve the model's function")
        return grown

    def train(self, model: GPT, phase: int, train_state: dict | None) -> GPT:
        """Train one phase; returns the trained model, plain (unsharded) on every rank."""
        train = self.chosen.train
        counts = count_parameters(model)
        print_banner(self.chosen, phase, counts, self.device)
        settings = train.replace(seed=train.seed + phase)
        if self.parallel is not None:
            settings = settings.replace(device=str(self.device))
            model = self.parallel.shard(model)
        train_phase(model, self.data, settings, phase, history=self.history,
                    progress=self.progress and self.is_main, verbose=self.is_main, resume=train_state,
                    on_checkpoint=lambda state: self.write_checkpoint(model, phase, False, state),
                    parallel=self.parallel)
        if self.parallel is not None:
            model = self.parallel.gather(model)
        records = [r for r in self.history.records if r["phase"] == phase]
        evaluated = [r for r in records if r["val_loss"] is not None]
        phase_seconds = records[-1]["seconds"]
        tokens = train.steps(phase) * train.batch_size * train.seq_len
        if self.is_main:
            story = self.sample_story(model)
            (self.out / f"story_phase{phase}.txt").write_text(story + "\n")
            print(f"\n  Story after phase {phase}:\n  {story[:400]}\n")
        start_val, final_val = evaluated[0]["val_loss"], evaluated[-1]["val_loss"]
        print(f"  Phase {phase} validation loss: {start_val:.3f} \u2192 {final_val:.3f} "
              f"({final_val - start_val:+.3f} nats)\n")
        entry = {"phase": phase, "title": PHASE_TITLES[phase], "total_params": counts.total,
                 "active_params": counts.active, "steps": train.steps(phase), "lr": train.lr(phase),
                 "final_train_loss": records[-1]["train_loss"], "start_val_loss": start_val,
                 "final_val_loss": final_val,
                 "tokens_per_second": tokens / max(phase_seconds, 1e-9), "wall_seconds": phase_seconds}
        entry.update(self.pending_jump or {"jump": None})
        self.pending_jump = None
        self.summary.append(entry)
        self.write_checkpoint(model, phase, completed=True)
        if self.is_main:
            self.export_hf(model, phase)
        return model

    def export_hf(self, model: GPT, phase: int) -> Path | None:
        """Save the phase's model for ``transformers`` in ``hf/phase{phase}``; a model that
        Llama / Mixtral cannot express is skipped with the reason (the checkpoint keeps it)."""
        from .hf import save_hf

        target = self.out / "hf" / f"phase{phase}"
        try:
            save_hf(model, self.data.tokenizer, target)
        except ValueError as reason:
            print(f"  Not exported for transformers: {reason}\n")
            return None
        print(f"  Saved for transformers: {target}\n")
        return target

    def sample_story(self, model: GPT, prompt: str = "Once upon a time", tokens: int = 120) -> str:
        tokenizer = self.data.tokenizer
        idx = torch.tensor([tokenizer.encode(prompt)], device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.chosen.train.seed)
        out = model.generate(idx, tokens, temperature=0.8, top_k=50, generator=generator)[0].tolist()
        if tokenizer.eot_id in out[idx.shape[1]:]:
            out = out[:idx.shape[1] + out[idx.shape[1]:].index(tokenizer.eot_id)]
        return tokenizer.decode(out)


def run_pipeline(preset_name: str = "laptop", data: str = "auto", out="runs/laptop", *, resume: bool = False,
                 progress: bool = True, parallel: DataParallel | None = None, **overrides) -> dict:
    """Run (or resume) the three phases; returns the summary written to ``out/summary.json``.

    ``overrides``: the options of ``configure`` (experts, growth, and any
    ``TrainConfig`` field such as ``steps_phase2``, ``device``, ``precision``).
    ``parallel``: this process's rank under ``torchrun`` (data parallel, FSDP2);
    every rank runs this function, rank 0 alone writes."""
    chosen = configure(preset_name, **overrides)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise RunError(f"{out} already exists and is not empty; pass --resume to continue it, "
                       "or choose another --out")
    if resume and not (out / "checkpoints" / "latest.pt").exists():
        raise CheckpointError(f"nothing to resume: {out / 'checkpoints' / 'latest.pt'} does not exist")
    if data not in DATA_CHOICES and not Path(data).exists():
        raise RunError(f"unknown data source {data!r}: choose {', '.join(DATA_CHOICES)}, an existing file path "
                       "or a hub-shaped folder")
    if parallel is not None:
        parallel.check_experts(chosen.num_experts)
        parallel.check_batch(chosen.train.micro_batch_size)
    run = Run(chosen, out, data, progress, parallel)
    model, phase, train_state = run.start(resume)       # reads the checkpoint before anything is written
    if parallel is not None:
        parallel.barrier()                              # every rank has checked `out` before rank 0 writes
    if run.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        run.data = prepare_preset_data(chosen, data)    # rank 0 prepares the token cache ...
    if parallel is not None:
        parallel.barrier()
        if not run.is_main:                             # ... the others open it
            run.data = prepare_preset_data(chosen, data)
    if run.data.tokenizer.vocab_size > chosen.model.vocab_size:
        raise RunError(f"the tokenizer has {run.data.tokenizer.vocab_size} tokens, more than the model's "
                       f"vocab_size {chosen.model.vocab_size}")
    if run.is_main:
        run.data.tokenizer.save(out / TOKENIZER_FILE)   # for `export` and for reading the run later
    model.to(run.device)
    while phase <= 3:
        if model.cfg != run.configs[phase - 1]:
            model = run.transition(model, phase)
        model = run.train(model, phase, train_state)
        phase, train_state = phase + 1, None
    if not run.is_main:
        return {}
    run.write_plots()
    return run.write_summary(ok=True)


# ------------------------------------------------------------------- export
def export_run(run_dir, out, phase: int | None = None) -> Path:
    """Write the model of a run's completed ``phase`` (default: the last one completed) and
    the run's tokenizer to ``out`` as a ``transformers`` folder (``moe_helpers.hf.save_hf``)."""
    from .data import StoryTokenizer
    from .hf import save_hf

    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    completed = sorted(int(path.stem[len("phase"):]) for path in checkpoints.glob("phase[123].pt"))
    if not completed:
        raise RunError(f"{run_dir} has no completed phase to export (no checkpoints/phase1.pt, phase2.pt or "
                       "phase3.pt); is it the --out folder of a `train` run?")
    if phase is None:
        phase = completed[-1]
    elif phase not in completed:
        raise RunError(f"phase {phase} of {run_dir} is not completed; completed: "
                       f"{', '.join(map(str, completed))}")
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.exists():
        raise RunError(f"{tokenizer_path} is missing: the run's tokenizer is needed to export it")
    state = load_checkpoint(checkpoints / f"phase{phase}.pt")
    model = GPT(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    tokenizer = StoryTokenizer.from_json(tokenizer_path.read_text())
    return save_hf(model.eval(), tokenizer, out)


# ------------------------------------------------------------------ command
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moe_helpers", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run the three phases: dense -> MoE -> large MoE",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--preset", choices=preset_names(), default="laptop",
                       help="model and training sizes: tiny (seconds), laptop (minutes on a CPU), "
                            "seed (the original note's 100 M / 371 M models; a GPU job)")
    train.add_argument("--data", default="auto",
                       help="auto ($MOE_COURSE_DATA if set, else the hub if reachable, else offline), offline "
                            "(generated stand-in), hub, a folder laid out like the hub's TinyStories "
                            "(data/train-*.parquet, data/validation-*.parquet), or a TinyStories "
                            ".txt/.jsonl/.json/.parquet file")
    for phase, default_lr in ((1, "3e-4"), (2, "1e-4"), (3, "8e-5")):
        train.add_argument(f"--steps-phase{phase}", type=int, help=f"optimiser steps of phase {phase} "
                           "(default: the preset's)")
        train.add_argument(f"--lr-phase{phase}", type=float, help=f"peak learning rate of phase {phase} "
                           f"(default: the preset's; the original note used {default_lr})")
    train.add_argument("--log-every", type=int, help="log a line every N steps (default: the preset's)")
    train.add_argument("--experts", type=int, help="experts per MoE layer in phases 2-3")
    train.add_argument("--top-k", type=int, help="experts each token is routed to")
    train.add_argument("--width-factor", type=int, help="phase 3: multiply d_model, heads and FFN widths by this")
    train.add_argument("--new-layers", type=int, help="phase 3: insert this many identity blocks")
    train.add_argument("--device", default=None,
                       help="auto, cpu, cuda, cuda:N or mps (default auto: CUDA, then Apple MPS, then the CPU)")
    train.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="auto (default): bf16 autocast on CUDA with float32 weights, float32 elsewhere; "
                            "jump checks always evaluate in float32")
    train.add_argument("--grad-accum", type=int, default=None,
                       help="split each step's batch into N micro-batches (same global batch, less memory)")
    train.add_argument("--out", default=None, help="output folder (default: runs/<preset>)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.add_argument("--dry-run", action="store_true",
                       help="print the three phase banners from meta-device models and exit")
    train.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    train.add_argument("--expert-parallel", action="store_true",
                       help="under torchrun: each rank keeps experts / ranks whole experts and token slots travel "
                            "to them (all-to-all); everything else is sharded with FSDP2")
    export = commands.add_parser("export", help="save a run's model for Hugging Face transformers",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    export.add_argument("run_dir", help="the --out folder of a train run")
    export.add_argument("--phase", type=int, choices=(1, 2, 3), help="which phase's model (default: the last "
                        "completed one)")
    export.add_argument("--out", required=True, help="folder to write (config, safetensors, tokenizer)")
    return parser


def export_main(args) -> int:
    try:
        path = export_run(args.run_dir, args.out, args.phase)
    except (RunError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Saved for transformers: {path}\n"
          f"  load:  AutoModelForCausalLM.from_pretrained({str(path)!r}), AutoTokenizer.from_pretrained(...)\n"
          f"  share: hf upload <your-name>/<model-name> {path}   (huggingface_hub < 1.0: huggingface-cli upload)")
    return 0


@contextmanager
def _terminate_like_ctrl_c():
    """While active, SIGTERM stops the run as Ctrl-C does: at the end of the current step, with a
    checkpoint.  It is what torchrun sends its workers when it is stopped, and what job schedulers
    send before they preempt a job.  Yields the list of SIGTERMs received."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        signal.raise_signal(signal.SIGINT)      # handled by training's Ctrl-C flag, or KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        return export_main(args)
    overrides = dict(experts=args.experts, top_k=args.top_k, width_factor=args.width_factor,
                     new_layers=args.new_layers, steps_phase1=args.steps_phase1, steps_phase2=args.steps_phase2,
                     steps_phase3=args.steps_phase3, lr_phase1=args.lr_phase1, lr_phase2=args.lr_phase2,
                     lr_phase3=args.lr_phase3, log_every=args.log_every, seed=args.seed, device=args.device,
                     precision=args.precision, grad_accum=args.grad_accum)
    out = args.out or f"runs/{args.preset}"
    parallel = None if args.dry_run else DataParallel.from_environment(args.expert_parallel)
    if args.expert_parallel and parallel is None and not args.dry_run:
        print("error: --expert-parallel needs several processes: launch with torchrun --nproc-per-node N "
              "(N >= 2)", file=sys.stderr)
        return 2
    if parallel is not None and not parallel.is_main:
        sys.stdout = open(os.devnull, "w")              # rank 0 alone prints (errors still reach stderr)
    with _terminate_like_ctrl_c() as terminated:
        try:
            if args.dry_run:
                dry_run(configure(args.preset, **overrides))
                return 0
            run_pipeline(args.preset, args.data, out, resume=args.resume, progress=not args.no_progress,
                         parallel=parallel, **overrides)
        except KeyboardInterrupt:
            print(f"\n{'Terminated' if terminated else 'Interrupted'}. A checkpoint is in {out}/checkpoints; "
                  f"continue with --resume.", file=sys.stderr)
            return 143 if terminated else 130                  # the shells' codes for SIGTERM and SIGINT
        except FloatingPointError as error:
            print(f"\nStopped: {error}. The last good checkpoint is kept in {out}/checkpoints.", file=sys.stderr)
            return 4
        except JumpError as error:
            print(f"\nStopped: {error}", file=sys.stderr)
            return 3
        except (RunError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        finally:
            if parallel is not None:
                leave_process_group()
    print(f"\nDone: metrics, plots, stories, summary, checkpoints and the transformers export (hf/) "
          f"are in {out}/")
    return 0
