"""Short real demo: a residual MLP on scikit-learn's handwritten digits (8x8
images, 10 classes), trained with AdamW, slsam.SAM and slsam.SLSAM for the same
number of epochs. Prints loss, test accuracy, wall time and the fraction of
parameter tensors (and elements) SL-SAM kept active per step.

    python examples/demo.py [--epochs 30] [--sparsity 0.2]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from tqdm import tqdm

import slsam


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.fc(self.norm(x)))


def make_model(seed: int, width: int = 128, depth: int = 6) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, width), *[Block(width) for _ in range(depth)],
                         nn.LayerNorm(width), nn.Linear(width, 10))


def load_data(seed: int) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = len(x) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def run(name: str, args: argparse.Namespace, data: tuple[torch.Tensor, ...]) -> dict:
    x_tr, y_tr, x_te, y_te = data
    model = make_model(args.seed)
    params = list(model.parameters())
    if name == "AdamW":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    elif name == "SAM":
        opt = slsam.SAM(params, rho=args.rho, lr=args.lr, weight_decay=0.01)
    else:  # the new head is always active; the bandit picks among the rest
        head = list(model[-1].parameters())
        body = params[: len(params) - len(head)]
        opt = slsam.SLSAM([{"params": body}, {"params": head, "always_active": True}],
                          rho=args.rho, sparsity=args.sparsity, lr=args.lr, weight_decay=0.01,
                          seed=args.seed)
    n_elems = sum(p.numel() for p in params)
    active_tensors, active_elems, steps = 0.0, 0.0, 0
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    loss = torch.tensor(0.0)
    for _ in tqdm(range(args.epochs), desc=f"{name:>6}", leave=False):
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), args.batch):
            idx = perm[i : i + args.batch]
            xb, yb = x_tr[idx], y_tr[idx]
            live = [p for p in params if p.requires_grad]
            active_tensors += len(live) / len(params)
            active_elems += sum(p.numel() for p in live) / n_elems
            steps += 1

            def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
                opt.zero_grad()
                out = F.cross_entropy(model(xb), yb)
                out.backward()
                return out

            if isinstance(opt, slsam.SLSAM):
                loss = opt.step(closure)
            else:
                loss = closure()
                opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        ctx = opt.dense() if isinstance(opt, slsam.SLSAM) else torch.enable_grad()
        with ctx:
            acc = (model(x_te).argmax(1) == y_te).float().mean().item()
            test_loss = F.cross_entropy(model(x_te), y_te).item()
    return dict(optimizer=name, train_loss=float(loss.detach()), test_loss=test_loss, test_acc=acc,
                seconds=seconds, active_tensors=active_tensors / steps,
                active_elements=active_elems / steps, steps=steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rho", type=float, default=0.05)
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = load_data(args.seed)
    print(f"slsam {slsam.__version__}, torch {torch.__version__}, {platform.machine()} CPU, "
          f"{torch.get_num_threads()} threads; digits: {len(data[0])} train / {len(data[2])} test")
    rows = [run(name, args, data) for name in ("AdamW", "SAM", "SLSAM")]
    print(f"\n{'optimizer':<10}{'train loss':>11}{'test loss':>10}{'test acc':>9}{'time s':>8}"
          f"{'active tensors':>16}{'active elems':>14}")
    for r in rows:
        print(f"{r['optimizer']:<10}{r['train_loss']:>11.4f}{r['test_loss']:>10.4f}"
              f"{r['test_acc']:>9.3f}{r['seconds']:>8.2f}{r['active_tensors']:>16.2f}"
              f"{r['active_elements']:>14.2f}")
    print(f"\n{rows[0]['steps']} steps each; SLSAM sparsity={args.sparsity} (head always active), "
          f"rho={args.rho}. Times are this run's, on this machine.")


if __name__ == "__main__":
    main()
