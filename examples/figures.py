"""The paper's figures on our tasks, from the records that compare.py saved.

    python examples/figures.py --task text

activation_<task>.png  per-tensor activation frequency over training (paper Fig. 3), from
                       the slsam:0.2 run of the lowest seed
sparsity_<task>.png    test accuracy, step time and memory against the fraction of
                       parameters in backpropagation, one point per method (Fig. 1 and 4);
                       step time side by side from step_cost_<task>.json where measured
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from finetune import report

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=["text", "vision"], default="text")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--heatmap-method", default="slsam:0.2")
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in sorted((args.results / args.task).glob("*.json"))]
    if not runs:
        raise SystemExit(f"no records in {args.results / args.task}: run compare.py first")
    sparse = sorted((r for r in runs if r["method"]["spec"] == args.heatmap_method),
                    key=lambda r: r["seed"])
    if sparse:
        path = args.results / f"activation_{args.task}.png"
        report.plot_activation(sparse[0], path)
        print(f"wrote {path}")
    path = args.results / f"sparsity_{args.task}.png"
    cost_path = args.results / f"step_cost_{args.task}.json"
    cost = json.loads(cost_path.read_text())["seconds_per_step"] if cost_path.exists() else None
    report.plot_sparsity(runs, path, f"{args.task}: {runs[0]['steps']} steps, "
                         f"{runs[0]['machine']}, {runs[0]['date']}", cost)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
