"""Stage 1 of DualStream (paper Sec. IV-B): the multi-task encoder + PSN on parameters, then the geometry stream.

``lightning-cli fit --config configs/dualstream_geometry.yaml``. For the first ``parametric_steps`` optimizer
steps only Eq. 4 trains (encoder + PSN "on the annotated parameters"), then the whole stream trains on Eq. 8
(``L_gs = 0.5 L_p + L_asm + 0.5 L_sym + 1e-3 L_reg``); Adam, lr 2e-4, batch 8, 256^2 crops in the paper.

Ablation switches (paper Table III / Fig. 12): ``expression_asm`` (False: one decoder for the full map),
``weight_mask`` (False: Eq. 5 without W), ``symmetry`` (Eq. 6 off), ``laplacian`` (Eq. 7 off).

Validation (logged with ``sync_dist``, so DDP ranks agree): ``val/asm_error_px`` (mean distance of the full map to
the ground truth over face texels, crop pixels), ``val/id_asm_error_px``, ``val/exp_asm_error_px``,
``val/vertex_error_px`` (vertices read from the maps, :meth:`dualstream.asm.AsmCodec.to_vertices`) and
``val/nme`` (the 68 keypoint vertices against the landmarks over sqrt(w h) of their box, :func:`batch_metrics`).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from dualstream.data import AsmSample, load_topology
from dualstream.geometry import GeometryOutput, GeometryStream
from dualstream.geometry_losses import GeometryLosses, LossWeights
from facelab.training.images import ImageGridLogger, tensorboard_writer

__all__ = ["GeometryModule", "batch_metrics"]


def _face_mean(err: Tensor, face: Tensor) -> Tensor:
    """(B, 1, S, S) per-texel errors -> (B,) mean over face texels."""
    face = face.to(err.dtype).expand_as(err)
    return (err * face).flatten(1).sum(1) / face.flatten(1).sum(1).clamp(min=1)


@torch.no_grad()
def batch_metrics(module: GeometryModule, out: GeometryOutput, batch: AsmSample) -> dict[str, Tensor]:
    """Per-sample errors (B,) in crop pixels: full / identity / expression ASM, vertices, and the 68-point NME
    (mean 2D keypoint error over sqrt(w h) of the landmark box)."""
    codec = module.codec
    pred_id, pred_full = codec.decode(out.a_id, out.a_exp)
    face = batch.weight_mask > 0
    err = lambda a, b: _face_mean((a - b).norm(dim=1, keepdim=True), face)  # noqa: E731
    verts_pred, verts_true = codec.to_vertices(pred_full), codec.to_vertices(batch.asm_full)
    kp = module.keypoints
    lmk = verts_pred[:, kp, :2]
    box = batch.landmarks.amax(1) - batch.landmarks.amin(1)
    nme = (lmk - batch.landmarks).norm(dim=-1).mean(1) / box.prod(-1).sqrt()
    metrics = {"asm_error_px": err(pred_full, batch.asm_full), "vertex_error_px": (verts_pred - verts_true).norm(
        dim=-1).mean(1), "nme": nme}
    if out.a_exp is not None:
        metrics["id_asm_error_px"] = err(pred_id, batch.asm_id)
        metrics["exp_asm_error_px"] = err(pred_full - pred_id, batch.asm_exp)
    return metrics


class GeometryModule(LightningModule):
    """The geometry stage (module docstring).

    Args:
        model_path: the BFM (``"synthetic"`` stand-in, Deep3DFaceRecon's ``.mat``, or face3d's ``BFM.mat`` for
            300W-LP); must be the data's.
        uv_path: its UV layout (None: ``BFM_UV.mat`` beside it).
        image_size: crop side (paper 256). uv_size: ASM side (paper 256).
        width: encoder channel multiplier (1 = VGG16; < 1 for CPU runs). decoder_width: decoder multiplier.
        vggface_weights: local VGG-Face weights (None: random trunk, console WARNING).
        expression_asm, weight_mask, symmetry, laplacian: the ablation switches.
        loss_weights: Eq. 8's weights (``parametric``, ``asm``, ``symmetry``, ``laplacian``); None: the paper's.
        albedo_reg: Eq. 4's gamma. expression_gain: :class:`dualstream.asm.AsmRange`.
        lr: Adam learning rate (paper 2e-4). betas: Adam betas.
        parametric_steps: optimizer steps of the encoder + PSN phase (Eq. 4 only) before the geometry stream.
        log_images_every_n_steps: TensorBoard grid cadence (0: never).
    """

    def __init__(
        self,
        model_path: str = "synthetic",
        uv_path: str | None = None,
        image_size: int = 256,
        uv_size: int = 256,
        width: float = 1.0,
        decoder_width: float = 1.0,
        vggface_weights: str | None = None,
        expression_asm: bool = True,
        weight_mask: bool = True,
        symmetry: bool = True,
        laplacian: bool = True,
        loss_weights: dict[str, float] | None = None,
        albedo_reg: float = 5e-2,
        expression_gain: float = 8.0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        parametric_steps: int = 0,
        log_images_every_n_steps: int = 500,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        topology = load_topology(model_path, uv_path)
        self.codec = topology.codec(uv_size, image_size, expression_gain)
        self.register_buffer("keypoints", topology.keypoints.clone(), persistent=False)
        self.stream = GeometryStream(uv_size, topology.num_albedo, width, decoder_width, expression_asm,
                                     vggface_weights)
        weights = LossWeights(**(loss_weights or {}))
        self.losses = GeometryLosses(topology, self.codec, weights, albedo_reg, weight_mask, symmetry, laplacian)
        self.hparams["loss_weights"] = asdict(weights)
        self.images = ImageGridLogger(log_images_every_n_steps)

    def forward(self, image: Tensor) -> GeometryOutput:
        return self.stream(image)

    @property
    def parametric_phase(self) -> bool:
        return self.global_step < self.hparams.parametric_steps

    def training_step(self, batch: AsmSample, batch_idx: int) -> Tensor:
        phase = self.parametric_phase
        out = self.stream(batch.image, decode=not phase)
        losses = self.losses(out, batch, parametric_only=phase)
        total = losses["total"]
        if phase:  # decoders idle: zero-valued use keeps DDP's gradient buckets complete without find_unused
            total = total + 0.0 * sum(p.sum() for n, p in self.stream.named_parameters() if n.startswith("decoder"))
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in losses.items()}, batch_size=batch.image.shape[0])
        self.log("train/parametric_phase", float(phase), batch_size=batch.image.shape[0])
        writer = tensorboard_writer(self.logger, self.global_rank)
        if not phase and self.images.due(self.global_step, writer):
            self._log_grid(writer, out, batch)
        return total

    def _log_grid(self, writer, out: GeometryOutput, batch: AsmSample) -> None:
        size = self.hparams.image_size
        vis = lambda m: (m / size).clamp(0, 1)  # noqa: E731  pixels -> [0, 1]
        pred_id, pred_full = self.codec.decode(out.a_id.detach(), None if out.a_exp is None else out.a_exp.detach())
        exp = lambda m: (0.5 + m / 8.0).clamp(0, 1)  # noqa: E731  +-4 px offsets
        panels = [torch.nn.functional.interpolate(batch.image, size=pred_id.shape[-2:]), vis(batch.asm_id),
                  vis(pred_id), exp(batch.asm_exp), exp(pred_full - pred_id)]
        self.images.log(writer, "train/image_asm_id_true_pred_asm_exp_true_pred", panels, self.global_step)

    def validation_step(self, batch: AsmSample, batch_idx: int) -> None:
        out = self.stream(batch.image)
        losses = self.losses(out, batch)
        n = batch.image.shape[0]
        self.log_dict({f"val/loss_{k}": v for k, v in losses.items()}, batch_size=n, sync_dist=True)
        self.log_dict({f"val/{k}": v.mean() for k, v in batch_metrics(self, out, batch).items()}, batch_size=n,
                      sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.stream.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas))
