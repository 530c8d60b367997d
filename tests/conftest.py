from __future__ import annotations

import pytest
import torch

from slsam import ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]

# ----- the operator tests' devices and inputs (tests/test_ops.py, tests/test_cuda.py) -----

CUDA_OK = torch.cuda.is_available() and ops.has_kernel("grad_norms", "cuda")
NEEDS_CUDA = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and slsam built with CUDA kernels"),
]
# The CPU kernels always; the CUDA kernels where a GPU and a CUDA build are present.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=NEEDS_CUDA)]

CHUNK = 1 << 16  # slsam::kChunk (csrc/include/slsam/chunks.h)

SIZES = {
    "empty_tensor": [(0,), (3, 0)],
    "one": [(1,)],
    "odd": [(1023,), (CHUNK + 1,), (3, 5, 7)],  # CHUNK + 1 crosses a chunk boundary
    "mixed_empty": [(5,), (0,), (17, 3)],
    "many": [(int(s),) for s in torch.randint(1, 60, (1200,),
                                              generator=torch.Generator().manual_seed(0))],
    "large": [(1 << 21, 3)],
}

HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """The device an operator test runs on: "cpu", and "cuda" when present."""
    return request.param


def make(shapes, dtype, seed=0, scale=1.0, device="cpu"):
    """Seeded normal tensors of `shapes` (drawn in fp64 on the CPU, the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
            for s in shapes]


def f64(ts):
    return [t.double() for t in ts]


def cpu(ts):
    return [t.cpu() for t in ts]


def misaligned(t: torch.Tensor, offset: int = 1) -> torch.Tensor:
    """The same values at storage offset `offset` elements, so the data pointer is off the
    kernels' 16-byte vector alignment (the allocators align storage to at least 64 bytes)."""
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    out = buf[offset:].view(t.shape)
    out.copy_(t)
    return out


def offsets_off_16_bytes(dtype: torch.dtype) -> list[int]:
    """Storage offsets (in elements) whose data pointer is off the 16-byte vector alignment:
    one element, and 8 bytes (8- but not 16-byte aligned) where that is a different offset."""
    size = torch.empty((), dtype=dtype).element_size()
    return sorted({1, 8 // size})


def adamw_inputs(shapes, dtype, seed=0, device="cpu"):
    """params, backups, grads, exp_avgs, exp_avg_sqs, steps (on `device`, like the optimizer's)."""
    params = make(shapes, dtype, seed, device=device)
    backups = make(shapes, dtype, seed + 1, device=device)
    grads = make(shapes, dtype, seed + 2, device=device)
    m = make(shapes, dtype, seed + 3, 0.1, device=device)
    v = [t.abs() for t in make(shapes, dtype, seed + 4, 0.01, device=device)]
    steps = [torch.tensor(float(i % 7), device=device) for i in range(len(shapes))]
    return params, backups, grads, m, v, steps


def run_adamw(fn, inputs, cast=None, device=None, **kw):
    """fn (ops or reference restore_adamw_) on copies of `inputs`, optionally cast to
    `cast` and moved to `device` (steps keep their dtype); returns the six lists."""
    def conv(t):
        t = t.clone() if cast is None else t.to(cast)
        return t.to(device) if device is not None else t

    ins = [[conv(t) for t in group] for group in inputs]
    ins[5] = [s.clone() if device is None else s.to(device) for s in inputs[5]]
    fn(*ins, **HYPER, **kw)
    return ins


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


def loss_closure(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor):
    """The closure SLSAM runs: zero the gradients, cross-entropy of ``model(x)``, backward."""

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def closure_for(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int):
    """:func:`loss_closure` on ``batch(seed)``."""
    return loss_closure(model, opt, *batch(seed))


def assert_resume_is_bit_identical(model: torch.nn.Module, opt: torch.optim.Optimizer,
                                   make_opt) -> None:
    """Three steps, then a copy of the model with ``make_opt(copy)`` loading ``opt``'s state:
    two more steps of each give the same probabilities and weights, bit for bit."""
    import copy

    for seed in range(3):
        opt.step(closure_for(model, opt, seed))
    model2 = copy.deepcopy(model)
    opt2 = make_opt(model2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for seed in (3, 4):
        opt.step(closure_for(model, opt, seed))
        opt2.step(closure_for(model2, opt2, seed))
    assert torch.equal(opt.probs, opt2.probs)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.fixture
def data():
    return batch(0)


class Block(torch.nn.Module):
    """Linear, tanh, LayerNorm: one numbered block of :class:`Net`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(width, width)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.tanh(self.fc(x)))


class Net(torch.nn.Module):
    """Names like a transformer's: embed.*, encoder.layer.N.*, head.*."""

    def __init__(self, seed: int = 0, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Linear(8, width)
        self.encoder = torch.nn.Module()
        self.encoder.layer = torch.nn.ModuleList(Block(width) for _ in range(depth))
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.encoder.layer:
            h = block(h)
        return self.head(h)


# ----- a small conv net whose weights can be moved to channels_last -----


def conv_model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Tanh(), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2)).to(device)


def conv_closure(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 8, 8, generator=g).to(next(model.parameters()).device)
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
        x = x.to(memory_format=torch.channels_last)
    return loss_closure(model, opt, x, (x[:, 0, 0, 0] > 0).long())


def conv_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, seeds: range) -> None:
    for i in seeds:
        opt.step(conv_closure(model, opt, i))
