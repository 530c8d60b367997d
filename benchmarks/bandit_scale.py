"""How the SL-SAM bandit behaves as the gradient norms grow: the authors' loss
against ``normalize_loss=True``.

The authors' EXP3 loss is l_i = -(r_i/p_i)^2 (+ a constant that cancels), with
weight w_i = p_i * exp(-alpha * lhat_i / p_i). It is not scale-free: multiplying
every gradient norm r by c multiplies the exponent by c^2. Small norms leave the
bandit inert (the exponent is ~0: p stays uniform, nothing is learnt); large norms
make exp() underflow for every sampled arm but the one with the largest r/p, so
each step sends the others to the 1e-8 floor, where they starve: a winner-take-all
lottery that no longer follows the norms. ``normalize_loss`` divides r by its mean
over the active arms first: the same update at every scale, equal to the authors'
when mean(r) = 1 (so ``alpha`` becomes scale-free; with widely spread norms a
smaller alpha reproduces the authors' best regime at every scale).

For every scale in 1e-6 .. 1e4 this runs the bandit (the real kernels:
``slsam.ops.bandit_update_`` and ``sample_mask``) for T steps on n arms whose
norms are r_i = scale * b_i * noise (b_i ~ logN(0, spread): fixed per tensor,
tensors differ by factors of e^spread; noise ~ logN(0, 0.3) per step), for three
variants (authors' loss; normalized, same alpha; normalized, smaller alpha), over
several seeds. It reports, averaged over the second half of the run (the process
is noisy; a single snapshot is not a measurement) and over seeds:

- entropy H and effective number of arms exp(H) of p / sum(p) (at least k = s*n
  while sum(p) = k, since p <= 1; n for uniform);
- max p; arms starved (p < 1e-3: drawn less than once in a thousand steps) and
  capped (p = 1: drawn every step);
- the mean Bernoulli entropy of the arms relative to uniform (1: uniform, 0: a
  fixed 0/1 selection, no exploration left);
- Spearman correlation of p with the arms' norm factors b: what the bandit is
  meant to learn (importance sampling: p grows with r).

The distribution counts as collapsed at a scale when on average at least half the
arms are starved. Writes benchmarks/results/bandit_scale.{json,png}.

    python -m benchmarks.bandit_scale
    python -m benchmarks.bandit_scale --quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from slsam import ops

RESULTS = Path(__file__).resolve().parent / "results"
STARVED = 1e-3
KEYS = ["entropy", "effective_arms", "max_prob", "sum_prob", "starved", "capped",
        "bernoulli_entropy_ratio", "spearman_p_vs_norm"]


def stats(probs: torch.Tensor, base: torch.Tensor, s: float) -> dict[str, float]:
    q = probs / probs.sum()
    entropy = float(-(q * q.clamp_min(1e-300).log()).sum())
    p = probs.clamp(1e-300, 1 - 1e-16)
    bern = -(p * p.log() + (1 - p) * (1 - p).log())
    bern_uniform = -(s * math.log(s) + (1 - s) * math.log(1 - s))
    rank_p = probs.argsort().argsort().double()
    rank_b = base.argsort().argsort().double()
    spearman = float(torch.corrcoef(torch.stack([rank_p, rank_b]))[0, 1])
    return {
        "entropy": entropy,
        "effective_arms": math.exp(entropy),
        "max_prob": float(probs.max()),
        "sum_prob": float(probs.sum()),
        "starved": float((probs < STARVED).sum()),
        "capped": float((probs >= 1.0).sum()),
        "bernoulli_entropy_ratio": float(bern.mean()) / bern_uniform,
        "spearman_p_vs_norm": 0.0 if math.isnan(spearman) else spearman,
    }


def run(scale: float, normalize: bool, alpha: float, steps: int, n: int, s: float, seed: int,
        spread: float = 1.0, noise_sigma: float = 0.3, every: int = 10) -> dict[str, float]:
    """T bandit updates at one norm scale; statistics averaged over the second half."""
    g = torch.Generator().manual_seed(seed)
    base = torch.exp(spread * torch.randn(n, generator=g, dtype=torch.float64))
    probs = torch.full((n,), s, dtype=torch.float64)
    k = s * n
    samples: list[dict[str, float]] = []
    for t in range(1, steps + 1):
        mask = ops.sample_mask(probs, g)
        noise = torch.exp(noise_sigma * torch.randn(n, generator=g, dtype=torch.float64))
        norms = (scale * base * noise)[mask].float()
        ops.bandit_update_(probs, mask, norms, None, alpha, k, normalize)
        if t > steps // 2 and t % every == 0:
            samples.append(stats(probs, base, s))
    if not samples:
        samples.append(stats(probs, base, s))
    out = {key: sum(x[key] for x in samples) / len(samples) for key in KEYS}
    out["final_max_prob"] = float(probs.max())
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def mean_over_seeds(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in rows[0]:
        vals = [r[key] for r in rows]
        out[key] = sum(vals) / len(vals)
        out[key + "_min"] = min(vals)
        out[key + "_max"] = max(vals)
    return out


def collapsed_scales(scales: list[float], series: list[dict[str, Any]], n: int) -> list[float]:
    return [sc for sc, row in zip(scales, series, strict=False) if row["starved"] >= n / 2]


def first_collapse(scales: list[float], series: list[dict[str, Any]], n: int) -> float | None:
    """Smallest scale from which on every larger scale is collapsed."""
    for i, scale in enumerate(scales):
        if all(row["starved"] >= n / 2 for row in series[i:]):
            return scale
    return None


def plot(path: Path, scales: list[float], res: dict[str, list[dict[str, Any]]],
         labels: dict[str, str], n: int, k: float, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("effective_arms", f"effective arms exp(H) of p/sum(p)\n(dotted: n = {n}, k = {k:g})", None),
        ("max_prob", "max p", (0, 1.05)),
        ("starved", f"arms starved (p < {STARVED:g}), of {n}\n(dotted: n/2, collapse)", (0, n)),
        ("capped", "arms capped (p = 1)", None),
        ("bernoulli_entropy_ratio", "mean Bernoulli entropy / uniform\n(0: fixed selection)", (0, 1.05)),
        ("spearman_p_vs_norm", "Spearman(p, arm's norm factor)\n(what the bandit should learn)", (-0.5, 1)),
    ]
    colors = {"authors": "tab:red", "normalized": "tab:blue", "normalized_small_alpha": "tab:green"}
    markers = {"authors": "o", "normalized": "s", "normalized_small_alpha": "^"}
    fig, axes2d = plt.subplots(2, 3, figsize=(13, 7.4))
    axes = axes2d.ravel()
    for ax, (key, title, ylim) in zip(axes, panels, strict=False):
        for variant, rows in res.items():
            ax.plot(scales, [r[key] for r in rows], color=colors[variant], marker=markers[variant],
                    ms=3.5, lw=1.3, label=labels[variant])
            ax.fill_between(scales, [r[key + "_min"] for r in rows], [r[key + "_max"] for r in rows],
                            color=colors[variant], alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel("gradient norm scale")
        ax.set_title(title, fontsize=10)
        if ylim:
            ax.set_ylim(*ylim)
        if key == "effective_arms":
            ax.axhline(k, color="gray", ls=":", lw=1)
            ax.axhline(n, color="gray", ls=":", lw=1)
        if key == "starved":
            ax.axhline(n / 2, color="gray", ls=":", lw=1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="center left")
    fig.suptitle(f"SL-SAM bandit vs gradient norm scale: n = {n} arms, k = {k:g}, averaged over "
                 f"updates {steps // 2}..{steps} and seeds (band: min-max over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="bandit updates T (default 1000)")
    ap.add_argument("--arms", type=int, default=105, help="arms n (default 105: MiniLM's tensors)")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--alpha", type=float, default=1e-3, help="EXP3 rate (default: the authors' 1e-3)")
    ap.add_argument("--alpha-small", type=float, default=1e-5,
                    help="alpha of the third variant, normalized with a smaller rate (default 1e-5)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--per-decade", type=int, default=2, help="scales per decade over 1e-6..1e4")
    ap.add_argument("--spread", type=float, default=1.0,
                    help="sigma of log b_i, the arms' fixed norm factors (default 1)")
    ap.add_argument("--noise", type=float, default=0.3, help="sigma of the per-step log-noise")
    ap.add_argument("--quick", action="store_true", help="T = 300, 2 seeds, 1 scale per decade")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.per_decade = 300, 2, 1
    torch.set_num_threads(1)
    n, s = args.arms, args.sparsity
    k = s * n
    scales = [10.0 ** (e / args.per_decade) for e in range(-6 * args.per_decade, 4 * args.per_decade + 1)]
    variants = {"authors": (False, args.alpha), "normalized": (True, args.alpha),
                "normalized_small_alpha": (True, args.alpha_small)}
    labels = {"authors": f"authors' loss, alpha={args.alpha:g}",
              "normalized": f"normalize_loss, alpha={args.alpha:g}",
              "normalized_small_alpha": f"normalize_loss, alpha={args.alpha_small:g}"}
    res: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    print(f"n = {n} arms, s = {s}, k = {k:g}, T = {args.steps}, {args.seeds} seeds, "
          f"norms = scale * logN(0, {args.spread}) * logN(0, {args.noise}); "
          f"averages over updates {args.steps // 2}..{args.steps}")
    print(f"{'scale':>8}  {'variant':<23} {'eff.arms':>8} {'max p':>6} {'starved':>7} "
          f"{'capped':>6} {'bern.H':>6} {'spearman':>8}")
    for scale in scales:
        for variant, (normalize, alpha) in variants.items():
            rows = [run(scale, normalize, alpha, args.steps, n, s, seed, args.spread, args.noise)
                    for seed in range(args.seeds)]
            m = mean_over_seeds(rows)
            m["scale"] = scale
            res[variant].append(m)
            print(f"{scale:8.1e}  {variant:<23} {m['effective_arms']:8.1f} {m['max_prob']:6.3f} "
                  f"{m['starved']:7.1f} {m['capped']:6.1f} {m['bernoulli_entropy_ratio']:6.3f} "
                  f"{m['spearman_p_vs_norm']:8.3f}")
    summary = {v: {"collapsed_at_scales": collapsed_scales(scales, res[v], n),
                   "collapsed_from_scale_on": first_collapse(scales, res[v], n),
                   "max_starved": max(r["starved"] for r in res[v]),
                   "min_starved": min(r["starved"] for r in res[v])} for v in variants}
    for v in variants:
        on = summary[v]["collapsed_from_scale_on"]
        print(f"{v}: collapsed (>= n/2 starved) at {len(summary[v]['collapsed_at_scales'])} of "
              f"{len(scales)} scales; from {'-' if on is None else f'{on:.1e}'} on; starved "
              f"{summary[v]['min_starved']:.1f}..{summary[v]['max_starved']:.1f}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "bandit_scale",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "git_commit": git_commit()},
        "config": {"arms": n, "sparsity": s, "k": k, "alpha": args.alpha,
                   "alpha_small": args.alpha_small, "steps": args.steps, "seeds": args.seeds,
                   "norm_model": f"r_i = scale * b_i * noise, b_i ~ logN(0, {args.spread}), "
                                 f"noise ~ logN(0, {args.noise})",
                   "averaged_over": f"updates {args.steps // 2}..{args.steps}, every 10th",
                   "starved_below": STARVED},
        "collapse_definition": ">= n/2 arms starved (p < 1e-3), mean over the second half "
                               "of the run and over seeds",
        "summary": summary,
        "scales": scales,
        "results": res,
    }
    json_path = args.out_dir / "bandit_scale.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    png_path = args.out_dir / "bandit_scale.png"
    plot(png_path, scales, res, labels, n, k, args.steps)
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
