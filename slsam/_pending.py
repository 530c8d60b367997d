"""What a ``first_step()`` leaves for its ``second_step()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from slsam._perturb import restore_groups


@dataclass
class PendingStep:
    """A perturbed step: per param group, the tensors moved to x + e and their backups of x;
    the active arms' gradient norms for the bandit (unscaled); whether the first pass's
    gradients were not finite."""

    groups: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]
    arm_norms: Tensor
    found_inf: Tensor

    @property
    def params(self) -> list[Tensor]:
        return [p for _, ps, _ in self.groups for p in ps]

    def restore(self) -> None:
        """Put every perturbed tensor back at x, exactly."""
        restore_groups(self.groups)

    def backup_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for _, _, bks in self.groups for b in bks)
