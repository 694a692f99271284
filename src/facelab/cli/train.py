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


def _shutdown_distributed(completed: bool) -> None:
    """Tear the process group down while the interpreter is still whole.

    Lightning leaves this to an ``atexit`` hook; on busy machines gloo's threads could then be destroyed during
    interpreter shutdown and abort the process ("terminate called without an active exception", SIGABRT) after a
    successful fit. Destroying the group here, after the run, makes the exit status of a DDP run trustworthy.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if completed:  # rank 0 hosts the rendezvous store: let every rank finish before it goes away
            dist.barrier()
        dist.destroy_process_group()


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-cli`` console script."""
    completed = False
    try:
        FacelabCLI(args=args)
        completed = True
    finally:
        _shutdown_distributed(completed)


if __name__ == "__main__":
    main()
