"""Micro-benchmarks: slsam's operators and the optimizer-side work of one step.

Two sections, both timed with ``torch.utils.benchmark`` in the same process,
so the ratios printed compare measurements taken side by side:

``ops``
    each slsam operator (``grad_norms``, ``perturb_``, ``restore_``,
    ``restore_adamw_``, ``bandit_update_``, ``sample_mask``) against a plain
    Python loop over the tensors and the best ``torch._foreach_*`` (or fused
    ``torch.optim`` kernel) equivalent, for lists of 100, 1000 and 10000
    tensors shaped like a transformer's (see ``common.model_like_shapes``;
    ~25M elements in all, 2.5M with ``--quick``), in fp32 and bf16.
``step``
    the whole optimizer-side work of one SAM / SL-SAM step -- norms, perturb,
    restore, base update, bandit, next mask -- with ``.grad`` set by hand (no
    forward/backward), for slsam.SAM, slsam.SLSAM and the pure-PyTorch
    baselines of ``benchmarks/baselines.py``, plus AdamW alone for scale, on
    MiniLM's 105 shapes and on the model-like lists.

Run ``python -m benchmarks.micro --help``.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam
from torch.utils import benchmark

import slsam
from benchmarks import baselines
from benchmarks.common import (
    fmt_time,
    machine_info,
    minilm_shapes,
    model_like_shapes,
    numel,
    table,
    two_call_step,
    write_json,
)
from slsam import ops, reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ADAM = dict(lr=1e-4, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8)
TARGET_RATIO = 1 / 3  # slsam.SAM optimizer-side time / foreach pure-PyTorch SAM, 1000+ tensors


@dataclass
class Row:
    section: str
    case: str  # operator or optimizer
    impl: str
    shapes: str
    n: int
    numel: int
    dtype: str
    device: str
    median_s: float
    iqr_s: float
    runs: int


def make(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: str,
         gen: torch.Generator, scale: float = 1.0) -> list[Tensor]:
    out = []
    for s in shapes:
        t = torch.randn(s, generator=gen, dtype=torch.float32) * scale
        out.append(t.to(device=device, dtype=dtype))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Bench:
    """Collects ``torch.utils.benchmark`` measurements and our own rows."""

    def __init__(self, min_run_time: float, device: str) -> None:
        self.min_run_time = min_run_time
        self.device = device
        self.measurements: list[benchmark.Measurement] = []
        self.rows: list[Row] = []

    def time(self, fn: Callable[[], Any], *, section: str, case: str, impl: str,
             shapes: str, n: int, n_el: int, dtype: str, warmup: int = 2) -> Row:
        for _ in range(warmup):
            fn()
        sync(self.device)
        timer = benchmark.Timer(
            stmt="fn(); sync(device)", globals={"fn": fn, "sync": sync, "device": self.device},
            label=f"{section}: {case}", sub_label=f"{shapes} n={n} {dtype}", description=impl,
            num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=self.min_run_time)
        self.measurements.append(m)
        row = Row(section, case, impl, shapes, n, n_el, dtype, self.device, m.median, m.iqr,
                  len(m.times))
        self.rows.append(row)
        return row


# ----- section 1: the operators -----


def bench_ops(b: Bench, n: int, total: int, dtype_name: str, seed: int) -> None:
    dtype, dev = DTYPES[dtype_name], b.device
    shapes = model_like_shapes(n, total)
    n_el = numel(shapes)
    gen = torch.Generator().manual_seed(seed)
    params = make(shapes, dtype, dev, gen)
    grads = make(shapes, dtype, dev, gen, 1e-3)
    backups = [torch.empty_like(p) for p in params]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), dtype=torch.float32, device=dev) for _ in params]
    _, total_norm = ops.grad_norms(grads)
    rho = 0.05
    kw: dict[str, Any] = dict(section="ops", shapes="model-like", n=n, n_el=n_el,
                              dtype=dtype_name)

    def adam(kind: dict[str, bool]) -> None:
        torch_adam(
            params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
            beta1=ADAM["beta1"], beta2=ADAM["beta2"], lr=ADAM["lr"],
            weight_decay=ADAM["weight_decay"], eps=ADAM["eps"], maximize=False,
            decoupled_weight_decay=True, **kind)

    # grad_norms
    def norms_loop() -> Tensor:
        ns = [torch.linalg.vector_norm(g, 2, dtype=torch.float32) for g in grads]
        return torch.linalg.vector_norm(torch.stack(ns))

    def norms_foreach() -> Tensor:
        return torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(grads, 2.0, dtype=torch.float32)))

    b.time(lambda: ops.grad_norms(grads), case="grad_norms", impl="slsam", **kw)
    b.time(norms_loop, case="grad_norms", impl="loop", **kw)
    b.time(norms_foreach, case="grad_norms", impl="foreach", **kw)

    # perturb_ (the baselines read the scale once: .item(), then a scalar alpha)
    def perturb_loop() -> None:
        scale = rho / (float(total_norm) + 1e-12)
        for p, g, bk in zip(params, grads, backups, strict=False):
            bk.copy_(p)
            p.add_(g, alpha=scale)

    def perturb_foreach() -> None:
        scale = rho / (float(total_norm) + 1e-12)
        torch._foreach_copy_(backups, params)
        torch._foreach_add_(params, grads, alpha=scale)

    b.time(lambda: ops.perturb_(params, grads, backups, total_norm, rho),
           case="perturb_", impl="slsam", **kw)
    b.time(perturb_loop, case="perturb_", impl="loop", **kw)
    b.time(perturb_foreach, case="perturb_", impl="foreach", **kw)

    # restore_
    def restore_loop() -> None:
        for p, bk in zip(params, backups, strict=False):
            p.copy_(bk)

    b.time(lambda: ops.restore_(params, backups), case="restore_", impl="slsam", **kw)
    b.time(restore_loop, case="restore_", impl="loop", **kw)
    b.time(lambda: torch._foreach_copy_(params, backups), case="restore_", impl="foreach", **kw)

    # restore_adamw_ vs restore + torch's AdamW (single-tensor, foreach, fused)
    def restore_adamw_slsam() -> None:
        ops.restore_adamw_(params, backups, grads, exp_avgs, exp_avg_sqs, steps,
                           ADAM["lr"], ADAM["beta1"], ADAM["beta2"], ADAM["weight_decay"],
                           ADAM["eps"])

    def restore_adamw_loop() -> None:
        restore_loop()
        adam(dict(foreach=False))

    def restore_adamw_foreach() -> None:
        torch._foreach_copy_(params, backups)
        adam(dict(foreach=True))

    def restore_adamw_fused() -> None:
        torch._foreach_copy_(params, backups)
        adam(dict(fused=True))

    b.time(restore_adamw_slsam, case="restore_adamw_", impl="slsam", **kw)
    b.time(restore_adamw_loop, case="restore_adamw_", impl="loop", **kw)
    b.time(restore_adamw_foreach, case="restore_adamw_", impl="foreach", **kw)
    b.time(restore_adamw_fused, case="restore_adamw_", impl="fused", **kw)


def bench_bandit(b: Bench, n: int, seed: int, sparsity: float = 0.2) -> None:
    """bandit_update_ and sample_mask: one fp64 vector of n arms (dtype-free)."""
    dev = b.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    probs = torch.full((n,), sparsity, dtype=torch.float64, device=dev)
    mask = reference.sample_mask(probs, gen)
    norms = torch.rand(int(mask.sum()), generator=torch.Generator().manual_seed(seed)) + 0.1
    norms = norms.to(dev)
    k = sparsity * n
    kw: dict[str, Any] = dict(section="ops", shapes="arms", n=n, n_el=n, dtype="fp64")
    rng = np.random.default_rng(seed)
    p_np = probs.cpu().numpy()

    def host_update() -> None:  # the authors' way: norms to numpy, update, back
        p = numpy_probs[0]
        numpy_probs[0] = baselines.numpy_bandit_update(
            p, mask.cpu().numpy(), norms.cpu().numpy(), 1e-3, k)
        probs_t.copy_(torch.from_numpy(numpy_probs[0]))

    numpy_probs = [p_np.copy()]
    probs_t = probs.clone()
    p_slsam, p_ref = probs.clone(), probs.clone()
    b.time(lambda: ops.bandit_update_(p_slsam, mask, norms, None, 1e-3, k),
           case="bandit_update_", impl="slsam", **kw)
    b.time(host_update, case="bandit_update_", impl="loop", **kw)
    b.time(lambda: reference.bandit_update_(p_ref, mask, norms, None, 1e-3, k),
           case="bandit_update_", impl="foreach", **kw)

    b.time(lambda: ops.sample_mask(probs, gen), case="sample_mask", impl="slsam", **kw)
    b.time(lambda: torch.from_numpy(baselines.numpy_sample_mask(p_np, rng)).to(dev),
           case="sample_mask", impl="loop", **kw)
    b.time(lambda: reference.sample_mask(probs, gen), case="sample_mask", impl="foreach", **kw)


# ----- section 2: the optimizer-side work of a whole step -----


def optimizers(with_compile: bool) -> dict[str, Callable[[list[Tensor]], Any]]:
    """name -> factory(params). Names are also the JSON ``impl`` field."""
    lr, wd = ADAM["lr"], ADAM["weight_decay"]
    facts: dict[str, Callable[[list[Tensor]], Any]] = {
        "adamw (default=for-loop on CPU)": lambda ps: torch.optim.AdamW(ps, lr=lr,
                                                                        weight_decay=wd),
        "adamw foreach": lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, foreach=True),
        "adamw fused": lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, fused=True),
        "torch-sam loop": lambda ps: baselines.TorchSAM(ps, impl="loop", lr=lr, weight_decay=wd),
        "torch-sam foreach": lambda ps: baselines.TorchSAM(ps, impl="foreach", lr=lr,
                                                           weight_decay=wd),
        "torch-sam fused": lambda ps: baselines.TorchSAM(ps, impl="fused", lr=lr,
                                                         weight_decay=wd),
    }
    if with_compile:
        facts["torch-sam compile"] = lambda ps: baselines.TorchSAM(ps, impl="compile", lr=lr,
                                                                   weight_decay=wd)
    facts.update({
        "slsam.SAM": lambda ps: slsam.SAM(ps, lr=lr, weight_decay=wd),
        "torch-slsam s=0.2": lambda ps: baselines.TorchSLSAM(ps, sparsity=0.2, lr=lr,
                                                             weight_decay=wd),
        "slsam.SLSAM s=0.2": lambda ps: slsam.SLSAM(ps, sparsity=0.2, lr=lr, weight_decay=wd,
                                                    seed=0),
    })
    return facts


def bench_steps(b: Bench, shapes: list[tuple[int, ...]], shapes_name: str, dtype_name: str,
                seed: int, with_compile: bool) -> None:
    dtype, dev = DTYPES[dtype_name], b.device
    gen = torch.Generator().manual_seed(seed)
    params = [t.requires_grad_() for t in make(shapes, dtype, dev, gen)]
    g1 = make(shapes, dtype, dev, gen, 1e-3)
    g2 = make(shapes, dtype, dev, gen, 1e-3)
    kw: dict[str, Any] = dict(section="step", case="optimizer-side step", shapes=shapes_name,
                              n=len(shapes), n_el=numel(shapes), dtype=dtype_name)
    for name, factory in optimizers(with_compile).items():
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        opt = factory(params)

        if name.startswith("adamw"):
            def fn(opt: Any = opt) -> None:
                for p, g in zip(params, g2, strict=False):
                    p.grad = g
                opt.step()
        else:
            def fn(opt: Any = opt) -> None:
                two_call_step(opt, params, g1, g2)

        b.time(fn, impl=name, warmup=3, **kw)
        del opt, fn
        gc.collect()
    for p in params:
        p.requires_grad_(True)
        p.grad = None


# ----- reporting -----


def median(rows: list[Row], **match: Any) -> float | None:
    for r in rows:
        if all(getattr(r, k) == v for k, v in match.items()):
            return r.median_s
    return None


def ratio_table(rows: list[Row]) -> tuple[str, list[dict[str, Any]]]:
    """Per operator and list: slsam's time and each baseline's time / slsam's."""
    out_rows, records = [], []
    keys = sorted({(r.case, r.shapes, r.n, r.dtype) for r in rows if r.section == "ops"},
                  key=lambda k: (k[0], k[2], k[3]))
    for case, _shapes, n, dtype in keys:
        mine = median(rows, section="ops", case=case, n=n, dtype=dtype, impl="slsam")
        if mine is None:
            continue
        rec: dict[str, Any] = dict(case=case, n=n, dtype=dtype, slsam_s=mine)
        cells = [case, str(n), dtype, fmt_time(mine)]
        for impl in ("loop", "foreach", "fused"):
            t = median(rows, section="ops", case=case, n=n, dtype=dtype, impl=impl)
            rec[f"{impl}_over_slsam"] = None if t is None else t / mine
            cells.append("-" if t is None else f"{fmt_time(t)} ({t / mine:.2f}x)")
        out_rows.append(cells)
        records.append(rec)
    header = ["operator", "tensors", "dtype", "slsam", "loop (x slower)",
              "foreach/vectorised (x)", "fused torch (x)"]
    return table(out_rows, header), records


