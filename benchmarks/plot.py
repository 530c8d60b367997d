"""Plot step time and memory against sparsity from a ``benchmarks.step`` JSON file.

One row per model: left, the mean training-step time of slsam.SLSAM at each
sparsity (error bars: standard deviation over the timed steps) with the other
optimizers as horizontal lines; right, the optimizer-side memory (gradients +
backups + optimizer state) the same way. Writes a PNG next to the JSON file.

    python -m benchmarks.plot [benchmarks/results/step_cpu.json] [--out FILE.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from benchmarks.common import RESULTS  # noqa: E402

# optimizer -> (colour, line style) for the horizontal reference lines
REFERENCES = {
    "adamw": ("tab:gray", "--"),
    "adamw fused": ("tab:gray", ":"),
    "torch-sam loop": ("tab:red", "--"),
    "torch-sam foreach": ("tab:red", "-."),
    "torch-sam fused": ("tab:red", ":"),
    "slsam.SAM": ("tab:blue", "--"),
}


def latest_step_json() -> Path:
    files = sorted(RESULTS.glob("step_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no step_*.json in {RESULTS}: run `python -m benchmarks.step` first")
    return files[-1]


def plot(data: dict[str, Any], out: Path) -> Path:
    results = data["results"]
    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    mib = 2.0**20
    for row, model in enumerate(models):
        rs = [r for r in results if r["model"] == model]
        sl = sorted((r for r in rs if r["optimizer"] == "slsam.SLSAM"),
                    key=lambda r: r["sparsity"])
        for col, (key, unit, scale) in enumerate((("mean_s", "step time (s)", 1.0),
                                                  ("opt_side_bytes",
                                                   "optimizer-side memory (MiB)", mib))):
            ax = axes[row][col]
            # one line per distinct value: equal ones (e.g. the memory of every dense
            # SAM) share a line and a label
            lines: dict[float, list[str]] = {}
            for r in rs:
                if r["optimizer"] in REFERENCES:
                    lines.setdefault(round(r[key] / scale, 3), []).append(r["optimizer"])
            for y, names in lines.items():
                color, style = REFERENCES[names[0]]
                ax.axhline(y, color=color, linestyle=style, linewidth=1.2,
                           label=" = ".join(names))
            if sl:
                xs = [r["sparsity"] for r in sl]
                ys = [r[key] / scale for r in sl]
                err = [r["std_s"] for r in sl] if key == "mean_s" else None
                ax.errorbar(xs, ys, yerr=err, color="tab:green", marker="o", linewidth=2,
                            capsize=3, label="slsam.SLSAM")
                if key == "opt_side_bytes":  # what it becomes once AdamW state is full
                    adamw = next((r for r in rs if r["optimizer"] == "adamw"), None)
                    if adamw is not None:
                        steady = [(r["grad_bytes"] + r["backup_bytes"] + adamw["state_bytes"])
                                  / scale for r in sl]
                        ax.plot(xs, steady, color="tab:green", linestyle=":", marker=".",
                                label="slsam.SLSAM, full AdamW state")
            port = [r for r in rs if r["optimizer"] == "torch-slsam"]
            if port:
                ax.plot([r["sparsity"] for r in port], [r[key] / scale for r in port],
                        "s", color="tab:orange", label="torch-slsam (plain PyTorch)")
            ax.set_xscale("log")
            ax.set_xticks([0.05, 0.1, 0.2, 0.5, 1.0])
            ax.set_xticklabels(["0.05", "0.1", "0.2", "0.5", "1"])
            ax.set_xlabel("sparsity s (expected fraction of tensors active)")
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            n = rs[0]["n_tensors"]
            p = rs[0]["n_params"] / 1e6
            ax.set_title(f"{model} ({n} tensors, {p:.1f}M params): "
                         f"{'step time' if col == 0 else 'memory'}")
        axes[row][1].legend(fontsize=7, loc="lower right")
        axes[row][0].legend(fontsize=7, loc="lower right")
    m = data.get("machine", {})
    cfg = data.get("config", {})
    threads = m.get("torch_num_threads", "?")
    fig.suptitle(f"{m.get('cpu_model', '?')}, {threads} thread{'' if threads == 1 else 's'}, "
                 f"torch {m.get('torch', '?')}, {cfg.get('device', '?')}, batch "
                 f"{cfg.get('batch', '?')}x{cfg.get('seq', '?')}, {cfg.get('steps', '?')} "
                 f"timed steps, {m.get('date', '')}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", type=Path, default=None,
                    help="a step JSON (default: the newest benchmarks/results/step_*.json)")
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: next to JSON)")
    args = ap.parse_args(argv)
    src = args.json or latest_step_json()
    data = json.loads(src.read_text())
    out = plot(data, args.out or src.with_suffix(".png"))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
