"""SL-SAM in PyTorch Lightning, with manual optimization.

    python examples/lightning_slsam.py

Lightning's automatic optimization calls the closure once per step and owns
backward, so SAM-style optimizers use manual optimization: the closure runs the
forward and ``self.manual_backward``; ``opt.step(closure)`` runs it for both passes.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import slsam


class LitClassifier(L.LightningModule):
    def __init__(self, sparsity: float = 0.3) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.sparsity = sparsity
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 32), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        opt = self.optimizers()

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(self(x), y)
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return slsam.SLSAM(self.parameters(), lr=1e-2, sparsity=self.sparsity, seed=0)


def make_data(n: int = 256, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)


def main(max_epochs: int = 5) -> LitClassifier:
    torch.manual_seed(0)
    model = LitClassifier()
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, make_data())
    return model


if __name__ == "__main__":
    main()