def step_table(rows: list[Row]) -> tuple[str, list[dict[str, Any]]]:
    keys = sorted({(r.shapes, r.n, r.dtype) for r in rows if r.section == "step"},
                  key=lambda k: (k[1], k[2]))
    out_rows, records = [], []
    for shapes, n, dtype in keys:
        sel = [r for r in rows if r.section == "step" and r.n == n and r.dtype == dtype
               and r.shapes == shapes]
        ref = median(sel, impl="torch-sam foreach")
        sam = median(sel, impl="slsam.SAM")
        for r in sel:
            rel = "-" if ref is None else f"{r.median_s / ref:.2f}"
            rel_sam = "-" if sam is None else f"{r.median_s / sam:.2f}"
            out_rows.append([f"{shapes} n={n}", dtype, r.impl, fmt_time(r.median_s),
                             f"±{fmt_time(r.iqr_s / 2)}", rel, rel_sam])
            records.append(dict(shapes=shapes, n=n, dtype=dtype, impl=r.impl,
                                median_s=r.median_s,
                                over_torch_sam_foreach=None if ref is None else r.median_s / ref,
                                over_slsam_sam=None if sam is None else r.median_s / sam))
    header = ["tensors", "dtype", "optimizer", "median", "iqr/2", "/ torch-sam foreach",
              "/ slsam.SAM"]
    return table(out_rows, header), records


