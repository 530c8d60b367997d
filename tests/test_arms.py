"""Arm groups (``SLSAM(..., arm_groups=...)``) and the helpers of slsam.arms."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    Block,
    Net,
    assert_resume_is_bit_identical,
    batch,
    closure_for,
    conv_model,
    conv_steps,
)

import slsam
from slsam import reference


def grouped(seed=0, sparsity=0.5, **kw):
    model = Net(seed)
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, rho=0.05, sparsity=sparsity, seed=1,
                      arm_groups=slsam.arms.by_block(model), **kw)
    return model, opt


def test_by_block_groups_numbered_blocks():
    model = Net()
    groups = slsam.arms.by_block(model)
    assert len(groups) == 4
    for i, g in enumerate(groups):
        assert [id(p) for p in g] == [id(p) for p in model.encoder.layer[i].parameters()]


@pytest.mark.parametrize("prefix", ["blocks", "layers", "h", "block", "_blocks"])
def test_by_block_knows_the_common_block_names(prefix):
    model = torch.nn.Module()
    setattr(model, prefix, torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3)))
    model.head = torch.nn.Linear(2, 2)
    groups = slsam.arms.by_block(model)
    assert [len(g) for g in groups] == [2, 2, 2]


def test_by_block_without_blocks_names_the_fix():
    with pytest.raises(ValueError, match="pattern="):
        slsam.arms.by_block(torch.nn.Linear(2, 2))


def test_by_module_by_type_and_by_name():
    model = Net()
    by_type = slsam.arms.by_module(model, Block)
    assert len(by_type) == 4 and all(len(g) == 4 for g in by_type)
    by_name = slsam.arms.by_module(model, ["embed", "encoder.layer.0"])
    assert [len(g) for g in by_name] == [2, 4]
    with pytest.raises(ValueError, match="no module named 'nope'"):
        slsam.arms.by_module(model, ["nope"])


def test_one_arm_per_group_plus_one_per_unlisted_tensor():
    model, opt = grouped()
    # embed.weight, embed.bias: one arm each, then the 4 blocks, then head.weight, head.bias
    assert opt.probs.numel() == 2 + 4 + 2 and opt.mask.numel() == 8
    sizes = [len(a) for a in opt.arm_groups]
    assert sizes == [1, 1, 4, 4, 4, 4, 1, 1]
    assert [id(p) for a in opt.arm_groups for p in a] == [id(p) for p in model.parameters()]


def test_a_group_is_active_as_a_whole():
    model, opt = grouped(sparsity=0.4)
    for seed in range(6):
        for arm, on in zip(opt.arm_groups, opt.mask.tolist(), strict=True):
            assert all(p.requires_grad == on for p in arm)
        before = [p.detach().clone() for p in model.parameters()]
        on_arms = opt.mask.tolist()
        opt.step(closure_for(model, opt, seed))
        after = dict(zip(map(id, model.parameters()), before, strict=True))
        for arm, on in zip(opt.arm_groups, on_arms, strict=True):
            for p in arm:  # inactive arms untouched, active ones moved
                assert torch.equal(p.detach(), after[id(p)]) != on


def test_group_norm_is_the_norm_over_its_tensors_and_feeds_the_bandit():
    model, opt = grouped(sparsity=0.5)
    opt._set_mask(torch.ones(8, dtype=torch.bool))
    probs0, mask = opt.probs, opt.mask
    closure_for(model, opt, 0)()
    grads = {id(p): p.grad.clone() for p in model.parameters()}
    opt.first_step()
    expected = [reference.grad_norms([torch.cat([grads[id(p)].flatten() for p in arm])])[0][0]
                for arm in opt.arm_groups]
    torch.testing.assert_close(opt._pending.arm_norms, torch.stack(expected), rtol=1e-6, atol=0)
    closure_for(model, opt, 0)()
    norms = opt._pending.arm_norms.clone()
    opt.second_step()
    ref = probs0.clone()
    reference.bandit_update_(ref, mask, norms, None, opt.alpha, opt.sparsity * 8, False)
    torch.testing.assert_close(opt.probs, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mask_mode, passes", [("requires_grad", 2), ("grad", 2),
                                               ("requires_grad", 1)])
def test_singleton_groups_equal_one_arm_per_tensor(mask_mode, passes):
    a, b = Net(3), Net(3)
    kw = dict(lr=1e-2, sparsity=0.3, seed=4, mask_mode=mask_mode, passes=passes)
    oa = slsam.SLSAM(a.parameters(), **kw)
    ob = slsam.SLSAM(b.parameters(), **kw, arm_groups=[[p] for p in b.parameters()])
    for seed in range(5):
        oa.step(closure_for(a, oa, seed))
        ob.step(closure_for(b, ob, seed))
    assert torch.equal(oa.probs, ob.probs) and torch.equal(oa.mask, ob.mask)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_grouped_checkpoint_round_trip_is_bit_identical():
    model, opt = grouped()
    assert_resume_is_bit_identical(model, opt, lambda m: slsam.SLSAM(
        m.parameters(), lr=1e-2, rho=0.05, sparsity=0.5, seed=9,
        arm_groups=slsam.arms.by_block(m)))


def test_mismatched_groups_on_load_are_refused_with_state_unchanged():
    model, opt = grouped()
    opt.step(closure_for(model, opt, 0))
    sd = copy.deepcopy(opt.state_dict())
    # the same number of arms (8), grouped otherwise: embed together, block 3 split in two
    other = Net()
    layer = other.encoder.layer
    groups = [list(other.embed.parameters())] + [list(layer[i].parameters()) for i in range(3)]
    groups += [list(layer[3].fc.parameters()), list(layer[3].norm.parameters())]
    opt2 = slsam.SLSAM(other.parameters(), lr=1e-2, sparsity=0.5, seed=1, arm_groups=groups)
    assert opt2.probs.numel() == 8
    probs, mask = opt2.probs, opt2.mask
    with pytest.raises(ValueError, match="same arm_groups"):
        opt2.load_state_dict(sd)
    assert torch.equal(opt2.probs, probs) and torch.equal(opt2.mask, mask)
    # a per-tensor checkpoint of the same arm count into a grouped optimizer
    flat = slsam.SLSAM(Net(depth=1).parameters(), lr=1e-2, sparsity=0.5, seed=0)
    assert flat.probs.numel() == 8
    with pytest.raises(ValueError, match="one arm per tensor"):
        opt2.load_state_dict(flat.state_dict())
    # and a grouped one into a per-tensor optimizer
    with pytest.raises(ValueError, match="same arm_groups"):
        flat.load_state_dict(sd)


def test_bad_arm_groups_name_the_problem():
    model = Net()
    ps = list(model.parameters())
    with pytest.raises(ValueError, match=r"arm_groups\[1\]\[0\] is already in arm_groups\[0\]"):
        slsam.SLSAM(ps, arm_groups=[[ps[0]], [ps[0]]])
    with pytest.raises(ValueError, match="not among the optimizer's parameters"):
        slsam.SLSAM(ps[:2], arm_groups=[[ps[3]]])
    with pytest.raises(ValueError, match="always_active"):
        slsam.SLSAM([{"params": ps[:-2]}, {"params": ps[-2:], "always_active": True}],
                    arm_groups=[ps[-2:]])
    with pytest.raises(TypeError, match="list of lists"):
        slsam.SLSAM(ps, arm_groups=[ps[0]])


def test_frozen_tensors_in_a_group_are_left_out():
    model = Net()
    model.encoder.layer[0].fc.weight.requires_grad_(False)
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.5, seed=0,
                      arm_groups=slsam.arms.by_module(model, Block))
    assert [len(a) for a in opt.arm_groups] == [1, 1, 3, 4, 4, 4, 1, 1]


# ----- arm groups with the training-loop features (tests/test_training_loops.py) -----


@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD], ids=["adamw", "sgd"])
def test_block_frozen_at_construction_trains_every_step_once_unfrozen(base):
    model = Net()
    block = model.encoder.layer[1]
    block.requires_grad_(False)  # frozen before the optimizer exists: in no arm
    opt = slsam.SLSAM(model.parameters(), base, lr=1e-2, rho=0.05, sparsity=0.5, seed=1,
                      arm_groups=slsam.arms.by_block(model))
    assert [len(a) for a in opt.arm_groups] == [1, 1, 4, 4, 4, 1, 1]
    w0 = block.fc.weight.detach().clone()
    opt.step(closure_for(model, opt, 0))
    assert torch.equal(block.fc.weight, w0)
    block.requires_grad_(True)  # gradual unfreezing
    for i in range(1, 5):
        before = block.fc.weight.detach().clone()
        opt.step(closure_for(model, opt, i))
        assert not torch.equal(block.fc.weight, before)  # every step, outside the bandit
        on = opt.mask.tolist()  # the arms stay whole
        for arm, active in zip(opt.arm_groups, on, strict=True):
            assert all(p.requires_grad == active for p in arm)
    block.requires_grad_(False)
    w1 = block.fc.weight.detach().clone()
    opt.step(closure_for(model, opt, 5))
    assert torch.equal(block.fc.weight, w1) and block.fc.weight.grad is None


def test_tensor_the_user_freezes_in_an_active_group_stays_frozen():
    model, opt = grouped()
    frozen = model.encoder.layer[0].fc.weight
    frozen.requires_grad_(False)
    w0 = frozen.detach().clone()
    mates = [model.encoder.layer[0].fc.bias, *model.encoder.layer[0].norm.parameters()]
    moved = False
    for i in range(8):
        before = [p.detach().clone() for p in mates]
        opt.step(closure_for(model, opt, i))
        moved |= any(not torch.equal(p, b) for p, b in zip(mates, before, strict=True))
        assert not frozen.requires_grad and torch.equal(frozen, w0)
    assert moved  # the rest of its group still trains when the group is drawn


def test_first_pass_done_with_arm_groups_equals_the_closure_run():
    runs = []
    for done in (False, True):
        model, opt = grouped()
        for i in range(4):
            closure = closure_for(model, opt, i)
            calls = []
            if done:
                closure()  # the caller's first pass
            opt.step(lambda c=closure, calls=calls: calls.append(1) or c(),
                     first_pass_done=done)
            assert len(calls) == (1 if done else 2)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_fp16_grouped_arms_keep_fp32_moments():
    model = Net().half()
    opt = slsam.SLSAM(model.parameters(), lr=1e-3, rho=0.05, sparsity=0.5, seed=1,
                      arm_groups=slsam.arms.by_block(model))
    assert opt._update.name == "fused_adamw"
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x.half()).float(), y)
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
    assert opt.state, "no arm was updated"
    for p, state in opt.state.items():
        assert p.dtype == torch.float16
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_channels_last_after_steps_with_grouped_arms_trains_like_contiguous():
    def run(channels_last):
        model = conv_model("cpu")
        arms = [list(model[0].parameters()), list(model[2].parameters())]
        opt = slsam.SLSAM(model.parameters(), lr=1e-2, rho=0.05, sparsity=0.75, seed=1,
                          arm_groups=arms)
        conv_steps(model, opt, range(3))
        assert model[0].weight in opt.state  # the moments exist, laid out contiguous
        if channels_last:
            model.to(memory_format=torch.channels_last)
        moved = model[0].weight.detach().clone()
        conv_steps(model, opt, range(3, 8))
        # the conv arm trained after the move (its moments were re-laid at that update)
        assert not torch.equal(model[0].weight, moved)
        return model, opt

    ref, ref_opt = run(False)
    model, opt = run(True)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(opt.mask, ref_opt.mask)
    for p, r in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
