"""Fuzzing the optimizer's public API with random call sequences (hypothesis stateful).

A state machine drives SLSAM through random sequences of: step(closure) in either
closure convention (PyTorch's: the closure runs both passes; davda54/sam's: the first
backward before step(closure, first_pass_done=True)), first_step()/second_step() (and
step() without a closure as the second half), state_dict()/load_state_dict() round
trips into a fresh optimizer (also through torch.save), dense() blocks with a backward inside (and a step
after one, without zero_grad()), zero_grad(), steps
with a non-finite gradient, and misuse calls that must raise. After every call it
checks the invariants:

- with lr = 0 every completed step leaves the weights bit-identical (exact restore);
- tensors not in the step's mask are untouched by it;
- sum(p) = s * n within 1e-8 * n, p in [1e-8, 1], finite;
- the mask is never empty, and requires_grad == mask (outside dense());
- the weights are finite; a misuse call changes nothing.

Deterministic by default; explore with SLSAM_HYPOTHESIS_RANDOM=1 and
SLSAM_FUZZ_EXAMPLES=500.
"""

from __future__ import annotations

import copy
import io
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, tiny_mlp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import slsam


class PlainAdamW(torch.optim.AdamW):  # not exactly AdamW: the generic (non-fused) path
    pass


BASES = {
    "adamw_fused": (torch.optim.AdamW, dict(weight_decay=0.05)),
    "adamw_generic": (PlainAdamW, dict(weight_decay=0.05)),
    "sgd_momentum": (torch.optim.SGD, dict(momentum=0.9, weight_decay=1e-3)),
}


def snapshot(params):
    return [p.detach().clone() for p in params]


