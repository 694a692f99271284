"""DualStream's Facial Texture Dataset (FTD, paper §IV-A): image, unwrapped 3DMM albedo map, texture ground truth.

Each sample holds the face image ``I_o``, the unwrapped albedo map ``I_ua`` of its 3DMM albedo coefficients (BFM
UV layout: ``mean_albedo + coeffs @ albedo_basis`` per vertex, interpolated over the UV layout by
:class:`facelab.uv.UVMapper`) and the ground-truth albedo map ``I_a`` (the face's real texture in the same layout),
with the mask of texels the loss may use and the 68 landmarks (pixels) of the landmark branch.

Two sources:

* :class:`SyntheticTextureDataset` (the embedded default): BFM faces of the synthetic world
  (:class:`facelab.data.synthetic.SyntheticFaceDataset`) coloured by the procedural skin albedo
  (:class:`facelab.data.albedo.ProceduralAlbedo`: tone, freckles, pores, lips, brows, ...), a real texture that the
  linear basis cannot represent. Its ground truth is exact (the texture the image was rendered with). The albedo
  coefficients are what a 3DMM fit would give: the ridge-regularised least-squares projection of the true texture
  onto the albedo basis over the UV chart (:meth:`AlbedoMapper.fit`), so ``I_ua`` is the best *linear* albedo of
  the face (the paper's "linear 3DMM albedo map has limited expressive power"), the baseline the stream must beat.
* :class:`FittedTextureDataset` (real photos, as the paper builds FTD from 300W-LP): the output folder of
  ``facelab fit --model bfm --input PHOTOS --out DIR`` (:mod:`facelab.cli.fit`): per face the crop is re-cut from
  the source photo with the stored ``crop_matrix``, ``I_ua`` comes from the fitted albedo coefficients, the ground
  truth is the photo unwrapped into UV (``NAME_texture.png``) and the loss mask its visibility
  (``NAME_visibility.png``); the landmarks are the fitted mesh's 68 keypoints projected with the fitted camera.

:class:`TextureDataModule` serves either (``source: synthetic`` or the fit folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from facelab.data.sampler import ResumableDataLoader, resumable_train_loader
from facelab.data.synthetic import SceneConfig, SyntheticFaceDataset
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.log import get_logger
from facelab.morphable import MorphableModel, load_model
from facelab.render import PerspectiveCamera, WeakPerspectiveCamera, ndc_to_pixels
from facelab.rotations import axis_angle_to_matrix
from facelab.uv import UVMapper

__all__ = ["AlbedoMapper", "FittedTextureDataset", "SyntheticTextureDataset", "TextureBatch", "TextureDataModule",
           "TextureSample"]

log = get_logger(__name__)


@dataclass
class TextureSample:
    """One FTD sample (a batch prepends ``B``; :meth:`collate`).

    Attributes:
        image: (3, H, W) the face ``I_o`` in [0, 1].
        albedo_map: (3, S, S) ``I_ua``, the unwrapped linear 3DMM albedo of ``albedo`` (0 off the UV chart).
        texture: (3, S, S) ground truth ``I_a`` (0 where unknown).
        texture_mask: (1, S, S) texels with ground truth (UV chart; for photos also seen in the image).
        landmarks_pix: (68, 2) iBUG landmarks in image pixels ``(u, v)``.
        albedo: (K_alb,) the albedo coefficients behind ``albedo_map``.
    """

    image: Tensor
    albedo_map: Tensor
    texture: Tensor
    texture_mask: Tensor
    landmarks_pix: Tensor
    albedo: Tensor

    @classmethod
    def collate(cls, samples: list[TextureSample]) -> TextureBatch:
        return TextureBatch(**{f.name: torch.stack([getattr(s, f.name) for s in samples]) for f in fields(cls)})


@dataclass
class TextureBatch(TextureSample):
    """A collated :class:`TextureSample` (``B`` leading on every tensor)."""

    def to(self, *args, **kwargs) -> TextureBatch:
        return replace(self, **{f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)})

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]


class AlbedoMapper(nn.Module):
    """3DMM albedo coefficients <-> unwrapped UV albedo maps of one model.

    Args:
        model: a morphable model with an albedo basis and UVs (BFM).
        uv_size: side ``S`` of the maps.

    Shapes:
        ``forward(coeffs (B, K))`` -> (B, 3, S, S) in [0, 1] (0 off the chart); ``fit(texture (B, 3, S, S),
        mask (B|1, 1, S, S))`` -> (B, K).
    """

    def __init__(self, model: MorphableModel, uv_size: int) -> None:
        super().__init__()
        if not model.num_albedo or not model.has_uv:
            raise ValueError(f"{type(model).__name__} needs an albedo basis and a UV layout for DualStream's albedo "
                             "maps (use the BFM with BFM_UV.mat)")
        self.num_albedo, self.uv_size = int(model.num_albedo), int(uv_size)
        self.mapper = UVMapper(model.faces, model.uv, model.faces_uv, uv_size, num_verts=model.num_verts)
        v = model.num_verts
        self.register_buffer("mean_albedo", model.mean_albedo.view(1, v, 3).clone(), persistent=False)
        self.register_buffer("albedo_basis", model.albedo_basis.view(-1, v, 3).clone(), persistent=False)
        self._basis_maps: Tensor | None = None

    def vertex_albedo(self, coeffs: Tensor) -> Tensor:
        """(B, K) -> (B, V, 3) per-vertex albedo in [0, 1]."""
        if coeffs.dim() != 2 or coeffs.shape[1] != self.num_albedo:
            raise ValueError(f"albedo coefficients must be (B, {self.num_albedo}), got {tuple(coeffs.shape)}")
        flat = torch.addmm(self.mean_albedo.flatten(1), coeffs.to(self.mean_albedo), self.albedo_basis.flatten(1))
        return flat.view(coeffs.shape[0], -1, 3).clamp(0.0, 1.0)

    def forward(self, coeffs: Tensor) -> Tensor:
        return self.mapper.attribute_map(self.vertex_albedo(coeffs))

    def basis_maps(self) -> tuple[Tensor, Tensor]:
        """The mean map (3, S, S) and the basis maps (K, 3, S, S) (linear in the coefficients; cached)."""
        if self._basis_maps is None or self._basis_maps.device != self.mean_albedo.device:
            self._basis_maps = self.mapper.attribute_map(self.albedo_basis)
        return self.mapper.attribute_map(self.mean_albedo)[0], self._basis_maps

    @torch.no_grad()
    def fit(self, texture: Tensor, mask: Tensor | None = None, prior: float = 1.0) -> Tensor:
        """Ridge least squares ``min_c |M (mean + c B - texture)|^2 + prior |c|^2`` (coefficients in the basis'
        standard-deviation units, so ``prior`` is the Gaussian prior's weight per texel channel summed).

        Args:
            texture: (B, 3, S, S) target textures. mask: (B|1, 1, S, S) texels to fit (default: the UV chart).
            prior: ridge weight.

        Returns:
            (B, K) coefficients.
        """
        mean, basis = self.basis_maps()
        mask = self.mapper.mask.to(texture) if mask is None else mask.to(texture)
        a = basis.flatten(1).to(texture)  # (K, 3 S S)
        w = mask.expand(texture.shape[0], 3, -1, -1).flatten(1)  # (B, 3 S S)
        r = (texture - mean.to(texture)).flatten(1) * w
        gram = torch.einsum("kp,bp,lp->bkl", a, w, a) + prior * torch.eye(a.shape[0], dtype=a.dtype,
                                                                            device=a.device)
        return torch.linalg.solve(gram, r @ a.T)


class SyntheticTextureDataset(Dataset):
    """FTD on the synthetic world (see the module docstring): BFM faces with procedural skin textures.

    Args:
        num_samples: samples in the split. split: ``train`` | ``val`` | ``test`` (disjoint, deterministic).
        model_path: the BFM asset (``synthetic`` for the stand-in that ships ``BFM_UV.mat``).
        image_size: image side ``H``. uv_size: map side ``S``. camera: ``perspective`` (the paper's) or ``weak``.
        seed: dataset seed. scene: scene distributions (None: defaults with fewer occluders, the paper selects
            "rare occlusion and normal lighting"). albedo_prior: ridge weight of the coefficient fit.
        model: an already loaded BFM to share.
    """

    def __init__(self, num_samples: int = 1000, split: str = "train", model_path: str = "synthetic",
                 image_size: int = 256, uv_size: int = 256, camera: str = "perspective", seed: int = 0,
                 scene: SceneConfig | None = None, albedo_prior: float = 1.0,
                 model: MorphableModel | None = None) -> None:
        scene = scene if scene is not None else SceneConfig(occluder_prob=0.1)
        self.world = SyntheticFaceDataset(family="bfm", model_path=model_path, num_samples=num_samples, split=split,
                                          seed=seed, image_size=image_size, camera=camera, uv_size=uv_size,
                                          scene=scene, return_albedo=True, albedo_source="procedural",
                                          model=model, synthetic=str(model_path).startswith("synthetic"))
        self.model = self.world.model
        self.albedo = AlbedoMapper(self.model, uv_size)
        self.albedo_prior = float(albedo_prior)

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> TextureSample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[TextureSample]:
        faces = self.world.__getitems__(indices)
        texture = torch.stack([f.albedo_uv for f in faces])
        mask = self.albedo.mapper.mask
        with torch.no_grad():
            coeffs = self.albedo.fit(texture, mask, self.albedo_prior)
            albedo_map = self.albedo(coeffs)
        return [TextureSample(image=f.image, albedo_map=albedo_map[i], texture=texture[i] * mask[0],
                              texture_mask=mask[0].clone(), landmarks_pix=f.landmarks68_pix, albedo=coeffs[i])
                for i, f in enumerate(faces)]


def _read_png(path: Path, what: str) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise MissingAssetError(f"{path}: the {what} of this face is missing (was the folder written by "
                                "`facelab fit --model bfm`?)")
    try:
        return np.asarray(Image.open(path))
    except OSError as err:
        raise AssetFormatError(f"{path}: cannot read the {what}: {err}") from err


def _to_tensor(array: np.ndarray) -> Tensor:
    x = torch.from_numpy(np.array(array, copy=True)).float() / 255.0
    return x[None] if x.dim() == 2 else x.permute(2, 0, 1)[:3]


class FittedTextureDataset(Dataset):
    """FTD on real photos: the output folder of ``facelab fit --model bfm`` (see the module docstring).

    Faces whose files are missing or unreadable are skipped with their reason (``self.skipped``, logged); a folder
    without ``report.json`` or without a usable face is an error.

    Args:
        fit_dir: the ``--out`` folder of ``facelab fit --model bfm``.
        model_path: the BFM the fit used (``synthetic`` for the stand-in).
        image_size: crop side fed to the network (the stored crop is resized).
        uv_size: map side (the stored textures are resized; must match the network).
        model: an already loaded BFM to share.
    """

    def __init__(self, fit_dir: str, model_path: str = "synthetic", image_size: int = 256, uv_size: int = 256,
                 model: MorphableModel | None = None) -> None:
        self.root = Path(fit_dir).expanduser()
        report_path = self.root / "report.json"
        if not report_path.is_file():
            raise MissingAssetError(f"{report_path}: no fit report; build the texture dataset of your photos with "
                                    f"`facelab fit --model bfm --input PHOTOS --out {self.root}` first")
        try:
            report = json.loads(report_path.read_text())
        except json.JSONDecodeError as err:
            raise AssetFormatError(f"{report_path}: not a facelab fit report ({err})") from err
        self.model = model if model is not None else load_model("bfm", model_path)
        self.albedo = AlbedoMapper(self.model, uv_size)
        self.image_size, self.uv_size = int(image_size), int(uv_size)
        self.faces, self.skipped = [], []
        for entry in report.get("fitted", []):
            try:
                self.faces.append(self._check_face(entry))
            except (MissingAssetError, AssetFormatError) as err:
                self.skipped.append({"face": entry.get("name"), "reason": str(err)})
                log.warning("FTD: skipped %s: %s", entry.get("name"), err)
        if not self.faces:
            raise AssetFormatError(f"{self.root}: no usable fitted face ({len(self.skipped)} skipped: "
                                   f"{[s['reason'] for s in self.skipped[:3]]})")

    def _check_face(self, entry: dict) -> dict:
        name = entry["name"]
        params = self.root / f"{name}_params.npz"
        if not params.is_file():
            raise MissingAssetError(f"{params}: missing")
        source = Path(entry["input"])
        if not source.is_file():
            raise MissingAssetError(f"{source}: the source photo of {name} is gone (the crop is re-cut from it)")
        with np.load(params) as npz:
            if "albedo" not in npz.files:
                raise AssetFormatError(f"{params}: no albedo coefficients (fit with --model bfm, which has an "
                                       "albedo basis)")
            if npz["albedo"].shape != (self.albedo.num_albedo,):
                raise AssetFormatError(f"{params}: albedo has shape {npz['albedo'].shape}, the model has "
                                       f"{self.albedo.num_albedo} components (same --model-path as the fit?)")
        return {"name": name, "source": source, "params": params}

    def __len__(self) -> int:
        return len(self.faces)

    def _landmarks(self, npz, crop_size: int) -> Tensor:
        m = self.model
        params = m.make_params(torch.from_numpy(npz["identity"]).float()[None],
                               torch.from_numpy(npz["expression"]).float()[None])
        lmk = m(params).landmarks68
        rot = axis_angle_to_matrix(torch.from_numpy(npz["rotation"]).float()[None])
        lmk = lmk @ rot.transpose(1, 2)
        cam = torch.from_numpy(npz["camera"]).float()[None]
        if cam.shape[1] == 3:
            camera = WeakPerspectiveCamera.from_params(cam)
        else:
            camera = PerspectiveCamera(focal=cam[:, 0:2], principal_point=cam[:, 2:4], image_size=(crop_size,
                                       crop_size), rotation=torch.eye(3)[None], translation=cam[:, 4:7])
        return ndc_to_pixels(camera.project(lmk), crop_size)[0] * (self.image_size / crop_size)

    def __getitem__(self, index: int) -> TextureSample:
        import cv2

        face = self.faces[index]
        from facelab.data.image_io import read_image

        with np.load(face["params"]) as npz:
            crop_size = int(np.asarray(npz["image_size"]).reshape(-1)[0])
            crop = cv2.warpAffine(read_image(face["source"]), npz["crop_matrix"][:2].astype(np.float64),
                                  (crop_size, crop_size), flags=cv2.INTER_LINEAR)
            coeffs = torch.from_numpy(npz["albedo"]).float()[None]
            landmarks = self._landmarks(npz, crop_size)
        image = F.interpolate(_to_tensor(crop)[None], size=(self.image_size,) * 2, mode="bilinear",
                              align_corners=False, antialias=True)[0]
        name = face["name"]
        texture = _to_tensor(_read_png(self.root / f"{name}_texture.png", "unwrapped texture"))
        vis = _to_tensor(_read_png(self.root / f"{name}_visibility.png", "visibility map"))[:1]
        size = (self.uv_size, self.uv_size)
        if texture.shape[1:] != size:
            texture = F.interpolate(texture[None], size=size, mode="bilinear", align_corners=False)[0]
            vis = F.interpolate(vis[None], size=size, mode="nearest")[0]
        mask = (vis > 0.5).float() * self.albedo.mapper.mask[0]
        with torch.no_grad():
            albedo_map = self.albedo(coeffs)[0]
        return TextureSample(image=image, albedo_map=albedo_map, texture=texture * mask, texture_mask=mask,
                             landmarks_pix=landmarks, albedo=coeffs[0])


class TextureDataModule(LightningDataModule):
    """Train/val loaders of the FTD (the texture stage's data).

    Args:
        source: ``"synthetic"`` (:class:`SyntheticTextureDataset`) or a ``facelab fit --model bfm`` output folder
            (:class:`FittedTextureDataset`; ``val_fit_dir`` for validation, else the last ``num_val`` faces).
        model_path: the BFM asset.
        image_size, uv_size: sides of ``I_o`` and of the maps.
        camera: synthetic camera (``perspective``).
        num_train, num_val: synthetic split sizes (real: ``num_val`` faces held out when no ``val_fit_dir``).
        batch_size, num_workers, seed: loader settings (the paper's batch is 8).
        scene: synthetic scene distributions. albedo_prior: ridge weight of the synthetic coefficient fit.
        val_fit_dir: a separate fit folder for validation (real data).
    """

    def __init__(self, source: str = "synthetic", model_path: str = "synthetic", image_size: int = 256,
                 uv_size: int = 256, camera: str = "perspective", num_train: int = 40000, num_val: int = 500,
                 batch_size: int = 8, num_workers: int = 2, seed: int = 0, scene: SceneConfig | None = None,
                 albedo_prior: float = 1.0, val_fit_dir: str | None = None) -> None:
        super().__init__()
        self.scene = SceneConfig(**scene) if isinstance(scene, dict) else scene
        self.save_hyperparameters(ignore=["scene"])
        self.hparams["scene"] = None if self.scene is None else {f.name: getattr(self.scene, f.name)
                                                                 for f in fields(self.scene)}
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        if hp.source == "synthetic":
            train = SyntheticTextureDataset(hp.num_train, "train", hp.model_path, hp.image_size, hp.uv_size,
                                            hp.camera, hp.seed, self.scene, hp.albedo_prior)
            val = SyntheticTextureDataset(hp.num_val, "val", hp.model_path, hp.image_size, hp.uv_size, hp.camera,
                                          hp.seed, self.scene, hp.albedo_prior, model=train.model)
        else:
            full = FittedTextureDataset(hp.source, hp.model_path, hp.image_size, hp.uv_size)
            if hp.val_fit_dir:
                train, val = full, FittedTextureDataset(hp.val_fit_dir, hp.model_path, hp.image_size, hp.uv_size,
                                                        model=full.model)
            else:
                n_val = min(hp.num_val, max(len(full) - 1, 0))
                idx = list(range(len(full)))
                train = torch.utils.data.Subset(full, idx[: len(full) - n_val])
                val = torch.utils.data.Subset(full, idx[len(full) - n_val:])
        self.datasets = {"train": train, "val": val}

    def _kwargs(self) -> dict:
        w = self.hparams.num_workers
        return dict(batch_size=self.hparams.batch_size, num_workers=w, collate_fn=TextureSample.collate,
                    persistent_workers=w > 0)

    def train_dataloader(self) -> ResumableDataLoader:
        self.setup("fit")
        return resumable_train_loader(self.datasets["train"], self, self.hparams.seed, **self._kwargs())

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        return DataLoader(self.datasets["val"], shuffle=False, **self._kwargs())
