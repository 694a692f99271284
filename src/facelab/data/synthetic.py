"""The synthetic face world: rendered faces of any morphable model with ground truth for everything.

Each sample is a random face (identity, expression, jaw, eyes, eyelids, head pose) of a morphable model
(synthetic FLAME by default; BFM, FaceScape bilinear and ICT-FaceKit too), framed by a weak-perspective or
perspective camera, lit by second-order spherical harmonics (Deep3DFaceRecon convention), coloured by the model's
own albedo basis where it has one (BFM) or else a procedural UV albedo (:mod:`facelab.data.albedo`), detailed with
expression wrinkles (:mod:`facelab.data.wrinkles`) and composited over a random background with optional occluders.
It carries (:class:`SyntheticFaceSample`): every parameter, the camera, 68 (and, with a mediapipe embedding, 105
mediapipe) landmarks in pixels and NDC, the convex-hull face mask, the rendered mask, a region segmentation
(:data:`SEGMENTATION_LABELS`), the UV displacement map, the action-unit vector and, on request, image-aligned UV
position maps of the full and of the neutral face. A temporal mode returns sequences whose parameters follow smooth
trajectories.

The world never asks for the model's family: what it draws and how it poses a face follow from the common
morphable API (:class:`facelab.morphable.base.MorphableModel`: ``pose_fields``, ``jaw_open_component``,
``synthetic_expression_offset``, ``expression_range``, ``num_albedo``, ``has_uv``, ...). It renders through the one
renderer, :class:`facelab.render.MeshRenderer`, with SH lighting and the wrinkle displacement bump-mapped per pixel
(details finer than the mesh shade at the render resolution).

Determinism: sample ``i`` of split ``s`` is generated from its own ``torch.Generator`` seeded with
``(seed, SPLIT_OFFSETS[s] + i)`` (never the global RNG), so every worker and DDP rank produces the same sample for
the same index, whatever the batching. Splits are disjoint ranges of that key.

Frames and conventions: model frame of :mod:`facelab.morphable.base` (+y up, face along +z); NDC (+y up, [-1, 1])
and pixels (origin top-left corner, +v down) as in :mod:`facelab.render.camera`. ``global_pose`` is the head
rotation of :meth:`~facelab.morphable.base.MorphableModel.forward_posed`: the root joint of a skinned model (FLAME),
a rigid rotation about the model's origin for the others. Images are square (``image_size`` pixels a side).
Image-aligned positions (the UV position maps, PRNet / DualStream "attribute spatial maps") are ``(u, v, z)``:
the pixel coordinates of the point and its height toward the camera in pixels at the model origin's magnification,
zero at the origin's depth (weak perspective: ``z = s z_model W / 2``; perspective: ``z = f (d_0 - d) / d_0`` with
``d`` the point's and ``d_0`` the origin's depth).

Generation is batched: :meth:`SyntheticFaceDataset.__getitems__` (which ``torch.utils.data.DataLoader`` calls
with a whole batch of indices) runs the model, the UV maps and the rasterizer once for the batch.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facelab.data.albedo import UNITS_TO_METRES, AlbedoParams, ProceduralAlbedo, TemplateSurface
from facelab.data.wrinkles import ActionUnitMap, WrinkleModel, head_expression_offset, wrinkle_map_size
from facelab.masks import convex_hull_mask
from facelab.morphable import FlameParams, MeshOutput, MorphableModel, MorphableParams, load_model
from facelab.render import MeshRenderer, PerspectiveCamera, WeakPerspectiveCamera
from facelab.render.camera import ndc_to_pixels
from facelab.uv import UVMapper, dilate_uv_map

__all__ = [
    "SEGMENTATION_LABELS",
    "SPLIT_OFFSETS",
    "SceneConfig",
    "SyntheticFaceBatch",
    "SyntheticFaceDataset",
    "SyntheticFaceSample",
]

#: Region segmentation ids: ``segmentation == k`` is ``SEGMENTATION_LABELS[k]``. Rendered triangles take the
#: label of the most specific named region holding all three corners (eyeball > lips > nose > eye_region >
#: forehead > face; ear, neck, scalp), "other" when none does (e.g. everything of BFM outside its regions is
#: "face", ICT teeth are "other"); visible occluder pixels are "occluder".
SEGMENTATION_LABELS = ("background", "face", "forehead", "eye_region", "nose", "lips", "eyeball", "ear", "neck",
                       "scalp", "occluder", "other")
_OCCLUDER, _OTHER = SEGMENTATION_LABELS.index("occluder"), SEGMENTATION_LABELS.index("other")
# (label, vertex regions), lowest priority first: later rows overwrite earlier ones.
_LABEL_REGIONS = (
    ("face", ("face", "front")), ("scalp", ("scalp",)), ("neck", ("neck",)), ("ear", ("left_ear", "right_ear")),
    ("forehead", ("forehead",)), ("eye_region", ("eye_region",)), ("nose", ("nose",)), ("lips", ("lips",)),
    ("eyeball", ("left_eyeball", "right_eyeball")),
)
#: First sample key of each split: sample ``i`` of a split has key ``SPLIT_OFFSETS[split] + i``.
SPLIT_OFFSETS = {"train": 0, "val": 10**9, "test": 2 * 10**9}
_HEAD_SEMANTIC = 28  # named components of the procedural head's expression basis (the rest are small bumps)
#: Regions left out of the render: ICT-FaceKit's lacrimal fluid, eye-blend, eye-occlusion and eyelash shells (meant
#: for transparent shading, they would hide the eyes).
_HIDDEN_REGIONS = ("eye_extras",)
_BACKFACE_DARKENING = 0.25  # inner surfaces seen through the open mouth: a dark cavity


@dataclass
class SceneConfig:
    """The distributions a synthetic scene is drawn from (defaults: SMIRK-like crops of expressive faces).

    Attributes:
        yaw_deg, pitch_deg, roll_deg: head rotation ranges: ``global_pose`` is the axis-angle vector
            ``(pitch, yaw, roll)`` with each component uniform in ``[-x, x]`` degrees.
        identity_scale: standard deviation of the identity coefficients (1 = the model's prior).
        expression_scale: scale of the expression coefficients.
        expression_active_prob: probability that a named expression action is active in a face.
        jaw_open_prob: probability of an open jaw; the opening is uniform in ``[0, jaw_open_max]`` radians.
        jaw_open_max: largest jaw opening (radians).
        blink_prob: probability of (partially) closed eyelids in a single frame.
        gaze_std: standard deviation of the eyeball rotations (radians).
        framing: the image side is ``framing x`` the landmarks' bounding-box side, uniform in this range.
        center_jitter: shift of the face centre, uniform in ``[-x, x]`` bounding-box sides.
        distance_m: camera distance range in metres (perspective camera).
        light_strength: range of the directional (band-1) SH light relative to the ambient term.
        occluder_prob: probability of an occluder over the face.
        noise_std: largest standard deviation of the additive pixel noise.
        keyframe_interval: temporal mode: frames between independent keyframes of the parameter trajectories.
        temporal_pose_scale: temporal mode: head rotation at keyframes around the sequence's base pose, as a
            fraction of the ranges above.
        blink_rate_hz: temporal mode: blinks per second (at ``fps``).
        wrinkle_depth: factor on the depths of the wrinkle patterns (:data:`facelab.data.wrinkles.WRINKLE_PATTERNS`:
            0.5-2 mm at full activation; converted to the model's units by its ``units``).
        wrinkle_width: factor on the widths of the wrinkle grooves.
        albedo_scale: standard deviation of the coefficients of a model's own albedo basis (BFM).
    """

    yaw_deg: float = 40.0
    pitch_deg: float = 20.0
    roll_deg: float = 12.0
    identity_scale: float = 1.0
    expression_scale: float = 1.0
    expression_active_prob: float = 0.3
    jaw_open_prob: float = 0.4
    jaw_open_max: float = 0.35
    blink_prob: float = 0.1
    gaze_std: float = 0.12
    framing: tuple[float, float] = (1.35, 1.85)
    center_jitter: float = 0.08
    distance_m: tuple[float, float] = (0.4, 1.2)
    light_strength: tuple[float, float] = (0.15, 0.6)
    occluder_prob: float = 0.25
    noise_std: float = 0.015
    keyframe_interval: int = 12
    temporal_pose_scale: float = 0.35
    blink_rate_hz: float = 0.3
    wrinkle_depth: float = 1.0
    wrinkle_width: float = 1.0
    albedo_scale: float = 1.0


# ------------------------------------------------------------------------------------------------------ samples
@dataclass
class _FaceRecord:
    """Fields shared by :class:`SyntheticFaceSample` and :class:`SyntheticFaceBatch`.

    Shapes are for one sample; a batch prepends ``B``; a temporal sample prepends ``T`` to the per-frame fields
    (marked *). ``H = W = image_size``, ``S = uv_size``, ``S_d = displacement_size``.

    Attributes:
        index: () long, the sample's index in its split.
        image: * (3, H, W) float RGB in [0, 1].
        shape: (K_id,) identity coefficients.
        expression: * (K_exp,) expression coefficients.
        global_pose: * (3,) axis-angle head rotation (a skinned model's root joint; a rigid rotation about the model
            origin for the others).
        neck_pose, jaw_pose: * (3,) axis-angle (zeros for models without these joints).
        eye_pose: * (6,) left then right eyeball axis-angle (zeros without eye joints).
        eyelids: * (2,) left, right closure in [0, 1] (zeros without eyelid blendshapes).
        camera: (3,) weak-perspective ``[s, tx, ty]`` (model units), or (7,) perspective
            ``[fx, fy, cx, cy, tx, ty, tz]`` (pixels; translation in model units; rotation identity), see
            :meth:`SyntheticFaceBatch.camera_object`.
        sh_coeffs: (27,) SH lighting, Deep3DFaceRecon layout (9 red, 9 green, 9 blue), no ambient offset.
        landmarks68_3d: * (68, 3) posed iBUG landmarks, model frame.
        landmarks68_pix: * (68, 2) pixel coordinates ``(u, v)`` (origin top-left corner).
        landmarks68_ndc: * (68, 2) NDC ``(x, y)`` in [-1, 1], +y up.
        hull_mask: * (1, H, W) float, convex hull of all projected landmarks (68 + mediapipe), grown by 0.8 px.
        render_mask: * (1, H, W) float, pixels the head mesh covers (occluders ignored).
        segmentation: * (H, W) long ids of :data:`SEGMENTATION_LABELS`.
        action_units: * (17,) in [0, 1], ordered as :data:`facelab.data.wrinkles.AU_NAMES`.
        action_channels: * (C,) per-side intensities, :data:`facelab.data.wrinkles.ACTION_CHANNELS`.
        albedo_params: (A,) :meth:`facelab.data.albedo.AlbedoParams.as_vector` of the procedural albedo (None when
            the face is coloured by the model's albedo basis).
        albedo: (K_alb,) coefficients of the model's own albedo basis (``MorphableParams.albedo``; None with the
            procedural albedo).
        landmarks_mp_pix, landmarks_mp_ndc: * (105, 2) mediapipe landmarks (models with that embedding, else None).
        displacement_uv: * (1, S_d, S_d) wrinkle displacement in millimetres (models with UVs, else None).
        albedo_uv: (3, S, S) the albedo texture; per-vertex (V, 3) colours for a model without UVs (with
            ``return_albedo``, else None).
        verts: * (V, 3) posed vertices, model frame (with ``return_vertices``, else None).
        position_uv: * (3, S, S) image-aligned UV position map ``(u, v, z)`` of the full face (module docstring;
            the gutter filled two texels deep; with ``return_position_maps`` on a model with UVs, else None).
        position_neutral_uv: * (3, S, S) the same of the identity-only neutral face (expression, jaw, eyes and
            eyelids at rest) under the same head pose and camera: DualStream's identity map; the expression map is
            ``position_uv - position_neutral_uv``.
        camera_model: ``"weak"`` or ``"perspective"``.
        family: the morphable model family.
    """

    index: Tensor
    image: Tensor
    shape: Tensor
    expression: Tensor
    global_pose: Tensor
    neck_pose: Tensor
    jaw_pose: Tensor
    eye_pose: Tensor
    eyelids: Tensor
    camera: Tensor
    sh_coeffs: Tensor
    landmarks68_3d: Tensor
    landmarks68_pix: Tensor
    landmarks68_ndc: Tensor
    hull_mask: Tensor
    render_mask: Tensor
    segmentation: Tensor
    action_units: Tensor
    action_channels: Tensor
    albedo_params: Tensor | None = None
    albedo: Tensor | None = None
    landmarks_mp_pix: Tensor | None = None
    landmarks_mp_ndc: Tensor | None = None
    displacement_uv: Tensor | None = None
    albedo_uv: Tensor | None = None
    verts: Tensor | None = None
    position_uv: Tensor | None = None
    position_neutral_uv: Tensor | None = None
    camera_model: str = "weak"
    family: str = "flame"

    def tensor_fields(self) -> list[str]:
        """Names of the fields that hold tensors (the optional ones that are None are left out)."""
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), Tensor)]

    def _map(self, fn):
        return replace(self, **{name: fn(getattr(self, name)) for name in self.tensor_fields()})

    def to(self, *args, **kwargs):
        """A copy with every tensor moved/cast by ``Tensor.to`` (Lightning moves batches by itself)."""
        return self._map(lambda x: x.to(*args, **kwargs))

    def pin_memory(self):
        """A copy with every tensor in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(lambda x: x.pin_memory())


@dataclass
class SyntheticFaceBatch(_FaceRecord):
    """A collated batch (``B`` leading on every tensor; temporal: ``(B, T, ...)`` on per-frame fields)."""

    def camera_object(self) -> WeakPerspectiveCamera | PerspectiveCamera:
        """The batch's camera (non-temporal batches, or flatten ``T`` into ``B`` first)."""
        h = self.image.shape[-2]
        if self.camera_model == "weak":
            return WeakPerspectiveCamera.from_params(self.camera)
        c = self.camera
        return PerspectiveCamera(focal=c[:, 0:2], principal_point=c[:, 2:4], image_size=(h, self.image.shape[-1]),
                                 rotation=torch.eye(3, dtype=c.dtype, device=c.device).expand(c.shape[0], 3, 3),
                                 translation=c[:, 4:7])

    def _per_frame(self) -> dict[str, Tensor]:
        """identity, albedo and the per-frame blocks, a temporal batch flattened to ``B * T`` rows."""
        out = {k: getattr(self, k) for k in ("expression", *_POSE_FIELDS)}
        static = {"identity": self.shape, "albedo": self.albedo}
        if self.expression.dim() == 3:
            t = self.expression.shape[1]
            out = {k: v.flatten(0, 1) for k, v in out.items()}
            static = {k: None if v is None else v.repeat_interleave(t, dim=0) for k, v in static.items()}
        return {**static, **out}

    def flame_params(self) -> FlameParams:
        """The FLAME parameters (per frame: a temporal batch is flattened to ``B * T`` rows, shape repeated)."""
        p = self._per_frame()
        return FlameParams(identity=p["identity"], expression=p["expression"],
                           **{k: p[k] for k in _POSE_FIELDS})

    def params(self, model: MorphableModel) -> MorphableParams:
        """The batch's parameters as ``model``'s params (the fields the model uses; ``global_pose`` is left out for
        a model without a skeleton, whose head rotation is rigid: apply it with ``model.forward_posed(params,
        batch.global_pose)``). Temporal batches are flattened to ``B * T`` rows."""
        p = self._per_frame()
        poses = {k: p[k] for k in model.pose_fields}
        return model.make_params(p["identity"], p["expression"], p["albedo"], **poses)


@dataclass
class SyntheticFaceSample(_FaceRecord):
    """One synthetic face (or sequence) with its ground truth (fields: see :class:`_FaceRecord`)."""

    @classmethod
    def collate(cls, samples: list[SyntheticFaceSample]) -> SyntheticFaceBatch:
        """Stack samples into a :class:`SyntheticFaceBatch` (the ``collate_fn`` of a DataLoader)."""
        first = samples[0]
        out = {}
        for f in fields(first):
            value = getattr(first, f.name)
            if isinstance(value, Tensor):
                out[f.name] = torch.stack([getattr(s, f.name) for s in samples])
            else:
                if any(getattr(s, f.name) != value for s in samples):
                    raise ValueError(f"cannot collate samples with different {f.name}")
                out[f.name] = value
        return SyntheticFaceBatch(**out)


# ------------------------------------------------------------------------------------------- model adapters
#: The optional per-frame pose blocks of the record, in the order of the FLAME params (zeros where unused).
_POSE_FIELDS = ("global_pose", "neck_pose", "jaw_pose", "eye_pose", "eyelids")


@dataclass
class _Frames:
    """Per-frame parameters of N frames (every tensor (N, ...))."""

    shape: Tensor
    expression: Tensor
    global_pose: Tensor
    neck_pose: Tensor
    jaw_pose: Tensor
    eye_pose: Tensor
    eyelids: Tensor

    @classmethod
    def cat(cls, items: list[_Frames]) -> _Frames:
        return cls(**{f.name: torch.cat([getattr(i, f.name) for i in items]) for f in fields(cls)})

    def neutral(self) -> _Frames:
        """The identity-only face under the same head pose: expression, jaw, eyes and eyelids at rest."""
        z = torch.zeros_like
        return replace(self, expression=z(self.expression), jaw_pose=z(self.jaw_pose), eye_pose=z(self.eye_pose),
                       eyelids=z(self.eyelids))


def _forward(model: MorphableModel, p: _Frames, albedo: Tensor | None = None) -> MeshOutput:
    """Posed meshes in the model frame (:meth:`MorphableModel.forward_posed`: a skinned model's root joint, a rigid
    rotation about the origin for the others), with the model's albedo for (N, K_alb) ``albedo``."""
    poses = {k: getattr(p, k) for k in model.pose_fields if k != "global_pose"}
    return model.forward_posed(model.make_params(p.shape, p.expression, albedo, **poses), head_pose=p.global_pose)


#: Constants shared by the datasets of one model (a DataModule's splits): model -> {settings: constants}.
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shared_constants(ds: SyntheticFaceDataset, template: MeshOutput, displacement_size: int | None) -> dict:
    """The albedo layers, wrinkle patterns, AU map and detail filter of a dataset, built once per model and settings.

    Both UV fields are evaluated on the template surface in metres: the albedo at ``uv_size``, the wrinkles at
    ``displacement_size`` (by default large enough for the grooves on this layout).
    """
    m, s = ds.model, ds.scene
    key = (ds.uv_size, displacement_size, ds.seed, ds.synthetic, ds.model_albedo, s.wrinkle_depth, s.wrinkle_width,
           ds.image_size, s.framing)
    per_model = _SHARED.setdefault(m, {})
    if key in per_model:
        return per_model[key]
    verts, lmk = template.verts[0], template.landmarks68[0]
    surface = TemplateSurface.from_mesh(verts, m.faces, m.uv, m.faces_uv, m.regions, lmk, ds.metres_per_unit,
                                        ds.uv_size)
    albedo = None if ds.model_albedo else ProceduralAlbedo(surface, seed=ds.seed)
    wrinkles, pool = None, 1
    if ds.has_uv:
        size = displacement_size or wrinkle_map_size(surface.metres_per_uv, s.wrinkle_width)
        detail = surface if size == ds.uv_size else TemplateSurface.from_mesh(
            verts, m.faces, m.uv, m.faces_uv, m.regions, lmk, ds.metres_per_unit, size)
        wrinkles = WrinkleModel(detail, depth_scale=s.wrinkle_depth, width_scale=s.wrinkle_width)
        # Rendered pixels much coarser than the texels (small images) would alias the grooves: shade from the map
        # box-filtered to about the pixel footprint (a global mip level).
        pts = lmk if template.landmarks_mp is None else torch.cat([lmk, template.landmarks_mp[0]])
        side_m = float((pts.amax(0) - pts.amin(0))[:2].max()) * ds.metres_per_unit
        pixel_m = side_m * sum(s.framing) / 2.0 / ds.image_size
        ratio = pixel_m / max(detail.texel_size(), 1e-12)
        pool = 1 << int(math.floor(math.log2(ratio))) if ratio >= 2.0 else 1
    out = dict(albedo=albedo, wrinkles=wrinkles, detail_pool=pool, au_map=ActionUnitMap.for_model(m, ds.synthetic),
               head_offset=head_expression_offset(m, ds.synthetic))
    per_model[key] = out
    return out


def _face_labels(model: MorphableModel) -> Tensor:
    """(F,) long segmentation label of every triangle (see :data:`SEGMENTATION_LABELS`)."""
    labels = torch.full((model.num_faces,), _OTHER, dtype=torch.long)
    for label, names in _LABEL_REGIONS:
        for name in names:
            if name in model.regions:
                labels[model.region_faces(name)] = SEGMENTATION_LABELS.index(label)
    return labels


# ----------------------------------------------------------------------------------------------------- scenes
@dataclass
class _Scene:
    """Everything drawn at random for one sample (T frames), before rendering."""

    frames: _Frames
    framing: Tensor  # (3,) image/bbox ratio, centre jitter x, y (bbox sides)
    distance_m: Tensor  # () perspective camera distance
    sh_coeffs: Tensor  # (27,)
    albedo: AlbedoParams | Tensor  # batch 1: procedural parameters, or (1, K_alb) the model's albedo coefficients
    background: Tensor  # (3, 4, 4) low-resolution colour field (upsampled bicubically)
    texture: Tensor  # (3, 32, 32) background texture noise (upsampled bilinearly)
    blobs: Tensor  # (4, 8) background ellipses: centre x, y, radii, angle, colour rgb (all in [0, 1])
    occluder: Tensor | None  # (9,) kind, centre (2), size (2), angle, colour (3) in [0, 1]
    noise_std: Tensor  # ()
    noise_seed: int


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _smoothstep(t: Tensor) -> Tensor:
    return t * t * (3.0 - 2.0 * t)


class SyntheticFaceDataset(torch.utils.data.Dataset):
    """Rendered random faces with ground truth (see the module docstring).

    Args:
        family: morphable model family (``flame`` | ``bfm`` | ``bilinear`` | ``ict``): which model
            :func:`facelab.morphable.load_model` builds from ``model_path``, and the record's ``family``.
        model_path: the model's asset (``"synthetic"`` / ``"synthetic:tiny"`` for the generated stand-ins; for
            ICT the ``FaceXModel`` folder).
        num_samples: length of the split.
        split: ``train`` | ``val`` | ``test`` (disjoint sample-key ranges, :data:`SPLIT_OFFSETS`).
        seed: dataset seed; with the split and the index it determines every sample.
        image_size: side of the square images in pixels.
        camera: ``weak`` (DECA/SMIRK scaled orthographic) or ``perspective`` (pinhole).
        uv_size: side of the UV albedo texture and of the UV position maps.
        displacement_size: side of the wrinkle displacement maps (returned, and bump-mapped into the images);
            None: the smallest power of two that puts two texels across the narrowest groove's width on the
            model's UV layout (:func:`facelab.data.wrinkles.wrinkle_map_size`; 512 for FLAME's layout).
        sequence_length: 0 for single frames; ``T >= 1`` for sequences of T frames: identity, albedo, lighting,
            background and camera are fixed (the camera frames the landmarks of all frames), expression, jaw,
            eyes and head pose follow smoothstep-interpolated keyframes, eyelids add random blinks.
        fps: frame rate of sequences (sets blink durations and rates).
        scene: the scene distributions (:class:`SceneConfig` defaults when None).
        render_wrinkles: shade the rendered skin with the wrinkle displacement (bump-mapped detail normals).
        return_albedo: include the albedo texture in each sample.
        return_vertices: include the posed vertices in each sample.
        return_position_maps: include the image-aligned UV position maps of the full and of the neutral face
            (models with UVs).
        albedo_source: ``"model"``: the model's own albedo basis (needs ``model.num_albedo > 0``); ``"procedural"``:
            :class:`facelab.data.albedo.ProceduralAlbedo`; ``"auto"``: the model's where it has one.
        model: an already built model of ``family`` (overrides ``model_path``).
        synthetic: whether the model is a generated stand-in, whose expression components have known meanings
            (action units, expression prior); None: ``model.is_synthetic``.
    """

    def __init__(
        self,
        family: str = "flame",
        model_path: str = "synthetic",
        num_samples: int = 10000,
        split: Literal["train", "val", "test"] = "train",
        seed: int = 0,
        image_size: int = 224,
        camera: Literal["weak", "perspective"] = "weak",
        uv_size: int = 256,
        displacement_size: int | None = None,
        sequence_length: int = 0,
        fps: float = 25.0,
        scene: SceneConfig | None = None,
        render_wrinkles: bool = True,
        return_albedo: bool = False,
        return_vertices: bool = False,
        return_position_maps: bool = False,
        albedo_source: Literal["auto", "model", "procedural"] = "auto",
        model: MorphableModel | None = None,
        synthetic: bool | None = None,
    ) -> None:
        super().__init__()
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got '{split}'")
        if camera not in ("weak", "perspective"):
            raise ValueError(f"camera must be 'weak' or 'perspective', got '{camera}'")
        if not 0 <= num_samples <= 10**9:
            raise ValueError(f"num_samples must be in [0, 1e9], got {num_samples}")
        if albedo_source not in ("auto", "model", "procedural"):
            raise ValueError(f"albedo_source must be 'auto', 'model' or 'procedural', got '{albedo_source}'")
        if displacement_size is not None and displacement_size < 4:
            raise ValueError(f"displacement_size must be >= 4 (or None), got {displacement_size}")
        self.family = family.lower()
        self.model_path = model_path
        self.model = (model if model is not None else load_model(self.family, model_path)).eval()
        self.synthetic = bool(self.model.is_synthetic) if synthetic is None else bool(synthetic)
        self.num_samples, self.split, self.seed = int(num_samples), split, int(seed)
        self.image_size, self.camera_model, self.uv_size = int(image_size), camera, int(uv_size)
        self.sequence_length, self.fps = int(sequence_length), float(fps)
        self.scene = scene or SceneConfig()
        self.render_wrinkles, self.return_albedo, self.return_vertices = render_wrinkles, return_albedo, return_vertices
        self.return_position_maps = return_position_maps
        self.n_shape, self.n_exp = self.model.num_identity, self.model.num_expression
        if albedo_source == "model" and not self.model.num_albedo:
            raise ValueError(f"albedo_source='model' but {type(self.model).__name__} has no albedo basis")
        self.model_albedo = albedo_source == "model" or (albedo_source == "auto" and self.model.num_albedo > 0)
        self.metres_per_unit = UNITS_TO_METRES[self.model.units]
        self._build_constants(displacement_size)

    # ------------------------------------------------------------------------------------------ constants
    @torch.no_grad()
    def _build_constants(self, displacement_size: int | None) -> None:
        """Per-dataset constants: albedo layers, wrinkle patterns, renderer, region labels, what the model has."""
        m = self.model
        self.pose_fields = tuple(m.pose_fields)
        self.has_uv = m.has_uv
        self.has_eyelids = "eyelids" in self.pose_fields
        template = _forward(m, self._zero_frames(1))
        self.has_mediapipe = template.landmarks_mp is not None
        shared = _shared_constants(self, template, displacement_size)
        self.albedo, self.wrinkles, self.au_map = shared["albedo"], shared["wrinkles"], shared["au_map"]
        self.displacement_size = None if self.wrinkles is None else self.wrinkles.size[0]
        self._detail_pool = shared["detail_pool"]
        self._head_offset = shared["head_offset"]
        keep = torch.ones(m.num_faces, dtype=torch.bool)
        for name in _HIDDEN_REGIONS:
            if name in m.regions:
                keep[m.region_faces(name)] = False
        subset = None if keep.all() else torch.nonzero(keep).squeeze(1)
        self.renderer = MeshRenderer.from_model(m, image_size=self.image_size, sh_convention="deep3d",
                                                backface_factor=_BACKFACE_DARKENING, face_subset=subset)
        self.faces = self.renderer.faces  # the rendered triangles
        self.face_labels = _face_labels(m)[keep]
        self.uv_mapper = None
        if self.return_position_maps and self.has_uv:
            self.uv_mapper = UVMapper(m.faces, m.uv, m.faces_uv, self.uv_size, num_verts=m.num_verts)

    def _zero_frames(self, n: int) -> _Frames:
        z = torch.zeros
        return _Frames(shape=z(n, self.n_shape), expression=z(n, self.n_exp), global_pose=z(n, 3),
                       neck_pose=z(n, 3), jaw_pose=z(n, 3), eye_pose=z(n, 6), eyelids=z(n, 2))

    # ------------------------------------------------------------------------------------------ sampling
    def sample_key(self, index: int) -> int:
        """The global key of sample ``index`` of this split (its seed range position)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a split of {self.num_samples}")
        return SPLIT_OFFSETS[self.split] + int(index)

    def generator(self, index: int) -> torch.Generator:
        """The private generator of sample ``index``, seeded from ``(seed, key)``."""
        state = np.random.SeedSequence([self.seed, self.sample_key(index)]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _expression(self, g: torch.Generator, jaw_open: Tensor) -> Tensor:
        """(K_exp,) expression coefficients of one frame (``jaw_open`` in radians, for a stand-in that opens its jaw
        with a blendshape)."""
        s, k, m = self.scene, self.n_exp, self.model
        offset = self._head_offset
        if offset is None and m.expression_range is not None:  # blendshape weights (ICT, FaceScape): a few active
            lo, hi = m.expression_range
            active = torch.rand(k, generator=g) < s.expression_active_prob * 0.5
            return (lo + (hi - lo) * torch.rand(k, generator=g) * active * s.expression_scale).clamp(lo, hi)
        if offset is None:  # an unlabelled PCA basis: a decaying Gaussian prior
            std = 0.8 / torch.sqrt(1.0 + torch.arange(k) / 5.0)
            return torch.randn(k, generator=g) * std * s.expression_scale
        std = torch.full((k,), 0.25)
        std[offset:offset + _HEAD_SEMANTIC] = 1.0
        active = torch.ones(k, dtype=torch.bool)
        active[offset:offset + _HEAD_SEMANTIC] = torch.rand(_HEAD_SEMANTIC, generator=g) < s.expression_active_prob
        exp = torch.randn(k, generator=g) * std * active * s.expression_scale
        jaw = m.jaw_open_component
        if jaw is not None and "jaw_pose" not in self.pose_fields:
            exp[jaw[0]] = jaw_open / jaw[1]
        return exp

    def _frame_params(self, g: torch.Generator, shape: Tensor, pose_scale: float = 1.0,
                      base_pose: Tensor | None = None) -> _Frames:
        """One frame's parameters (batch 1)."""
        s = self.scene
        ranges = torch.tensor([s.pitch_deg, s.yaw_deg, s.roll_deg]) * (math.pi / 180.0) * pose_scale
        pose = (torch.rand(3, generator=g) * 2 - 1) * ranges
        if base_pose is not None:
            pose = pose + base_pose
        opening = torch.rand((), generator=g) * s.jaw_open_max * (torch.rand((), generator=g) < s.jaw_open_prob)
        jaw = torch.cat([opening.reshape(1), 0.02 * torch.randn(2, generator=g)])
        exp = self._expression(g, opening)
        neck = 0.05 * torch.randn(3, generator=g)
        gaze = s.gaze_std * torch.randn(2, generator=g)  # pitch, yaw; both eyes look the same way, no roll
        eyes = torch.cat([gaze, torch.zeros(1)]).repeat(2)
        blink = torch.rand((), generator=g) < s.blink_prob
        lids = (0.25 * torch.rand(2, generator=g)).where(~blink, torch.rand(1, generator=g).expand(2) * 0.6 + 0.4)
        # the blocks the model has no parameter for stay at rest (a model without a skeleton: only the rigid head
        # rotation is used)
        blocks = {"neck_pose": neck, "jaw_pose": jaw, "eye_pose": eyes, "eyelids": lids}
        neck, jaw, eyes, lids = (v if k in self.pose_fields else torch.zeros_like(v) for k, v in blocks.items())
        return _Frames(shape=shape[None], expression=exp[None], global_pose=pose[None], neck_pose=neck[None],
                       jaw_pose=jaw[None], eye_pose=eyes[None], eyelids=lids[None])

    def _trajectory(self, g: torch.Generator, shape: Tensor) -> _Frames:
        """Smooth T-frame parameters: independent keyframes, smoothstep-interpolated, plus blinks."""
        s, t_len = self.scene, self.sequence_length
        step = max(1, s.keyframe_interval)
        n_keys = (t_len - 1) // step + 2
        base = self._frame_params(g, shape).global_pose[0]
        keys = _Frames.cat([self._frame_params(g, shape, s.temporal_pose_scale, base) for _ in range(n_keys)])
        t = torch.arange(t_len, dtype=torch.float32) / step
        lo = t.floor().long()
        w = _smoothstep(t - lo)[:, None]
        frames = _Frames(**{f.name: torch.lerp(getattr(keys, f.name)[lo], getattr(keys, f.name)[lo + 1], w)
                            for f in fields(_Frames)})
        if self.has_eyelids:
            n_blinks = int(torch.poisson(torch.tensor(s.blink_rate_hz * t_len / self.fps), generator=g))
            centres = torch.rand(n_blinks, generator=g) * t_len
            width = 0.05 * self.fps  # ~50 ms half-width: a blink takes ~4 frames at 25 fps
            frame_t = torch.arange(t_len, dtype=torch.float32)
            blink = torch.exp(-0.5 * ((frame_t[:, None] - centres[None]) / width) ** 2).sum(1).clamp(max=1.0)
            frames.eyelids = torch.maximum(frames.eyelids, blink[:, None].expand(-1, 2))
        return frames

    def _sh(self, g: torch.Generator) -> Tensor:
        """(27,) SH lighting: ambient, one directional light from the camera's hemisphere, a little band 2."""
        s = self.scene
        direction = torch.randn(3, generator=g) * torch.tensor([0.6, 0.5, 0.3]) + torch.tensor([0.0, 0.3, 1.0])
        direction = F.normalize(direction, dim=0)
        strength = _uniform(g, *s.light_strength)
        ambient = _uniform(g, 0.65, 1.0)
        bands = torch.zeros(9)
        bands[0] = ambient
        # Deep3DFaceRecon's band-1 basis is (-ny, nz, -nx): coefficients (-dy, dz, -dx) give n . d
        bands[1:4] = strength * torch.stack([-direction[1], direction[2], -direction[0]])
        bands[4:] = 0.04 * torch.randn(5, generator=g)
        tint = 1.0 + 0.07 * torch.randn(3, generator=g)
        return (tint[:, None] * bands[None]).reshape(27)  # channel-major: 9 red, 9 green, 9 blue

    def _scene(self, index: int) -> _Scene:
        """Draw every random choice of sample ``index`` from its generator, in a fixed order."""
        g, s = self.generator(index), self.scene
        shape = torch.randn(self.n_shape, generator=g) * s.identity_scale
        frames = self._trajectory(g, shape) if self.sequence_length > 0 else self._frame_params(g, shape)
        framing = torch.stack([_uniform(g, *s.framing), *_uniform(g, -s.center_jitter, s.center_jitter, 2)])
        distance = _uniform(g, *s.distance_m)
        sh = self._sh(g)
        if self.model_albedo:
            albedo = torch.randn(1, self.model.num_albedo, generator=g) * s.albedo_scale
        else:
            albedo = self.albedo.sample_params(g, 1)
        background = torch.rand(3, 4, 4, generator=g) * 0.9 + 0.05
        texture = torch.randn(3, 32, 32, generator=g) * 0.08 * torch.rand((), generator=g)
        blobs = torch.rand(4, 8, generator=g)
        occluder = torch.rand(9, generator=g) if torch.rand((), generator=g) < s.occluder_prob else None
        noise_std = torch.rand((), generator=g) * s.noise_std
        noise_seed = int(torch.randint(0, 2**62, (), generator=g))
        return _Scene(frames=frames, framing=framing, distance_m=distance, sh_coeffs=sh, albedo=albedo,
                      background=background, texture=texture, blobs=blobs, occluder=occluder, noise_std=noise_std,
                      noise_seed=noise_seed)

    # ------------------------------------------------------------------------------------------ dataset API
    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> SyntheticFaceSample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[SyntheticFaceSample]:
        """Generate several samples at once (one model forward and one rasterization for all their frames)."""
        return self.generate([int(i) for i in indices])

    @torch.no_grad()
    def generate(self, indices: list[int]) -> list[SyntheticFaceSample]:
        """The samples of ``indices`` (each identical to what any other batching of the same index gives, up to
        floating-point summation order)."""
        scenes = [self._scene(i) for i in indices]
        t = max(1, self.sequence_length)
        frames = _Frames.cat([sc.frames for sc in scenes])  # (N = len(indices) * T, ...)
        coeffs = torch.cat([sc.albedo for sc in scenes]) if self.model_albedo else None  # (B, K_alb)
        mesh = _forward(self.model, frames, None if coeffs is None else coeffs.repeat_interleave(t, dim=0))
        cameras, cam_vectors = self._cameras(scenes, mesh, t)
        channels = self.au_map.channels(frames.expression,
                                        frames.jaw_pose if "jaw_pose" in self.pose_fields else None,
                                        frames.eyelids if self.has_eyelids else None)
        aus = self.au_map.action_units(channels)
        disp = self.wrinkles(channels) if self.wrinkles is not None else None
        albedo_params = None if self.model_albedo else _cat_albedo([sc.albedo for sc in scenes])
        sh = torch.stack([sc.sh_coeffs for sc in scenes])
        albedo, render = self._render(mesh, cameras, albedo_params, sh, disp, t)
        lmk68_ndc = cameras.project(mesh.landmarks68)[..., :2]
        lmk_mp_ndc = cameras.project(mesh.landmarks_mp)[..., :2] if self.has_mediapipe else None
        all_ndc = lmk68_ndc if lmk_mp_ndc is None else torch.cat([lmk68_ndc, lmk_mp_ndc], dim=1)
        hull = convex_hull_mask(ndc_to_pixels(all_ndc, self.image_size), (self.image_size, self.image_size))
        image, seg = self._composite(scenes, render, all_ndc, t)
        position = neutral = None
        if self.uv_mapper is not None:
            position = self._position_map(mesh.verts, cameras)
            neutral = self._position_map(_forward(self.model, frames.neutral()).verts, cameras)
        per_frame = dict(
            image=image, expression=frames.expression, global_pose=frames.global_pose, neck_pose=frames.neck_pose,
            jaw_pose=frames.jaw_pose, eye_pose=frames.eye_pose, eyelids=frames.eyelids,
            landmarks68_3d=mesh.landmarks68, landmarks68_ndc=lmk68_ndc,
            landmarks68_pix=ndc_to_pixels(lmk68_ndc, self.image_size), hull_mask=hull, render_mask=render.mask,
            segmentation=seg, action_units=aus, action_channels=channels, displacement_uv=disp,
            landmarks_mp_ndc=lmk_mp_ndc,
            landmarks_mp_pix=None if lmk_mp_ndc is None else ndc_to_pixels(lmk_mp_ndc, self.image_size),
            verts=mesh.verts if self.return_vertices else None, position_uv=position, position_neutral_uv=neutral,
        )
        static = dict(shape=frames.shape[::t], camera=cam_vectors, sh_coeffs=sh,
                      albedo_params=None if albedo_params is None else albedo_params.as_vector(), albedo=coeffs,
                      albedo_uv=albedo if self.return_albedo else None)
        return [self._sample(i, n, per_frame, static, t) for n, i in enumerate(indices)]

    def _sample(self, index: int, n: int, per_frame: dict, static: dict, t: int) -> SyntheticFaceSample:
        rows = slice(n * t, (n + 1) * t)

        def frame(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            x = x[rows].clone()
            return x if self.sequence_length > 0 else x[0]

        values = {k: frame(v) for k, v in per_frame.items()}
        values.update({k: None if v is None else v[n].clone() for k, v in static.items()})
        return SyntheticFaceSample(index=torch.tensor(index), camera_model=self.camera_model, family=self.family,
                                   **values)

    # ------------------------------------------------------------------------------------------ rendering
    def _cameras(self, scenes: list[_Scene], mesh: MeshOutput, t: int):
        """Frame each sample on its landmarks' bounding box (over all its frames): returns the camera of every
        frame and the (B, C) camera vectors."""
        pts = mesh.landmarks68 if mesh.landmarks_mp is None else torch.cat([mesh.landmarks68, mesh.landmarks_mp], 1)
        pts = pts.view(len(scenes), -1, 3)
        lo, hi = pts.amin(dim=1), pts.amax(dim=1)  # (B, 3)
        centre, side = (lo + hi) / 2, (hi - lo)[:, :2].amax(dim=1)
        framing = torch.stack([sc.framing for sc in scenes])  # (B, 3)
        shift = framing[:, 1:] * side[:, None]
        if self.camera_model == "weak":
            scale = 2.0 / (side * framing[:, 0])
            vec = torch.cat([scale[:, None], -centre[:, :2] + shift], dim=1)
            cam = WeakPerspectiveCamera.from_params(vec.repeat_interleave(t, dim=0))
            return cam, vec
        dist = torch.stack([sc.distance_m for sc in scenes]) / self.metres_per_unit
        focal = self.image_size * dist / (side * framing[:, 0])
        pp = torch.full((len(scenes), 2), self.image_size / 2.0)
        trans = torch.cat([-centre[:, :2] + shift, (-centre[:, 2] - dist)[:, None]], dim=1)
        vec = torch.cat([focal[:, None].expand(-1, 2), pp, trans], dim=1)
        rep = vec.repeat_interleave(t, dim=0)
        n = rep.shape[0]
        cam = PerspectiveCamera(focal=rep[:, 0:2], principal_point=rep[:, 2:4], image_size=self.image_size,
                                rotation=torch.eye(3).expand(n, 3, 3), translation=rep[:, 4:7])
        return cam, vec

    def image_aligned(self, points: Tensor, cameras) -> Tensor:
        """(N, P, 3) model-frame points -> (N, P, 3) image-aligned ``(u, v, z)`` in pixels (module docstring)."""
        view = cameras.to_view(points)
        pix = ndc_to_pixels(cameras.view_to_ndc(view), self.image_size)
        if isinstance(cameras, WeakPerspectiveCamera):
            z = view[..., 2] * (self.image_size / 2.0)  # view = s (x + t): s z, in NDC -> pixels
        else:
            d0 = -cameras.translation[:, 2:3]  # depth of the model origin (rotation is the identity here)
            z = (d0 + view[..., 2]) * cameras.focal[:, 0:1] / d0
        return torch.cat([pix, z[..., None]], dim=-1)

    def _position_map(self, verts: Tensor, cameras) -> Tensor:
        """(N, 3, S, S) image-aligned UV position map, its gutter filled two texels deep (lookups at chart borders,
        e.g. at the vertices, then read the surface instead of zeros)."""
        return dilate_uv_map(self.uv_mapper.position_map(self.image_aligned(verts, cameras)), self.uv_mapper.mask)

    def _render(self, mesh: MeshOutput, cameras, albedo_params: AlbedoParams | None, sh: Tensor,
                disp: Tensor | None, t: int) -> tuple[Tensor, _Render]:
        """Render all N frames with :class:`MeshRenderer`: UV albedo texture or vertex colours (procedural, or the
        model's albedo basis), SH shading, the wrinkle displacement bump-mapped per pixel, back faces (the inside of
        the mouth seen through the lips) as a dark cavity.

        Returns the albedo (per sample: (B, 3, S, S) texture or (B, V, 3) colours) and the render.
        """
        rep = lambda x: x.repeat_interleave(t, dim=0)  # noqa: E731  per-sample -> per-frame
        texture = colours = None
        if self.model_albedo:
            colours = mesh.albedo  # (N, V, 3), per frame already
            albedo = colours[::t]
            if self.return_albedo and self.has_uv:
                albedo = self._albedo_mapper().attribute_map(albedo)
        else:
            albedo = self.albedo(albedo_params)
            if self.albedo.is_texture:
                texture = rep(albedo)
            else:
                colours = rep(albedo)
        bump = disp if self.render_wrinkles and disp is not None and self.has_uv else None
        if bump is not None and self._detail_pool > 1:  # texels much finer than the pixels: filter (one mip level)
            bump = F.avg_pool2d(bump, self._detail_pool)
        out = self.renderer(mesh.verts, cameras, albedo=colours, texture=texture, sh_coeffs=rep(sh),
                            displacement_map=bump, displacement_scale=1e-3 / self.metres_per_unit)  # map in mm
        render = _Render(image=out.image.clamp(0.0, 1.0), mask=out.mask, pix_to_face=out.fragments.pix_to_face)
        return albedo, render

    def _albedo_mapper(self) -> UVMapper:
        if self.uv_mapper is None:
            m = self.model
            self.uv_mapper = UVMapper(m.faces, m.uv, m.faces_uv, self.uv_size, num_verts=m.num_verts)
        return self.uv_mapper

    def _composite(self, scenes: list[_Scene], render, lmk_ndc: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """Background, occluders and noise around the rendered faces; returns images (N, 3, H, W) and the
        segmentation (N, H, W)."""
        size = self.image_size
        bg = torch.stack([_background(sc, size) for sc in scenes]).repeat_interleave(t, dim=0)
        mask = render.mask
        image = render.image * mask + bg * (1 - mask)
        p2f = render.pix_to_face
        seg = torch.where(p2f >= 0, self.face_labels[p2f.clamp(min=0)], 0)
        grid = _pixel_grid(size)
        for n, sc in enumerate(scenes):
            rows = slice(n * t, (n + 1) * t)
            if sc.occluder is not None:
                pts = lmk_ndc[rows].reshape(-1, 2)
                alpha, colour = _occluder(sc.occluder, pts, grid)
                image[rows] = image[rows] * (1 - alpha) + colour * alpha
                seg[rows] = torch.where(alpha[0] > 0.5, _OCCLUDER, seg[rows])
            g = torch.Generator().manual_seed(sc.noise_seed)
            noise = torch.randn(t, 3, size, size, generator=g) * sc.noise_std
            image[rows] = (image[rows] + noise).clamp(0.0, 1.0)
        return image, seg


@dataclass
class _Render:
    image: Tensor  # (N, 3, H, W) shaded colour, 0 off the mesh
    mask: Tensor  # (N, 1, H, W) float coverage
    pix_to_face: Tensor  # (N, H, W) long, -1 off the mesh


def _cat_albedo(items: list[AlbedoParams]) -> AlbedoParams:
    return AlbedoParams(**{f.name: torch.cat([getattr(i, f.name) for i in items]) for f in fields(AlbedoParams)})


def _pixel_grid(size: int) -> Tensor:
    """(H, W, 2) NDC (x, y) of the pixel centres."""
    c = (2.0 * torch.arange(size) + 1.0) / size - 1.0
    return torch.stack(torch.meshgrid(c, -c, indexing="xy"), dim=-1)


def _rotated(grid: Tensor, centre: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    d = grid - centre
    c, s = torch.cos(angle), torch.sin(angle)
    return c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]


def _background(sc: _Scene, size: int) -> Tensor:
    """(3, H, W) a smooth random colour field with texture noise and a few soft ellipses (built at a quarter of
    the resolution, then upsampled: backgrounds carry no fine detail and this keeps them cheap)."""
    low = max(8, size // 4)
    bg = F.interpolate(sc.background[None], size=(low, low), mode="bicubic", align_corners=False)[0]
    bg = bg + F.interpolate(sc.texture[None], size=(low, low), mode="bicubic", align_corners=False)[0]
    grid = _pixel_grid(low)
    for blob in sc.blobs:
        cx, cy, rx, ry, ang, r, g, b = blob
        u, v = _rotated(grid, torch.stack([cx, cy]) * 2 - 1, ang * math.pi)
        d = (u / (0.1 + 0.5 * rx)) ** 2 + (v / (0.1 + 0.5 * ry)) ** 2
        alpha = torch.sigmoid((1 - d) * 8.0) * 0.8
        bg = bg * (1 - alpha) + torch.stack([r, g, b])[:, None, None] * alpha
    return F.interpolate(bg[None], size=(size, size), mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)


def _occluder(params: Tensor, lmk_ndc: Tensor, grid: Tensor) -> tuple[Tensor, Tensor]:
    """An occluder (ellipse, rectangle or a hand-like group of capsules) placed over the face.

    Args:
        params: (9,) in [0, 1]: kind, centre (2, in face boxes), size (2), angle, colour (3).
        lmk_ndc: (L, 2) landmarks of the face (all frames), in NDC.
        grid: (H, W, 2) pixel centres in NDC.

    Returns:
        alpha (1, H, W) in [0, 1] and colour (3, 1, 1).
    """
    kind, cx, cy, sx, sy, ang, r, g, b = params
    lo, hi = lmk_ndc.amin(0), lmk_ndc.amax(0)
    side = (hi - lo).max()
    centre = (lo + hi) / 2 + (torch.stack([cx, cy]) - 0.5) * 1.2 * (hi - lo)
    radii = side * (0.12 + 0.3 * torch.stack([sx, sy]))
    u, v = _rotated(grid, centre, ang * math.pi)
    pixel = 2.0 / grid.shape[0]
    if kind < 0.4:  # ellipse
        sdf = (torch.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2) - 1) * radii.min()
    elif kind < 0.7:  # rectangle
        sdf = torch.maximum(u.abs() - radii[0], v.abs() - radii[1])
    else:  # four parallel fingers
        width = radii[0] / 4
        finger = torch.remainder(u + 4 * width, 2 * width) - width
        sdf = torch.maximum(torch.maximum(finger.abs() - 0.8 * width, v.abs() - radii[1]), u.abs() - 4 * width)
    alpha = torch.sigmoid(-sdf / (0.5 * pixel))[None]
    skin_like = kind >= 0.7
    colour = torch.stack([r, g, b]) if not skin_like else torch.stack([0.55 + 0.4 * r, 0.4 + 0.3 * r, 0.3 + 0.25 * r])
    return alpha, colour[:, None, None]


