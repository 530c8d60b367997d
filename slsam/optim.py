"""SLSAM and SAM optimizers: a thin Python layer over the slsam operators.

One SL-SAM step (docs/design.md, "The algorithm"): the active set S (sampled at the end of the
previous step) holds ``requires_grad``; first pass at x; per-tensor norms r
and the global norm; perturb S by rho * g / ||g||; second pass at x + e;
restore x exactly and take the base step with the second gradients (fused
with the restore for AdamW); EXP3 update of the probabilities from r; sample
the next S. The only host sync is reading the next mask (n bools) to set
``requires_grad``.

The pieces live beside it: the bandit (``slsam.bandit``), the active set and
its ``requires_grad`` (``_active``), the perturbation (``_perturb``), the
pending step (``_pending``), the update paths (``_update``), the closure
protocol (``_closure``), the argument checks (``_checks``), the AdamW state's layout
(``_adamw_state``), the GradScaler record (``_amp``) and the diagnosis of tensors that ran
without autograd (``_no_grad_watch``); one-pass SL-SAM, ``passes=1``, is ``_one_pass``
(it ends its step with :meth:`SLSAM._finish_step`, as second_step does). This file is the
step machine and the public API; it runs past 300 lines because the class's
documented arguments and each step's order of operations (what is checked
first, and what is restored or undone when a pass fails) read best in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import GradScaler

from slsam import _amp, _checks, _marks, _one_pass, _update, ops
from slsam._active import ActiveSet
from slsam._adamw_state import keep_saved_wide_moments
from slsam._backups import BackupPool
from slsam._closure import Closure, call_closure, first_pass
from slsam._no_grad_watch import GradlessCheck
from slsam._pending import PendingStep
from slsam._perturb import perturb_groups
from slsam.bandit import Bandit


class SLSAM(torch.optim.Optimizer):
    """Sparse Layer Sharpness-Aware Minimization.

    Args:
        params: parameters or param groups. A group with ``"always_active": True``
            is perturbed and updated every step, outside the bandit (e.g. a freshly
            initialised classifier head). Parameters with ``requires_grad=False`` at
            construction are not arms; one unfrozen later trains every step from
            then on, as an always-active one.
        base_optimizer: the optimizer class that takes the update step (AdamW:
            fused restore + update kernel; any other: restore, then its ``step()``).
        rho: perturbation radius.
        sparsity: expected fraction s of arms (parameter tensors) active per step.
        alpha: EXP3 learning rate.
        p_min: the authors' p_min; it enters the loss only through a constant that
            cancels exactly, so it does not change the update (kept for fidelity).
        seed: seed of the mask generator; ``None`` draws one from torch's global RNG
            (so ``torch.manual_seed`` makes runs reproducible).
        adaptive: ASAM-style perturbation, ``rho * x^2 g / ||x g||``.
        normalize_loss: divide r by its mean over the active arms before the EXP3
            loss, which makes the bandit scale-free (the authors' loss collapses the
            distribution onto a few arms when gradient norms are large).
        mask_mode: ``"requires_grad"`` (default) turns the inactive tensors'
            ``requires_grad`` off, so autograd skips their weight gradients.
            ``"grad"`` keeps ``requires_grad`` on and drops the inactive gradients
            after each backward: no backward saving, but the autograd graph never
            changes (for ``torch.compile``d models and wrappers that cannot follow
            ``requires_grad`` changes).
        arm_groups: the bandit's arms as groups of tensors (a list of lists of
            parameters; e.g. ``slsam.arms.by_block(model)``): a group is sampled,
            perturbed and updated as a whole, with the L2 norm over its tensors as the
            arm's gradient norm. Trainable tensors listed in no group are one arm each;
            default: one arm per tensor (the authors' algorithm).
        scale_lr: give the bandit's groups (every group not ``always_active``) the
            learning rate ``lr / sparsity`` at construction: an arm takes an optimizer
            step in only about ``sparsity`` of the steps, and AdamW's step length does
            not grow to make up for it (the fine-tuning comparison in the README: without
            it, SL-SAM never reaches AdamW's or SAM's accuracy in a short fine-tune). The
            scaled value is the group's ``lr`` from then on (schedulers and checkpoints see
            it). Default off: the authors' algorithm.
        reuse_backups: keep the weight backups in one buffer reused every step
            (default: on CPU, where fresh memory costs a page fault per 4 KiB on its
            first write; CUDA's caching allocator reuses memory by itself). The
            buffer stays allocated between steps, at the size of the largest set of
            active tensors so far (``backup_bytes()``).
        passes: 2 (default) is SL-SAM: a pass at x for the direction, a pass at x + e.
            1 is one-pass SL-SAM (Momentum-SAM's idea on the active tensors): perturb
            along the base optimizer's first moment, ``-rho * m / ||m||``, and take
            one forward/backward at x + e per step (``step(closure)`` only; AdamW or
            Adam; see :mod:`slsam._one_pass`).
        **base_kwargs: passed to ``base_optimizer`` (lr, weight_decay, ...).
    """

    # GradScaler.step(opt) then hands over grad_scale/found_inf and calls step().
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
        rho: float = 0.01,
        sparsity: float = 0.2,
        alpha: float = 1e-3,
        p_min: float = 1e-3,
        seed: int | None = None,
        *,
        adaptive: bool = False,
        normalize_loss: bool = False,
        mask_mode: str = "requires_grad",
        arm_groups: Sequence[Sequence[Tensor]] | None = None,
        reuse_backups: bool | None = None,
        scale_lr: bool = False,
        passes: int = 2,
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(scale_lr, bool):
            raise TypeError(f"scale_lr must be True or False, got {scale_lr!r}")
        _checks.check_arguments(mask_mode=mask_mode, rho=rho, sparsity=sparsity, alpha=alpha,
                                p_min=p_min, base_optimizer=base_optimizer)
        _one_pass.check_args(passes, base_optimizer)
        self.passes = int(passes)
        self._initialised = False
        super().__init__(params, dict(rho=rho, adaptive=adaptive))
        _checks.check_group_rhos(self.param_groups)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        if scale_lr:
            _scale_arm_lr(self.param_groups, sparsity)
        if self.passes == 1:
            _one_pass.check_groups(self.param_groups)
        self.state = self.base_optimizer.state
        self.mask_mode = mask_mode
        self._device = _checks.check_params(self.param_groups)
        self._set = ActiveSet(self.param_groups, mask_mode, self._device, arm_groups)
        for g in self.param_groups:  # masked off by an earlier SLSAM: trainable again
            for p in g["params"]:
                _marks.unmask(p)
        self._bandit = Bandit(self._set.n_arms, sparsity, alpha, p_min, normalize_loss, seed,
                              self._device)
        self._skipped = torch.zeros((), dtype=torch.int64, device=self._device)
        self._pending: PendingStep | None = None
        if reuse_backups is None:
            reuse_backups = self._device.type == "cpu"
        self._backups = BackupPool(bool(reuse_backups))
        self._update = _update.choose(self.base_optimizer)
        # Active tensors without a first-pass gradient, watched in the second forward.
        self._gradless = GradlessCheck()
        self._initialised = True
        self._set_mask(self._bandit.sample())

    # ----- public state -----

    @property
    def probs(self) -> Tensor:
        """Per-arm selection probabilities (fp64, one per arm tensor)."""
        return self._bandit.probs.clone()

    @property
    def mask(self) -> Tensor:
        """Arms active in the current step (bool, one per arm tensor)."""
        return self._set.mask.clone()

    @property
    def arms(self) -> list[Tensor]:
        """The parameter tensors the bandit chooses among, in ``probs`` order (with
        ``arm_groups``: every arm's tensors, in parameter order; see ``arm_groups``)."""
        return list(self._set.arms)

    @property
    def arm_groups(self) -> list[list[Tensor]]:
        """The tensors of each arm, in ``probs`` order (one each without ``arm_groups``)."""
        return self._set.arm_groups()

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a gradient was not finite (reads the device)."""
        return int(self._skipped.item())

    @property
    def sparsity(self) -> float:
        return self._bandit.sparsity

    @property
    def alpha(self) -> float:
        return self._bandit.alpha

    @property
    def p_min(self) -> float:
        return self._bandit.p_min

    @property
    def normalize_loss(self) -> bool:
        return self._bandit.normalize_loss

    def backup_bytes(self) -> int:
        """Bytes of weight backups held: the reused buffer and the last step's small
        backups, or (without reuse) the current step's."""
        if self._backups.reuse:
            return self._backups.held_bytes
        return 0 if self._pending is None else self._pending.backup_bytes()

    @property
    def rho(self) -> float:
        return float(self.param_groups[0]["rho"])

    @property
    def perturbed(self) -> bool:
        """True between first_step() and second_step(), e.g. in the closure's second call."""
        return self._pending is not None

    @contextlib.contextmanager
    def dense(self) -> Iterator[None]:
        """Give every trainable tensor ``requires_grad`` back for the block (except those
        you froze: see ``ActiveSet.note_user_frozen``)."""
        self._set.all_on()
        try:
            yield
        finally:
            self._set.apply(self.param_groups)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_initialised", False):
            raise NotImplementedError(
                "SLSAM's arms are fixed at construction; create a new optimizer "
                "with all param groups instead of calling add_param_group")
        params = param_group.get("params")
        if isinstance(params, Tensor):
            params = [params]
        if params is not None and not isinstance(params, set):  # torch refuses sets itself
            # NOTE: a tensor listed twice (tied weights listed by hand) would be backed up,
            # perturbed and updated twice per step; keep its first occurrence.
            unique: dict[int, Tensor] = {}
            for t in params:
                unique.setdefault(id(t), t)
            param_group = {**param_group, "params": list(unique.values())}
        super().add_param_group(param_group)

    # ----- the step -----

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, *, scaler: GradScaler | None = None,
        first_pass_done: bool = False,
    ) -> Tensor | None:
        """One SL-SAM step; returns the loss at the unperturbed point when it ran it.

        ``closure`` computes the loss and runs backward (zeroing grads is optional:
        the optimizer clears them between passes). It runs for both passes
        (PyTorch's closure convention); gradients present at entry are discarded
        first (e.g. those a generator's backward left on a discriminator in a GAN).
        ``first_pass_done=True`` (davda54/sam's convention): the caller ran the
        first backward, the active tensors' gradients at entry are the first pass
        and the closure runs once (twice if no active tensor holds a gradient).

        Called without a closure after :meth:`first_step` (e.g. by
        ``GradScaler.step(opt)``, Hugging Face's Trainer or Lightning), it is
        :meth:`second_step`. ``scaler``: a ``torch.amp.GradScaler`` whose
        ``scale(loss).backward()`` the closure uses; gradients are unscaled inside
        the kernels and the scaler learns of non-finite gradients for ``update()``.

        With ``passes=1`` the closure runs once, at the perturbed weights, and its loss
        is returned; gradients held at entry are discarded.
        """
        if self.passes == 1:
            return _one_pass.step(self, closure, scaler, first_pass_done)
        if closure is None:
            if self._pending is not None:
                self.second_step(scaler=scaler)
                return None
            raise RuntimeError(
                "SLSAM.step() needs a closure that zeroes grads, computes the loss, calls "
                "backward() and returns the loss; or call first_step() and second_step() "
                "around your own second forward/backward")
        if self._pending is not None:
            raise RuntimeError("step(closure) called between first_step() and second_step(); "
                               "call second_step() (or step() without a closure) first")
        _checks.check_group_rhos(self.param_groups)  # before the closure: a refused step runs no pass
        loss0 = None
        try:
            self._set.note_unfrozen(self.param_groups)
            if not first_pass_done:
                self._set.clear_grads()
            if not (first_pass_done and any(p.grad is not None for p in self._set.active)):
                loss0 = first_pass(closure, self._set, self._bandit, self.param_groups)
            self.first_step(scaler=scaler)
        except BaseException:
            # NOTE: nothing has moved (first_step validates before it writes and undoes a
            # partial perturbation); drop the pass's (possibly partial) gradients, or the
            # next step() would take them as its first pass.
            self._set.clear_grads()
            raise
        try:
            loss1 = call_closure(closure, "second")
        except BaseException:
            self.cancel_step()
            raise
        self.second_step(scaler=scaler)
        return (loss0 if loss0 is not None else loss1).detach()

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, scaler: GradScaler | None = None) -> None:
        """Perturb the active tensors along their gradients (the first pass's).

        Gradients are always cleared afterwards, so the second backward starts
        clean; ``zero_grad`` is accepted for davda54/sam compatibility.
        """
        del zero_grad
        if self.passes == 1:
            raise _one_pass.split_step_error("first_step")
        if self._pending is not None:
            raise RuntimeError("first_step() called twice; call second_step() after the "
                               "second forward/backward")
        _checks.check_group_rhos(self.param_groups)
        active = self._set
        active.note_unfrozen(self.param_groups)
        total, arm_norms, grads = self._read_grads(scaler)
        # NOTE: from the plain norms even when adaptive: the bandit reads them, and an
        # overflowed norm (inf) must skip the step, not reach the EXP3 update as NaN.
        found_inf = ~torch.isfinite(total)
        per_group, grads_by_group = active.with_grads_by_group(grads)
        groups, found_inf = perturb_groups(self.param_groups, per_group, grads_by_group,
                                           self._backups, total, found_inf, self._device)
        self._pending = PendingStep(groups, arm_norms, found_inf)
        self._gradless.open(len(active.active_arms), active.active, grads)
        if scaler is not None:
            _amp.allow_second_unscale(scaler, self)
        active.clear_grads(drop_inactive=False)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, scaler: GradScaler | None = None) -> None:
        """Restore the weights, take the base step with the second gradients,
        update the bandit and sample the next mask. Gradients are cleared."""
        del zero_grad
        if self.passes == 1:
            raise _one_pass.split_step_error("second_step")
        if self._pending is None:
            raise RuntimeError("second_step() called before first_step(); call first_step() "
                               "after the first backward")
        pending = self._pending
        self._gradless.close()
        # NOTE: a refused gradient or a failing base step must not leave the weights at
        # x + e: restore them exactly and forget the pass, then re-raise.
        try:
            self._set.drop_inactive_grads()
            grads2 = _checks.check_grads(pending.params, self._device)
            _, total2 = ops.grad_norms([g for g in grads2 if g is not None],
                                       device=self._device)
            found_inf = pending.found_inf | ~torch.isfinite(total2)
        except BaseException:
            self.cancel_step()
            raise
        self._finish_step(pending, grads2, found_inf, scaler)

    def cancel_step(self) -> None:
        """Undo a :meth:`first_step`: put the weights back at x exactly, forget the pass
        and clear the gradients, e.g. when the second forward/backward fails. Does
        nothing when no step is pending."""
        if self._pending is not None:
            self._drop(self._pending)

    # ----- copies and pickles -----

    def __getstate__(self) -> dict[str, Any]:
        # NOTE: torch.optim.Optimizer keeps only defaults, state and param_groups; the copy
        # needs everything SLSAM holds (base optimizer, arms, bandit, generator, a pending
        # pass) to step as the original would. Hooks are left behind, as torch does.
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_optimizer_")}
        state["_backups"] = BackupPool(self._backups.reuse)  # scratch memory, not state
        return state

    # ----- state dict -----

    def state_dict(self) -> dict[str, Any]:
        sd = self.base_optimizer.state_dict()
        sd["slsam"] = {**self._bandit.state_dict(), "mask": self._set.mask.clone(),
                       "skipped_steps": self._skipped.clone()}
        if self._set.arm_of is not None:
            sd["slsam"]["arm_shapes"] = self._set.arm_shapes()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("slsam", None)
        if extra is None:
            raise ValueError("state_dict has no 'slsam' entry: it was not saved by SLSAM/SAM")
        self._bandit.check_state_dict(extra)
        self._set.check_arm_shapes(extra.get("arm_shapes"))
        self.cancel_step()
        self.base_optimizer.load_state_dict(sd)
        # torch's load_state_dict replaces the group list and the state dict.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._bandit.load_state_dict(extra)
        self._skipped = extra["skipped_steps"].to(self._device).clone()
        self._update = _update.choose(self.base_optimizer)
        if self._update.name == "fused_adamw":
            keep_saved_wide_moments(self.state, self.param_groups, sd)
        mask = extra["mask"].to(self._device, torch.bool)
        if not self._bandit.sparse:  # every arm, every step: a saved sparse mask does not apply
            mask = torch.ones_like(mask)
        self._set_mask(mask)

    # ----- internals -----

    def _read_grads(self, scaler: GradScaler | None
                    ) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """The active tensors' gradients, checked (inactive arms' dropped): their global
        norm, the active arms' norms for the bandit, unscaled (the bandit's norms are
        not scale-free; the perturbation is), and the gradients (``active``'s order)."""
        active = self._set
        active.drop_inactive_grads()
        grads = _checks.check_grads(active.active, self._device)
        norms, total = ops.grad_norms(active.norm_inputs(grads), device=self._device)
        arm_norms = active.arm_norms(norms)
        grad_scale = self._grad_scale(scaler)
        if grad_scale is not None:
            arm_norms = arm_norms / grad_scale.to(arm_norms.device, torch.float32)
        return total, arm_norms, grads

    def _finish_step(self, pending: PendingStep, grads: list[Tensor | None],
                     found_inf: Tensor, scaler: GradScaler | None) -> None:
        """The end of every step (second_step's, one-pass's): restore x and take the base
        step with ``grads`` (the update gradients of ``pending.params``, in its order;
        ``None`` where a tensor got none), skipped when
        ``found_inf`` or GradScaler.step()'s found_inf is set; then the EXP3 update from
        ``pending.arm_norms``, the skip count, the scaler's record and the next mask.
        A failing update puts the weights back at x and forgets the step."""
        external = getattr(self, "found_inf", None)  # set by GradScaler.step(opt)
        if external is not None:
            found_inf = found_inf | (external.to(found_inf.device) != 0)
        try:
            self._update.run(self.base_optimizer, pending, grads, found_inf,
                             self._grad_scale(scaler))
        except BaseException:
            self._drop(pending)
            raise
        self._bandit.update(self._set.mask, pending.arm_norms, found_inf)
        self._skipped += found_inf
        if scaler is not None and scaler.is_enabled():
            _amp.record_step(scaler, self, found_inf)
        self._pending = None
        self._set.clear_grads(drop_inactive=False)
        if self._bandit.sparse:
            self._set_mask(self._bandit.sample())

    def _drop(self, pending: PendingStep) -> None:
        """Weights back at x exactly; the step and its gradients forgotten."""
        self._gradless.cancel()
        pending.restore()
        self._pending = None
        self._set.clear_grads()

    def _set_mask(self, mask: Tensor) -> None:
        self._set.set_mask(mask, self.param_groups)

    def _grad_scale(self, scaler: GradScaler | None) -> Tensor | None:
        """The loss scale the gradients carry: the scaler's (None once ``unscale_()``d),
        or GradScaler.step()'s attribute."""
        if scaler is not None:
            return _amp.loss_scale(scaler, self)
        return getattr(self, "grad_scale", None)


def _scale_arm_lr(groups: list[dict[str, Any]], sparsity: float) -> None:
    """``scale_lr``: lr / sparsity for the bandit's groups, before anything reads lr."""
    for i, g in enumerate(groups):
        if g.get("always_active"):
            continue
        if "lr" not in g:
            raise ValueError(f"scale_lr=True needs a learning rate 'lr' in param_groups[{i}]; "
                             "this base optimizer has none: leave scale_lr off")
        g["lr"] = g["lr"] / sparsity


class SAM(SLSAM):
    """Sharpness-Aware Minimization (Foret et al. 2021): every tensor, every step,
    on the same fused kernels as :class:`SLSAM` (which equals it at ``sparsity=1``)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
        rho: float = 0.05,
        *,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, rho=rho, sparsity=1.0, seed=0,
                         adaptive=adaptive, **base_kwargs)
