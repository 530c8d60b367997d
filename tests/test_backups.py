"""The reused backup buffer (slsam/_backups.py) and its effect on a run."""

from __future__ import annotations

import torch

import slsam
from slsam._backups import BackupPool
from tests.conftest import batch, tiny_mlp


def test_views_are_laid_out_like_the_params_aligned_and_disjoint(device):
    big = 1 << 16  # elements: over the pool's size threshold in every dtype
    params = [torch.randn(3, 5), torch.randn(4, 8, 32, 64).to(memory_format=torch.channels_last),
              torch.randn(0, 4), torch.randn(big + 7, dtype=torch.bfloat16),
              torch.randn(1, dtype=torch.float16), torch.randn(big, 3, dtype=torch.float64),
              torch.randn(big * 2 + 1)]
    params = [p.to(device) for p in params]
    pool = BackupPool(reuse=True)
    views = pool.take(params)
    assert pool.nbytes > 0
    spans = []
    for p, v in zip(params, views, strict=False):
        assert (v.shape, v.dtype, v.stride(), v.device) == (p.shape, p.dtype, p.stride(), p.device)
        assert v.data_ptr() % 64 == 0
        if v.numel():
            spans.append((v.data_ptr(), v.data_ptr() + v.numel() * v.element_size()))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    for p, v in zip(params, views, strict=False):  # usable as backups: a copy round trip is exact
        v.copy_(p)
        assert torch.equal(v, p)


def test_buffer_is_reused_and_grows_only_when_needed(device):
    pool = BackupPool(reuse=True)
    a, b, small = (torch.randn(n, device=device) for n in (1 << 16, 1 << 16, 10))
    ptr = pool.take([a, small])[0].data_ptr()
    size = pool.nbytes
    assert size >= a.numel() * 4
    assert pool.take([b])[0].data_ptr() == ptr and pool.nbytes == size
    pool.take([a, b])
    assert pool.nbytes >= 2 * size


def test_same_active_set_gets_the_same_views():
    pool = BackupPool(reuse=True)
    ps = [torch.randn(1 << 16), torch.randn(10)]
    first = pool.take(ps)
    again = pool.take(ps)
    assert all(x is y for x, y in zip(first, again, strict=False))
    ps[0].data = torch.randn(1 << 15, 2).t()  # same tensor, new layout: new views
    moved = pool.take(ps)
    assert moved[0].shape == ps[0].shape and moved[0].stride() == ps[0].stride()
    ps[1].data = ps[1].data.reshape(2, 5)  # same numel, same contiguity, new shape
    assert pool.take(ps)[1].shape == (2, 5)
    ps[1].data = ps[1].data.double()
    assert pool.take(ps)[1].dtype == torch.float64
    other = [ps[0], torch.randn(2, 5, dtype=torch.float64)]  # an equal-looking other tensor
    assert pool.take(other)[1] is not pool.take(ps)[1]


def test_small_non_dense_and_no_reuse_get_fresh_tensors():
    view = torch.randn(1 << 10, 1 << 8)[:, ::2]
    out = BackupPool(reuse=True).take([view])[0]
    assert out.shape == view.shape
    pool = BackupPool(reuse=True)
    pool.take([torch.randn(5)])
    assert pool.nbytes == 0  # small: from the heap
    pool = BackupPool(reuse=False)
    pool.take([torch.randn(1 << 16)])
    assert pool.nbytes == 0


def _run(reuse: bool, steps: int = 12, width: int = 256,
         device: str = "cpu") -> tuple[list[torch.Tensor], slsam.SLSAM]:
    model = tiny_mlp(0, width=width).to(device)  # 256 x 256 fp32 weights: pooled
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.5, seed=3, reuse_backups=reuse)
    for i in range(steps):
        x, y = (t.to(device) for t in batch(i))

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()], opt


def test_reusing_backups_changes_no_bit_of_the_run(device):
    with_pool, opt = _run(True, device=device)
    fresh, opt_fresh = _run(False, device=device)
    assert all(torch.equal(a, b) for a, b in zip(with_pool, fresh, strict=False))
    assert 0 < opt.backup_bytes() <= sum(p.numel() * 4 + 64 for p in opt.arms)
    assert opt_fresh.backup_bytes() == 0  # nothing held between steps


def test_default_reuses_on_cpu():
    model = tiny_mlp(0)
    assert slsam.SAM(model.parameters(), lr=0.1)._backups.reuse


def test_backup_bytes_counts_pooled_and_small_backups():
    model = tiny_mlp(0, width=256)  # 256 x 256 weights pooled, biases from the heap
    opt = slsam.SAM(model.parameters(), lr=1e-2)
    x, y = batch(0)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step()
    exact = sum(p.numel() * p.element_size() for p in model.parameters())
    assert exact <= opt.backup_bytes() <= exact + 64 * len(list(model.parameters()))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step()
