"""The command line of one fine-tuning run (``finetune_text.py``, ``finetune_vision.py``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .loop import train
from .tasks import load_task


@dataclass(frozen=True)
class Defaults:
    steps: int
    batch: int
    lr: float
    eval_every: float
    quick_steps: int = 6


TEXT = Defaults(steps=100, batch=16, lr=1e-4, eval_every=20.0)
VISION = Defaults(steps=100, batch=32, lr=5e-4, eval_every=20.0)
DEFAULTS = {"text": TEXT, "vision": VISION}


def parser(task: str, d: Defaults, doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--method", default="slsam:0.2",
                    help="adamw | sam | slsam:S | uniform:S | slsam1p:S | rst:P | looksam:K (see methods.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--eval-every", type=float, default=d.eval_every,
                    help="seconds of training between test evaluations")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a few steps on a small slice ({d.quick_steps} steps): a smoke run")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the run's record")
    return ap


def main(task: str, d: Defaults, doc: str | None) -> dict:
    args = parser(task, d, doc).parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = d.quick_steps if args.quick else args.steps
    data = load_task(task, quick=args.quick)
    rec = train(data, args.method, args.seed, steps, args.batch, args.lr,
                1.0 if args.quick else args.eval_every, progress=not args.no_progress)
    rec["quick"] = bool(args.quick)
    print(f"{task} {args.method} seed {args.seed}: test acc {rec['final_test_acc']:.4f} "
          f"(val {rec['val_acc']:.4f}) after {steps} steps, {rec['train_seconds']:.1f} s training, "
          f"{rec['seconds_per_step']:.3f} s/step, active {rec['active_fraction']:.2f}, "
          f"peak RSS {rec['peak_rss_mib']:.0f} MiB [{rec['machine']}]")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rec))
    return rec
