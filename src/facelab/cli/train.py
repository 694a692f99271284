"""The ``lightning-cli`` console script: LightningCLI in subclass mode over every LightningModule/DataModule.

    lightning-cli fit --config configs/smirk.yaml [--config overlay.yaml] [--print_config]
    lightning-cli fit --config configs/smirk.yaml --trainer.devices=4 --trainer.strategy=ddp

Any LightningModule/LightningDataModule is named by ``class_path`` in the config (e.g. ``smirk.SmirkModule``).
TensorBoard (``logs/<name>/version_N``) is the default logger; the resolved config is saved beside its events.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "default"},
    },
}


class FacelabCLI(LightningCLI):
    """LightningCLI with facelab's defaults (TensorBoard logger, config saved beside the logs)."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            **kwargs,
        )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-cli`` console script."""
    FacelabCLI(args=args)


if __name__ == "__main__":
    main()
