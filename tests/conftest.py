from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]


def max_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    return float((x.double() - truth.double()).abs().max())


def assert_within_ref_error(out, ref, truth, dtype, factor: float = 2.0) -> None:
    """flash-attention style: the kernel's error against an fp64 truth is within
    `factor` times the plain reference's error in the same precision, plus one
    rounding of the output (the reference may be exact by chance)."""
    outs = out if isinstance(out, (list, tuple)) else [out]
    refs = ref if isinstance(ref, (list, tuple)) else [ref]
    truths = truth if isinstance(truth, (list, tuple)) else [truth]
    eps = torch.finfo(dtype).eps
    for o, r, t in zip(outs, refs, truths, strict=False):
        scale = float(t.double().abs().max()) if t.numel() else 0.0
        floor = eps * max(scale, 1e-30)
        oe, re_ = max_err(o, t), max_err(r, t)
        assert oe <= factor * re_ + floor, (
            f"kernel error {oe:.3e} > {factor} x ref error {re_:.3e} + {floor:.3e}")


def tiny_mlp(seed: int = 0, width: int = 16, depth: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(8, width), torch.nn.Tanh()]
    for _ in range(depth - 2):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    layers += [torch.nn.Linear(width, 3)]
    return torch.nn.Sequential(*layers)


def batch(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y


@pytest.fixture
def data():
    return batch(0)
