"""Achieved memory bandwidth of slsam's elementwise operators, next to a
``torch.Tensor.copy_`` of the same bytes measured in the same run.

For each operator the bytes it must move per element are counted (reads and
writes of its operands, in the tensors' dtype), divided by the median time:

    grad_norms        read g                               1 x itemsize
    perturb_          read x, g; write backup, x           4 x itemsize
    restore_          read backup; write x                 2 x itemsize
    restore_adamw_    read x0, g, m, v; write x, m, v      7 x itemsize

``copy_`` moves 2 x itemsize per element (read + write) of one flat buffer
holding the same total number of elements, so ``op GB/s / copy GB/s`` is the
fraction of the machine's streaming bandwidth the operator reaches. Two lists:
a few large tensors and many small ones (odd sizes). ``grad_norms`` is also
timed against ``torch._foreach_norm`` on the same list.

    python -m benchmarks.bandwidth [--device cuda] [--dtypes fp32 bf16] [--large 2**26]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch.utils import benchmark

from benchmarks.common import machine_info, table, write_json
from slsam import ops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BYTES_PER_ELEMENT = {"grad_norms": 1, "perturb_": 4, "restore_": 2, "restore_adamw_": 7}
COPY_TARGET = 0.8  # GPU goal: >= 80% of copy_ bandwidth on large tensors
NORMS_TARGET = 3.0  # GPU goal: grad_norms >= 3x faster than _foreach_norm, 1000 tensors


def count(text: str) -> int:
    """An element count: 1000000 or 2**20."""
    base, _, exp = text.partition("**")
    return int(base) ** int(exp) if exp else int(base)


def median_s(fn: Any, min_run_time: float) -> float:
    return benchmark.Timer("fn()", globals=dict(fn=fn)).blocked_autorange(
        min_run_time=min_run_time).median


def tensor_lists(large: int, many: int, small: int) -> dict[str, list[int]]:
    # NOTE: odd sizes for the small tensors, so no chunk or vector is whole.
    return {f"large 4x{large}": [large] * 4, f"many {many}x~{small}": [
        small + 2 * (i % 7) + 1 for i in range(many)]}


def bench_list(name: str, sizes: list[int], dtype: torch.dtype, dtype_name: str,
               device: str, min_run: float) -> list[dict[str, Any]]:
    g = torch.Generator(device=device).manual_seed(0)

    def make(scale: float = 1.0) -> list[torch.Tensor]:
        return [torch.randn(n, generator=g, device=device).mul_(scale).to(dtype) for n in sizes]

    xs, gs, x0s = make(), make(1e-3), make()
    ms, vs, bks = make(1e-3), [v.abs() for v in make(1e-4)], [torch.empty_like(x) for x in xs]
    steps = [torch.zeros((), device=device) for _ in sizes]
    total_norm = torch.ones((), device=device)
    n_el = sum(sizes)
    item = xs[0].element_size()
    src = torch.empty(n_el, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    copy_s = median_s(lambda: dst.copy_(src), min_run)
    copy_gbs = 2 * n_el * item / copy_s / 1e9
    fns = {
        "grad_norms": lambda: ops.grad_norms(gs),
        "perturb_": lambda: ops.perturb_(xs, gs, bks, total_norm, 1e-9, False),
        "restore_": lambda: ops.restore_(xs, bks),
        "restore_adamw_": lambda: ops.restore_adamw_(xs, x0s, gs, ms, vs, steps, 1e-9, 0.9,
                                                     0.999, 0.0, 1e-8),
    }
    rows = []
    for op, fn in fns.items():
        t = median_s(fn, min_run)
        gbs = BYTES_PER_ELEMENT[op] * n_el * item / t / 1e9
        rows.append(dict(list=name, tensors=len(sizes), numel=n_el, dtype=dtype_name, op=op,
                         median_s=t, gb_s=gbs, copy_gb_s=copy_gbs, of_copy=gbs / copy_gbs))
    foreach_s = median_s(lambda: torch._foreach_norm(gs), min_run)
    norms = next(r for r in rows if r["op"] == "grad_norms")
    norms["foreach_norm_s"] = foreach_s
    norms["speedup_vs_foreach_norm"] = foreach_s / norms["median_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--large", type=count, default=None,
                    help="elements per large tensor (default 2**26 on CUDA, 2**22 on CPU)")
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
    large = args.large or (2**26 if cuda else 2**22)
    small = args.small or (65536 if cuda else 4096)
    rows: list[dict[str, Any]] = []
    for dtype_name in args.dtypes:
        for name, sizes in tensor_lists(large, args.many, small).items():
            print(f"[bandwidth] {args.device} {name} {dtype_name} ...", file=sys.stderr)
            rows += bench_list(name, sizes, DTYPES[dtype_name], dtype_name, args.device,
                               args.min_run_time)
    cells = [[r["list"], r["dtype"], r["op"], f"{r['median_s'] * 1e3:.3f} ms",
              f"{r['gb_s']:.1f}", f"{r['copy_gb_s']:.1f}", f"{r['of_copy']:.0%}",
              f"{r['speedup_vs_foreach_norm']:.2f}x" if "speedup_vs_foreach_norm" in r else "-"]
             for r in rows]
    print(table(cells, ["list", "dtype", "op", "median", "GB/s", "copy_ GB/s", "of copy_",
                        "vs _foreach_norm"]))
    verdicts = []
    for r in rows:
        if r["list"].startswith("large") and r["op"] != "grad_norms":
            ok = r["of_copy"] >= COPY_TARGET
            verdicts.append(f"TARGET {'MET' if ok else 'MISSED'}: {r['op']} {r['dtype']} on "
                            f"{r['list']}: {r['of_copy']:.0%} of copy_ (target >= 80%)")
        if r["op"] == "grad_norms" and r["tensors"] >= 1000:
            ok = r["speedup_vs_foreach_norm"] >= NORMS_TARGET
            verdicts.append(f"TARGET {'MET' if ok else 'MISSED'}: grad_norms {r['dtype']} on "
                            f"{r['list']}: {r['speedup_vs_foreach_norm']:.2f}x _foreach_norm "
                            "(target >= 3x)")
    print("\n".join(verdicts))
    config = dict(device=args.device, dtypes=args.dtypes, large=large, many=args.many,
                  small=small, min_run_time=args.min_run_time)
    path = write_json(args.out or f"bandwidth_{args.device.split(':')[0]}",
                      dict(machine=machine_info(), config=config, rows=rows, verdicts=verdicts))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
