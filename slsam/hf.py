"""Hugging Face ``transformers.Trainer`` with SL-SAM's two passes.

    from slsam.hf import SLSAMTrainer
    trainer = SLSAMTrainer(model=model, args=args, train_dataset=ds,
                           slsam_kwargs=dict(sparsity=0.2, rho=0.01),
                           always_active=["classifier"])
    trainer.train()

``training_step`` runs the first forward/backward, ``first_step()`` (perturb),
and the second forward/backward; the Trainer then clips the (second-pass)
gradients as usual and calls ``optimizer.step()``, which is ``second_step()``
(restore + AdamW + bandit + next mask). fp16 goes through the Trainer's
GradScaler (``scaler.step(opt)`` protocol).

Gradient accumulation (``gradient_accumulation_steps=k``): the first k - 1
micro-batches only accumulate first-pass gradients (their inputs are kept); on
the last one, ``first_step()`` perturbs along the accumulated gradient of the
whole effective batch, then all k micro-batches are replayed at the perturbed
point, so both passes see the same batch as one large batch would (at k + 1
extra forward/backward passes per step, as SAM costs with one batch). Under DDP
the replayed passes all-reduce on each backward (the sum is the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from slsam.optim import SLSAM, _trainable


class SLSAMTrainer(Trainer):
    """A ``Trainer`` whose optimizer is :class:`slsam.SLSAM` (AdamW base).

    Args:
        slsam_kwargs: passed to ``SLSAM`` (sparsity, rho, alpha, seed, ...); the
            learning rate, betas, eps and weight decay come from ``TrainingArguments``.
        always_active: parameter-name prefixes kept active every step, outside the
            bandit (e.g. ``["classifier"]`` for a freshly initialised head).
    """

    def __init__(self, *args: Any, slsam_kwargs: dict[str, Any] | None = None,
                 always_active: Sequence[str] = (), **kwargs: Any) -> None:
        self.slsam_kwargs = dict(slsam_kwargs or {})
        self.always_active = tuple(always_active)
        self._micro_batches: list[tuple[dict[str, Any], torch.Tensor | int | None]] = []
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
            for name, p in opt_model.named_parameters():
                if not _trainable(p):  # frozen by the user; arms another SLSAM masked count
                    continue
                key = (name in decay, name.startswith(self.always_active) if self.always_active
                       else False)
                groups.setdefault(key, []).append(p)
            param_groups = [
                {"params": ps, "weight_decay": self.args.weight_decay if dec else 0.0,
                 "always_active": always}
                for (dec, always), ps in groups.items()
            ]
            self.optimizer = SLSAM(
                param_groups, torch.optim.AdamW, lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon,
                **self.slsam_kwargs)
        return self.optimizer

    @property
    def slsam_optimizer(self) -> SLSAM:
        opt = self.optimizer
        while not isinstance(opt, SLSAM):  # accelerate wraps it (AcceleratedOptimizer)
            opt = opt.optimizer
        return opt

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        opt = self.slsam_optimizer
        self._micro_batches.append((inputs, num_items_in_batch))
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self.accelerator.sync_gradients:  # more micro-batches follow: accumulate
            return loss
        replay, self._micro_batches = self._micro_batches, []
        opt.first_step(scaler=getattr(self.accelerator, "scaler", None))
        try:
            for micro_inputs, micro_items in replay:
                super().training_step(model, micro_inputs, micro_items)
        except BaseException:
            opt._abort()
            raise
        return loss
