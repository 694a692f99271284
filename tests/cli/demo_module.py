"""A tiny LightningModule/DataModule pair used to test the `lightning-cli` entry point (not a method)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class DemoRegression(L.LightningModule):
    """Linear regression y = x @ w; logs its loss so TensorBoard output can be checked."""

    def __init__(self, in_features: int = 8, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(in_features, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.linear(x), y)
        self.log("train/loss", loss, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.linear(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class DemoData(L.LightningDataModule):
    """Random regression data with a fixed ground-truth weight vector."""

    def __init__(self, in_features: int = 8, num_samples: int = 64, batch_size: int = 8, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None):
        g = torch.Generator().manual_seed(self.hparams.seed)
        x = torch.randn(self.hparams.num_samples, self.hparams.in_features, generator=g)
        w = torch.randn(self.hparams.in_features, 1, generator=g)
        self.dataset = TensorDataset(x, x @ w)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)
