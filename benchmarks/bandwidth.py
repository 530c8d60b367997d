"""Achieved memory bandwidth of slsam's CPU/CUDA elementwise operators, next to
a ``torch.Tensor.copy_`` that moves the same bytes, measured in the same run.

For each operator the bytes it must move per element are counted (reads and
writes of its operands, in the tensors' dtype), divided by the median time:

    grad_norms        read g                               1 x itemsize
    perturb_          read x, g; write backup, x           4 x itemsize
    restore_          read backup; write x                 2 x itemsize
    restore_adamw_    read x0, g, m, v; write x, m, v      7 x itemsize
    fused AdamW       read x, g, m, v; write x, m, v       7 x itemsize

(``fused AdamW`` is ``torch._fused_adamw_``, the kernel of
``torch.optim.AdamW(fused=True)``: the same traffic as ``restore_adamw_``.)

The baseline of every row is ``copy_`` between two flat buffers of random
data (not fresh zeros: reading untouched zero pages costs nothing) sized so
that it moves the row's bytes: read + write of ``bytes / 2``. Its footprint in
the caches is then the operator's, so a list that fits in the last-level cache
is compared with a copy that fits too. ``of copy_`` = op GB/s / copy_ GB/s;
above 1 means the operator moves its bytes faster than ``copy_``, which also
reads every destination line before writing it (a write-allocate that the
kernels' streaming stores skip). Two lists: a few large tensors and many small
ones (odd sizes). ``grad_norms`` is also timed against ``torch._foreach_norm``.

Each row also records ``floor``: the same call on as many one-element tensors, what
the call costs apart from its bytes (torch's conversion of each list argument, the
kernel's checks and pointer tables), and ``ceiling``: the fraction of ``copy_`` the
call would reach if its loops moved the bytes as fast as ``copy_`` does,
copy time / (copy time + floor). ``cpu_of_wall``: the process's CPU time over wall time x
threads while the operator ran (1.0: every thread ran all the time; less:
threads waited, e.g. descheduled on a shared machine), and ``share_of_sam``:
the operator's part of a SAM step's optimizer-side kernel time, 2 x
grad_norms (the gradient norm and the second pass's non-finite check) +
perturb_ + restore_adamw_.

    python -m benchmarks.bandwidth [--device cuda] [--dtypes fp32 bf16 fp16] [--large 2**26]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from torch.utils import benchmark

from benchmarks.common import machine_info, table, write_json
from slsam import ops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BYTES_PER_ELEMENT = {"grad_norms": 1, "perturb_": 4, "restore_": 2, "restore_adamw_": 7,
                     "fused AdamW": 7}
SAM_STEP = {"grad_norms": 2, "perturb_": 1, "restore_adamw_": 1}  # kernel calls per SAM step
COPY_TARGET = 0.8  # goal: every kernel >= 80% of copy_'s bandwidth
NORMS_TARGET = 3.0  # GPU goal: grad_norms >= 3x faster than _foreach_norm, 1000 tensors


def count(text: str) -> int:
    """An element count: 1000000 or 2**20."""
    base, _, exp = text.partition("**")
    return int(base) ** int(exp) if exp else int(base)


def measure(fn: Any, min_run_time: float, device: str) -> tuple[float, float]:
    """Median seconds per call, and the process's CPU time over wall time x threads."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    median = benchmark.Timer("fn()", globals=dict(fn=fn)).blocked_autorange(
        min_run_time=min_run_time).median
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return median, cpu / (wall * torch.get_num_threads())


def tensor_lists(large: int, many: int, small: int) -> dict[str, list[int]]:
    # NOTE: odd sizes for the small tensors, so no chunk or vector is whole.
    return {f"large 4x{large}": [large] * 4, f"many {many}x~{small}": [
        small + 2 * (i % 7) + 1 for i in range(many)]}


