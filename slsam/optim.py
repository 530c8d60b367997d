"""SLSAM and SAM optimizers: a thin Python layer over the slsam operators.

One SL-SAM step (docs/design.md, "The algorithm"): the active set S (sampled at the end of the
previous step) holds ``requires_grad``; first pass at x; per-tensor norms r
and the global norm; perturb S by rho * g / ||g||; second pass at x + e;
restore x exactly and take the base step with the second gradients (fused
with the restore for AdamW); EXP3 update of the probabilities from r; sample
the next S. The only host sync is reading the next mask (n bools) to set
``requires_grad``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import GradScaler

from slsam import _amp, _one_pass, ops
from slsam._adamw_state import adamw_state, keep_saved_wide_moments, restore_adamw_
from slsam._backups import BackupPool
from slsam._no_grad_watch import NoGradWatch
from slsam._no_grad_watch import warn as warn_no_grad

Closure = Callable[[], Tensor]


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool,
                 fix: str) -> None:
    # NOTE: finite only: rho = inf or alpha = inf would turn every step into a skipped
    # one (inf perturbation) or the probabilities into NaN (inf * 0 in the EXP3 weight).
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = "]" if math.isfinite(high) else ")"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}; {fix}")


# torch's message when backward() finds nothing that requires grad
_NO_GRAD_FN = "does not require grad and does not have a grad_fn"

_RHO_FIX = "use rho >= 0, e.g. rho=0.05 (rho=0 is the base optimizer alone)"


def _check_group_rhos(groups: list[dict[str, Any]]) -> None:
    """Every group's rho (a group may set its own, or an LR-style schedule may change it)."""
    for i, g in enumerate(groups):
        _check_range(f"param_groups[{i}]['rho']", g.get("rho"), 0.0, math.inf, low_open=False,
                     fix=_RHO_FIX)


def _check_no_shared_memory(groups: list[dict[str, Any]]) -> None:
    """Refuse distinct parameters whose memory overlaps (tied weights as two Parameters).

    NOTE: each would be backed up, perturbed and updated on its own, so the shared
    weights would move twice and the restore of one would undo the other's step.
    Views of one buffer that do not overlap are fine.
    """
    spans = []
    for gi, g in enumerate(groups):
        for k, p in enumerate(g["params"]):
            if (not _trainable(p) or p.numel() == 0 or p.layout != torch.strided
                    or p.device.type == "meta"):
                continue
            try:
                base = p.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):  # no plain storage (e.g. DTensor)
                continue
            size = p.element_size()
            start = base + p.storage_offset() * size
            extent = sum((n - 1) * st for n, st in zip(p.shape, p.stride(), strict=False)) + 1
            spans.append((start, start + extent * size, f"param_groups[{gi}]['params'][{k}]",
                          tuple(p.shape)))
    spans.sort()
    for (_, e0, n0, sh0), (s1, _, n1, sh1) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise ValueError(
                f"{n0} (shape {sh0}) and {n1} (shape {sh1}) share memory: SLSAM would perturb "
                "and update it twice per step. Tie weights by assigning one Parameter to both "
                "modules (e.g. decoder.weight = encoder.weight), which is then listed once")


# NOTE: set on an arm while SLSAM has turned its requires_grad off, so that an optimizer
# built later on the same parameters (re-created in the same process, e.g. Lightning's
# lr_find before fit) takes it as an arm again, not as a tensor the user froze, which
# would then never train.
_MASKED = "_slsam_masked"


def _keep_mark_in_copies(p: Tensor) -> None:
    """Make ``copy.deepcopy`` of ``p`` keep its attributes (the _MASKED mark).

    NOTE: nn.Parameter.__deepcopy__ drops the instance's attributes, so a model copied
    after a step (copy.deepcopy(model)) would hold masked-off arms that look frozen, and
    an optimizer built on the copy would never train them. deepcopy looks __deepcopy__ up
    on the instance: None there sends it to __reduce_ex__, which keeps the attributes
    (pickling does already). Plain Parameters only (DTensor keeps its own copy).
    """
    if type(p) is torch.nn.Parameter and "__deepcopy__" not in vars(p):
        p.__deepcopy__ = None  # type: ignore[method-assign,assignment]


