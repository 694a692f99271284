"""``SpeechModule``: training the audio -> ARKit network of DNPM's speech-driven animation (paper §IV-A, Eq. 8-10).

    L_vertex = sum_t || V_p,t - V^_p,t ||_1              (Eq. 8)   V_p = bilinear(w_id, M w_exp)  (Eq. 3)
    L_exp    = sum_t || w_exp,t - w^_exp,t ||_1          (Eq. 9)   w_exp: the 52 ARKit coefficients
    L_speech = lambda_1 L_vertex + lambda_2 L_exp,  lambda = (1, 0.01)   (Eq. 10)

``M`` (52 x 51) is the explicit ARKit -> bilinear-blendshape mapping (:func:`dnpm.arkit.arkit_to_expression_matrix`:
FaceScape's FaceShift names, or the synthetic stand-in's fields). Both L1 terms are means over frames and elements
(vertex coordinates in millimetres, coefficients) rather than sums, so the paper's weights do not depend on the
mesh size or clip length; padded frames are masked out. The vertices of a clip use its identity: the bilinear
core is contracted with ``w_id`` once per clip, then each frame is a (52,) x (52, 3V) product (the same numbers as
:class:`facelab.morphable.BilinearModel`'s forward, tested).

Training is teacher-forced (ground truth shifted by one frame, one pass); validation runs the network
autoregressively, as at inference, and logs (synchronised over ranks, rank 0 writes):

* ``val/lve``: lip vertex error, per frame the max over the lip vertices of the L2 error (mm), averaged over
  frames; ``val/lve_sq``: the same with the squared L2 error (mm^2; the common public LVE script's form);
* ``val/coef_l1``: mean absolute ARKit coefficient error; ``val/vertex_l1``: mean absolute vertex error (mm).

Lip vertices: ``lip_vertices`` (a ``.npy`` / ``.txt`` of vertex ids); default for the synthetic stand-in its head's
``lips`` region; otherwise the 100 vertices the mouth's ARKit channels move most (a WARNING says so).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from dnpm.arkit import NUM_ARKIT, arkit_index, arkit_to_expression_matrix
from dnpm.detailed3dmm import bilinear_model
from dnpm.speech_data import SpeechBatch
from dnpm.speech_model import SpeechToArkit
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.log import get_logger

__all__ = ["SpeechModule", "lip_vertex_error", "load_speech_model"]

log = get_logger(__name__)

_MOUTH_CHANNELS = (
    "jawOpen",
    "mouthFunnel",
    "mouthPucker",
    "mouthStretch_L",
    "mouthStretch_R",
    "mouthPress_L",
    "mouthPress_R",
    "mouthSmile_L",
    "mouthSmile_R",
)


def lip_vertex_error(
    pred: Tensor, target: Tensor, lips: Tensor, mask: Tensor | None = None, squared: bool = False
) -> Tensor:
    """Lip vertex error: per frame the max over ``lips`` of the (squared) L2 vertex error, averaged over frames.

    Args:
        pred, target: (B, T, V, 3) vertices.
        lips: (L,) vertex ids.
        mask: (B, T) 1 for real frames (None: all).
        squared: max of the squared distance (the common public script) instead of the distance.
    """
    d = (pred[:, :, lips] - target[:, :, lips]).pow(2).sum(-1)  # (B, T, L)
    per_frame = d.amax(-1) if squared else d.amax(-1).sqrt()
    if mask is None:
        return per_frame.mean()
    return (per_frame * mask).sum() / mask.sum().clamp_min(1)


@functools.lru_cache(maxsize=2)
def _standin_lips(size: str) -> np.ndarray:
    from facelab.morphable.synthetic.head import build_head

    return build_head(size, 0, n_identity=49, n_expression=50).regions["lips"]


def _read_indices(path: str, num_verts: int) -> Tensor:
    p = Path(path)
    if not p.is_file():
        raise MissingAssetError(
            f"`model.init_args.lip_vertices` = {path}: no such file (a .npy or .txt of lip vertex ids)"
        )
    ids = np.load(p, allow_pickle=False) if p.suffix == ".npy" else np.loadtxt(p, dtype=np.int64, ndmin=1)
    ids = np.asarray(ids).reshape(-1).astype(np.int64)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= num_verts:
        raise AssetFormatError(
            f"{path}: lip vertex ids must be in [0, {num_verts}), got {ids.size} ids in "
            f"[{ids.min() if ids.size else '-'}, {ids.max() if ids.size else '-'}]"
        )
    return torch.from_numpy(np.unique(ids))


class SpeechModule(LightningModule):
    """The speech -> ARKit stage (module docstring; ``configs/dnpm_speech.yaml``).

    Args:
        model_path: the bilinear model of the vertex loss (``synthetic`` / ``synthetic:tiny`` stand-ins or
            FaceScape's ``facescape_bm_v1.6_847_50_52_id_front.npz``).
        lip_vertices: lip vertex ids for the LVE (module docstring).
        d_model, num_heads, num_layers, period, max_frames, alignment_width, dropout: the decoder
            (:class:`dnpm.speech_model.FaceFormerDecoder`).
        wav2vec_path: local pretrained wav2vec 2.0 folder (None: random ``wav2vec_config`` + WARNING).
        wav2vec_config: ``Wav2Vec2Config`` arguments of the random encoder (None: the small default).
        freeze_feature_extractor: keep wav2vec 2.0's CNN frozen; None: frozen with pretrained weights (the paper),
            trained for a random encoder (:class:`dnpm.speech_model.SpeechEncoder`).
        vertex_weight: lambda_1 of Eq. 10 (1).
        coefficient_weight: lambda_2 of Eq. 10 (0.01).
        lr: Adam learning rate (FaceFormer: 1e-4).
        fps: coefficient frame rate.
        val_max_batches: validation batches decoded autoregressively per epoch (0: all).
        training_mode: ``teacher_forcing`` (the ground truth shifted by one frame, one pass) or ``autoregressive``
            (fed its own outputs, T steps, as FaceFormer trains).
        self_feed: teacher forcing: share of inputs replaced by the model's own first-pass predictions (scheduled
            sampling; counters the exposure bias of plain teacher forcing, module docstring).
    """

    def __init__(
        self,
        model_path: str = "synthetic",
        lip_vertices: str | None = None,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 1,
        period: int = 30,
        max_frames: int = 600,
        alignment_width: int = 0,
        dropout: float = 0.1,
        wav2vec_path: str | None = None,
        wav2vec_config: dict | None = None,
        freeze_feature_extractor: bool | None = None,
        vertex_weight: float = 1.0,
        coefficient_weight: float = 0.01,
        lr: float = 1e-4,
        fps: float = 30.0,
        val_max_batches: int = 0,
        training_mode: Literal["teacher_forcing", "autoregressive"] = "teacher_forcing",
        self_feed: float = 0.0,
    ) -> None:
        super().__init__()
        if training_mode not in ("teacher_forcing", "autoregressive"):
            raise ValueError(f"training_mode must be 'teacher_forcing' or 'autoregressive', got {training_mode!r}")
        if not 0.0 <= self_feed <= 1.0:
            raise ValueError(f"self_feed must be in [0, 1], got {self_feed}")
        self.save_hyperparameters()
        self.net = SpeechToArkit(
            d_model,
            num_heads,
            num_layers,
            period,
            max_frames,
            alignment_width,
            dropout,
            wav2vec_path,
            wav2vec_config,
            freeze_feature_extractor,
            fps,
        )
        self.bilinear = bilinear_model(model_path).requires_grad_(False)
        bl = self.bilinear
        self.num_identity = int(bl.num_identity)
        self.register_buffer("arkit_map", arkit_to_expression_matrix(bl), persistent=False)  # (52, 51)
        self.lips = self._lips(lip_vertices, str(model_path))
        if wav2vec_path:  # checkpoints rebuild the pretrained architecture without the folder (load_speech_model)
            self.hparams["wav2vec_config"] = self.net.encoder.wav2vec.config.to_dict()

    def _lips(self, path: str | None, model_path: str) -> Tensor:
        n = self.bilinear.num_verts
        if path:
            return _read_indices(path, n)
        if getattr(self.bilinear, "is_synthetic", False):
            size = model_path.split(":", 1)[1] if ":" in model_path else "full"
            return torch.from_numpy(np.asarray(_standin_lips(size), dtype=np.int64))
        log.warning(
            "no `model.init_args.lip_vertices`: the LVE uses the 100 vertices the mouth's ARKit channels "
            "move most on the mean face (give the model's lip vertex ids for the standard metric)"
        )
        with torch.no_grad():
            a = torch.zeros(1, 1, NUM_ARKIT)
            base = self.vertices(a, torch.zeros(1, self.num_identity))
            moved = torch.zeros(n)
            for name in _MOUTH_CHANNELS:
                b = a.clone()
                b[..., arkit_index(name)] = 1.0
                moved += (self.vertices(b, torch.zeros(1, self.num_identity)) - base)[0, 0].norm(dim=-1)
        return moved.topk(min(100, n)).indices.sort().values

    # --------------------------------------------------------------------------------------------------- geometry
    def vertices(self, arkit: Tensor, identity: Tensor) -> Tensor:
        """(B, T, V, 3) bilinear proxy vertices (Eq. 3) of (B, T, 52) ARKit weights and (B, K) identities."""
        bl = self.bilinear
        k_all = bl.id_mean.shape[0]
        w_id = bl.identity_factors(identity[:, : self.num_identity].to(bl.core))  # (B, K_all)
        core = bl.core.view(52, k_all, -1)  # (52, K, 3V), residual
        basis = torch.einsum("ekv,bk->bev", core, w_id)  # per clip: neutral + 51 blendshape deltas
        exp = arkit.to(bl.core) @ self.arkit_map.to(bl.core)  # (B, T, 51)
        w_exp = torch.cat([exp.new_ones(*exp.shape[:2], 1), exp], dim=-1)
        verts = torch.einsum("bte,bev->btv", w_exp, basis)
        return verts.view(*arkit.shape[:2], -1, 3)

    def losses(self, pred: Tensor, batch: SpeechBatch) -> tuple[dict[str, Tensor], Tensor]:
        mask = batch.frame_mask
        gt = batch.coefficients
        v_pred, v_gt = self.vertices(pred, batch.identity), self.vertices(gt, batch.identity)
        m4 = mask[:, :, None, None]
        vertex = ((v_pred - v_gt).abs() * m4).sum() / (m4.sum() * v_pred.shape[2] * 3).clamp_min(1)  # Eq. 8
        coef = ((pred - gt).abs() * mask[..., None]).sum() / (mask.sum() * NUM_ARKIT).clamp_min(1)  # Eq. 9
        total = self.hparams.vertex_weight * vertex + self.hparams.coefficient_weight * coef  # Eq. 10
        return {"vertex_l1": vertex, "coef_l1": coef, "loss": total}, total

    def training_step(self, batch: SpeechBatch, batch_idx: int) -> Tensor:
        pred = self.net(batch.audio, batch.coefficients, self.hparams.training_mode, self.hparams.self_feed)
        terms, total = self.losses(pred, batch)
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False, batch_size=batch.audio.shape[0]
        )
        return total

    def metrics(self, pred: Tensor, batch: SpeechBatch) -> dict[str, Tensor]:
        """Validation metrics of predictions (B, T, 52) against the batch (module docstring)."""
        mask = batch.frame_mask
        v_pred, v_gt = self.vertices(pred, batch.identity), self.vertices(batch.coefficients, batch.identity)
        lips = self.lips.to(pred.device)
        m4 = mask[:, :, None, None]
        return {
            "lve": lip_vertex_error(v_pred, v_gt, lips, mask),
            "lve_sq": lip_vertex_error(v_pred, v_gt, lips, mask, squared=True),
            "coef_l1": ((pred - batch.coefficients).abs() * mask[..., None]).sum()
            / (mask.sum() * NUM_ARKIT).clamp_min(1),
            "vertex_l1": ((v_pred - v_gt).abs() * m4).sum() / (m4.sum() * v_pred.shape[2] * 3).clamp_min(1),
        }

    def predict_batch(self, batch: SpeechBatch) -> Tensor:
        """Autoregressive (B, T, 52) predictions of a batch (clips of one length; padded ones decode the padding
        too and are masked by the metrics)."""
        return self.net.generate(batch.audio, batch.coefficients.shape[1])

    def validation_step(self, batch: SpeechBatch, batch_idx: int) -> None:
        if self.hparams.val_max_batches and batch_idx >= self.hparams.val_max_batches:
            return
        metrics = self.metrics(self.predict_batch(batch), batch)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=True, batch_size=batch.audio.shape[0])

    def test_step(self, batch: SpeechBatch, batch_idx: int) -> None:
        metrics = self.metrics(self.predict_batch(batch), batch)
        self.log_dict({f"test/{k}": v for k, v in metrics.items()}, sync_dist=True, batch_size=batch.audio.shape[0])

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return (
            batch.to(device)
            if isinstance(batch, SpeechBatch)
            else super().transfer_batch_to_device(batch, device, dataloader_idx)
        )


def load_speech_model(path: str, config_key: str = "--ckpt") -> SpeechModule:
    """A :class:`SpeechModule` from its Lightning checkpoint (``weights_only=True``), in eval mode.

    Raises:
        MissingAssetError: no such file. AssetFormatError: not a SpeechModule checkpoint.
    """
    from facelab.io.weights import constructor_arguments, read_checkpoint

    if not Path(path).is_file():
        raise MissingAssetError(
            f"{config_key} {path}: no such checkpoint (train one with `lightning-cli fit --config "
            "configs/dnpm_speech.yaml`)"
        )
    ckpt = read_checkpoint(path, what="SpeechModule checkpoint", config_key=config_key)
    hp = constructor_arguments(ckpt.get("hyper_parameters") or {})  # lightning-cli adds _class_path, ...
    if "coefficient_weight" not in hp or "state_dict" not in ckpt:
        raise AssetFormatError(f"{config_key} {path}: not a SpeechModule checkpoint (configs/dnpm_speech.yaml)")
    hp["wav2vec_path"] = None  # the checkpoint holds the encoder's weights; its architecture is wav2vec_config
    quiet = get_logger("dnpm.speech_model")
    level = quiet.level
    quiet.setLevel("ERROR")  # the "no pretrained weights" warning does not apply: the weights come next
    try:
        module = SpeechModule(**hp)
    finally:
        quiet.setLevel(level)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("bilinear.")]:
        raise AssetFormatError(
            f"{config_key} {path}: checkpoint does not match the network (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    return module.eval()