class SLSAMMachine(RuleBasedStateMachine):
    @initialize(base=st.sampled_from(list(BASES)), sparsity=st.sampled_from([0.2, 0.5, 1.0]),
                lr_zero=st.booleans(), always_active=st.booleans(), seed=st.integers(0, 2**16),
                normalize=st.booleans(), adaptive=st.booleans(),
                mask_mode=st.sampled_from(["requires_grad", "grad"]), depth=st.integers(2, 6))
    def setup(self, base, sparsity, lr_zero, always_active, seed, normalize, adaptive, mask_mode,
              depth):
        self.model = tiny_mlp(seed=seed % 7, depth=depth)
        self.params = list(self.model.parameters())
        cls, kw = BASES[base]
        lr = 0.0 if lr_zero else 1e-2
        if always_active:
            groups = [{"params": self.params[:-2]},
                      {"params": self.params[-2:], "always_active": True}]
        else:
            groups = [{"params": self.params}]
        self.config = dict(base_optimizer=cls, sparsity=sparsity, lr=lr, normalize_loss=normalize,
                           adaptive=adaptive, mask_mode=mask_mode, **kw)
        self.groups = groups
        self.opt = slsam.SLSAM(groups, seed=seed, **self.config)
        self.lr_zero = lr_zero
        self.initial = snapshot(self.params)
        self.pending = None  # (mask, weights before first_step, batch) in the two-call style
        self.batch_i = 0
        self.skipped = 0

    # ----- helpers -----

    def next_batch(self):
        self.batch_i += 1
        return batch(self.batch_i % 5)

    def loss(self, x, y):
        return F.cross_entropy(self.model(x), y)

    def closure(self, x, y, zero):
        def closure():
            if zero:
                self.opt.zero_grad()
            loss = self.loss(x, y)
            loss.backward()
            return loss

        return closure

    def arm_index(self):
        return {id(p): i for i, p in enumerate(self.opt.arms)}

    def check_inactive_untouched(self, mask, before):
        idx = self.arm_index()
        for p, b in zip(self.params, before, strict=False):
            i = idx.get(id(p))
            if i is not None and not mask[i]:
                assert torch.equal(p, b), "an inactive tensor changed"

    def expect_unchanged(self, fn, exc, match):
        weights = snapshot(self.params)
        probs, mask = self.opt.probs, self.opt.mask
        with pytest.raises(exc, match=match):
            fn()
        assert all(torch.equal(a, b) for a, b in zip(snapshot(self.params), weights, strict=False))
        assert torch.equal(self.opt.probs, probs) and torch.equal(self.opt.mask, mask)

    # ----- rules: steps -----

    @precondition(lambda self: self.pending is None)
    @rule(zero=st.booleans(), leftover=st.booleans())
    def step_pytorch_convention(self, zero, leftover):
        x, y = self.next_batch()
        mask, before = self.opt.mask.tolist(), snapshot(self.params)
        if leftover:  # gradients at entry are discarded: the closure runs twice all the same
            self.loss(x, y).backward()
        else:
            self.opt.zero_grad()
        calls = []
        inner = self.closure(x, y, zero)
        loss = self.opt.step(lambda: calls.append(1) or inner())
        assert isinstance(loss, torch.Tensor) and len(calls) == 2
        self.check_inactive_untouched(mask, before)

    @precondition(lambda self: self.pending is None)
    @rule(zero=st.booleans(), pre_zero=st.booleans())
    def step_davda_convention(self, zero, pre_zero):
        x, y = self.next_batch()
        mask, before = self.opt.mask.tolist(), snapshot(self.params)
        if pre_zero:  # else gradients left over (e.g. by a dense() probe) accumulate
            self.opt.zero_grad()
        self.loss(x, y).backward()  # the first pass, by the caller
        calls = []
        inner = self.closure(x, y, zero)
        self.opt.step(lambda: calls.append(1) or inner(), first_pass_done=True)
        if any(p.grad is not None for p in self.opt._active) or calls:
            assert len(calls) in (1, 2)
        self.check_inactive_untouched(mask, before)

    @precondition(lambda self: self.pending is None)
    @rule(pre_zero=st.booleans())
    def first_step(self, pre_zero):
        x, y = self.next_batch()
        self.pending = (self.opt.mask.tolist(), snapshot(self.params), (x, y))
        if pre_zero:
            self.opt.zero_grad()
        self.loss(x, y).backward()
        self.opt.first_step(zero_grad=True)
        assert self.opt.perturbed

    @precondition(lambda self: self.pending is not None)
    @rule(via_step=st.booleans())
    def second_step(self, via_step):
        mask, before, (x, y) = self.pending
        self.loss(x, y).backward()
        if via_step:
            self.opt.step()  # no closure after first_step(): the second half (GradScaler protocol)
        else:
            self.opt.second_step(zero_grad=True)
        self.pending = None
        assert not self.opt.perturbed
        self.check_inactive_untouched(mask, before)

    @precondition(lambda self: self.pending is None)
    @rule(where=st.sampled_from([1, 2]), value=st.sampled_from([float("nan"), float("inf")]))
    def step_with_nonfinite_gradient(self, where, value):
        x, y = self.next_batch()
        before = snapshot(self.params)
        probs = self.opt.probs
        skipped = self.opt.skipped_steps
        state = copy.deepcopy({id(p): v for p, v in self.opt.state.items()})
        calls = [0]

        def closure():
            calls[0] += 1
            self.opt.zero_grad()
            loss = self.loss(x, y)
            loss.backward()
            if calls[0] == where:
                p = next(p for p in self.opt._active if p.grad is not None)
                p.grad.view(-1)[-1] = value
            return loss

        self.opt.zero_grad()
        self.opt.step(closure)
        assert self.opt.skipped_steps == skipped + 1
        assert all(torch.equal(a, b) for a, b in zip(snapshot(self.params), before, strict=False))
        assert torch.equal(self.opt.probs, probs)
        for p, v in self.opt.state.items():
            old = state.get(id(p))
            if old:
                for key in old:
                    assert torch.equal(v[key], old[key]), key

    # ----- rules: state, dense, zero_grad -----

    @precondition(lambda self: self.pending is None)
    @rule(through_bytes=st.booleans(), new_seed=st.integers(0, 2**16))
    def state_dict_round_trip(self, through_bytes, new_seed):
        sd = self.opt.state_dict()
        if through_bytes:
            buf = io.BytesIO()
            torch.save(sd, buf)
            buf.seek(0)
            sd = torch.load(buf, weights_only=True)
        else:
            sd = copy.deepcopy(sd)
        fresh = slsam.SLSAM(self.groups, seed=new_seed, **self.config)
        fresh.load_state_dict(sd)
        assert torch.equal(fresh.probs, self.opt.probs)
        assert torch.equal(fresh.mask, self.opt.mask)
        assert fresh.skipped_steps == self.opt.skipped_steps
        assert torch.equal(fresh._generator.get_state(), self.opt._generator.get_state())
        self.opt = fresh

    @precondition(lambda self: self.pending is None)
    @rule()
    def load_own_state_dict(self):
        probs, mask = self.opt.probs, self.opt.mask
        self.opt.load_state_dict(self.opt.state_dict())
        assert torch.equal(self.opt.probs, probs) and torch.equal(self.opt.mask, mask)

    @precondition(lambda self: self.pending is None)
    @rule(backward=st.booleans())
    def dense_block(self, backward):
        x, y = self.next_batch()
        with self.opt.dense():
            assert all(p.requires_grad for p in self.opt.arms)
            if backward:  # e.g. a saliency or gradient-norm probe; gradients left behind
                self.loss(x, y).backward()

    @precondition(lambda self: self.pending is None)
    @rule(zero=st.booleans())
    def dense_probe_then_step(self, zero):
        """Gradients of every tensor computed under dense() (a saliency probe), then a
        davda-style step without zero_grad(): the inactive tensors' stale gradients must
        not reach the base optimizer."""
        x, y = self.next_batch()
        mask, before = self.opt.mask.tolist(), snapshot(self.params)
        with self.opt.dense():
            self.loss(x, y).backward()
        self.loss(x, y).backward()
        self.opt.step(self.closure(x, y, zero), first_pass_done=True)
        self.check_inactive_untouched(mask, before)

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none):
        self.opt.zero_grad(set_to_none=set_to_none)

    # ----- rules: misuse -----

    @precondition(lambda self: self.pending is None)
    @rule()
    def misuse_second_step_first(self):
        self.expect_unchanged(self.opt.second_step, RuntimeError, "before first_step")

    @precondition(lambda self: self.pending is None)
    @rule()
    def misuse_step_without_closure(self):
        self.expect_unchanged(self.opt.step, RuntimeError, "needs a closure")

    @precondition(lambda self: self.pending is not None)
    @rule()
    def misuse_first_step_twice(self):
        self.expect_unchanged(self.opt.first_step, RuntimeError, "twice")

    @precondition(lambda self: self.pending is not None)
    @rule()
    def misuse_step_closure_while_pending(self):
        x, y = self.pending[2]
        self.expect_unchanged(lambda: self.opt.step(self.closure(x, y, True)), RuntimeError,
                              "between first_step")

    @precondition(lambda self: self.pending is None)
    @rule(ret=st.sampled_from([None, 0.5]), when=st.sampled_from([1, 2]))
    def misuse_closure_returns_non_tensor(self, ret, when):
        x, y = self.next_batch()
        calls = [0]
        inner = self.closure(x, y, True)

        def closure():
            calls[0] += 1
            loss = inner()
            return ret if calls[0] == when else loss

        self.opt.zero_grad()
        self.expect_unchanged(lambda: self.opt.step(closure), TypeError, "return loss")
        assert not self.opt.perturbed
        assert all(p.grad is None for p in self.opt._active)

    # ----- invariants -----

    @invariant()
    def weights_finite(self):
        assert all(bool(torch.isfinite(p).all()) for p in self.params)

    @invariant()
    def exact_restore_with_lr_zero(self):
        if self.lr_zero and self.pending is None:
            for p, q in zip(self.params, self.initial, strict=False):
                assert torch.equal(p, q), "lr = 0 but the weights moved"

    @invariant()
    def bandit_state(self):
        probs, mask = self.opt.probs, self.opt.mask
        n = probs.numel()
        if n == 0:
            return
        assert bool(torch.isfinite(probs).all())
        assert bool(((probs >= 1e-8) & (probs <= 1.0)).all())
        assert abs(float(probs.sum()) - self.opt.sparsity * n) <= 1e-8 * n + 1e-12
        assert int(mask.sum()) >= 1, "empty mask"

    @invariant()
    def requires_grad_is_mask(self):
        mask = self.opt.mask.tolist()
        if self.config["mask_mode"] == "requires_grad":
            assert [p.requires_grad for p in self.opt.arms] == mask
        else:
            assert all(p.requires_grad for p in self.opt.arms)
        assert all(p.requires_grad for p in self.opt._always)


SLSAMMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("SLSAM_FUZZ_EXAMPLES", "30")),
    stateful_step_count=20,
    deadline=None,
    derandomize=os.environ.get("SLSAM_HYPOTHESIS_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,
)
TestSLSAMFuzz = SLSAMMachine.TestCase
