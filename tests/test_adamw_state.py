"""The AdamW state the fused update makes (slsam/_adamw_state.py): new moments side by
side in one buffer per moment, laid out like their parameters."""

from __future__ import annotations

import copy
import io
from collections import defaultdict
from typing import Any

import torch

import slsam
from slsam._adamw_state import adamw_states
from tests.conftest import closure_for, tiny_mlp


def test_new_moments_are_views_side_by_side_laid_out_like_their_params(device):
    params = [torch.randn(3, 5), torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
              torch.randn(0, 4), torch.randn(7, dtype=torch.bfloat16),
              torch.randn(9, dtype=torch.float16), torch.randn(1, dtype=torch.float64),
              torch.randn(6, 8)[:, ::2],  # not dense (gaps): gets a tensor of its own
              torch.randn(33)]
    params = [p.to(device) for p in params]
    state: dict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
    moments = adamw_states(state, params)
    for ts, key in ((moments.exp_avgs, "exp_avg"), (moments.exp_avg_sqs, "exp_avg_sq")):
        placed = [t for i, t in enumerate(ts) if i != 6]
        storages = {t.untyped_storage().data_ptr() for t in placed}
        assert len(storages) == 1, f"{key}: one buffer for every dense parameter"
        ptrs = [t.data_ptr() for t in placed if t.numel()]
        assert ptrs == sorted(ptrs), f"{key}: in list order"
        for i, (p, t) in enumerate(zip(params, ts, strict=True)):
            want = torch.float32 if p.dtype == torch.float16 else p.dtype
            stride = t.contiguous().stride() if i == 6 else p.stride()
            assert (t.shape, t.stride(), t.dtype, t.device) == (p.shape, stride, want, p.device)
            assert t.data_ptr() % 64 == 0 and not t.any()
            assert state[p][key] is t
        ends = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in placed
                if t.numel()]
        assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False)), "disjoint"
        own = ts[6]
        assert own.untyped_storage().data_ptr() not in storages
    assert moments.wide == [4]
    assert all(float(s) == 0 and s.dtype == torch.float32 for s in moments.steps)
    again = adamw_states(state, params)  # made once: later steps get the same tensors
    assert all(a is b for i, (a, b) in enumerate(zip(again.exp_avgs, moments.exp_avgs,
                                                     strict=True)) if i != 6)


def test_side_by_side_moments_train_like_moments_of_their_own():
    def run(own: bool) -> torch.nn.Module:
        model = tiny_mlp(0)
        opt = slsam.SAM(model.parameters(), lr=1e-2, weight_decay=0.1)
        if own:  # the layout torch.optim.AdamW makes: one zeros_like per moment
            for p in model.parameters():
                opt.base_optimizer.state[p].update(
                    step=torch.zeros(()), exp_avg=torch.zeros_like(p),
                    exp_avg_sq=torch.zeros_like(p))
        for seed in range(4):
            opt.step(closure_for(model, opt, seed))
        return model

    for p, q in zip(run(False).parameters(), run(True).parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_checkpoint_holds_each_moment_once_and_resumes_bit_for_bit():
    model = tiny_mlp(0)
    opt = slsam.SAM(model.parameters(), lr=1e-2)
    for seed in range(2):
        opt.step(closure_for(model, opt, seed))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    moment_bytes = sum(2 * p.numel() * p.element_size() for p in model.parameters())
    assert buf.tell() < moment_bytes + 64 * 2 * len(list(model.parameters())) + 16 * 1024
    model2 = copy.deepcopy(model)
    opt2 = slsam.SAM(model2.parameters(), lr=1e-2)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf))
    for seed in (2, 3):
        opt.step(closure_for(model, opt, seed))
        opt2.step(closure_for(model2, opt2, seed))
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