def _trainable(p: Tensor) -> bool:
    return p.requires_grad or getattr(p, _MASKED, False)


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
        reuse_backups: bool | None = None,
        passes: int = 2,
        **base_kwargs: Any,
    ) -> None:
        if mask_mode not in ("requires_grad", "grad"):
            raise ValueError(f"mask_mode must be 'requires_grad' or 'grad', got {mask_mode!r}")
        _check_range("rho", rho, 0.0, math.inf, low_open=False, fix=_RHO_FIX)
        _check_range("sparsity", sparsity, 0.0, 1.0, low_open=True,
                     fix="it is the expected fraction of active tensors, e.g. 0.2")
        _check_range("alpha", alpha, 0.0, math.inf, low_open=False, fix="use e.g. alpha=1e-3")
        _check_range("p_min", p_min, 0.0, 1.0, low_open=True, fix="use e.g. p_min=1e-3")
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(
                f"base_optimizer must be an optimizer class such as torch.optim.AdamW, got "
                f"{base_optimizer!r}; pass the class and its arguments as keywords, "
                "e.g. SLSAM(params, torch.optim.SGD, lr=0.1)")
        _one_pass.check_args(passes, base_optimizer)
        self.passes = int(passes)
        self._initialised = False
        super().__init__(params, dict(rho=rho, adaptive=adaptive))
        _check_group_rhos(self.param_groups)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        if self.passes == 1:
            _one_pass.check_groups(self.param_groups)
        self.state = self.base_optimizer.state
        self.sparsity = float(sparsity)
        self.alpha = float(alpha)
        self.p_min = float(p_min)
        self.normalize_loss = bool(normalize_loss)
        self.mask_mode = mask_mode

        trainable = [p for g in self.param_groups for p in g["params"] if _trainable(p)]
        devices = {p.device for p in trainable}
        if len(devices) > 1:
            raise ValueError(
                f"params are on several devices ({sorted(map(str, devices))}); SLSAM needs one "
                "device per optimizer: move the model with model.to(device) first")
        self._device = devices.pop() if devices else torch.device("cpu")
        if self._device.type == "meta":
            raise ValueError("params are on the meta device (no data); materialise the model first "
                             "(e.g. model.to_empty(device='cpu') and initialise it), then create "
                             "the optimizer")
        _check_no_shared_memory(self.param_groups)
        not_float = sorted({str(p.dtype) for p in trainable if not p.is_floating_point()})
        if not_float:
            raise TypeError(f"SLSAM supports float32/float64/bfloat16/float16 parameters, got "
                            f"{not_float}; freeze those tensors (requires_grad_(False)) or leave "
                            "them out of the optimizer")
        self._arms: list[Tensor] = [
            p for g in self.param_groups if not g.get("always_active", False)
            for p in g["params"] if _trainable(p)]
        self._always: list[Tensor] = [
            p for g in self.param_groups if g.get("always_active", False)
            for p in g["params"] if _trainable(p)]
        self._trainable_ids = {id(p) for p in trainable}
        # NOTE: frozen at construction, so not arms; one the user unfreezes later (gradual
        # unfreezing) trains every step from then on, as an always-active tensor, on every
        # base optimizer's path (see _apply_mask and _note_unfrozen).
        self._late: list[Tensor] = [p for g in self.param_groups for p in g["params"]
                                    if not _trainable(p) and p.is_floating_point()]
        self._late_on: list[bool] = [False] * len(self._late)
        for p in trainable:  # masked off by an earlier SLSAM: trainable again (see _MASKED)
            if getattr(p, _MASKED, False):
                p.requires_grad_(True)
                setattr(p, _MASKED, False)
        if mask_mode == "requires_grad":
            for p in self._arms:
                _keep_mark_in_copies(p)
        n = len(self._arms)
        self._k = self.sparsity * n
        self._sparse = self._k < n  # sparsity 1: every arm always on, no bandit
        self._generator = torch.Generator(device=self._device)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # Every rank must draw the same masks: take rank 0's seed.
                box = [seed]
                torch.distributed.broadcast_object_list(box, src=0)
                seed = int(box[0])
        self._generator.manual_seed(int(seed))
        self._probs = torch.full((n,), self.sparsity, dtype=torch.float64, device=self._device)
        self._skipped = torch.zeros((), dtype=torch.int64, device=self._device)
        # NOTE: an empty stand-in per dtype, for active arms without a gradient: an fp32
        # one among fp64 gradients would turn their global norm into fp32.
        self._no_grad = {dt: torch.zeros(0, dtype=dt, device=self._device)
                         for dt in {p.dtype for p in self._arms}}
        self._pending: dict[str, Any] | None = None
        # Arms the user froze after construction (indices), and which arms should have
        # requires_grad now, to tell the user's freezing from our masking.
        self._frozen: set[int] = set()
        self._expect_grad: list[bool] = [True] * n
        if reuse_backups is None:
            reuse_backups = self._device.type == "cpu"
        self._backups = BackupPool(bool(reuse_backups))
        self._fused = self._fused_adamw_ok()
        # Active tensors without a first-pass gradient, watched in the second forward
        # (see slsam/_no_grad_watch.py); those found unused are not watched again.
        self._watch: NoGradWatch | None = None
        self._watched: set[int] = set()
        self._warned_no_grad = False
        self._initialised = True
        if self._sparse:
            self._set_mask(ops.sample_mask(self._probs, self._generator))
        else:
            self._set_mask(torch.ones(n, dtype=torch.bool, device=self._device))

    # ----- public state -----

    @property
    def probs(self) -> Tensor:
        """Per-arm selection probabilities (fp64, one per arm tensor)."""
        return self._probs.clone()

    @property
    def mask(self) -> Tensor:
        """Arms active in the current step (bool, one per arm tensor)."""
        return self._mask.clone()

    @property
    def arms(self) -> list[Tensor]:
        """The parameter tensors the bandit chooses among, in ``probs`` order."""
        return list(self._arms)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a gradient was not finite (reads the device)."""
        return int(self._skipped.item())

    def backup_bytes(self) -> int:
        """Bytes of weight backups held: the reused buffer and the last step's small
        backups, or (without reuse) the current step's."""
        if self._backups.reuse:
            return self._backups.held_bytes
        if self._pending is None:
            return 0
        return sum(b.numel() * b.element_size() for _, _, bks in self._pending["groups"]
                   for b in bks)

    @property
    def rho(self) -> float:
        return float(self.param_groups[0]["rho"])

    @contextlib.contextmanager
    def dense(self) -> Iterator[None]:
        """Give every trainable tensor ``requires_grad`` back for the block (except those
        you froze: see ``_note_user_frozen``)."""
        self._note_user_frozen()
        for i, p in enumerate(self._arms):
            if i not in self._frozen:
                p.requires_grad_(True)
        self._expect_grad = [True] * len(self._arms)
        try:
            yield
        finally:
            self._apply_mask()

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
            _check_group_rhos(self.param_groups)
            return _one_pass.step(self, closure, scaler)
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
        _check_group_rhos(self.param_groups)  # before the closure: a refused step runs no pass
        loss0 = None
        try:
            self._note_unfrozen()
            if not first_pass_done:
                self._clear_grads()
            if not (first_pass_done and any(p.grad is not None for p in self._active)):
                loss0 = self._first_pass(closure)
            self.first_step(scaler=scaler)
        except BaseException:
            # NOTE: nothing has moved (first_step validates before it writes and undoes a
            # partial perturbation); drop the pass's (possibly partial) gradients, or the
            # next step() would take them as its first pass.
            self._clear_grads()
            raise
        try:
            loss1 = self._call_closure(closure, "second")
        except BaseException:
            self._abort()
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
        _check_group_rhos(self.param_groups)
        self._note_unfrozen()
        self._drop_inactive_grads()
        arm_grads = [p.grad for p in self._active_arms]
        always = [p for p in self._active[len(self._active_arms):] if p.grad is not None]
        norm_inputs = [g if g is not None else self._empty_grad(p)
                       for p, g in zip(self._active_arms, arm_grads, strict=False)]
        norm_inputs += [p.grad for p in always]
        self._check_grads(self._active)
        norms, total = ops.grad_norms(norm_inputs, device=self._device)
        # NOTE: from the plain norms even when adaptive: the bandit reads them, and an
        # overflowed norm (inf) must skip the step, not reach the EXP3 update as NaN.
        found_inf = ~torch.isfinite(total)
        groups: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]] = []
        per_group = [[p for p in active if p.grad is not None] for active in self._active_by_group]
        backups = self._backups.take([p for ps in per_group for p in ps])
        for group, ps in zip(self.param_groups, per_group, strict=False):
            groups.append((group, ps, backups[: len(ps)]))
            backups = backups[len(ps):]
        if any(g["adaptive"] for g in self.param_groups):
            # NOTE: |x|*g only for the adaptive groups' tensors; the others enter the
            # global norm with g, as in ASAM's and the peer libraries' mixed groups.
            weighted = [p for g, ps, _ in groups if g["adaptive"] for p in ps]
            plain = [p for g, ps, _ in groups if not g["adaptive"] for p in ps]
            _, total = ops.grad_norms([p.grad for p in weighted], weighted, device=self._device)
            if plain:
                _, total_plain = ops.grad_norms([p.grad for p in plain], device=self._device)
                total = (total.double().square() + total_plain.double().square()).sqrt().to(
                    total.dtype)
            found_inf = found_inf | ~torch.isfinite(total)
            # NOTE: |x|*g can be finite where g is not (g overflowing only when squared);
            # a non-finite norm is what keeps the kernels from moving the weights, so
            # a skipped step never runs its second forward at moved weights.
            total = torch.where(found_inf, torch.full_like(total, math.nan), total)
        # NOTE: rho * g / ||g|| does not change when g is scaled, so the perturbation
        # uses the (loss-scaled) gradients as they are; only the bandit's norms,
        # which are not scale-free, are unscaled.
        done: list[tuple[list[Tensor], list[Tensor]]] = []
        try:
            for group, ps, backups in groups:
                # NOTE: a base optimizer with maximize=True ascends the loss, so the
                # worst nearby point for it lies along -g.
                rho = -group["rho"] if group.get("maximize") else group["rho"]
                ops.perturb_(ps, [p.grad for p in ps], backups, total, rho, group["adaptive"])
                done.append((ps, backups))
        except BaseException:
            for ps, backups in done:  # NOTE: a kernel refused a later group: undo the earlier
                ops.restore_(ps, backups)
            raise
        arm_norms = norms[: len(arm_grads)]
        grad_scale = self._grad_scale(scaler)
        if grad_scale is not None:
            arm_norms = arm_norms / grad_scale.to(arm_norms.device, torch.float32)
        self._pending = dict(groups=groups, arm_norms=arm_norms, found_inf=found_inf)
        if not self._warned_no_grad and any(g is None for g in arm_grads):
            self._watch_gradless()
        if scaler is not None:
            _amp.allow_second_unscale(scaler, self)
        self._clear_grads()

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
        self._close_watch()
        # NOTE: a refused gradient or a failing base step must not leave the weights at
        # x + e: restore them exactly and forget the pass, then re-raise.
        try:
            self._drop_inactive_grads()
            grads2 = [p.grad for _, ps, _ in pending["groups"] for p in ps if p.grad is not None]
            self._check_grads([p for _, ps, _ in pending["groups"] for p in ps])
            _, total2 = ops.grad_norms(grads2, device=self._device)
            found_inf = pending["found_inf"] | ~torch.isfinite(total2)
            external = getattr(self, "found_inf", None)  # set by GradScaler.step(opt)
            if external is not None:
                found_inf = found_inf | (external.to(found_inf.device) != 0)
            grad_scale = self._grad_scale(scaler)
            if self._fused:
                self._restore_adamw(pending["groups"], found_inf, grad_scale)
            else:
                for _, ps, backups in pending["groups"]:
                    ops.restore_(ps, backups)
                if not bool(found_inf):  # host sync: only on the generic (non-AdamW) path
                    if grad_scale is not None and grads2:
                        torch._foreach_mul_(grads2, grad_scale.reciprocal().to(grads2[0].device))
                    self.base_optimizer.step()
        except BaseException:
            self._abort()
            raise
        if self._sparse:
            ops.bandit_update_(self._probs, self._mask, pending["arm_norms"], found_inf,
                               self.alpha, self._k, self.normalize_loss)
        self._skipped += found_inf
        if scaler is not None and scaler.is_enabled():
            _amp.record_step(scaler, self, found_inf)
        self._pending = None
        self._clear_grads()
        if self._sparse:
            self._set_mask(ops.sample_mask(self._probs, self._generator))

    @property
    def perturbed(self) -> bool:
        """True between first_step() and second_step(), e.g. in the closure's second call."""
        return self._pending is not None

    # ----- copies and pickles -----

    def __getstate__(self) -> dict[str, Any]:
        # NOTE: torch.optim.Optimizer keeps only defaults, state and param_groups; the copy
        # needs everything SLSAM holds (base optimizer, arms, bandit, generator, a pending
        # pass) to step as the original would. Hooks are left behind, as torch does.
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_optimizer_")}
        state["_backups"] = BackupPool(self._backups.reuse)  # scratch memory, not state
        state["_watch"] = None  # a diagnosis of the pass in progress, not state
        return state

    # ----- state dict -----

    def state_dict(self) -> dict[str, Any]:
        sd = self.base_optimizer.state_dict()
        sd["slsam"] = {
            "probs": self._probs.clone(),
            "mask": self._mask.clone(),
            "generator": self._generator.get_state(),
            "skipped_steps": self._skipped.clone(),
            "sparsity": self.sparsity,
            "alpha": self.alpha,
            "p_min": self.p_min,
            "normalize_loss": self.normalize_loss,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("slsam", None)
        if extra is None:
            raise ValueError("state_dict has no 'slsam' entry: it was not saved by SLSAM/SAM")
        if extra["probs"].numel() != len(self._arms):
            raise ValueError(f"state_dict has {extra['probs'].numel()} arms, this optimizer "
                             f"has {len(self._arms)}: was it saved for another model?")
        probs, mask = extra["probs"], extra["mask"]
        if (mask.numel() != probs.numel() or not bool(torch.isfinite(probs).all())
                or not bool(((probs > 0) & (probs <= 1)).all())):
            # NOTE: a saved state always has p in [1e-8, 1]; p = 0 or NaN would stall the
            # sampler on its argmax fallback and turn the EXP3 update into NaN.
            raise ValueError("state_dict's bandit state is corrupted (probabilities not finite or "
                             "outside (0, 1], or a mask of another size); load another checkpoint")
        if self._pending is not None:
            self._abort()
        self.base_optimizer.load_state_dict(sd)
        # torch's load_state_dict replaces the group list and the state dict.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._probs = extra["probs"].to(self._device, torch.float64).clone()
        self._generator.set_state(extra["generator"])
        self._skipped = extra["skipped_steps"].to(self._device).clone()
        # NOTE: sparsity, alpha, p_min and normalize_loss stay the constructor's (saved for
        # reference only), as torch keeps whatever lies outside param_groups; the saved
        # probabilities are brought to this sparsity by the next bandit update.
        self._fused = self._fused_adamw_ok()
        if self._fused:
            keep_saved_wide_moments(self.state, self.param_groups, sd)
        mask = extra["mask"].to(self._device, torch.bool)
        if not self._sparse:  # every arm, every step: a saved sparse mask does not apply
            mask = torch.ones_like(mask)
        self._set_mask(mask)

    # ----- internals -----

    def _fused_adamw_ok(self) -> bool:
        if type(self.base_optimizer) is not torch.optim.AdamW:
            return False
        return not any(g.get("amsgrad") or g.get("maximize") or g.get("differentiable")
                       for g in self.param_groups)

    def _set_mask(self, mask: Tensor) -> None:
        self._mask = mask
        self._mask_list: list[bool] = mask.tolist()  # the step's one host sync
        self._apply_mask()

    def _apply_mask(self) -> None:
        self._note_user_frozen()
        if self.mask_mode == "requires_grad":
            frozen = self._frozen
            for i, (p, on) in enumerate(zip(self._arms, self._mask_list, strict=False)):
                if i not in frozen:
                    p.requires_grad_(on)
                    setattr(p, _MASKED, not on)
            self._expect_grad = list(self._mask_list)
        else:
            self._expect_grad = [True] * len(self._arms)
        self._active_arms = [p for p, on in zip(self._arms, self._mask_list, strict=False) if on]
        self._late_on = [p.requires_grad for p in self._late]
        late = [p for p, on in zip(self._late, self._late_on, strict=True) if on]
        ids = {id(p) for p in self._active_arms} | {id(p) for p in self._always + late}
        self._active_by_group = [[p for p in g["params"] if id(p) in ids]
                                 for g in self.param_groups]
        self._active = self._active_arms + self._always + late

    def _note_unfrozen(self) -> None:
        """Take in the tensors frozen at construction that the user has (un)frozen since."""
        if self._late and [p.requires_grad for p in self._late] != self._late_on:
            self._apply_mask()

    def _note_user_frozen(self) -> None:
        """Record the arms the user froze or unfroze since the mask was last applied.

        NOTE: an arm that should have requires_grad (active, every arm inside dense() or
        with mask_mode="grad") but has not was frozen by the user: a new mask,
        load_state_dict() or dense() must not turn it back on (it stays frozen until the
        user sets requires_grad again). An arm frozen while masked off looks like a masked
        one; freezing inside ``with opt.dense():`` is always seen.
        """
        frozen, expect = self._frozen, self._expect_grad
        for i, p in enumerate(self._arms):
            if i in frozen:
                if p.requires_grad:
                    frozen.discard(i)
            elif expect[i] and not p.requires_grad:
                frozen.add(i)

    def _clear_grads(self) -> None:
        for active in self._active_by_group:
            for p in active:
                p.grad = None
        self._drop_inactive_grads()

    def _drop_inactive_grads(self) -> None:
        """Inactive arms hold no gradient during a step. mask_mode="grad": every arm computes
        one, the inactive ones are dropped.

        NOTE: also with mask_mode="requires_grad": an inactive arm can still hold a gradient
        (a backward inside ``dense()``, one left from before); a generic base optimizer's
        step() would apply it to the inactive tensor, every step (tests/test_faults.py).
        """
        for p, on in zip(self._arms, self._mask_list, strict=False):
            if not on and p.grad is not None:
                p.grad = None

    def _empty_grad(self, p: Tensor) -> Tensor:
        t = self._no_grad.get(p.dtype)
        if t is None:
            t = self._no_grad[p.dtype] = torch.zeros(0, dtype=p.dtype, device=self._device)
        return t

    def _grad_scale(self, scaler: GradScaler | None) -> Tensor | None:
        """The loss scale the gradients carry: the scaler's (None once ``unscale_()``d),
        or GradScaler.step()'s attribute."""
        if scaler is not None:
            return _amp.loss_scale(scaler, self)
        return getattr(self, "grad_scale", None)

    def _check_grads(self, params: list[Tensor]) -> None:
        """Refuse, before anything is written, gradients the kernels would refuse midway
        (sparse, unlike their parameter, on another device), in one pass."""
        strided, device = torch.strided, self._device
        for p in params:
            g = p.grad
            if g is None:
                continue
            if g.layout != strided:
                raise ValueError("SLSAM got a sparse gradient; SAM needs dense gradients "
                                 "(use nn.Embedding(sparse=False))")
            if g.dtype != p.dtype or g.shape != p.shape:
                raise ValueError(
                    f"a gradient has shape {tuple(g.shape)} and dtype {g.dtype} but its parameter "
                    f"has shape {tuple(p.shape)} and dtype {p.dtype}; gradients must match their "
                    "parameters (do not assign p.grad.data; use p.grad = torch.zeros_like(p))")
            if g.device != device and g.numel():
                raise ValueError(f"a gradient is on {g.device} but the parameters are on "
                                 f"{device}; keep model and gradients on one device")

    def _first_pass(self, closure: Closure) -> Tensor:
        """The closure's first pass, on a mask the loss can use.

        NOTE: when every sampled tensor is one the loss does not use, nothing in the graph
        requires grad and backward() raises; the optimizer must not be stuck on its own
        draw. It draws again (a few times), then tries with every arm active; if that
        fails too, the loss uses none of them and the error is the closure's own.
        """
        redraws = 8
        gen_state, mask = self._generator.get_state(), self._mask
        for attempt in range(redraws + 2):
            try:
                return self._call_closure(closure, "first")
            except RuntimeError as e:
                if (_NO_GRAD_FN not in str(e) or self.mask_mode != "requires_grad"
                        or not self._sparse or attempt > redraws):
                    if attempt:  # the closure's own error: leave the mask as it was
                        self._generator.set_state(gen_state)
                        self._set_mask(mask)
                    raise
                self._clear_grads()
                if attempt < redraws:
                    self._set_mask(ops.sample_mask(self._probs, self._generator))
                else:
                    self._set_mask(torch.ones_like(self._mask))
        raise AssertionError("unreachable")

    def _call_closure(self, closure: Closure, which: str) -> Tensor:
        with torch.enable_grad():
            loss = closure()
        if not isinstance(loss, Tensor):
            raise TypeError(
                f"the closure returned {type(loss).__name__} in the {which} pass; it must "
                "compute the loss, call loss.backward() and `return loss`")
        return loss

    def _watch_gradless(self) -> None:
        """Watch the second forward of the active tensors without a gradient (first seen)."""
        gradless = [p for p in self._active if p.grad is None and id(p) not in self._watched]
        if gradless:
            self._watched.update(id(p) for p in gradless)
            self._watch = NoGradWatch(gradless)

    def _close_watch(self) -> None:
        if self._watch is None:
            return
        found, self._watch = self._watch.close(), None
        if found:
            self._warned_no_grad = True
            warn_no_grad(found)

    def _abort(self) -> None:
        """Undo a first_step(): restore the weights, forget the pass."""
        assert self._pending is not None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for _, ps, backups in self._pending["groups"]:
            ops.restore_(ps, backups)
        self._pending = None
        self._clear_grads()

    def _restore_adamw(self, groups: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]],
                       found_inf: Tensor, grad_scale: Tensor | None) -> None:
        for group, ps, backups in groups:
            upd = [i for i, p in enumerate(ps) if p.grad is not None]
            rest = [i for i, p in enumerate(ps) if p.grad is None]
            if rest:  # unused in the second pass: nothing to update with
                ops.restore_([ps[i] for i in rest], [backups[i] for i in rest])
            if not upd:
                continue
            params = [ps[i] for i in upd]
            states = [self._adamw_state(p) for p in params]
            beta1, beta2 = group["betas"]
            restore_adamw_(
                params, [backups[i] for i in upd], [p.grad for p in params],
                [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states], float(group["lr"]), float(beta1), float(beta2),
                float(group["weight_decay"]), float(group["eps"]), grad_scale, found_inf)

    def _adamw_state(self, p: Tensor) -> dict[str, Any]:
        return adamw_state(self.base_optimizer.state[p], p)


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
