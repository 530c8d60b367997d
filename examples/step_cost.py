"""Each method's step cost, measured side by side: every method's model and optimizer live in
one process and take their timed steps in interleaved rounds (the order rotates each round), so
a slower or busier machine during the measurement touches every method alike.

The fine-tuning records time each run on its own, and on a shared machine a run's seconds per
step can move by 2x with the load of the moment. Training steps are not affected, so
``compare.py --step-cost`` reads the steps to reach an accuracy off the records and multiplies
them by the side-by-side step cost from this script.

    python examples/step_cost.py --task text
    python examples/step_cost.py --task vision --methods adamw sam slsam:0.2 --rounds 3

Writes <out>/step_cost_<task>.json: seconds per step per method (median over rounds), the
rounds' raw times, the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from compare import DEFAULT_METHODS, HERE
from finetune.cli import DEFAULTS
from finetune.loop import batches, machine
from finetune.methods import make_method
from finetune.tasks import Split, head_parameters, load_task, make_model
from torch import Tensor

import slsam

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is in requirements-dev.txt
    tqdm = None


def measure(task_name: str, methods: list[str], rounds: int, steps_per_round: int, warmup: int,
            quick: bool = False, seed: int = 0) -> dict:
    """Median seconds per step of each method over ``rounds`` interleaved rounds."""
    d = DEFAULTS[task_name]
    task = load_task(task_name, quick=quick)
    need = warmup + rounds * steps_per_round
    idx = batches(len(task.train), d.batch, need, seed)
    runners = {}
    for spec in methods:
        torch.manual_seed(seed)
        model = make_model(task)
        model.train()
        runners[spec] = (model, make_method(spec, model, head_parameters(model), d.lr, seed))

    def one_step(spec: str, i: int) -> None:
        model, method = runners[spec]
        b = task.train.take(idx[i])

        def loss_fn(second: bool, b: Split = b) -> Tensor:
            with slsam.running_stats_frozen(model, enabled=second):
                return F.cross_entropy(model(b.x, b.mask), b.y)
        method.step(loss_fn)

    for spec in methods:
        for i in range(warmup):
            one_step(spec, i)
    times: dict[str, list[float]] = {m: [] for m in methods}
    bar = tqdm(total=rounds * len(methods), desc=f"step cost {task_name}") if tqdm else None
    for r in range(rounds):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for spec in order:
            t0 = time.perf_counter()
            for k in range(steps_per_round):
                one_step(spec, warmup + r * steps_per_round + k)
            times[spec].append((time.perf_counter() - t0) / steps_per_round)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {"task": task_name, "rounds": rounds, "steps_per_round": steps_per_round,
            "warmup": warmup, "batch": d.batch,
            "seconds_per_step": {m: statistics.median(ts) for m, ts in times.items()},
            "raw": times, "machine": machine(), "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=["text", "vision"], default="text")
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small slices, 1 round of 1 step")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.steps_per_round, args.warmup = 1, 1, 1
    rec = measure(args.task, args.methods, args.rounds, args.steps_per_round, args.warmup,
                  quick=args.quick)
    out = args.out / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"step_cost_{args.task}.json"
    path.write_text(json.dumps(rec, indent=1))
    base = rec["seconds_per_step"].get("adamw")
    print(f"{args.task}: seconds per step, side by side ({rec['machine']}, {rec['date']})")
    for m, s in rec["seconds_per_step"].items():
        ratio = f"  {s / base:.2f}x AdamW" if base else ""
        print(f"  {m:24s} {s:.3f}{ratio}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