def operator_calls(sizes: list[int], dtype: torch.dtype, device: str,
                   g: torch.Generator) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Each row's call on fresh lists of tensors of ``sizes`` elements (random data),
    and the gradients (for ``_foreach_norm``)."""

    def make(scale: float = 1.0) -> list[torch.Tensor]:
        return [torch.randn(k, generator=g, device=device).mul_(scale).to(dtype) for k in sizes]

    xs, gs, x0s = make(), make(1e-3), make()
    ms, vs, bks = make(1e-3), [v.abs() for v in make(1e-4)], [torch.empty_like(x) for x in xs]
    steps = [torch.ones((), device=device) for _ in sizes]
    fms, fvs = [m.clone() for m in ms], [v.clone() for v in vs]
    fsteps = [torch.ones((), device=device) for _ in sizes]
    total_norm = torch.ones((), device=device)
    return {
        "grad_norms": lambda: ops.grad_norms(gs),
        "perturb_": lambda: ops.perturb_(xs, gs, bks, total_norm, 1e-9, False),
        "restore_": lambda: ops.restore_(xs, bks),
        "restore_adamw_": lambda: ops.restore_adamw_(xs, x0s, gs, ms, vs, steps, 1e-9, 0.9,
                                                     0.999, 0.0, 1e-8),
        "fused AdamW": lambda: torch._fused_adamw_(
            x0s, gs, fms, fvs, [], fsteps, lr=1e-9, beta1=0.9, beta2=0.999, weight_decay=0.0,
            eps=1e-8, amsgrad=False, maximize=False),
    }, gs


def bench_list(name: str, sizes: list[int], dtype: torch.dtype, dtype_name: str,
               device: str, min_run: float) -> list[dict[str, Any]]:
    g = torch.Generator(device=device).manual_seed(0)
    fns, gs = operator_calls(sizes, dtype, device, g)
    # NOTE: the same calls on as many one-element tensors: what a call costs apart from
    # its bytes (torch's conversion of each list argument, the kernels' checks and
    # tables), which no loop can win back.
    floors, _ = operator_calls([1] * len(sizes), dtype, device, g)
    n_el = sum(sizes)
    item = gs[0].element_size()

    copies: dict[int, float] = {}

    def copy_gbs(elements: int) -> float:
        """GB/s of copy_ between two flat buffers of random data (once per size)."""
        if elements not in copies:
            src = torch.randn(elements, generator=g, device=device).to(dtype)
            dst = src.clone()  # its pages are faulted in before timing
            copy_s, _ = measure(lambda: dst.copy_(src), min_run, device)
            copies[elements] = 2 * elements * item / copy_s / 1e9
        return copies[elements]

    rows = []
    for op, fn in fns.items():
        moved = BYTES_PER_ELEMENT[op] * n_el * item
        # NOTE: the copy is timed right before its operator (side by side).
        copy = copy_gbs(moved // 2 // item)
        t, cpu = measure(fn, min_run, device)
        floor, _ = measure(floors[op], min_run, device)
        gbs = moved / t / 1e9
        copy_s = moved / copy / 1e9
        rows.append(dict(list=name, tensors=len(sizes), numel=n_el, dtype=dtype_name, op=op,
                         median_s=t, gb_s=gbs, copy_gb_s=copy, of_copy=gbs / copy,
                         cpu_of_wall=cpu, floor_s=floor, ceiling=copy_s / (copy_s + floor)))
    sam_s = sum(calls * next(r["median_s"] for r in rows if r["op"] == op)
                for op, calls in SAM_STEP.items())
    for r in rows:
        if r["op"] in SAM_STEP:
            r["share_of_sam"] = SAM_STEP[r["op"]] * r["median_s"] / sam_s
    foreach_s, _ = measure(lambda: torch._foreach_norm(gs), min_run, device)
    norms = next(r for r in rows if r["op"] == "grad_norms")
    norms["foreach_norm_s"] = foreach_s
    norms["speedup_vs_foreach_norm"] = foreach_s / norms["median_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--large", type=count, default=None,
                    help="elements per large tensor (default 2**26 on CUDA, 2**23 on CPU: "
                    "every operator's bytes are then >= 64 MiB, out of a 32 MiB cache)")
    ap.add_argument("--many", type=int, default=1000, help="number of small tensors")
    ap.add_argument("--small", type=int, default=None,
                    help="elements per small tensor (default 65536 on CUDA, 4096 on CPU)")
    ap.add_argument("--min-run-time", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", default=None, help="JSON name (default bandwidth_<device>)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    large = args.large or (2**26 if cuda else 2**23)
    small = args.small or (65536 if cuda else 4096)
    rows: list[dict[str, Any]] = []
    for dtype_name in args.dtypes:
        for name, sizes in tensor_lists(large, args.many, small).items():
            print(f"[bandwidth] {args.device} {name} {dtype_name} ...", file=sys.stderr)
            rows += bench_list(name, sizes, DTYPES[dtype_name], dtype_name, args.device,
                               args.min_run_time)
    cells = [[r["list"], r["dtype"], r["op"], f"{r['median_s'] * 1e3:.3f} ms",
              f"{r['gb_s']:.1f}", f"{r['copy_gb_s']:.1f}", f"{r['of_copy']:.2f}",
              f"{r['floor_s'] * 1e6:.0f} us", f"{r['ceiling']:.2f}", f"{r['cpu_of_wall']:.2f}",
              f"{r['share_of_sam']:.0%}" if "share_of_sam" in r else "-",
              f"{r['speedup_vs_foreach_norm']:.2f}x" if "speedup_vs_foreach_norm" in r else "-"]
             for r in rows]
    print(table(cells, ["list", "dtype", "op", "median", "GB/s", "copy_ GB/s", "of copy_",
                        "floor", "ceiling", "cpu/wall", "of SAM step", "vs _foreach_norm"]))
    verdicts = []
    for r in rows:
        if r["op"] in SAM_STEP or r["op"] == "restore_":
            ok = r["of_copy"] >= COPY_TARGET
            verdicts.append(f"TARGET {'MET' if ok else 'MISSED'}: {r['op']} {r['dtype']} on "
                            f"{r['list']}: {r['of_copy']:.2f} of copy_ (target >= 0.8; its "
                            f"per-call floor allows at most {r['ceiling']:.2f})")
        if r["op"] == "grad_norms" and r["tensors"] >= 1000:
            ok = r["speedup_vs_foreach_norm"] >= NORMS_TARGET
            verdicts.append(f"TARGET {'MET' if ok else 'MISSED'}: grad_norms {r['dtype']} on "
                            f"{r['list']}: {r['speedup_vs_foreach_norm']:.2f}x _foreach_norm "
                            "(GPU target >= 3x)")
    print("\n".join(verdicts))
    config = dict(device=args.device, dtypes=args.dtypes, large=large, many=args.many,
                  small=small, min_run_time=args.min_run_time)
    path = write_json(args.out or f"bandwidth_{args.device.split(':')[0]}",
                      dict(machine=machine_info(), config=config, rows=rows, verdicts=verdicts))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
