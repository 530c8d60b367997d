"""The mark SLSAM leaves on the arms it masks off, and what reads it.

NOTE: ``_slsam_masked`` is set on an arm while SLSAM has turned its ``requires_grad``
off, so that an optimizer built later on the same parameters (re-created in the same
process, e.g. Lightning's lr_find before fit) takes it as an arm again, not as a tensor
the user froze, which would then never train.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASKED = "_slsam_masked"


def trainable(p: Tensor) -> bool:
    """Trains: ``requires_grad``, or masked off by an SLSAM."""
    return p.requires_grad or getattr(p, MASKED, False)


def set_active(p: Tensor, on: bool) -> None:
    """Turn ``p``'s ``requires_grad`` on or off, marking it masked while off."""
    p.requires_grad_(on)
    setattr(p, MASKED, not on)


def unmask(p: Tensor) -> None:
    """Give an arm masked off by an earlier SLSAM its ``requires_grad`` back."""
    if getattr(p, MASKED, False):
        p.requires_grad_(True)
        setattr(p, MASKED, False)


def keep_mark_in_copies(p: Tensor) -> None:
    """Make ``copy.deepcopy`` of ``p`` keep its attributes (the mark).

    NOTE: nn.Parameter.__deepcopy__ drops the instance's attributes, so a model copied
    after a step (copy.deepcopy(model)) would hold masked-off arms that look frozen, and
    an optimizer built on the copy would never train them. deepcopy looks __deepcopy__ up
    on the instance: None there sends it to __reduce_ex__, which keeps the attributes
    (pickling does already). Plain Parameters only (DTensor keeps its own copy).
    """
    if type(p) is torch.nn.Parameter and "__deepcopy__" not in vars(p):
        p.__deepcopy__ = None  # type: ignore[method-assign,assignment]
