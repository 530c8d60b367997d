"""Arm groups for ``SLSAM(..., arm_groups=...)``: which tensors the bandit samples together.

Each helper returns a list of lists of parameters, one inner list per arm, with the
trainable parameters only. Trainable tensors a helper leaves out are one arm each
(the optimizer's rule for tensors listed in no group), so
``by_block(model)`` on a transformer gives one arm per layer plus one per tensor of
the embeddings, the pooler and the like.

    opt = slsam.SLSAM(params, arm_groups=slsam.arms.by_block(model), sparsity=0.2)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from slsam._marks import trainable

# A numbered block in a parameter name: ``encoder.layer.3.``, ``blocks.0.``, ``layers.11.``,
# ``h.5.`` (GPT-2), ``block.2.`` (T5), ``_blocks.7.`` (EfficientNet-PyTorch). The match up
# to the number names the arm.
BLOCK_PATTERN = re.compile(r"^(?:.*\.)?(?:layer|layers|blocks|block|h|_blocks)\.\d+(?=\.)")


def by_block(model: nn.Module, pattern: re.Pattern[str] | str = BLOCK_PATTERN) -> list[list[Tensor]]:
    """One arm per numbered block (``encoder.layer.N``, ``blocks.N``, ``layers.N``,
    ``h.N``, ``block.N``, ``_blocks.N``), in order of first appearance; ``pattern`` is matched
    (``re.match``) against each parameter name and the matched prefix names the arm."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    groups: dict[str, list[Tensor]] = {}
    for name, p in model.named_parameters():
        m = rx.match(name)
        if m is not None and trainable(p):
            groups.setdefault(m.group(0), []).append(p)
    if not groups:
        raise ValueError(f"by_block: no parameter name of {type(model).__name__} matches "
                         f"{rx.pattern!r}; pass pattern= for this model's block names, or "
                         "use by_module(model, [modules])")
    return list(groups.values())


def by_module(model: nn.Module,
              modules: Iterable[nn.Module | str] | type | tuple[type, ...]) -> list[list[Tensor]]:
    """One arm per module: ``modules`` lists modules (or their names in
    ``model.named_modules()``), or is a module type (or tuple of types), in which case
    every outermost module of that type is an arm. A module's arm holds all its
    trainable parameters, its submodules' included."""
    named = dict(model.named_modules())
    if isinstance(modules, type) or (isinstance(modules, tuple)
                                     and all(isinstance(t, type) for t in modules)):
        types = modules
        chosen: list[nn.Module] = []
        covered: set[int] = set()
        for m in model.modules():
            if id(m) in covered:
                continue
            if isinstance(m, types):
                chosen.append(m)
                covered.update(id(sub) for sub in m.modules())
        if not chosen:
            raise ValueError(f"by_module: {type(model).__name__} has no module of type {types}")
    else:
        chosen = []
        for item in modules:  # type: ignore[union-attr]
            if isinstance(item, str):
                if item not in named:
                    raise ValueError(f"by_module: {type(model).__name__} has no module named "
                                     f"{item!r} (see model.named_modules())")
                item = named[item]
            chosen.append(item)
    return _distinct([[p for p in m.parameters() if trainable(p)] for m in chosen])


def by_adapter(model: nn.Module) -> list[list[Tensor]]:
    """One arm per LoRA adapter of a module: its ``lora_A`` and ``lora_B`` (and, where
    present, ``lora_embedding_A/B`` and DoRA's ``lora_magnitude_vector``) for one adapter
    name, as PEFT lays them out (``ModuleDict``/``ParameterDict`` keyed by adapter name);
    a module whose ``lora_A``/``lora_B`` are plain modules or parameters is one arm. The
    frozen base weights are in no arm (and are not arms: they do not require grad)."""
    groups: list[list[Tensor]] = []
    for m in model.modules():
        parts = [getattr(m, attr) for attr in ("lora_A", "lora_B", "lora_embedding_A",
                                                "lora_embedding_B", "lora_magnitude_vector")
                 if hasattr(m, attr)]
        if not parts or not (hasattr(m, "lora_A") and hasattr(m, "lora_B")):
            continue
        keyed = [x for x in parts if isinstance(x, (nn.ModuleDict, nn.ParameterDict))]
        if keyed:
            names = list(dict.fromkeys(k for x in keyed for k in x.keys()))
            for name in names:
                groups.append([p for x in keyed if name in x for p in _params(x[name])])
        else:
            groups.append([p for x in parts for p in _params(x)])
    groups = _distinct([[p for p in g if trainable(p)] for g in groups])
    if not groups:
        raise ValueError(f"by_adapter: {type(model).__name__} has no trainable lora_A/lora_B "
                         "(apply a LoRA adapter first, e.g. peft.get_peft_model)")
    return groups


def _params(x: nn.Module | Tensor) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x.parameters())


def _distinct(groups: Sequence[list[Tensor]]) -> list[list[Tensor]]:
    """Non-empty groups, each tensor in the first group that has it."""
    seen: set[int] = set()
    out = []
    for g in groups:
        kept = [p for p in g if id(p) not in seen]
        seen.update(id(p) for p in kept)
        if kept:
            out.append(kept)
    return out
