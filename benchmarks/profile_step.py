"""Where the optimizer-side time of slsam.SAM / slsam.SLSAM goes.

Two views of the same step (``.grad`` set by hand, no forward/backward):

1. ``torch.profiler`` over a few steps: self time per operator (slsam::* are
   the kernels; aten::* the Python-side glue).
2. An attribution: each piece of the step timed alone, next to the fastest
   pure-PyTorch way to do the same work, including the cost of allocating the
   backups afresh every step (first-touch page faults on CPU), which
   ``slsam.SLSAM.first_step`` pays with ``reuse_backups=False`` (the default on
   CUDA; on CPU the backups are reused, see ``slsam/_backups.py``).

    python -m benchmarks.profile_step [--optimizer sam|slsam] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.adam import adam as torch_adam
from torch.profiler import ProfilerActivity, profile

import slsam
from benchmarks.common import (
    RESULTS,
    fmt_time,
    machine_info,
    minilm_shapes,
    model_like_shapes,
    numel,
    table,
    two_call_step,
    write_json,
)
from benchmarks.micro import DTYPES, make
from slsam import ops


def timeit(fn: Callable[[], Any], reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizer", choices=["sam", "slsam"], default="sam")
    ap.add_argument("--sparsity", type=float, default=0.2, help="for --optimizer slsam")
    ap.add_argument("--shapes", choices=["minilm", "model-like"], default="minilm")
    ap.add_argument("--n", type=int, default=1000, help="tensors, for --shapes model-like")
    ap.add_argument("--numel", type=float, default=25e6, help="for --shapes model-like")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    shapes = (minilm_shapes() if args.shapes == "minilm"
              else model_like_shapes(args.n, int(args.numel)))
    gen = torch.Generator().manual_seed(0)
    params = [t.requires_grad_() for t in make(shapes, dtype, "cpu", gen)]
    g1 = make(shapes, dtype, "cpu", gen, 1e-3)
    g2 = make(shapes, dtype, "cpu", gen, 1e-3)
    if args.optimizer == "sam":
        opt: Any = slsam.SAM(params, lr=1e-4, weight_decay=0.01)
    else:
        opt = slsam.SLSAM(params, sparsity=args.sparsity, lr=1e-4, weight_decay=0.01, seed=0)

    def step() -> None:
        two_call_step(opt, params, g1, g2)

    for _ in range(3):
        step()
    step_time = timeit(step, args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    prof_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    print(f"{args.optimizer} on {args.shapes} ({len(shapes)} tensors, "
          f"{numel(shapes) / 1e6:.1f}M, {args.dtype}), {torch.get_num_threads()} threads: "
          f"step {fmt_time(step_time)} (median of {args.steps})\n")
    print(f"torch.profiler, {args.steps} steps:")
    print(prof_table)

    # attribution: the dense step's pieces, alone, vs pure PyTorch
    for p in params:
        p.requires_grad_(True)
    bk = [torch.empty_like(p) for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    st = [torch.zeros((), dtype=torch.float32) for _ in params]
    _, total = ops.grad_norms(g1)
    adam_kw: dict[str, Any] = dict(amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-4,
                                   weight_decay=0.01, eps=1e-8, maximize=False,
                                   decoupled_weight_decay=True)
    reps = max(3, args.steps)
    pieces: list[tuple[str, Callable[[], Any], str, Callable[[], Any]]] = [
        ("norms", lambda: ops.grad_norms(g1),
         "_foreach_norm + vector_norm",
         lambda: torch.linalg.vector_norm(torch.stack(
             torch._foreach_norm(g1, 2.0, dtype=torch.float32)))),
        ("perturb_ (backups preallocated)", lambda: ops.perturb_(params, g1, bk, total, 0.01),
         "_foreach_copy_ + _foreach_add_(alpha)",
         lambda: (torch._foreach_copy_(bk, params),
                  torch._foreach_add_(params, g1, alpha=1e-5))),
        ("empty_like backups + perturb_ (reuse_backups=False)",
         lambda: ops.perturb_(params, g1, [torch.empty_like(p) for p in params], total, 0.01),
         "empty_like + _foreach_copy_ + _foreach_add_",
         lambda: (torch._foreach_copy_(b2 := [torch.empty_like(p) for p in params], params),
                  torch._foreach_add_(params, g1, alpha=1e-5), b2)),
        ("second-pass norms (found_inf check)", lambda: ops.grad_norms(g2), "-", lambda: None),
        ("restore_adamw_", lambda: ops.restore_adamw_(params, bk, g2, m, v, st, 1e-4, 0.9,
                                                       0.999, 0.01, 1e-8),
         "_foreach_copy_ + AdamW(fused=True)",
         lambda: (torch._foreach_copy_(params, bk),
                  torch_adam(params, g2, m, v, [], st, fused=True, **adam_kw))),
    ]
    rows, records = [], []
    for name, mine, theirs_name, theirs in pieces:
        with torch.no_grad():
            t_mine = timeit(mine, reps)
            t_theirs = timeit(theirs, reps) if theirs_name != "-" else None
        rows.append([name, fmt_time(t_mine), theirs_name,
                     "-" if t_theirs is None else fmt_time(t_theirs),
                     "-" if t_theirs is None else f"{t_mine / t_theirs:.2f}"])
        records.append(dict(piece=name, slsam_s=t_mine, torch=theirs_name, torch_s=t_theirs))
    print("\nAttribution (each piece alone, median; ratio > 1: slsam slower):")
    print(table(rows, ["slsam piece", "time", "pure-PyTorch equivalent", "time", "ratio"]))
    name = f"profile_{args.optimizer}_{args.shapes}_{args.dtype}"
    write_json(name, dict(benchmark="profile", machine=machine_info(), config=vars(args),
                          step_s=step_time, profiler_table=prof_table, attribution=records))
    (RESULTS / f"{name}.txt").write_text(prof_table + "\n")
    print(f"\nwrote {RESULTS / name}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
