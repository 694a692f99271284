"""DualStream inference: a trained checkpoint in, textured meshes of face crops out (``facelab reconstruct``).

:class:`DualStreamReconstructor` loads the geometry stream and the texture generator of a
:class:`dualstream.module.DualStreamModule` (stage 3) or :class:`dualstream.module.TextureModule` (stage 2, which
carries the geometry stream) checkpoint with ``torch.load(weights_only=True)`` and runs, on batches of square crops
in [0, 1]::

    encoding = reconstructor.encode(crops)           # FaceEncoding: the latent f_L + PSN outputs, the render camera
    result = reconstructor.decode(encoding, crops)   # ASMs -> meshes, stylised texture, render, overlay

``encode`` keeps the multi-task encoder's latent ``f_L`` (Eq. 1) and the PSN's albedo / SH / pose (Eq. 3) as the
parameters (:class:`DualStreamParams`), so that a video's parameters can be smoothed; ``decode`` runs the attribute
decoders (Eq. 2), reads the vertices from the ASMs, generates the stylised albedo map (Eq. 9-14) and renders it
(Eq. 19). The texture stream's landmark branch needs 68 landmarks of the photo: at inference they are the geometry
stream's own 68 keypoint vertices (their ASM pixels), so no landmark detector is needed.

``facelab reconstruct --method dualstream`` writes per face ``NAME_full.obj`` (with ``NAME_full.mtl`` ->
``NAME_texture.png``), ``NAME_identity.obj`` (identity ASM only, the same texture), ``NAME_asm_identity.npy`` /
``NAME_asm_expression.npy`` (3, S, S, crop pixels) with their visualisations ``NAME_asm_identity.png`` /
``NAME_asm_expression.png``, ``NAME_albedo_map.png`` (the linear 3DMM albedo ``I_ua``), ``NAME_render.png``, the
parameters and the overlay.

Frames: the mesh vertices are image-aligned crop pixels (``x`` right, ``y`` down, ``z`` toward the camera, PRNet's
position-map frame); the camera in the parameters is the pinhole render camera of
:func:`dualstream.fusion.lift_to_camera`. Shapes: ``B`` batch, ``S`` crop / map side, ``V`` vertices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dualstream.fusion import Fusion, build_geometry_stream, lift_to_camera
from dualstream.texture import TextureGenerator, landmark_heatmaps
from dualstream.texture_data import AlbedoMapper
from facelab.errors import AssetFormatError
from facelab.io.weights import load_state_dict_strict, read_checkpoint
from facelab.morphable import MorphableParams, load_model
from facelab.reconstruction import FaceEncoding, MeshTopology, Reconstruction
from facelab.viz import blend

__all__ = ["DualStreamParams", "DualStreamReconstructor", "asm_visualisation"]

#: The frame of the written meshes (``facelab reconstruct`` prints it in its conventions note).
UNITS = "crop pixels, image-aligned (x right, y down, z toward the camera)"


@dataclass
class DualStreamParams(MorphableParams):
    """DualStream's per-face estimate in the common params layout.

    Attributes:
        identity: (B, 512) the multi-task encoder's latent ``f_L`` (Eq. 1): the attribute decoders turn it into the
            identity and expression ASMs (DualStream has no identity coefficients).
        expression: (B, 0): no expression coefficients either (the expression ASM comes from ``f_L``).
        albedo: (B, K_alb) the PSN's 3DMM albedo coefficients (Eq. 3).
        sh: (B, 27) the PSN's SH illumination (Deep3DFaceRecon layout).
        pose: (B, 3) the PSN's axis-angle head pose.
    """

    sh: Tensor | None = None
    pose: Tensor | None = None


class _Topology(nn.Module):
    """What ``facelab reconstruct`` reads of ``Reconstructor.model``: faces, UVs, units."""

    def __init__(self, faces: Tensor, uv: Tensor, faces_uv: Tensor) -> None:
        super().__init__()
        self.register_buffer("faces", faces.long().cpu(), persistent=False)
        self.register_buffer("uv", uv.float().cpu(), persistent=False)
        self.register_buffer("faces_uv", faces_uv.long().cpu(), persistent=False)
        self.units = UNITS

    @property
    def num_verts(self) -> int:
        return int(self.faces.max()) + 1


def asm_visualisation(asm: Tensor, mask: Tensor) -> Tensor:
    """(B, 3, S, S) ASM -> (B, 3, S, S) in [0, 1]: each channel min-max normalised over the chart (x, y, z as R, G,
    B, paper Fig. 3), 0 off the chart."""
    m = mask.expand_as(asm) > 0
    big = torch.finfo(asm.dtype).max
    lo = torch.where(m, asm, big).flatten(2).amin(2)[..., None, None]
    hi = torch.where(m, asm, -big).flatten(2).amax(2)[..., None, None]
    return ((asm - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) * m


class DualStreamReconstructor(nn.Module):
    """A :class:`facelab.reconstruction.Reconstructor` over a DualStream checkpoint (module docstring).

    Args:
        geometry: the geometry stream. generator: the texture generator.
        model_path: the BFM (topology, UVs, albedo basis) the checkpoint was trained with.
        image_size: crop side. uv_size: ASM / texture side. camera_distance: render camera distance (crop sides).
        heatmap_sigma: landmark-heatmap width (pixels).
        expression_gain: the ASM codec's gain the geometry stream was trained with (:class:`dualstream.asm.AsmRange`).
    """

    uses_face_hull = False

    def __init__(self, geometry: nn.Module, generator: TextureGenerator, model_path: str = "synthetic",
                 image_size: int = 256, uv_size: int = 256, camera_distance: float = 10.0,
                 heatmap_sigma: float = 2.0, expression_gain: float = 8.0) -> None:
        super().__init__()
        from dualstream.data import load_topology

        topology = load_topology(model_path)
        self.geometry, self.generator = geometry.eval(), generator.eval()
        self.codec = topology.codec(uv_size, image_size, expression_gain)
        self.albedo_mapper = AlbedoMapper(load_model("bfm", model_path), uv_size)
        self.fusion = Fusion(topology.faces, topology.uv, topology.faces_uv, topology.keypoints, image_size,
                             camera_distance)
        self.model = _Topology(topology.faces, topology.uv, topology.faces_uv)
        v = topology.num_verts
        self.num_verts = v
        self.meshes = {name: MeshTopology(torch.arange(v) + offset, self.model.faces, self.model.uv,
                                          self.model.faces_uv, texture="texture")
                       for name, offset in (("full", 0), ("identity", v))}
        self.image_size, self.uv_size = int(image_size), int(uv_size)
        self.camera_distance, self.heatmap_sigma = float(camera_distance), float(heatmap_sigma)
        self.model_path = str(model_path)

    @property
    def device(self) -> torch.device:
        return self.codec.mask.device

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, model_path: str | None = None, device: str = "cpu",
                        config_key: str = "--ckpt") -> DualStreamReconstructor:
        """Build from a stage-2 or stage-3 checkpoint (``geometry.*`` and ``generator.*`` weights, hyper-parameters).

        Raises:
            MissingAssetError: no such file. AssetFormatError: not a DualStream checkpoint (no geometry stream or
                generator inside), or weights that do not fit the settings in its hyper-parameters.
        """
        raw = read_checkpoint(ckpt, what="DualStream checkpoint", config_key=config_key)
        state = raw.get("state_dict") if isinstance(raw.get("state_dict"), dict) else raw
        hp = dict(raw.get("hyper_parameters") or {})
        parts = {p: {k[len(p) + 1:]: v for k, v in state.items() if k.startswith(p + ".")}
                 for p in ("geometry", "generator")}
        missing = [p for p, sub in parts.items() if not sub]
        if missing:
            raise AssetFormatError(f"{ckpt} ({config_key}) has no {' / '.join(missing)} weights: give a checkpoint "
                                   "of the texture stage (configs/dualstream_texture.yaml, trained from the geometry "
                                   "stage's checkpoint) or of the end-to-end stage (configs/dualstream.yaml)")
        path = model_path or hp.get("model_path", "synthetic")
        uv_size = int(hp.get("uv_size", 256))
        geometry = build_geometry_stream(path, uv_size, **(hp.get("geometry_args") or {}))
        generator = TextureGenerator(channels=tuple(hp.get("generator_channels", (64, 128, 256, 256, 256))),
                                     num_regions=int(hp.get("num_regions", 16)),
                                     stylization=hp.get("stylization", "srsm"),
                                     region_level=int(hp.get("region_level", 3)),
                                     stylize_levels=tuple(hp.get("stylize_levels", (3, 4))))
        hint = f"set by {config_key}; the network settings come from its hyper-parameters"
        load_state_dict_strict(geometry, parts["geometry"], str(ckpt), hint=hint)
        load_state_dict_strict(generator, parts["generator"], str(ckpt), hint=hint)
        out = cls(geometry, generator, path, int(hp.get("image_size", 256)), uv_size,
                  float(hp.get("camera_distance", 10.0)), float(hp.get("heatmap_sigma", 2.0)),
                  float(hp.get("expression_gain") or 8.0))
        return out.to(device)

    def _camera(self, b: int, like: Tensor):
        return lift_to_camera(like.new_zeros(b, 1, 3), self.image_size, self.camera_distance)[1]

    @torch.no_grad()
    def encode(self, crops: Tensor) -> FaceEncoding:
        """(B, 3, S, S) RGB crops in [0, 1] -> :class:`FaceEncoding` (:class:`DualStreamParams`, render camera)."""
        if crops.dim() != 4 or crops.shape[1] != 3 or crops.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"DualStream takes (B, 3, {self.image_size}, {self.image_size}) crops, got "
                             f"{tuple(crops.shape)}")
        geo = self.geometry(crops.to(self.device), decode=False)
        b = crops.shape[0]
        params = DualStreamParams(identity=geo.latent, expression=geo.latent.new_zeros(b, 0), albedo=geo.albedo,
                                  sh=geo.sh, pose=geo.pose)
        return FaceEncoding(params=params, camera=self._camera(b, crops))

    @torch.no_grad()
    def decode(self, encoding: FaceEncoding, crops: Tensor, face_hull: Tensor | None = None) -> Reconstruction:
        """Meshes (full and identity-only), the stylised texture, the render and the overlay of an encoding."""
        p = encoding.params
        crops = crops.to(self.device)
        g = self.geometry
        a_id = g.decoder_id(p.identity)  # Eq. 2
        a_exp = g.decoder_exp(p.identity) if getattr(g, "decoder_exp", None) is not None else None
        pos_id, pos_full = self.codec.decode(a_id, a_exp)
        verts, verts_id = self.codec.to_vertices(pos_full), self.codec.to_vertices(pos_id)
        albedo_map = self.albedo_mapper(p.albedo)
        landmarks = verts[:, self.fusion.keypoints, :2]  # the geometry stream's own 68 landmarks
        heat = landmark_heatmaps(landmarks, (self.image_size, self.image_size), self.heatmap_sigma)
        texture, _ = self.generator(albedo_map, crops, heat)
        render, _ = self.fusion(verts, texture, p.sh)
        mask = self.codec.mask.to(crops)
        mesh_verts = torch.cat([verts, verts_id], dim=1)
        from facelab.morphable import MeshOutput

        exp_map = pos_full - pos_id
        extra_images = {"texture": texture, "albedo_map": albedo_map, "render": render.image,
                        "asm_identity": asm_visualisation(pos_id, mask), "asm_expression":
                        asm_visualisation(exp_map, mask)}
        return Reconstruction(encoding=encoding, mesh=MeshOutput(verts=mesh_verts, landmarks68=None, albedo=None),
                              render=render.image, render_mask=render.mask,
                              overlay=blend(crops, render.image, render.mask),
                              extra_images=extra_images,
                              extra_arrays={"asm_identity": pos_id * mask, "asm_expression": exp_map * mask})

    def reconstruct(self, crops: Tensor) -> Reconstruction:
        return self.decode(self.encode(crops), crops)

    def settings(self) -> dict:
        return {"method": "dualstream", "model_path": self.model_path, "image_size": self.image_size,
                "uv_size": self.uv_size, "mesh_frame": UNITS}
