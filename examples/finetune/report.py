"""Time-to-accuracy tables and the figures, from the runs' JSON records."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Run = dict[str, Any]


def time_to(curve: list[dict[str, float]], target: float, key: str = "t") -> float | None:
    """Training seconds (or, with key="step", steps) at the first evaluation with test accuracy
    >= target (None: never)."""
    for pt in curve:
        if pt["test_acc"] >= target - 1e-12:
            return pt[key]
    return None


def by_method(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        out[r["method"]["spec"]].append(r)
    return dict(out)


def _ms(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    """Per method: final accuracy, time and step time (mean, std over seeds), the time to reach
    SAM's and AdamW's final mean accuracy (mean over the seeds that reach it) and its ratio to
    SAM's own time, active fraction, optimizer state (moments, backups, stored directions)
    and peak process memory."""
    groups = by_method(runs)
    targets = {k: _ms([r["final_test_acc"] for r in groups[k]])[0] for k in ("sam", "adamw")
               if k in groups}
    sam_time = _ms([r["train_seconds"] for r in groups["sam"]])[0] if "sam" in groups else math.nan
    rows = []
    for spec, rs in groups.items():
        row: dict[str, Any] = {"method": spec, "seeds": len(rs)}
        row["acc"], row["acc_std"] = _ms([r["final_test_acc"] for r in rs])
        row["seconds"], row["seconds_std"] = _ms([r["train_seconds"] for r in rs])
        row["s_per_step"], _ = _ms([r["seconds_per_step"] for r in rs])
        row["active"], _ = _ms([r["active_fraction"] for r in rs])
        row["extra_rss_mib"], _ = _ms([r["extra_rss_mib"] for r in rs])
        row["peak_rss_mib"], _ = _ms([r["peak_rss_mib"] for r in rs])
        row["state_mib"], _ = _ms([r["optimizer_state_mib"] for r in rs])
        for name, target in targets.items():
            times = [t for r in rs if (t := time_to(r["curve"], target)) is not None]
            row[f"to_{name}"], row[f"to_{name}_std"] = _ms(times)
            row[f"to_{name}_reached"] = len(times)
            row[f"to_{name}_vs_sam_time"] = row[f"to_{name}"] / sam_time
        rows.append(row)
    return rows


def _fmt(v: float, std: float | None = None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "never"
    s = f"{v:.{digits}f}"
    return s if std is None else f"{s} ± {std:.{digits}f}"


def _reach(r: dict[str, Any], k: str) -> str:
    if r.get(f"to_{k}_reached") is None:
        return "-"
    if not r[f"to_{k}_reached"]:
        return f"never (0/{r['seeds']})"
    ratio = f", {r[f'to_{k}_vs_sam_time']:.2f}x" if k == "sam" else ""
    return f"{_fmt(r[f'to_{k}'], r[f'to_{k}_std'], 0)}{ratio} ({r[f'to_{k}_reached']}/{r['seeds']})"


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``summary`` rows."""
    head = ("| method | test acc | train time s | s/step | time to SAM's acc (x SAM's time, "
            "seeds) | time to AdamW's acc (seeds) | active params | optimizer state MiB | "
            "peak RSS MiB |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_fmt(r['acc'], r['acc_std'])} | "
            f"{_fmt(r['seconds'], r['seconds_std'], 0)} | {r['s_per_step']:.3f} | "
            f"{_reach(r, 'sam')} | {_reach(r, 'adamw')} | {r['active']:.2f} | "
            f"{r['state_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def cost_rows(runs: list[Run], step_cost: dict[str, float]) -> list[dict[str, Any]]:
    """Per method: the steps to reach SAM's and AdamW's final mean accuracy (read off the
    records, mean over the seeds that reach it) times the method's side-by-side step cost
    (``step_cost.py``): the time to accuracy without the load each run happened to share its
    machine with."""
    groups = by_method(runs)
    targets = {k: _ms([r["final_test_acc"] for r in groups[k]])[0] for k in ("sam", "adamw")
               if k in groups}
    sam_total = groups["sam"][0]["steps"] * step_cost["sam"] if "sam" in step_cost and "sam" in \
        groups else math.nan
    rows = []
    for spec, rs in groups.items():
        if spec not in step_cost:
            continue
        row: dict[str, Any] = {"method": spec, "seeds": len(rs), "s_per_step": step_cost[spec]}
        row["vs_adamw"] = step_cost[spec] / step_cost["adamw"] if "adamw" in step_cost else math.nan
        for name, target in targets.items():
            steps = [s for r in rs if (s := time_to(r["curve"], target, "step")) is not None]
            row[f"steps_to_{name}"], _ = _ms(steps)
            row[f"steps_to_{name}_reached"] = len(steps)
            row[f"cost_to_{name}"] = row[f"steps_to_{name}"] * step_cost[spec]
            row[f"cost_to_{name}_vs_sam"] = row[f"cost_to_{name}"] / sam_total
        rows.append(row)
    return rows


def cost_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``cost_rows``."""
    def reach(r: dict[str, Any], k: str) -> str:
        if not r[f"steps_to_{k}_reached"]:
            return f"never (0/{r['seeds']})"
        return (f"{r[f'steps_to_{k}']:.0f} steps, {r[f'cost_to_{k}']:.0f} s, "
                f"{r[f'cost_to_{k}_vs_sam']:.2f}x ({r[f'steps_to_{k}_reached']}/{r['seeds']})")
    lines = ["| method | s/step side by side (x AdamW) | to SAM's acc: steps, time, x SAM's "
             "run (seeds) | to AdamW's acc: steps, time, x SAM's run (seeds) |",
             "|" + " --- |" * 4]
    for r in rows:
        lines.append(f"| {r['method']} | {r['s_per_step']:.3f} ({r['vs_adamw']:.2f}x) | "
                     f"{reach(r, 'sam')} | {reach(r, 'adamw')} |")
    return "\n".join(lines)


def plot_curves(runs: list[Run], path: Path, title: str) -> None:
    """Test accuracy against training wall-clock time, mean over seeds (shaded: min..max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    for spec, rs in by_method(runs).items():
        end = min(r["curve"][-1]["t"] for r in rs)
        grid = np.linspace(0, end, 60)
        ys = np.array([np.interp(grid, [p["t"] for p in r["curve"]],
                                 [p["test_acc"] for p in r["curve"]]) for r in rs])
        (line,) = ax.plot(grid, ys.mean(0), label=f"{spec} ({len(rs)} seeds)")
        ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("training wall-clock time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    lo = min(p["test_acc"] for r in runs for p in r["curve"][1:]) if runs else 0
    ax.set_ylim(max(0.0, lo - 0.02), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_activation(run: Run, path: Path, bins: int = 10) -> None:
    """Per-tensor activation frequency over training (tensors x time), as the paper's Fig. 3,
    beside each tensor's final selection probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array([[c == "1" for c in s] for s in run["masks"]], dtype=float)  # steps x arms
    edges = np.linspace(0, len(m), bins + 1).astype(int)
    freq = np.stack([m[a:b].mean(0) for a, b in zip(edges[:-1], edges[1:], strict=False) if b > a], axis=1)
    probs = np.array(run["final_probs"])[:, None]
    fig, (ax, axp) = plt.subplots(1, 2, figsize=(9, 10), width_ratios=[6, 1], sharey=True)
    im = ax.imshow(freq, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axp.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    names = [n.removeprefix("encoder.").removeprefix("net.") for n in run["arms"]]
    step = max(1, len(names) // 50)
    ax.set_yticks(range(0, len(names), step))
    ax.set_yticklabels([names[i][-40:] for i in range(0, len(names), step)], fontsize=6)
    ax.set_xticks(range(freq.shape[1]))
    ax.set_xticklabels([f"{a}-{b}" for a, b in zip(edges[:-1], edges[1:], strict=False)], fontsize=7,
                       rotation=45)
    ax.set_xlabel("training steps")
    axp.set_xticks([0])
    axp.set_xticklabels(["final p"])
    fig.suptitle(f"{run['task']} {run['method']['spec']} seed {run['seed']}: fraction of steps each "
                 "tensor was active", fontsize=10)
    fig.colorbar(im, ax=axp, fraction=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sparsity(runs: list[Run], path: Path, title: str,
                  step_cost: dict[str, float] | None = None) -> None:
    """Accuracy, step time and memory against the fraction of parameters in backpropagation
    (the paper's Fig. 1 and 4): one point per method, mean over seeds. The step time is the
    side-by-side one (``step_cost``) where measured, else the runs' own (hollow marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary(runs)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for r in rows:
        x = r["active"]
        kind = r["method"].split(":")[0].split("@")[0]
        marker = {"slsam": "o", "uniform": "s", "sam": "*", "adamw": "^"}.get(kind, "D")
        side = (step_cost or {}).get(r["method"])
        step = side if side is not None else r["s_per_step"]
        for i, (ax, y) in enumerate(zip(axes, (r["acc"], step, r["extra_rss_mib"]), strict=True)):
            hollow = i == 1 and side is None and step_cost is not None
            ax.scatter(x, y, marker=marker, s=60 if kind != "sam" else 140,
                       facecolors="none" if hollow else None,
                       edgecolors="black" if hollow else None)
            ax.annotate(r["method"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    step_label = "seconds per step (side by side)" if step_cost else "seconds per step"
    labels = ("test accuracy", step_label, "extra memory over start (MiB)")
    for ax, lab in zip(axes, labels, strict=False):
        ax.set_xlabel("fraction of parameters in backpropagation")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
