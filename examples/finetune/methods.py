"""The optimizers compared, behind one interface: ``method.step(loss_fn)``.

``loss_fn(second_pass)`` runs the forward pass and returns the loss (no backward);
``second_pass`` is true for the forward at the perturbed point, where BatchNorm's
running statistics are frozen. Specs:

    adamw            torch.optim.AdamW(fused=True), the strongest plain baseline on CPU
    sam              slsam.SAM (every tensor, every step)
    slsam:S          slsam.SLSAM at sparsity S (the EXP3 bandit picks the tensors)
    uniform:S        the same optimizer with the bandit off (alpha=0): uniform random tensors
    slsam1p:S        one-pass SL-SAM, slsam.SLSAM(passes=1): one forward/backward per step, at
                     the active tensors perturbed along AdamW's first moment
    rst:P            RST (Zhao et al. 2022): a SAM step with probability P, AdamW otherwise
    looksam:K        LookSAM (Liu et al. 2022): the SAM gradient every K steps, in between the
                     plain gradient plus its last sharpness component (alpha 0.7)

A spec may end in ``@key=value,...`` to override rho, lr, alpha or normalize (e.g.
``slsam:0.2@rho=0.05``); ``lrscale=1`` gives the bandit's tensors the learning rate lr / S
(each is updated in about S of the steps; the always-active head keeps lr); ``arms=block``
makes each numbered block one arm (``slsam.arms.by_block``; ``arms=tensor``, the default,
one arm per tensor). ``lora=R`` (text task) wraps the model's encoder in LoRA adapters of
rank R on the attention query/value layers (``finetune/lora.py``), the encoder's own weights
frozen, before the optimizer is built; under SL-SAM each adapter (its lora_A and lora_B) is
then one arm (``slsam.arms.by_adapter``; ``arms=`` overrides), the head always active. RST and
LookSAM are written here in plain PyTorch (foreach ops, fused AdamW), as a user would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import slsam

from .lora import add_lora

LossFn = Callable[[bool], Tensor]

WEIGHT_DECAY = 0.01
SAM_RHO = 0.05  # slsam.SAM's default
SLSAM_RHO = 0.01  # slsam.SLSAM's default (the authors' published runs)
LOOKSAM_ALPHA = 0.7


@dataclass
class Spec:
    kind: str
    value: float | None = None
    overrides: dict[str, float] = field(default_factory=dict)
    text: str = ""
    arms: str = "tensor"

    @property
    def lora(self) -> int:
        """The LoRA rank, 0 without adapters."""
        return int(self.overrides.get("lora", 0))

    @property
    def rho(self) -> float:
        default = SLSAM_RHO if self.kind in SLSAM_KINDS else SAM_RHO
        return float(self.overrides.get("rho", default))


KINDS = ("adamw", "sam", "slsam", "uniform", "slsam1p", "rst", "looksam")
SLSAM_KINDS = ("slsam", "uniform", "slsam1p")
OVERRIDES = ("rho", "lr", "alpha", "normalize", "lrscale", "arms", "lora")
ARMS = ("tensor", "block", "adapter")


def parse_spec(text: str) -> Spec:
    head, _, over = text.partition("@")
    kind, _, value = head.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown method {text!r}; use one of {', '.join(KINDS)} (e.g. slsam:0.2)")
    needs_value = kind in (*SLSAM_KINDS, "rst", "looksam")
    if needs_value != bool(value):
        raise ValueError(f"method {text!r}: {kind} {'needs' if needs_value else 'takes no'} a value "
                         "after ':' (e.g. slsam:0.2, rst:0.5, looksam:5)")
    overrides: dict[str, float] = {}
    arms = ""
    for item in filter(None, over.split(",")):
        k, _, v = item.partition("=")
        if k not in OVERRIDES:
            raise ValueError(f"method {text!r}: unknown override {k!r} ({', '.join(OVERRIDES)})")
        if k == "arms":
            if v not in ARMS or kind not in SLSAM_KINDS:
                raise ValueError(f"method {text!r}: arms={v} needs {', '.join(SLSAM_KINDS)} and "
                                 f"one of {', '.join(ARMS)} (e.g. slsam:0.2@arms=block)")
            arms = v
            continue
        overrides[k] = _number(text, v)
    lora = overrides.get("lora")
    if lora is not None and (lora < 1 or lora != int(lora)):
        raise ValueError(f"method {text!r}: lora={lora:g} must be a positive whole rank "
                         "(e.g. adamw@lora=8)")
    if arms == "adapter" and lora is None:
        raise ValueError(f"method {text!r}: arms=adapter needs LoRA adapters: add lora=R "
                         "(e.g. slsam:0.2@lora=8)")
    arms = arms or ("adapter" if lora is not None else "tensor")
    return Spec(kind, _number(text, value) if value else None, overrides, text, arms)


def _number(text: str, v: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"method {text!r}: {v!r} is not a number (e.g. slsam:0.2@rho=0.05)") from None


class Method:
    """One optimizer and its step; ``active_fraction`` is the fraction of parameter elements
    that get weight gradients in the coming step."""

    def __init__(self, spec: Spec, model: nn.Module, head: list[nn.Parameter], lr: float,
                 seed: int) -> None:
        self.spec = spec
        self.model = model
        if spec.lora:
            add_lora(model, spec.lora)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in self.params)
        lr = float(spec.overrides.get("lr", lr))
        self.gen = torch.Generator().manual_seed(seed + 7919)
        self.opt: torch.optim.Optimizer
        if spec.kind in SLSAM_KINDS:
            head_ids = {id(p) for p in head}
            body = [p for p in self.params if id(p) not in head_ids]
            alpha = 0.0 if spec.kind == "uniform" else float(spec.overrides.get("alpha", 1e-3))
            sparsity = float(spec.value or 0.0)
            body_lr = lr / sparsity if spec.overrides.get("lrscale") else lr
            groups = None
            if spec.arms in ("block", "adapter"):
                by = slsam.arms.by_block if spec.arms == "block" else slsam.arms.by_adapter
                groups = [[p for p in g if id(p) not in head_ids] for g in by(model)]
            self.opt = slsam.SLSAM(
                [{"params": body, "lr": body_lr}, {"params": list(head), "always_active": True}],
                rho=spec.rho, sparsity=sparsity, alpha=alpha, seed=seed, lr=lr,
                weight_decay=WEIGHT_DECAY, normalize_loss=bool(spec.overrides.get("normalize", 0)),
                arm_groups=groups, passes=1 if spec.kind == "slsam1p" else 2)
        elif spec.kind == "sam":
            self.opt = slsam.SAM(self.params, rho=spec.rho, lr=lr, weight_decay=WEIGHT_DECAY)
        else:
            self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=WEIGHT_DECAY, fused=True)
        self._g_v: list[Tensor] | None = None  # LookSAM's sharpness component
        self._count = 0

    @property
    def active_fraction(self) -> float:
        if isinstance(self.opt, slsam.SLSAM):
            return sum(p.numel() for p in self.params if p.requires_grad) / self.numel
        return 1.0

    def mask(self) -> list[bool] | None:
        return self.opt.mask.tolist() if isinstance(self.opt, slsam.SLSAM) else None

    def step(self, loss_fn: LossFn) -> Tensor:
        self._count += 1
        opt = self.opt
        if isinstance(opt, slsam.SLSAM):
            def closure() -> Tensor:
                loss = loss_fn(opt.perturbed)
                loss.backward()
                return loss
            return opt.step(closure)
        kind = self.spec.kind
        if kind == "adamw":
            return self._plain(loss_fn)
        if kind == "rst":
            p_sam = float(self.spec.value or 0.0)
            if float(torch.rand((), generator=self.gen)) < p_sam:
                return self._sam(loss_fn)
            return self._plain(loss_fn)
        assert kind == "looksam"
        k = int(self.spec.value or 1)
        if self._g_v is None or (self._count - 1) % k == 0:
            return self._sam(loss_fn, keep_direction=True)
        return self._looksam_reuse(loss_fn)

    # ----- plain-PyTorch steps -----

    def _backward(self, loss_fn: LossFn, second: bool) -> tuple[Tensor, list[Tensor]]:
        self.opt.zero_grad(set_to_none=True)
        loss = loss_fn(second)
        loss.backward()
        return loss.detach(), [p.grad if p.grad is not None else torch.zeros_like(p)
                               for p in self.params]

    def _plain(self, loss_fn: LossFn) -> Tensor:
        loss, _ = self._backward(loss_fn, False)
        self.opt.step()
        return loss

    def _sam(self, loss_fn: LossFn, keep_direction: bool = False) -> Tensor:
        loss, g = self._backward(loss_fn, False)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g)))
        scale = self.spec.rho / (float(norm) + 1e-12)
        if not math.isfinite(scale):
            scale = 0.0
        e = torch._foreach_mul(g, scale)
        with torch.no_grad():
            torch._foreach_add_(self.params, e)
        _, gs = self._backward(loss_fn, True)
        with torch.no_grad():
            torch._foreach_sub_(self.params, e)
        if keep_direction:  # g_v = g_s - (<g, g_s> / |g|^2) g
            dot = sum(float((a * b).sum()) for a, b in zip(g, gs, strict=False))
            coef = dot / max(float(norm) ** 2, 1e-30)
            self._g_v = torch._foreach_sub(gs, torch._foreach_mul(g, coef))
        self.opt.step()
        return loss

    def _looksam_reuse(self, loss_fn: LossFn) -> Tensor:
        assert self._g_v is not None
        loss, g = self._backward(loss_fn, False)
        g_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g)))
        v_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._g_v)))
        coef = LOOKSAM_ALPHA * float(g_norm) / max(float(v_norm), 1e-30)
        grads = [p.grad for p in self.params]
        if all(gr is not None for gr in grads):
            torch._foreach_add_(grads, self._g_v, alpha=coef)  # type: ignore[arg-type]
        self.opt.step()
        return loss

    def state_bytes(self) -> int:
        """Bytes of optimizer state, backups and LookSAM's stored direction."""
        n = sum(t.numel() * t.element_size() for s in self.opt.state.values()
                for t in s.values() if isinstance(t, Tensor))
        if isinstance(self.opt, slsam.SLSAM):
            n += self.opt.backup_bytes()
        if self._g_v is not None:
            n += sum(t.numel() * t.element_size() for t in self._g_v)
        return n


def make_method(text: str, model: nn.Module, head: list[nn.Parameter], lr: float,
                seed: int) -> Method:
    return Method(parse_spec(text), model, head, lr, seed)


def describe(text: str) -> dict[str, Any]:
    s = parse_spec(text)
    return {"spec": text, "kind": s.kind, "value": s.value, "rho": s.rho, "arms": s.arms,
            **s.overrides}
