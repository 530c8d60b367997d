"""One training run: fixed seed, the same batches and learning-rate schedule for every
method, test accuracy at fixed intervals of training wall-clock time (the clock stops
while evaluating), peak memory and the active parameter fraction."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import slsam

from .methods import describe, make_method
from .tasks import Split, Task, head_parameters, make_model

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is in requirements-dev.txt
    tqdm = None

RECORD_KEYS = ("task", "method", "seed", "steps", "batch", "lr", "train_seconds", "seconds_per_step",
               "curve", "final_test_acc", "val_acc", "train_loss", "active_fraction",
               "peak_rss_mib", "extra_rss_mib", "optimizer_state_mib", "machine", "date")
WARMUP = 0.06  # fraction of the steps with a linear warm-up, then linear decay to 0


def lr_lambda(steps: int) -> Any:
    warm = max(1, int(WARMUP * steps))

    def f(i: int) -> float:
        return (i + 1) / warm if i < warm else max(0.0, (steps - i) / max(1, steps - warm))
    return f


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch: int = 128) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on a split, in eval mode."""
    was = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(split), batch):
        b = split.take(torch.arange(i, min(i + batch, len(split))))
        out = model(b.x, b.mask)
        correct += int((out.argmax(1) == b.y).sum())
        loss += float(F.cross_entropy(out, b.y, reduction="sum"))
    model.train(was)
    return correct / len(split), loss / len(split)


def batches(n: int, batch: int, steps: int, seed: int) -> list[Tensor]:
    """The step's example indices: epochs of a seeded permutation (same for every method)."""
    gen = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen)
        out += [perm[i: i + batch] for i in range(0, n - batch + 1, batch)]
    return out[:steps]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def train(task: Task, spec: str, seed: int, steps: int, batch: int, lr: float,
          eval_every: float, progress: bool = True, record_masks: bool = True,
          model_fn: Callable[[Task], nn.Module] = make_model,
          head_fn: Callable[[nn.Module], list[nn.Parameter]] = head_parameters) -> dict[str, Any]:
    """Train ``model_fn(task)`` with method ``spec``; the run's record (see ``RECORD_KEYS``)."""
    torch.manual_seed(seed)
    model = model_fn(task)
    model.train()
    method = make_method(spec, model, head_fn(model), lr, seed)
    sched = torch.optim.lr_scheduler.LambdaLR(method.opt, lr_lambda(steps))
    base_rss = rss_mib()

    def run_eval(step: int, clock: float) -> dict[str, float]:
        acc, loss = evaluate(model, task.test)
        return {"t": clock, "step": step, "test_acc": acc, "test_loss": loss}

    curve = [run_eval(0, 0.0)]
    masks: list[str] = []
    active = 0.0
    losses: list[float] = []
    clock, next_eval = 0.0, eval_every
    bar = tqdm(total=steps, desc=f"{task.name} {spec} seed {seed}", leave=False,
               disable=not progress) if tqdm else None
    for i, idx in enumerate(batches(len(task.train), batch, steps, seed)):
        t0 = time.perf_counter()
        b = task.train.take(idx)
        active += method.active_fraction
        if record_masks and (m := method.mask()) is not None:
            masks.append("".join("1" if on else "0" for on in m))

        def loss_fn(second: bool, b: Split = b) -> Tensor:
            with slsam.running_stats_frozen(model, enabled=second):
                return F.cross_entropy(model(b.x, b.mask), b.y)

        loss = method.step(loss_fn)
        sched.step()
        clock += time.perf_counter() - t0
        losses.append(float(loss))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", t=f"{clock:.0f}s")
        if clock >= next_eval or i == steps - 1:
            curve.append(run_eval(i + 1, clock))
            next_eval = clock + eval_every
    if bar is not None:
        bar.close()
    val_acc, _ = evaluate(model, task.val)
    out: dict[str, Any] = {
        "task": task.name, "method": describe(spec), "seed": seed, "steps": steps, "batch": batch,
        "lr": lr, "train_seconds": clock, "seconds_per_step": clock / steps,
        "curve": curve, "final_test_acc": curve[-1]["test_acc"], "val_acc": val_acc,
        "train_loss": losses, "active_fraction": active / steps,
        "peak_rss_mib": peak_rss_mib(), "extra_rss_mib": peak_rss_mib() - base_rss,
        "optimizer_state_mib": method.state_bytes() / 2**20,
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
    }
    if masks:
        opt = method.opt
        assert isinstance(opt, slsam.SLSAM)
        names = {id(p): n for n, p in model.named_parameters()}
        # an arm of several tensors (arms=block) is named by their common prefix
        out["arms"] = [os.path.commonprefix([names[id(p)] for p in arm]).rstrip(".")
                       for arm in opt.arm_groups]
        out["arm_numel"] = [sum(p.numel() for p in arm) for arm in opt.arm_groups]
        out["masks"] = masks
        out["final_probs"] = opt.probs.tolist()
    return out