def target_verdicts(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.section != "step" or r.impl != "slsam.SAM":
            continue
        sel = dict(section="step", shapes=r.shapes, n=r.n, dtype=r.dtype)
        ref = median(rows, impl="torch-sam foreach", **sel)
        if ref is None:
            continue
        ratio = r.median_s / ref
        best_name, best = min(
            ((impl, t) for impl in ("torch-sam fused", "torch-sam compile")
             if (t := median(rows, impl=impl, **sel)) is not None),
            key=lambda x: x[1], default=("-", math.nan))
        applies = r.n >= 1000
        out.append(dict(
            target=f"slsam.SAM optimizer-side <= {TARGET_RATIO:.2f} x torch-sam foreach",
            shapes=r.shapes, n=r.n, dtype=r.dtype, ratio=ratio, applies=applies,
            met=ratio <= TARGET_RATIO, best_baseline=best_name,
            over_best_baseline=r.median_s / best if best == best else None))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2.5M elements instead of 25M, shorter timing; for smoke runs")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000],
                    help="numbers of tensors (default: 100 1000 10000)")
    ap.add_argument("--numel", type=float, default=None,
                    help="elements per list (default 25e6, --quick 2.5e6)")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: both if CUDA is "
                    "available, else cpu)")
    ap.add_argument("--sections", nargs="+", default=["ops", "step"],
                    choices=["ops", "bandit", "step"],
                    help="ops (every operator, the bandit's included), bandit (only "
                    "bandit_update_ and sample_mask, at each of --sizes arms), step")
    ap.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction,
                    default=None, help="include the torch.compile SAM baseline in the step "
                    "section (default: on, off with --quick; compiling takes ~10-60 s a list)")
    ap.add_argument("--compile-max", type=int, default=200,
                    help="compile baseline only for fp32 lists of at most this many tensors "
                    "(compiling a 1000-tensor foreach graph took over 15 minutes here)")
    ap.add_argument("--min-run-time", type=float, default=None,
                    help="seconds per measurement (default 1.0, --quick 0.2)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON name in benchmarks/results/ "
                    "(default micro_<device>[_quick])")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    total = int(args.numel or (2.5e6 if args.quick else 25e6))
    min_run = args.min_run_time or (0.2 if args.quick else 1.0)
    with_compile = (not args.quick) if args.compile is None else args.compile
    devices = [args.device] if args.device else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    name = args.out or f"micro_{'_'.join(devices)}{'_quick' if args.quick else ''}"
    config = dict(quick=args.quick, sizes=args.sizes, numel=total, dtypes=args.dtypes,
                  devices=devices, min_run_time=min_run, compile=with_compile,
                  compile_max=args.compile_max, seed=args.seed, adamw=ADAM)
    all_rows: list[Row] = []
    measurements: list[benchmark.Measurement] = []

    def save(rows: list[Row], partial: bool) -> Path:
        _, ops_records = ratio_table(rows)
        _, step_records = step_table(rows)
        return write_json(name, dict(
            benchmark="micro", partial=partial, machine=machine_info(), config=config,
            rows=[asdict(r) for r in rows], ops_ratios=ops_records, step=step_records,
            targets=target_verdicts(rows)))

    for dev in devices:
        b = Bench(min_run, dev)
        if "ops" in args.sections or "bandit" in args.sections:
            for n in args.sizes:
                for dt in args.dtypes if "ops" in args.sections else []:
                    print(f"[ops] {dev} n={n} {dt} ...", file=sys.stderr, flush=True)
                    bench_ops(b, n, total, dt, args.seed)
                    gc.collect()
                print(f"[bandit] {dev} n={n} arms ...", file=sys.stderr, flush=True)
                bench_bandit(b, n, args.seed)
                save(all_rows + b.rows, partial=True)
        if "step" in args.sections:
            lists: list[tuple[str, list[tuple[int, ...]]]] = [("minilm", minilm_shapes())]
            if args.quick:  # keep the MiniLM list's shape mix but cut the embedding
                lists[0] = ("minilm-small", [(3000, 384), *minilm_shapes()[1:]])
            lists += [("model-like", model_like_shapes(n, total)) for n in args.sizes]
            for lname, shapes in lists:
                for dt in args.dtypes:
                    print(f"[step] {dev} {lname} n={len(shapes)} {dt} ...", file=sys.stderr,
                          flush=True)
                    comp = with_compile and dt == "fp32" and len(shapes) <= args.compile_max
                    bench_steps(b, shapes, lname, dt, args.seed, comp)
                    gc.collect()
                    save(all_rows + b.rows, partial=True)
        all_rows += b.rows
        measurements += b.measurements

    compare = benchmark.Compare(measurements)
    compare.trim_significant_figures()
    compare.print()
    ops_txt, ops_records = ratio_table(all_rows)
    step_txt, step_records = step_table(all_rows)
    verdicts = target_verdicts(all_rows)
    if ops_records:
        print("\nOperators: slsam vs baselines (same run; (x) = baseline time / slsam time)")
        print(ops_txt)
    if step_records:
        print("\nOptimizer-side work of one step (no forward/backward; .grad set by hand)")
        print(step_txt)
    for v in verdicts:
        status = "MET" if v["met"] else "MISSED"
        scope = "" if v["applies"] else " (informational: target is for 1000+ tensors)"
        extra = ("" if v["over_best_baseline"] is None else
                 f"; vs best pure-PyTorch ({v['best_baseline']}): "
                 f"{v['over_best_baseline']:.2f}x")
        print(f"TARGET {status}{scope}: slsam.SAM / torch-sam foreach = {v['ratio']:.2f} "
              f"(target <= {TARGET_RATIO:.2f}) on {v['shapes']} n={v['n']} {v['dtype']}{extra}")

    path = save(all_rows, partial=False)
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
