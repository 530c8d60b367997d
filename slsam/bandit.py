"""The EXP3 bandit (multiple plays) that chooses SL-SAM's active arms.

n arms, each with a selection probability (fp64, summing to k = sparsity * n);
a mask draws each arm independently with its probability; after a step the
active arms' gradient norms update the probabilities (docs/design.md, "The
algorithm"). The math runs in the ``slsam.ops`` kernels on the arms' device; this
class holds the state: probabilities, the mask generator and the settings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slsam import ops


def _shared_seed() -> int:
    """A seed from torch's global RNG, the same on every rank."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank must draw the same masks: take rank 0's seed.
        box = [seed]
        torch.distributed.broadcast_object_list(box, src=0)
        seed = int(box[0])
    return seed


class Bandit:
    """EXP3 over ``n`` arms with expected ``sparsity * n`` active per step.

    Args:
        n: number of arms.
        sparsity: expected fraction of arms active per step, in (0, 1]; at 1 every
            arm is always active and nothing is learnt (``sparse`` is False).
        alpha: EXP3 learning rate.
        p_min: the authors' p_min (kept for fidelity: it cancels in the update).
        normalize_loss: divide the norms by their mean over the active arms.
        seed: the mask generator's seed; ``None`` draws one from torch's global RNG.
        device: where probabilities, masks and the generator live.
    """

    def __init__(self, n: int, sparsity: float, alpha: float, p_min: float,
                 normalize_loss: bool, seed: int | None, device: torch.device) -> None:
        self.sparsity = float(sparsity)
        self.alpha = float(alpha)
        self.p_min = float(p_min)
        self.normalize_loss = bool(normalize_loss)
        self.k = self.sparsity * n
        self.sparse = self.k < n
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(_shared_seed() if seed is None else seed))
        self.probs = torch.full((n,), self.sparsity, dtype=torch.float64, device=device)

    @property
    def n(self) -> int:
        return self.probs.numel()

    def sample(self) -> Tensor:
        """The next mask (bool, n): arm i on with probability probs[i]; every arm when not sparse."""
        if not self.sparse:
            return torch.ones(self.n, dtype=torch.bool, device=self.probs.device)
        return ops.sample_mask(self.probs, self.generator)

    def update(self, mask: Tensor, norms: Tensor, found_inf: Tensor | None) -> None:
        """EXP3 update from the active arms' gradient norms (``norms``: one per True in
        ``mask``, in order); nothing changes when ``found_inf`` is set or not sparse."""
        if self.sparse:
            ops.bandit_update_(self.probs, mask, norms, found_inf, self.alpha, self.k,
                               self.normalize_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"probs": self.probs.clone(), "generator": self.generator.get_state(),
                "sparsity": self.sparsity, "alpha": self.alpha, "p_min": self.p_min,
                "normalize_loss": self.normalize_loss}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a saved state of another size or a corrupted one, before anything changes."""
        probs, mask = state["probs"], state["mask"]
        if probs.numel() != self.n:
            raise ValueError(f"state_dict has {probs.numel()} arms, this optimizer "
                             f"has {self.n}: was it saved for another model?")
        if (mask.numel() != probs.numel() or not bool(torch.isfinite(probs).all())
                or not bool(((probs > 0) & (probs <= 1)).all())):
            # NOTE: a saved state always has p in [1e-8, 1]; p = 0 or NaN would stall the
            # sampler on its argmax fallback and turn the EXP3 update into NaN.
            raise ValueError("state_dict's bandit state is corrupted (probabilities not finite or "
                             "outside (0, 1], or a mask of another size); load another checkpoint")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Probabilities and generator from ``state`` (checked first).

        NOTE: sparsity, alpha, p_min and normalize_loss stay the constructor's (saved for
        reference only), as torch keeps whatever lies outside param_groups; the saved
        probabilities are brought to this sparsity by the next update.
        """
        self.check_state_dict(state)
        self.probs = state["probs"].to(self.probs.device, torch.float64).clone()
        self.generator.set_state(state["generator"])
