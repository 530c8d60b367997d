"""Helpers shared by the benchmarks: machine description, tensor shapes, output."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """Everything needed to tell two result files' machines apart."""
    import slsam

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "slsam": slsam.__version__,
        "git_commit": git_commit(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:  # which build of the kernels ran (csrc changes without a commit show here)
        import hashlib

        from slsam import _C

        so = Path(_C.__file__)
        info["slsam_C_sha256_12"] = hashlib.sha256(so.read_bytes()).hexdigest()[:12]
        info["slsam_C_mtime"] = datetime.datetime.fromtimestamp(
            so.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")
    except (ImportError, OSError, AttributeError, TypeError):
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``payload`` to ``<out_dir>/<name>.json`` (default benchmarks/results/)."""
    out = (out_dir or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


# --- model-like tensor shapes ---

# The parameter tensors of one pre-LN transformer block of width d, in
# registration order: attention in-projection (q, k, v), its bias, output
# projection and bias, two LayerNorms, the MLP (4d) with biases.
def _block_shapes(d: int) -> list[tuple[int, ...]]:
    return [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,),
            (4 * d, d), (4 * d,), (d, 4 * d), (d,), (d,), (d,)]


def model_like_shapes(n: int, total: int) -> list[tuple[int, ...]]:
    """``n`` parameter shapes laid out like a stack of transformer blocks
    (matrices, biases, LayerNorm vectors: 12 tensors a block, 12 d^2 + 13 d
    elements), with the width d chosen so the list holds about ``total``
    elements. Deterministic, so every run measures the same list."""
    blocks = max(1, math.ceil(n / 12))
    d = max(4, round(math.sqrt(total / (12 * blocks))))
    shapes: list[tuple[int, ...]] = []
    while len(shapes) < n:
        shapes.extend(_block_shapes(d))
    return shapes[:n]


def minilm_shapes() -> list[tuple[int, ...]]:
    """The 105 parameter shapes of all-MiniLM-L6-v2 with a 2-class head (22.7M)."""
    d, ff, vocab = 384, 1536, 30522
    shapes: list[tuple[int, ...]] = [(vocab, d), (512, d), (2, d), (d,), (d,)]
    for _ in range(6):
        shapes += [(d, d), (d,), (d, d), (d,), (d, d), (d,), (d, d), (d,), (d,), (d,),
                   (ff, d), (ff,), (d, ff), (d,), (d,), (d,)]
    shapes += [(d, d), (d,), (2, d), (2,)]
    return shapes


def numel(shapes: list[tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes)


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    cols = [header, *rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=False)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def report_machine_and_write(name: str, config: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Print the machine line under a benchmark's table and write its JSON (machine, config,
    rows) to benchmarks/results/<name>.json."""
    info = machine_info()
    print(f"\n{info['cpu_model']}, {info['torch_num_threads']} threads, torch {info['torch']}, "
          f"load {info['load_avg_1m']:.1f}, {info['date']}")
    path = write_json(name, dict(machine=info, config=config, rows=rows))
    print(f"wrote {path}")
    return path


def two_call_step(opt: Any, params: list[torch.Tensor], g1: list[torch.Tensor],
                  g2: list[torch.Tensor]) -> None:
    """One SAM step in the two-call style with fixed gradients: ``g1`` as the first pass's,
    ``g2`` as the second's (only on tensors the mask left requiring grad)."""
    for p, g in zip(params, g1, strict=False):
        if p.requires_grad:
            p.grad = g
    opt.first_step()
    for p, g in zip(params, g2, strict=False):
        if p.requires_grad:
            p.grad = g
    opt.second_step()
