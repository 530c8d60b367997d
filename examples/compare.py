"""Does SL-SAM pay off? Accuracy against wall-clock time on the real fine-tuning tasks.

Runs every method on the same data, batches and learning-rate schedule for several
seeds (each run in its own process, so peak memory is its own; seeds outermost, so a
drift in machine speed touches every method alike), then prints and writes the
time-to-accuracy table and the accuracy-against-time plot.

    python examples/compare.py --task text --seeds 0 1 2
    python examples/compare.py --task vision --methods adamw sam slsam:0.2 --seeds 0
    python examples/compare.py --task text --quick          # smoke run, a few steps
    python examples/compare.py --task text --report-only    # tables/plots from saved runs
    python examples/compare.py --demo                       # `make demo`: short, one process

With <out>/step_cost_<task>.json present (``step_cost.py``), a second table gives the time to
accuracy at the methods' side-by-side step cost (steps read off the records).

Records: <out>/<task>/<method>_seed<k>.json; summary: <out>/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from finetune import report
from finetune.cli import DEFAULTS

HERE = Path(__file__).resolve().parent
DEFAULT_METHODS = ["adamw", "sam", "slsam:0.2", "slsam:0.5", "uniform:0.2", "uniform:0.5",
                   "rst:0.5", "looksam:5"]
DEMO = dict(task="text", methods=["adamw", "sam", "slsam:0.2", "slsam:0.2@lrscale=1"], seeds=[0],
            steps=60, eval_every=15.0, in_process=True)


def run_file(out: Path, task: str, method: str, seed: int) -> Path:
    safe = method.replace(":", "-").replace("@", "_").replace("=", "").replace(",", "_")
    return out / task / f"{safe}_seed{seed}.json"


def run_in_process(args: argparse.Namespace, method: str, seed: int, path: Path) -> None:
    from finetune.loop import train
    from finetune.tasks import load_task

    if not hasattr(args, "_task"):
        args._task = load_task(args.task, quick=args.quick)
    rec = train(args._task, method, seed, args.steps, args.batch, args.lr, args.eval_every)
    rec["quick"] = bool(args.quick)
    print(f"{args.task} {method} seed {seed}: test acc {rec['final_test_acc']:.4f} in "
          f"{rec['train_seconds']:.1f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def run_subprocess(args: argparse.Namespace, method: str, seed: int, path: Path) -> None:
    cmd = [sys.executable, str(HERE / f"finetune_{args.task}.py"), "--method", method,
           "--seed", str(seed), "--threads", str(args.threads), "--out", str(path),
           "--steps", str(args.steps), "--batch", str(args.batch), "--lr", str(args.lr),
           "--eval-every", str(args.eval_every)]
    if args.quick:
        cmd.append("--quick")
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=["text", "vision"], default="text")
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="default: the task's")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--eval-every", type=float, default=None,
                    help="seconds of training between test evaluations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a few steps on small slices")
    ap.add_argument("--in-process", action="store_true",
                    help="all runs in this process (faster start; peak memory is then shared)")
    ap.add_argument("--demo", action="store_true",
                    help="short text comparison in one process, all threads (make demo)")
    ap.add_argument("--resume", action="store_true", help="skip runs whose record exists")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--name", default=None, help="summary file stem (default compare_<task>)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if args.demo:
        for k, v in DEMO.items():
            setattr(args, k, v)
        args.threads = torch.get_num_threads()
        args.out = args.out / "demo"
    d = DEFAULTS[args.task]
    args.steps = d.quick_steps if args.quick else (args.steps or d.steps)
    args.batch = args.batch or d.batch
    args.lr = args.lr or d.lr
    args.eval_every = 1.0 if args.quick else (args.eval_every or d.eval_every)
    torch.set_num_threads(args.threads)
    out = args.out / ("quick" if args.quick else "")
    runs = []
    started = time.time()
    for seed in args.seeds:
        for method in args.methods:
            path = run_file(out, args.task, method, seed)
            if not args.report_only and not (args.resume and path.exists()):
                print(f"[{time.time() - started:6.0f} s] {args.task} {method} seed {seed}", flush=True)
                (run_in_process if args.in_process else run_subprocess)(args, method, seed, path)
            if path.exists():
                runs.append(json.loads(path.read_text()))
    if not runs:
        sys.exit("no runs recorded")
    rows = report.summary(runs)
    md = report.table(rows)
    first = runs[0]
    header = (f"{args.task}: {first['steps']} steps, batch {first['batch']}, lr {first['lr']}, "
              f"seeds {sorted({r['seed'] for r in runs})}; {first['machine']}; {first['date']}")
    print("\n" + header + "\n" + md)
    summary: dict = {"header": header, "rows": rows}
    cost_path = out / f"step_cost_{args.task}.json"
    if cost_path.exists():
        cost = json.loads(cost_path.read_text())
        summary["cost_rows"] = report.cost_rows(runs, cost["seconds_per_step"])
        cost_md = report.cost_table(summary["cost_rows"])
        cost_header = (f"At the side-by-side step cost (step_cost.py: {cost['machine']}; "
                       f"{cost['date']}):")
        print("\n" + cost_header + "\n" + cost_md)
        md += "\n\n" + cost_header + "\n\n" + cost_md
    stem = args.name or f"compare_{args.task}"
    (out / f"{stem}.md").write_text(header + "\n\n" + md + "\n")
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    report.plot_curves(runs, out / f"{stem}.png", header.split(";")[0])
    print(f"wrote {out / stem}.md/.json/.png ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
