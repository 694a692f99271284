"""``facelab reconstruct --method dnpm``: a detailed 3D face from a (degraded) photo (DNPM paper §IV-B, Eq. 2-4, 11).

    facelab reconstruct --method dnpm --ckpt RESTORE.ckpt --input PHOTOS --out DIR
                        [--regressor-ckpt REGRESSOR.ckpt] [--restore encoder|projector] [--degrade] ...

The core command detects and crops every face (:mod:`facelab.cli.reconstruct`; photos without a face are skipped
and listed in ``report.json``); :class:`DnpmReconstructor` then runs the paper's chain on each crop:

1. **bilinear fit** ("3D landmarks on the bilinear face model are iteratively aligned with the estimated 2D
   landmarks"): mediapipe's 478 landmarks of the crop, then the core landmark fitting
   (:class:`facelab.fitting.MorphableFitter`, weak perspective, no photometric stage) of identity, expression and
   head pose -> the proxy mesh ``V_p = C_r x w_id x w_exp`` (Eq. 3). A crop where mediapipe finds no face mesh is
   skipped (``no_landmarks``).
2. **regressor** (the paper's pix2pixHD on FaceScape images; here :class:`dnpm.module_restore.RegressorModule`):
   the crop is resampled into the regressor's training frame (its renders frame the bilinear mean head frontally:
   :class:`dnpm.restore_data.FaceRenderer`) through the fitted pose and camera, converted to gray and cut out by the
   fitted proxy (the renders are gray faces on black), optionally degraded as Table III (``--degrade``: the
   checkpoint's 64^2 + blur), and mapped to the blurry UV displacement ``I_low``.
3. **restoration**: ``--restore encoder`` (default), E_deg: ``I_gen = G(E_deg(I_low) + w_mean)`` (Eq. 11);
   ``--restore projector``, the optimisation baseline of Tables II / III (PULSE-like GAN inversion of ``I_low`` in
   the generator's w+, :func:`dnpm.projector.project`, constant noise so the code alone defines the map).
4. **detail**: ``V_h = V_p + T'(s I_gen)`` (Eq. 2, 4): the restored map sampled at the vertex UVs of the
   midpoint-subdivided proxy, each vertex moved along its normal (:class:`facelab.uv.DisplacementMapper`, as
   :class:`dnpm.detailed3dmm.Detailed3DMM`).

Written per face ``NAME = <stem>_face<k>`` (besides the core's ``NAME_params.npz/.json`` with ``identity``,
``expression``, ``global_pose``, ``ws`` and the camera, and ``<stem>_overlay.png``):

* ``NAME_proxy.obj`` (``V_p``) and ``NAME_detailed.obj`` (``V_h``, subdivided), both with UVs, in millimetres in the
  model frame rotated by ``global_pose`` about the origin (so the camera of the parameters maps them onto the crop);
* ``NAME_displacement.png`` / ``NAME_displacement_low.png``: ``I_gen`` and ``I_low`` as 16-bit PNGs in FaceScape's
  encoding (``32768 + 32768 mm / 0.914``, as ``facelab detail``), ``NAME_displacement.npy`` /
  ``NAME_displacement_low.npy`` the same maps as float32 millimetres, ``NAME_displacement_color.png`` /
  ``NAME_displacement_low_color.png`` their colour previews;
* ``NAME_regressor_input.png``: what the regressor saw; ``NAME_overlay.png``: the detailed mesh rendered over the
  crop.

Checkpoints: ``--ckpt`` is a :class:`dnpm.module_restore.RestoreModule` checkpoint. One trained with ``input:
photos`` (Table III) carries its frozen regressor, so it is the only file needed; one trained with ``input: maps``
(Table II) needs ``--regressor-ckpt`` (a RegressorModule checkpoint, which also overrides a carried one). The
bilinear model is ``--model-path``, else the regressor's ``model_path``; its UV layout must be the maps'.

Shapes: ``B`` faces, ``S`` crop side, ``R`` regressor input side, ``M`` map side, ``V`` / ``V'`` proxy / subdivided
vertices, ``N`` latents, ``D`` w size.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnpm.detail import encode_facescape_png
from dnpm.detailed3dmm import bilinear_model, colorize_displacement, synthesize
from dnpm.module_restore import RestoreModule, _span, load_regressor, load_restorer
from dnpm.projector import Projector, ProjectorSettings
from dnpm.restore_data import Degradation, FaceRenderer
from dnpm.restore_networks import restore
from facelab.data.image_io import UnusableFacesError
from facelab.errors import AssetFormatError
from facelab.fitting import FitResult, FitSchedule, FitTargets, MorphableFitter
from facelab.log import warn_missing_weights
from facelab.morphable import BilinearParams
from facelab.morphable.base import MeshOutput
from facelab.nn.stylegan2 import CheckpointMismatchError
from facelab.reconstruction import FaceEncoding, MeshTopology, Reconstruction, region_topology
from facelab.render import MeshRenderer, WeakPerspectiveCamera, axis_angle_to_matrix, shape_lights
from facelab.uv import DisplacementMapper
from facelab.viz import blend

__all__ = ["RESTORE_MODES", "DnpmParams", "DnpmReconstructor", "add_arguments"]

#: ``--restore``: E_deg (Eq. 11) or the projector baseline (Tables II / III).
RESTORE_MODES = ("encoder", "projector")
#: Gray level of the shape renders (the regressor's renders use the same).
RENDER_ALBEDO = 0.75


@dataclass
class DnpmParams(BilinearParams):
    """A reconstructed face: the bilinear fit and the w+ code of its restored displacement map.

    Attributes:
        identity: (B, K) the fitted FaceScape identity offsets (:class:`facelab.morphable.BilinearParams`).
        expression: (B, 51) the fitted blendshape weights.
        global_pose: (B, 3) axis-angle head rotation about the model origin (the fit's; the synthetic world's name).
        ws: (B, N, D) the w+ code of ``I_gen`` (Eq. 11: ``E_deg(I_low) + w_mean``, or the projector's).
    """

    global_pose: Tensor | None = None
    ws: Tensor | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The method options of ``facelab reconstruct --method dnpm``."""
    parser.add_argument(
        "--regressor-ckpt",
        default=None,
        help="a RegressorModule checkpoint (configs/dnpm_regressor.yaml): needed with a restore checkpoint trained "
        "on maps (input: maps); overrides the regressor an input: photos checkpoint carries",
    )
    parser.add_argument(
        "--restore",
        choices=RESTORE_MODES,
        default="encoder",
        help="encoder: E_deg (Eq. 11); projector: the optimisation baseline (PULSE-like w+ inversion of I_low)",
    )
    parser.add_argument("--projector-steps", type=int, default=500, help="--restore projector: optimisation steps")
    parser.add_argument(
        "--projector-lpips-weights",
        default=None,
        help="--restore projector: torchvision AlexNet weights (alexnet-owt-7be5be79.pth) for its LPIPS term; "
        "without them the projector fits the pixel term alone",
    )
    parser.add_argument(
        "--fit-iterations",
        type=int,
        nargs=2,
        default=[50, 200],
        metavar=("RIGID", "LMK"),
        help="iteration budgets of the bilinear fit's rigid and landmark stages",
    )
    parser.add_argument(
        "--crop-size", type=int, default=256, help="crop side (px) for mediapipe, the fit and the overlay"
    )
    parser.add_argument("--subdivisions", type=int, default=1, help="midpoint subdivisions of the detailed mesh")
    parser.add_argument(
        "--degrade",
        action="store_true",
        help="degrade the regressor input as the checkpoint's Table III photos (e.g. 64^2 + blur) first: the "
        "degraded-image setting from a clean photo",
    )


def _options(options: argparse.Namespace | None) -> argparse.Namespace:
    """``options`` over the defaults of :func:`add_arguments`, checked."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    merged = vars(parser.parse_args([]))
    merged.update({k: v for k, v in vars(options or argparse.Namespace()).items() if k in merged})
    o = argparse.Namespace(**merged)
    if o.restore not in RESTORE_MODES:
        raise ValueError(f"--restore must be one of {', '.join(RESTORE_MODES)}, got {o.restore!r}")
    if o.projector_steps < 1:
        raise ValueError(f"--projector-steps must be >= 1, got {o.projector_steps}")
    if len(o.fit_iterations) != 2 or min(o.fit_iterations) < 0 or o.fit_iterations[1] < 1:
        raise ValueError(f"--fit-iterations needs RIGID >= 0 and LMK >= 1, got {o.fit_iterations}")
    if o.crop_size < 64:
        raise ValueError(f"--crop-size must be >= 64 (mediapipe needs the face at a usable size), got {o.crop_size}")
    if not 0 <= o.subdivisions <= 3:
        raise ValueError(f"--subdivisions must be in 0..3, got {o.subdivisions}")
    return o


def _regressor(restorer: RestoreModule, path: str | None) -> tuple[nn.Module, dict[str, Any], str]:
    """The regressor (frozen), its hyper-parameters with ``map_unit_mm``, and where it came from."""
    if path is not None:
        net, hp, unit = load_regressor(path, config_key="--regressor-ckpt")
        source = str(path)
    elif restorer.regressor is not None:
        net, hp = restorer.regressor, dict(restorer.hparams["regressor"])
        unit, source = restorer.regressor_unit_mm, "carried by --ckpt"
    else:
        raise ValueError(
            "--ckpt is a restore checkpoint trained on degraded maps (input: maps, Table II): it carries no "
            "image -> UV regressor; give --regressor-ckpt REGRESSOR.ckpt (configs/dnpm_regressor.yaml), or use a "
            "checkpoint trained with input: photos (Table III)"
        )
    if int(hp["resolution"]) != restorer.resolution:
        raise CheckpointMismatchError(
            f"the regressor ({source}) makes {hp['resolution']}^2 maps, the restore checkpoint's generator "
            f"{restorer.resolution}^2"
        )
    return net.eval().requires_grad_(False), {**hp, "map_unit_mm": float(unit)}, source


class DnpmReconstructor(nn.Module):
    """A :class:`facelab.reconstruction.Reconstructor`: bilinear fit + regressor + E_deg (or the projector) + detail
    (module docstring). Build it with :meth:`from_checkpoint`; the constructor takes built parts.

    Args:
        restorer: the :class:`RestoreModule` (E_deg and the frozen DNPM generator).
        regressor: the image -> UV displacement regressor (frozen).
        regressor_hp: its hyper-parameters (``image_size``, ``bump_gain``, ``degradation``, ``map_unit_mm``).
        bilinear: the bilinear model of the fit and the meshes (the maps' UV layout).
        image_size: crop side ``S``.
        restore_mode: ``encoder`` or ``projector``.
        projector: the projector (``restore_mode="projector"``).
        schedule: the fit's budgets.
        subdivisions: midpoint subdivisions of the detailed mesh.
        degrade: apply the regressor's photo degradation to its input.
        landmarker: ``(S, S, 3) uint8 -> (478, 2) pixels or None`` (mediapipe by default).
        source: checkpoint description for :meth:`settings`.
    """

    uses_face_hull = False

    def __init__(
        self,
        restorer: RestoreModule,
        regressor: nn.Module,
        regressor_hp: dict[str, Any],
        bilinear: nn.Module,
        image_size: int = 256,
        restore_mode: str = "encoder",
        projector: Projector | None = None,
        schedule: FitSchedule | None = None,
        subdivisions: int = 1,
        degrade: bool = False,
        landmarker=None,
        source: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if restore_mode not in RESTORE_MODES or (restore_mode == "projector") != (projector is not None):
            raise ValueError(f"restore_mode must be one of {RESTORE_MODES}, with a projector exactly for 'projector'")
        self.restorer, self.regressor, self.projector = restorer.eval(), regressor.eval(), projector
        self.restore_mode, self.degrade = restore_mode, bool(degrade)
        self.image_size, self.subdivisions = int(image_size), int(subdivisions)
        self.map_scale_mm, self.regressor_unit_mm = restorer.map_scale_mm, float(regressor_hp["map_unit_mm"])
        self.regressor_size = int(regressor_hp["image_size"])
        self.photo_degradation = Degradation(**regressor_hp["degradation"])
        self.model = bilinear.eval()
        # the regressor's training frame (its renders' camera) and the crop-space renderers
        self.framing = FaceRenderer(bilinear, self.regressor_size, float(regressor_hp.get("bump_gain", 1.0)))
        self.fitter = MorphableFitter(bilinear, camera="weak", schedule=schedule or FitSchedule())
        self.mapper = DisplacementMapper(
            bilinear.faces, bilinear.uv, bilinear.faces_uv, bilinear.num_verts, subdivisions=self.subdivisions
        )
        self.proxy_renderer = MeshRenderer.from_model(bilinear, image_size=self.image_size)
        self.detail_renderer = MeshRenderer(self.mapper.faces.cpu(), self.image_size)
        v = int(bilinear.num_verts)
        m = self.mapper
        #: the OBJs ``facelab reconstruct`` writes per face: the proxy (Eq. 3) and the detailed mesh (Eq. 2)
        self.meshes = {
            "proxy": region_topology(bilinear),
            "detailed": MeshTopology(torch.arange(m.num_verts) + v, m.faces.cpu(), m.uv.cpu(), m.faces_uv.cpu()),
        }
        self._landmarker = landmarker
        self.source = dict(source or {})
        self.eval()

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def from_checkpoint(
        cls,
        ckpt: str | Path,
        *,
        model_path: str | None = None,
        device: str | torch.device = "cpu",
        options: argparse.Namespace | None = None,
        config_key: str = "--ckpt",
    ) -> DnpmReconstructor:
        """Build from a RestoreModule checkpoint (and ``--regressor-ckpt``); see the module docstring.

        Raises:
            MissingAssetError / AssetFormatError: a missing, unreadable or foreign checkpoint (the message names
                the option). ValueError: bad options, or a maps checkpoint without ``--regressor-ckpt``.
            CheckpointMismatchError: the regressor's maps are not the generator's size.
        """
        o = _options(options)
        restorer = load_restorer(str(ckpt), config_key=config_key)
        regressor, hp, source = _regressor(restorer, o.regressor_ckpt)
        path = model_path or hp.get("model_path") or "synthetic"
        bilinear = bilinear_model(path)
        if bilinear.uv.numel() == 0:
            raise AssetFormatError(f"the bilinear model {path} has no UV layout: the displacement maps need one")
        projector = None
        if o.restore == "projector":
            lpips = o.projector_lpips_weights
            if lpips is None:
                warn_missing_weights(
                    "--projector-lpips-weights",
                    "AlexNet (LPIPS, projector baseline)",
                    "the projector fits the pixel term alone",
                    logger=__name__,
                )
            # constant noise: the w+ code alone defines I_gen (the written parameters reproduce it)
            settings = ProjectorSettings(
                steps=o.projector_steps, lpips_weight=1.0 if lpips else 0.0, optimize_noise=False
            )
            projector = Projector(settings, lpips)
        rigid, landmarks = o.fit_iterations
        schedule = FitSchedule(rigid_iterations=rigid, landmark_iterations=landmarks, photometric_iterations=0)
        out = cls(
            restorer,
            regressor,
            hp,
            bilinear,
            image_size=o.crop_size,
            restore_mode=o.restore,
            projector=projector,
            schedule=schedule,
            subdivisions=o.subdivisions,
            degrade=o.degrade,
            source={"checkpoint": str(ckpt), "regressor": source, "model_path": str(path)},
        )
        return out.to(device)

    @property
    def device(self) -> torch.device:
        return self.restorer.generator.w_avg.device

    def landmarker(self):
        """mediapipe's face mesh, opened at the first use."""
        if self._landmarker is None:
            from facelab.data.landmarks import MediapipeFaceMesh

            self._landmarker = MediapipeFaceMesh(refine_landmarks=True)
        return self._landmarker

    def close(self) -> None:
        """Free mediapipe's graph (opened by :meth:`landmarker`)."""
        if hasattr(self._landmarker, "close"):
            self._landmarker.close()
        self._landmarker = None

    def train(self, mode: bool = True) -> DnpmReconstructor:
        """Always eval (inference only)."""
        return super().train(False)

    def settings(self) -> dict:
        return {
            "method": "dnpm",
            "family": "bilinear",
            **self.source,
            "restore": self.restore_mode,
            "restore_input": self.restorer.input,
            "map_resolution": self.restorer.resolution,
            "map_scale_mm": self.map_scale_mm,
            "regressor_image_size": self.regressor_size,
            "degrade": self.photo_degradation.describe() if self.degrade else "none",
            "image_size": self.image_size,
            "subdivisions": self.subdivisions,
            "mesh_frame": "millimetres, the bilinear model frame rotated by global_pose about the origin",
        }

    # ------------------------------------------------------------------------------------------------ pieces
    def _check_crops(self, crops: Tensor) -> None:
        s = self.image_size
        if crops.dim() != 4 or crops.shape[1:] != (3, s, s):
            raise ValueError(f"expected crops (B, 3, {s}, {s}) in [0, 1], got {tuple(crops.shape)}")

    def fit(self, crops: Tensor) -> FitResult:
        """The bilinear landmark fit (§IV-B) of (B, 3, S, S) crops: mediapipe's 478 points, then the core fitter.

        Raises:
            UnusableFacesError: ``no_landmarks`` (with the crop indices) when mediapipe finds no face mesh in some
                crops.
        """
        images = (crops.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        points = [self.landmarker()(np.ascontiguousarray(image)) for image in images]
        missing = [k for k, p in enumerate(points) if p is None]
        if missing:  # facelab reconstruct drops these faces and reconstructs the others
            raise UnusableFacesError(
                "no_landmarks",
                f"mediapipe found no face mesh in face crop(s) {missing}: the bilinear fit needs them",
                missing,
            )
        landmarks = torch.from_numpy(np.stack(points).astype(np.float32)).to(self.device)
        with torch.enable_grad():
            return self.fitter.fit(FitTargets(image_size=(self.image_size,) * 2, landmarks_mp=landmarks), outputs=False)

    def proxy(self, params: DnpmParams) -> Tensor:
        """(B, V, 3) ``V_p = C_r x w_id x w_exp`` (Eq. 3), unposed."""
        return self.model(BilinearParams(identity=params.identity, expression=params.expression)).verts

    def regressor_input(self, crops: Tensor, params: DnpmParams, camera: WeakPerspectiveCamera) -> Tensor:
        """(B, 3, R, R) the crops in the regressor's training frame: gray, cut out by the fitted proxy, resampled.

        A render pixel at NDC ``u`` of :class:`FaceRenderer` shows the frontal model point ``c + h u`` (its framing
        centre ``c`` and half-side ``h``); the fit puts a model point ``X`` at crop NDC ``s (R X + t)_xy``, so the
        render frame maps to the crop by ``s h R_xy u + s (R c + t)_xy`` (first order in the head rotation ``R``).
        """
        rotation = axis_angle_to_matrix(params.global_pose)
        posed = self.proxy(params) @ rotation.transpose(1, 2)
        lights = shape_lights(device=crops.device, dtype=crops.dtype)
        mask = self.proxy_renderer(posed, camera, albedo=RENDER_ALBEDO, lights=lights).mask
        gray = kornia.color.rgb_to_grayscale(crops).expand(-1, 3, -1, -1) * mask
        s = camera.scale[:, None, None]
        linear = s * self.framing.half * rotation[:, :2, :2]
        offset = camera.scale[:, None] * ((rotation @ self.framing.centre.to(crops))[:, :2] + camera.translation)
        flip = crops.new_tensor([1.0, -1.0])  # NDC +y up, grid_sample +y down
        theta = torch.cat([linear * flip[:, None] * flip[None, :], (offset * flip)[..., None]], dim=2)
        b, r = crops.shape[0], self.regressor_size
        grid = F.affine_grid(theta, (b, 3, r, r), align_corners=False)
        image = F.grid_sample(gray, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self.photo_degradation(image) if self.degrade else image

    def low_map(self, image: Tensor) -> Tensor:
        """(B, 1, M, M) ``I_low`` in the generator's units of a regressor input (as E_deg was trained)."""
        return self.regressor(image) * (self.regressor_unit_mm / self.map_scale_mm)

    def latents(self, low: Tensor) -> Tensor:
        """(B, N, D) the w+ code of the restored map of ``I_low``: E_deg's (Eq. 11) or the projector's."""
        generator = self.restorer.generator
        if self.projector is None:
            return restore(self.restorer.encoder, generator, low)[1]  # E_deg(I_low) + w_mean (Eq. 11)
        with torch.enable_grad():
            return self.projector(generator, low, data_range=_span(self.map_scale_mm)).ws

    # ------------------------------------------------------------------------------------------------ protocol
    def encode(self, crops: Tensor) -> FaceEncoding:
        """(B, 3, S, S) crops in [0, 1] -> the fit (identity, expression, pose, camera) and the restored map's code."""
        self._check_crops(crops)
        crops = crops.to(self.device)
        fit = self.fit(crops)
        params = DnpmParams(identity=fit.params.identity, expression=fit.params.expression, global_pose=fit.rotation)
        with torch.no_grad():  # (the projector optimises under its own enable_grad)
            params.ws = self.latents(self.low_map(self.regressor_input(crops, params, fit.camera))).detach()
        return FaceEncoding(params=params, camera=fit.camera)

    @torch.no_grad()
    def decode(self, encoding: FaceEncoding, crops: Tensor, face_hull: Tensor | None = None) -> Reconstruction:
        """Proxy and detailed meshes (Eq. 2-4), both maps, the detailed render over the crops."""
        self._check_crops(crops)
        crops = crops.to(self.device)
        p, camera = encoding.params, encoding.camera
        seen = self.regressor_input(crops, p, camera)
        low_mm = self.low_map(seen) * self.map_scale_mm
        gen_mm = synthesize(self.restorer.generator, p.ws) * self.map_scale_mm  # I_gen = G(ws) (Eq. 11), mm
        proxy = self.proxy(p)
        detailed = self.mapper(proxy, gen_mm)  # V_p + T'(s I_gen) on the subdivided proxy (Eq. 2, 4)
        rotation = axis_angle_to_matrix(p.global_pose).transpose(1, 2)
        posed = torch.cat([proxy, detailed], dim=1) @ rotation
        lights = shape_lights(device=crops.device, dtype=crops.dtype)
        out = self.detail_renderer(posed[:, proxy.shape[1] :], camera, albedo=RENDER_ALBEDO, lights=lights)
        render = out.image.clamp(0, 1)
        maps = {"displacement": gen_mm[:, 0], "displacement_low": low_mm[:, 0]}
        levels = {k: torch.from_numpy(encode_facescape_png(v.cpu().numpy()).astype(np.int32)) for k, v in maps.items()}
        return Reconstruction(
            encoding=encoding,
            mesh=MeshOutput(verts=posed),
            render=render,
            render_mask=out.mask,
            overlay=blend(crops, render, out.mask),
            extra_images={
                "displacement_color": colorize_displacement(gen_mm),
                "displacement_low_color": colorize_displacement(low_mm),
                "regressor_input": seen,
            },
            extra_arrays=maps,
            extra_png16=levels,
        )

    def reconstruct(self, crops: Tensor) -> Reconstruction:
        return self.decode(self.encode(crops), crops)
