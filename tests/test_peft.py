"""LoRA adapters as arms (slsam.arms.by_adapter): PEFT's layout, and a hand-written one."""

from __future__ import annotations

import pytest
import torch
from conftest import Net, assert_resume_is_bit_identical, closure_for

import slsam


def peft_net(seed=0):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc", "embed"], lora_dropout=0.0,
                             init_lora_weights="gaussian")
    torch.manual_seed(seed)
    return peft.get_peft_model(Net(seed), config)


def lora_opt(model, seed=1):
    return slsam.SLSAM(model.parameters(), lr=1e-2, rho=0.05,
                       sparsity=0.4, seed=seed, arm_groups=slsam.arms.by_adapter(model))


def test_each_adapter_pair_is_one_arm_and_the_base_stays_frozen():
    model = peft_net()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    names = {id(p): n for n, p in model.named_parameters()}
    opt = lora_opt(model)
    assert len(opt.arm_groups) == 5  # embed + 4 blocks' fc
    for arm in opt.arm_groups:
        assert sorted(names[id(p)].split(".")[-3] for p in arm) == ["lora_A", "lora_B"]
    assert all(p.requires_grad is False for n, p in model.named_parameters() if n in frozen)
    lora_before = [p.detach().clone() for a in opt.arm_groups for p in a]
    for seed in range(6):
        opt.step(closure_for(model, opt, seed))
    for n, p in model.named_parameters():
        if n in frozen:
            assert not p.requires_grad and torch.equal(p, frozen[n]), n
    lora_after = [p.detach() for a in opt.arm_groups for p in a]
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, lora_after, strict=True))


def test_peft_checkpoint_round_trip_is_bit_identical():
    model = peft_net(2)
    assert_resume_is_bit_identical(model, lora_opt(model), lambda m: lora_opt(m, seed=7))


class HandLoRA(torch.nn.Module):
    """A frozen linear layer plus a trainable low-rank update B @ A (plain modules)."""

    def __init__(self, base: torch.nn.Linear, r: int = 2) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = torch.nn.Linear(base.in_features, r, bias=False)
        self.lora_B = torch.nn.Linear(r, base.out_features, bias=False)
        torch.nn.init.normal_(self.lora_B.weight, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


def test_hand_written_lora_modules_are_arms_too():
    model = Net(0)
    for block in model.encoder.layer:
        block.fc = HandLoRA(block.fc)
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.encoder.layer:
        block.fc.lora_A.requires_grad_(True)
        block.fc.lora_B.requires_grad_(True)
    groups = slsam.arms.by_adapter(model)
    assert [len(g) for g in groups] == [2, 2, 2, 2]
    opt = slsam.SLSAM([p for g in groups for p in g], lr=1e-2, sparsity=0.5, seed=0,
                      arm_groups=groups)
    base = [b.fc.base.weight.detach().clone() for b in model.encoder.layer]
    for seed in range(4):
        opt.step(closure_for(model, opt, seed))
    assert all(torch.equal(b.fc.base.weight, w) for b, w in zip(model.encoder.layer, base,
                                                                  strict=True))


def test_by_adapter_without_lora_names_the_fix():
    with pytest.raises(ValueError, match="get_peft_model"):
        slsam.arms.by_adapter(Net())
