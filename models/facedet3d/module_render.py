"""``RenderModule``: the training recipe of FaceDet3D's rendering network R (paper §3.3.1), trained apart from DetH.

Per batch (manual optimisation, two guarded steps):

1. R step (NTex_phi, g_theta, g_omega and f_theta; discriminator frozen): the neural texture of T(I_x) once
   (Eq. 10), G_P rasterized once, then two renders: with the image's own details D(I_x) (photometric loss,
   expression adversarial + AU loss, Eq. 17/19) and with the fake details D(I_z*) of the next face in the batch
   (AugW, Eq. 14-15 against I*_x, and DSL, Eq. 16, against Shading*). A batch of one uses the zero map as fake.
2. D step: non-saturating loss on the real image vs the render composited over the image's background, the AU
   regression on reals (Eq. 18) and lazy R1 (:class:`facelab.losses.LazyR1`).

Data: any batch :func:`render_batch` understands: the Eq. 1 inputs of :mod:`facedet3d.data`
(``FaceDetailDataModule`` with ``pairs: false``: the synthetic world or a ``facelab prepare`` cache of photos) or the
plain BFM synthetic world's :class:`facelab.data.synthetic.SyntheticFaceBatch`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from facedet3d.render_losses import (
    RenderLossWeights,
    ShadingPredictor,
    au_loss,
    augmented_image,
    augmented_wrinkle_loss,
    detailed_shading_loss,
    discriminator_logits,
    render_photometric_loss,
)
from facedet3d.renderer import DetailRasterizer, NeuralRender, RenderingNetwork, RenderInputs, neural_render
from facelab.data.albedo import UNITS_TO_METRES
from facelab.losses import LazyR1, discriminator_loss, generator_loss
from facelab.morphable import load_model
from facelab.nn import UNetDiscriminator
from facelab.render import rasterize
from facelab.training import GuardedStep, ImageGridLogger, tensorboard_writer
from facelab.uv import UVMapper
from facelab.uv.texture import unwrap_texture

__all__ = ["LoadedRender", "RenderBatch", "RenderModule", "au_bars", "detail_to_rgb", "fake_details", "load_render",
           "render_batch"]

_OCCLUDER = 10  # facelab.data.synthetic.SEGMENTATION_LABELS.index("occluder")


@dataclass
class RenderBatch:
    """One batch for R.

    Attributes:
        image: (B, 3, H, W) I_x in [0, 1].
        inputs: R's inputs with ``action_units`` = the image's own AU x.
        detail: (B, 1, S_d, S_d) D(I_x), UV displacement in mm.
        face_mask: (B, 1, H, W) pixels the photometric / AugW losses compare; None: the rendered face.
        skin_mask: (B, 1, H, W) the DSL region from the data (intersected with the model's skin faces); None: those
            faces alone.
    """

    image: Tensor
    inputs: RenderInputs
    detail: Tensor
    face_mask: Tensor | None = None
    skin_mask: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]


def render_batch(batch, model, uv_mapper: UVMapper) -> RenderBatch:
    """A :class:`RenderBatch` from the data FaceDet3D trains on.

    * :class:`facedet3d.data.FaceDetailBatch` (the Eq. 1 inputs: synthetic world, ``facelab prepare`` caches of
      photos): G_P is ``batch.proxy_mesh(model)`` with its BFM albedo; T(I_x), D(I_x), the skin mask as given. A
      :class:`facedet3d.data.DetailPairBatch` uses its source faces.
    * :class:`facelab.data.synthetic.SyntheticFaceBatch` of the BFM family (``return_vertices``, ``return_albedo``):
      T(I_x) is unwrapped from the image through the posed mesh with the occlusion test (what ``facelab fit``
      writes for a photo), the face mask drops occluders.
    """
    if isinstance(batch, RenderBatch):
        return batch
    batch = getattr(batch, "source", batch)  # a DetailPairBatch: R learns from the source faces
    if hasattr(batch, "texture_mask"):  # facedet3d.data.FaceDetailBatch
        mesh = batch.proxy_mesh(model)
        texture = batch.texture * batch.texture_mask
        inputs = RenderInputs(texture=texture, verts=mesh.verts, camera=batch.camera_object(), sh_coeffs=batch.sh,
                              albedo=mesh.albedo, action_units=batch.action_units)
        return RenderBatch(image=batch.image, inputs=inputs, detail=batch.detail * batch.detail_mask,
                           skin_mask=batch.skin_mask)
    missing = [k for k in ("verts", "albedo_uv", "displacement_uv") if getattr(batch, k, None) is None]
    if missing:
        raise ValueError(f"FaceDet3D's renderer needs {missing} in the batch: use facedet3d.data.FaceDetailDataModule "
                         f"(pairs: false), or the BFM synthetic world with data.init_args.return_vertices/"
                         f"return_albedo: true")
    camera = batch.camera_object()
    verts = batch.verts
    verts_ndc = camera.view_to_ndc(camera.to_view(verts))
    frags = rasterize(verts_ndc, uv_mapper.faces, batch.image.shape[-1], perspective_correct=camera.is_perspective)
    texture = unwrap_texture(batch.image, verts_ndc, uv_mapper, frags, perspective=camera.is_perspective).texture
    mask = batch.render_mask * (batch.segmentation != _OCCLUDER).unsqueeze(1).to(batch.render_mask.dtype)
    inputs = RenderInputs(texture=texture, verts=verts, camera=camera, sh_coeffs=batch.sh_coeffs,
                          albedo=batch.albedo_uv, action_units=batch.action_units)
    return RenderBatch(image=batch.image, inputs=inputs, detail=batch.displacement_uv, face_mask=mask)


def r1_logits(out) -> list[Tensor]:
    """The logits R1 differentiates: the global one and the *mean* per-pixel logit (a sum over pixels would scale
    the penalty with the image area)."""
    return [out.global_logit, out.pixel_logits.mean(dim=(1, 2, 3))]


def fake_details(detail: Tensor) -> Tensor:
    """D(I_z*) for AugW: each face gets the details of the next face in the batch (zeros for a batch of one)."""
    return detail.roll(1, dims=0) if detail.shape[0] > 1 else torch.zeros_like(detail)


def detail_to_rgb(detail: Tensor, size: int, limit_mm: float = 1.0) -> Tensor:
    """(B, 1, S_d, S_d) mm -> (B, 3, size, size) for image grids: grooves blue, bulges red, 0 gray."""
    d = F.interpolate(detail, size=(size, size), mode="area").clamp(-limit_mm, limit_mm) / limit_mm
    return torch.cat([0.5 + 0.5 * d.clamp(min=0), 0.5 - 0.25 * d.abs(), 0.5 + 0.5 * (-d).clamp(min=0)], dim=1)


def au_bars(action_units: Tensor, size: int) -> Tensor:
    """(B, A) in [0, 1] -> (B, 3, size, size): one bar per AU (the "target AU" panel of the grids)."""
    b, a = action_units.shape
    rows = torch.linspace(1, 0, size, device=action_units.device)[:, None]  # top = 1
    bars = (rows <= action_units.clamp(0, 1)[:, None, :]).float()  # (B, size, A)
    img = F.interpolate(bars[:, None], size=(size, size), mode="nearest")
    return torch.cat([img * 0.9, img * 0.6, img * 0.2], dim=1) + 0.05


class RenderModule(LightningModule):
    """FaceDet3D's rendering network R and its expression discriminator, trained on images with known details.

    Args:
        network: NTex_phi + Tex2Im (:class:`facedet3d.renderer.RenderingNetwork`; ``branches`` double / single;
            ordinary rendering has nothing to train and is an evaluation mode).
        discriminator: D_Exp^RGB, a U-Net discriminator with an ``au`` head (Eq. 17).
        shading_predictor: f_theta of the DSL (Eq. 16).
        loss_weights: :class:`facedet3d.render_losses.RenderLossWeights`.
        model_path: the BFM asset (``synthetic`` for the stand-in).
        image_size: render side (the data's image size).
        texture_size: UV side of T(I_x) (the data's ``uv_size``).
        detail_pool: box filter of the detail map before shading (texels much finer than pixels).
        laplacian_levels: pyramid levels of the AugW and DSL Laplacian losses.
        r1_gamma: R1 weight gamma. r1_interval: lazy R1 cadence (D steps).
        lr: Adam lr of R (and f_theta). d_lr: Adam lr of D. betas: Adam betas of both.
        grad_clip: gradient-norm clip of R (0: none).
        log_images_every_n_steps: batches between TensorBoard grids (0: never). max_logged_images: grid columns.
    """

    def __init__(
        self,
        network: RenderingNetwork | None = None,
        discriminator: UNetDiscriminator | None = None,
        shading_predictor: ShadingPredictor | None = None,
        loss_weights: RenderLossWeights | None = None,
        model_path: str = "synthetic",
        image_size: int = 256,
        texture_size: int = 256,
        detail_pool: int = 1,
        laplacian_levels: int = 4,
        r1_gamma: float = 10.0,
        r1_interval: int = 16,
        lr: float = 1e-4,
        d_lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        grad_clip: float = 0.0,
        log_images_every_n_steps: int = 500,
        max_logged_images: int = 8,
    ) -> None:
        super().__init__()
        if isinstance(loss_weights, dict):  # hparams of a checkpoint keep the weights as a plain dict
            loss_weights = RenderLossWeights(**loss_weights)
        self.automatic_optimization = False
        self.network = network if network is not None else RenderingNetwork()
        if self.network.branches == "ordinary":
            raise ValueError("network.init_args.branches='ordinary' (BFM albedo x SH) has nothing to train: evaluate "
                             "it with `facelab evaluate --method facedet3d --init --render-mode ordinary`")
        self.discriminator = discriminator if discriminator is not None else UNetDiscriminator(3, heads={"au": 17})
        if "au" not in self.discriminator.heads:
            raise ValueError("the expression discriminator needs an 'au' head (heads: {au: 17}), paper Eq. 17")
        self.shading_predictor = shading_predictor if shading_predictor is not None else ShadingPredictor()
        self.weights = loss_weights if loss_weights is not None else RenderLossWeights()
        self.model = load_model("bfm", model_path)
        self.rasterizer = DetailRasterizer.from_model(
            self.model, image_size=image_size, detail_pool=detail_pool,
            displacement_scale=1e-3 / UNITS_TO_METRES[self.model.units])
        self.uv_mapper = UVMapper(self.model.faces, self.model.uv, self.model.faces_uv, texture_size,
                                  num_verts=self.model.num_verts)
        self.laplacian_levels = int(laplacian_levels)
        self.r1 = LazyR1(r1_gamma, r1_interval)
        self.lr, self.d_lr, self.betas, self.grad_clip = lr, d_lr, tuple(betas), grad_clip
        self.image_grid = ImageGridLogger(log_images_every_n_steps, max_logged_images)
        self.guarded_step = GuardedStep.for_lightning(self, name="FaceDet3D R", logger=__name__)
        self._batches_seen = 0
        self.save_hyperparameters(ignore=["network", "discriminator", "shading_predictor", "loss_weights"])
        self.save_hyperparameters({"loss_weights": asdict(self.weights), "network_config": self.network.config})

    # ---------------------------------------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        """Adam for R (+ f_theta) and for D (StyleGAN2's lazy-R1 correction on D's lr and betas)."""
        c = self.r1.optimizer_ratio()
        gen = list(self.network.parameters()) + list(self.shading_predictor.parameters())
        opt_r = torch.optim.Adam(gen, lr=self.lr, betas=self.betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.d_lr * c,
                                 betas=tuple(b ** c for b in self.betas))
        return [opt_r, opt_d]

    # ---------------------------------------------------------------------------------------------- recipe
    def prepare(self, batch) -> RenderBatch:
        """The batch as :class:`RenderBatch` (T(I_x) unwrapped, masks, AUs)."""
        with torch.no_grad():
            return render_batch(batch, self.model, self.uv_mapper)

    def render_pair(self, rb: RenderBatch, fake: Tensor) -> tuple[NeuralRender, NeuralRender]:
        """Renders with the true details D(I_x) and with the fake details (one NTM, one G_P raster for both)."""
        ntm = self.network.neural_texture(rb.inputs.texture)
        proxy = self.rasterizer(rb.inputs) if self.network.branches == "double" else None
        real = neural_render(self.network, self.rasterizer, rb.inputs, rb.detail, ntm=ntm, proxy=proxy)
        swapped = neural_render(self.network, self.rasterizer, rb.inputs, fake, ntm=ntm, proxy=proxy)
        return real, swapped

    @staticmethod
    def face_mask(rb: RenderBatch, render: NeuralRender) -> Tensor:
        """The compared pixels: the data's face mask, else the rendered face."""
        return render.mask if rb.face_mask is None else rb.face_mask

    @staticmethod
    def composite(render: NeuralRender, image: Tensor) -> Tensor:
        """The render over the image's background (what D sees)."""
        return render.image * render.mask + image * (1 - render.mask)

    def render_losses(self, rb: RenderBatch, real: NeuralRender, swapped: NeuralRender) -> tuple[dict, Tensor]:
        """R's loss terms (and I*_x)."""
        mask = self.face_mask(rb, real)
        image_fake = augmented_image(rb.image, real.detailed.shading, swapped.detailed.shading, mask)  # Eq. 14
        skin = self.rasterizer.skin_mask(swapped.detailed) * mask
        if rb.skin_mask is not None:
            skin = skin * rb.skin_mask
        losses = {
            "photometric": render_photometric_loss(real.image, rb.image, mask),
            "augw": augmented_wrinkle_loss(swapped.image, image_fake, mask, self.laplacian_levels),  # Eq. 15
            "dsl": detailed_shading_loss(self.shading_predictor, swapped.image, swapped.detailed.shading, skin,
                                         self.laplacian_levels),  # Eq. 16
        }
        if self.weights.adversarial or self.weights.au:
            out = self.discriminator(self.composite(real, rb.image))  # Eq. 17
            losses["adversarial"] = generator_loss(discriminator_logits(out), "non_saturating")
            losses["au"] = au_loss(out.heads["au"], rb.inputs.action_units)  # Eq. 19
        return losses, image_fake

    def discriminator_losses(self, rb: RenderBatch, fake_image: Tensor) -> dict:
        """D's terms: non-saturating realism, AU regression on reals (Eq. 18), lazy R1."""
        real_out = self.discriminator(rb.image)
        fake_out = self.discriminator(fake_image.detach())
        logits = lambda x: r1_logits(self.discriminator(x))  # noqa: E731
        return {"d_adversarial": discriminator_loss(discriminator_logits(real_out), discriminator_logits(fake_out),
                                                    "non_saturating"),
                "d_au": au_loss(real_out.heads["au"], rb.inputs.action_units),
                "r1": self.r1(logits, rb.image)}

    def training_step(self, batch, batch_idx: int) -> None:
        rb = self.prepare(batch)
        opt_r, opt_d = self.optimizers()
        self.discriminator.requires_grad_(False)
        real, swapped = self.render_pair(rb, fake_details(rb.detail))
        losses, image_fake = self.render_losses(rb, real, swapped)
        self.discriminator.requires_grad_(True)
        self.guarded_step(opt_r, losses, self.weights, self.grad_clip)
        d_losses = {}
        if self.weights.d_adversarial or self.weights.d_au or self.weights.r1:
            d_losses = self.discriminator_losses(rb, self.composite(real, rb.image))
            self.guarded_step(opt_d, d_losses, self.weights)
        self._log_train({**losses, **d_losses}, rb.batch_size)
        writer = tensorboard_writer(self.logger, self.global_rank)
        if self.image_grid.due(self._batches_seen, writer):
            self.image_grid.log(writer, "train/render", self.panels(rb, real, swapped, image_fake), self.global_step)
        self._batches_seen += 1

    def _log_train(self, losses: dict[str, Tensor], batch_size: int) -> None:
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value.detach(), on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("train/skipped_steps", float(self.guarded_step.skipped), on_step=True, on_epoch=False,
                 batch_size=batch_size)

    def panels(self, rb: RenderBatch, real: NeuralRender, swapped: NeuralRender, image_fake: Tensor) -> list[Tensor]:
        """Grid rows: input, target AU, detail map, detailed shading, render; fake details, I*_x, their render."""
        size = rb.image.shape[-1]
        shade = lambda r: r.detailed.shading.clamp(0, 2) / 2  # noqa: E731
        return [rb.image, au_bars(rb.inputs.action_units, size), detail_to_rgb(rb.detail, size), shade(real),
                self.composite(real, rb.image), detail_to_rgb(fake_details(rb.detail), size), image_fake,
                self.composite(swapped, rb.image)]

    def validation_step(self, batch, batch_idx: int) -> None:
        from facedet3d.evaluate import detail_response

        rb = self.prepare(batch)
        real, swapped = self.render_pair(rb, fake_details(rb.detail))
        mask = self.face_mask(rb, real)
        image_fake = augmented_image(rb.image, real.detailed.shading, swapped.detailed.shading, mask)
        metrics = {"photometric": render_photometric_loss(real.image, rb.image, mask),
                   **detail_response(real.image, swapped.image, rb.image, image_fake, mask)}
        for name, value in metrics.items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=rb.batch_size)



@dataclass
class LoadedRender:
    """R of a :class:`RenderModule` checkpoint: the network (eval mode), its rasterizer and the BFM it renders."""

    network: RenderingNetwork
    rasterizer: DetailRasterizer
    model: object
    image_size: int
    texture_size: int


def load_render(path, device: str | torch.device = "cpu", image_size: int | None = None) -> LoadedRender:
    """Load R from a ``RenderModule`` checkpoint (``torch.load(weights_only=True)``).

    Args:
        path: the checkpoint (``configs/facedet3d_render.yaml`` runs write them).
        image_size: render side (default: the training one; the networks are fully convolutional).

    Raises:
        facelab.errors.MissingAssetError: no such file. AssetFormatError: not a RenderModule checkpoint.
    """
    from facelab.errors import AssetFormatError
    from facelab.io.weights import load_state_dict_strict, read_checkpoint

    ckpt = read_checkpoint(path, what="FaceDet3D renderer checkpoint (configs/facedet3d_render.yaml)",
                           config_key="--render")
    hp = dict(ckpt.get("hyper_parameters", {}))
    if "network_config" not in hp:
        raise AssetFormatError(f"{path} is not a FaceDet3D RenderModule checkpoint (no network_config in its "
                               f"hyper-parameters): give --render a checkpoint of configs/facedet3d_render.yaml")
    network = RenderingNetwork(**hp["network_config"])
    state = {k[len("network."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("network.")}
    load_state_dict_strict(network, state, path, hint="a FaceDet3D RenderModule checkpoint")
    model = load_model("bfm", hp.get("model_path", "synthetic"))
    size = int(image_size or hp.get("image_size", 256))
    rasterizer = DetailRasterizer.from_model(model, image_size=size, detail_pool=int(hp.get("detail_pool", 1)),
                                             displacement_scale=1e-3 / UNITS_TO_METRES[model.units])
    return LoadedRender(network.to(device).eval(), rasterizer.to(device), model.to(device).eval(), size,
                        int(hp.get("texture_size", 256)))
