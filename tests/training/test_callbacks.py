"""EMACallback in a real Trainer: updated once per optimizer step, validation runs with the average and the
trained weights come back, the average survives a checkpoint and a resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from facelab.training.callbacks import EMACallback


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(2, 1)
        self.validated: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx: int):
        x, y = batch
        return (self.net(x) - y).pow(2).mean()

    def validation_step(self, batch, batch_idx: int) -> None:
        self.validated.append(self.net.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, generator=g)
    return DataLoader(TensorDataset(x, x @ torch.tensor([[2.0], [-1.0]])), batch_size=4)


def trainer(root, max_steps: int, ema: EMACallback, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=root, callbacks=[ema], num_sanity_val_steps=0,
                     limit_val_batches=1, **kwargs)


def test_validation_uses_the_average_and_checkpoints_keep_it(tmp_path):
    module, ema = Tiny(), EMACallback(attribute="net", decay=0.5, warmup="none")
    weights = [module.net.weight.detach().clone()]
    module.on_train_batch_end = lambda *a: weights.append(module.net.weight.detach().clone())
    fit = trainer(tmp_path, 4, ema, val_check_interval=4, enable_checkpointing=False)
    fit.fit(module, loader(), loader())
    expected = weights[0]
    for w in weights[1:]:  # one update per optimizer step, beta 0.5
        expected = 0.5 * expected + 0.5 * w
    assert ema.ema.num_updates == 4
    torch.testing.assert_close(module.validated[-1], expected)  # validation saw the average
    torch.testing.assert_close(module.net.weight.detach(), weights[-1])  # and training got its weights back
    ckpt = tmp_path / "last.ckpt"
    fit.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["callbacks"][ema.state_key]
    torch.testing.assert_close(state["shadow"]["weight"], expected)

    resumed_module, resumed = Tiny(), EMACallback(attribute="net", decay=0.5, warmup="none")
    trainer(tmp_path, 4, resumed, enable_checkpointing=False).fit(resumed_module, loader(), ckpt_path=ckpt)
    assert resumed.ema.num_updates == 4
    torch.testing.assert_close(resumed.ema.shadow["weight"], expected)


def test_attribute_must_be_a_module(tmp_path):
    with pytest.raises(ValueError, match="Tiny.missing is not an nn.Module"):
        trainer(tmp_path, 1, EMACallback(attribute="missing"), enable_checkpointing=False).fit(Tiny(), loader())
