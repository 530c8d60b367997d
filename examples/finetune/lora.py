"""``lora=R`` in a method spec: the text model's encoder wrapped in PEFT LoRA adapters.

The adapters (rank R, alpha 2R, no adapter dropout) sit on the attention's ``query`` and
``value`` linear layers of every layer, as in the LoRA paper; PEFT freezes the encoder's
own weights, and the new classifier head, outside the encoder, stays trainable.
"""

from __future__ import annotations

from torch import nn

TARGETS = ("query", "value")


def add_lora(model: nn.Module, rank: int) -> None:
    """Replace ``model.encoder`` in place by a PEFT model with rank-``rank`` LoRA adapters."""
    encoder = getattr(model, "encoder", None)
    found = {name.rsplit(".", 1)[-1] for name, m in encoder.named_modules()
             if isinstance(m, nn.Linear)} if isinstance(encoder, nn.Module) else set()
    if not set(TARGETS) <= found:
        raise ValueError(f"lora={rank}: {type(model).__name__} has no transformer encoder with "
                         f"attention {'/'.join(TARGETS)} layers (model.encoder); lora= is for "
                         "--task text (MiniLM): drop it from the method spec for this task")
    try:
        import peft
    except ImportError:
        raise ImportError(f"lora={rank} needs PEFT: pip install peft (it is in "
                          "requirements-dev.txt)") from None
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                             target_modules=list(TARGETS))
    model.encoder = peft.get_peft_model(encoder, config)
