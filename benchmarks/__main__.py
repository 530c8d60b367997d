"""Run the benchmarks in order: micro (operators, optimizer-side step), step
(end-to-end training step), plot.

    python -m benchmarks --quick              # a few minutes on 2 CPU cores
    python -m benchmarks                      # the full run (tens of minutes on CPU)
    python -m benchmarks --quick --threads 1  # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import micro, plot, step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="slsam benchmarks: micro, step, plot")
    ap.add_argument("--quick", action="store_true", help="short run (smoke / CI)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--skip", nargs="*", default=[], choices=["micro", "step", "plot"])
    args = ap.parse_args(argv)
    common = (["--quick"] if args.quick else []) + (
        ["--threads", str(args.threads)] if args.threads else [])
    if "micro" not in args.skip:
        micro.main(common)
    if "step" not in args.skip:
        step.main(common)
    if "plot" not in args.skip:
        plot.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
