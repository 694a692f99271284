"""What a reconstruction method hands to ``facelab reconstruct``, for any morphable-model family.

A method's reconstructor (:class:`Reconstructor`) turns face crops into a :class:`FaceEncoding` (the family's
:class:`~facelab.morphable.base.MorphableParams` and a camera) and decodes an encoding into a
:class:`Reconstruction` (the :class:`~facelab.morphable.base.MeshOutput`, a render and an overlay, plus any
method-specific images). The command writes the meshes of :attr:`Reconstructor.meshes` (:class:`MeshTopology`:
faces and UVs of the whole model or of a region) and the parameters as arrays named after the params and camera
dataclass fields (:func:`encoding_to_arrays`), so it never asks which family or method it runs.

Shapes: ``B`` batch, ``S`` crop side, ``V`` vertices, ``F`` faces, ``T`` UV coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from facelab.morphable.base import MeshOutput, MorphableParams
from facelab.render.camera import PerspectiveCamera, WeakPerspectiveCamera

__all__ = [
    "CAMERA_PREFIX",
    "FaceEncoding",
    "MeshTopology",
    "Reconstruction",
    "Reconstructor",
    "describe_conventions",
    "encoding_from_arrays",
    "encoding_to_arrays",
    "region_topology",
]

#: Camera fields are written as ``camera_<field>`` arrays beside the params fields.
CAMERA_PREFIX = "camera_"


@dataclass
class MeshTopology:
    """The triangles (and UV layout) of a mesh, possibly a region of a larger one.

    Attributes:
        vertex_ids: (V_r,) long ids of the model's vertices this mesh uses (``verts[:, vertex_ids]``).
        faces: (F_r, 3) long triangles indexing ``vertex_ids``' order.
        uv: (T_r, 2) UV coordinates in [0, 1], v up; (0, 2) without UVs.
        faces_uv: (F_r, 3) long per-corner indices into ``uv``; (0, 3) without UVs.
        texture: the name of one of :attr:`Reconstruction.extra_images` that is this mesh's UV texture map: the
            OBJ then references ``<face>_<mesh>.mtl`` -> ``<face>_<texture>.png``; None: an untextured OBJ.
    """

    vertex_ids: Tensor
    faces: Tensor
    uv: Tensor
    faces_uv: Tensor
    texture: str | None = None

    @property
    def has_uv(self) -> bool:
        return self.uv.numel() > 0


def region_topology(model: nn.Module, face_ids: Tensor | None = None) -> MeshTopology:
    """The sub-mesh made of some faces of a morphable model, vertices and UVs re-indexed (compactly, in order).

    Args:
        model: a :class:`facelab.morphable.base.MorphableModel` (``faces``, ``uv``, ``faces_uv`` buffers).
        face_ids: (F_r,) long indices of the faces to keep (e.g. ``model.region_faces("face")``); None: all.

    Returns:
        :class:`MeshTopology`; with ``face_ids=None`` it is the full mesh (``vertex_ids = arange(V)``).
    """
    faces, uv, faces_uv = model.faces.cpu(), model.uv.cpu(), model.faces_uv.cpu()
    if face_ids is None:
        return MeshTopology(torch.arange(model.num_verts), faces, uv, faces_uv)
    face_ids = face_ids.cpu()
    vertex_ids, faces_r = torch.unique(faces[face_ids], return_inverse=True)
    if uv.numel() == 0:
        return MeshTopology(vertex_ids, faces_r, uv, faces_uv)
    uv_ids, faces_uv_r = torch.unique(faces_uv[face_ids], return_inverse=True)
    return MeshTopology(vertex_ids, faces_r, uv[uv_ids], faces_uv_r)


@dataclass
class FaceEncoding:
    """What a method estimates for a batch of crops, in family-agnostic terms.

    Attributes:
        params: the family's :class:`~facelab.morphable.base.MorphableParams` (B, ...) (e.g. ``FlameParams``).
        camera: the camera mapping the model frame onto each crop (a :mod:`facelab.render.camera` camera with
            (B, ...) tensors), e.g. :class:`~facelab.render.camera.WeakPerspectiveCamera`.
    """

    params: MorphableParams
    camera: Any

    @property
    def batch_size(self) -> int:
        return int(self.params.expression.shape[0])


@dataclass
class Reconstruction:
    """What :meth:`Reconstructor.decode` returns for a batch of crops.

    Attributes:
        encoding: the (possibly smoothed) encoding the meshes were built from.
        mesh: the model's output (``verts`` (B, V, 3) in the model frame, landmarks, albedo where it has one).
        render: (B, 3, S, S) the rendered mesh in [0, 1] (0 on the background).
        render_mask: (B, 1, S, S) its coverage.
        overlay: (B, 3, S, S) the render blended over the crops.
        extra_images: name -> (B, 3, S, S) in [0, 1]: the method's other outputs per crop (written as
            ``<face>_<name>.png`` and, for videos, ``<stem>_<name>.mp4``); the same names for every batch.
        extra_arrays: name -> (B, ...) the method's other per-face arrays, written as ``<face>_<name>.npy``
            (images only; e.g. UV maps too large for the parameter files).
        extra_png16: name -> (B, H, W) integer levels in [0, 65535], written losslessly as single-channel 16-bit
            PNGs ``<face>_<name>.png`` (images only; e.g. displacement maps in FaceScape's uint16 encoding). Their
            names must differ from :attr:`extra_images`' (both are ``.png`` files).
    """

    encoding: FaceEncoding
    mesh: MeshOutput
    render: Tensor
    render_mask: Tensor
    overlay: Tensor
    extra_images: dict[str, Tensor] = field(default_factory=dict)
    extra_arrays: dict[str, Tensor] = field(default_factory=dict)
    extra_png16: dict[str, Tensor] = field(default_factory=dict)

    @property
    def verts(self) -> Tensor:
        """(B, V, 3) the model-frame vertices."""
        return self.mesh.verts


@runtime_checkable
class Reconstructor(Protocol):
    """What ``facelab reconstruct`` needs from a method (built by its :class:`facelab.methods.ReconstructEntry`).

    Attributes:
        image_size: crop side ``S`` the method takes.
        device: where it runs (crops are moved there).
        model: its :class:`~facelab.morphable.base.MorphableModel` (``faces``, ``uv``, ``faces_uv``, ``units``).
        meshes: name -> :class:`MeshTopology` written per face as ``<face>_<name>.obj`` (e.g. the whole model and
            a region), vertex ids into ``mesh.verts``.
        uses_face_hull: :meth:`decode` wants the crops' face hulls (the convex hull of mediapipe's 478 landmarks).
    """

    image_size: int
    device: torch.device
    model: nn.Module
    meshes: Mapping[str, MeshTopology]
    uses_face_hull: bool

    def encode(self, crops: Tensor) -> FaceEncoding:
        """(B, 3, S, S) RGB crops in [0, 1] -> :class:`FaceEncoding`."""
        ...

    def decode(self, encoding: FaceEncoding, crops: Tensor, face_hull: Tensor | None = None) -> Reconstruction:
        """Meshes, renders and overlays of an encoding (e.g. :meth:`encode`'s, possibly smoothed).

        ``face_hull``: (B, 1, S, S) hull masks when :attr:`uses_face_hull` (all-zero rows where a crop has no
        landmarks), else None."""
        ...

    def settings(self) -> dict:
        """JSON-able description of the model (written beside the parameters)."""
        ...


# ------------------------------------------------------------------------------------------------------------------
# Encodings as arrays (parameter files, video smoothing)
# ------------------------------------------------------------------------------------------------------------------


def _tensor_fields(obj) -> dict[str, Tensor]:
    if not is_dataclass(obj):
        raise TypeError(f"expected a dataclass (params or camera), got {type(obj).__name__}")
    return {f.name: v for f in fields(obj) if isinstance(v := getattr(obj, f.name), Tensor)}


def encoding_to_arrays(encoding: FaceEncoding) -> dict[str, np.ndarray]:
    """The encoding as float32 arrays named after its dataclass fields: every tensor field of the params (e.g.
    ``identity``, ``expression``, ``jaw_pose``; fields that are None are left out) and ``camera_<field>`` for the
    camera's (e.g. ``camera_scale`` (B,), ``camera_translation`` (B, 2)). Each array is (B, ...)."""
    params = {name: t.detach().float().cpu().numpy() for name, t in _tensor_fields(encoding.params).items()}
    camera = {CAMERA_PREFIX + name: t.detach().float().cpu().numpy()
              for name, t in _tensor_fields(encoding.camera).items()}
    clash = set(params) & set(camera)
    if clash:
        raise ValueError(f"params fields {sorted(clash)} collide with the camera's array names")
    return {**params, **camera}


def encoding_from_arrays(arrays: Mapping[str, np.ndarray], like: FaceEncoding) -> FaceEncoding:
    """Inverse of :func:`encoding_to_arrays` (e.g. after smoothing a sequence): an encoding of ``like``'s types,
    with ``like``'s non-tensor fields (e.g. a camera's ``depth_offset``) and its tensors' device and dtype.

    Raises:
        KeyError: an array of one of ``like``'s tensor fields is missing.
    """
    def rebuild(obj, prefix: str):
        tensors = _tensor_fields(obj)
        missing = [prefix + name for name in tensors if prefix + name not in arrays]
        if missing:
            raise KeyError(f"encoding_from_arrays: no array for {missing} (have {sorted(arrays)})")
        return replace(obj, **{name: torch.as_tensor(np.asarray(arrays[prefix + name]), device=t.device,
                                                     dtype=t.dtype) for name, t in tensors.items()})

    return FaceEncoding(params=rebuild(like.params, ""), camera=rebuild(like.camera, CAMERA_PREFIX))


def describe_conventions(encoding: FaceEncoding, units: str) -> str:
    """How to map a written reconstruction back to the image (stored in every parameter file).

    Args:
        encoding: an encoding of the method (its camera type decides the projection text).
        units: the model's length unit (``MorphableModel.units``).
    """
    frame = (f"verts: the model frame ({units}, right-handed, +y up, the face looks along +z). Params arrays are "
             "the fields of the model's params dataclass; poses are axis-angle. ")
    camera = encoding.camera
    if isinstance(camera, WeakPerspectiveCamera):
        proj = ("Weak perspective: x_ndc = camera_scale * (x + camera_translation[0]), y_ndc = camera_scale * "
                "(y + camera_translation[1]); ")
    elif isinstance(camera, PerspectiveCamera):
        proj = ("Pinhole: x_view = camera_rotation @ x + camera_translation, depth = -z_view, u = cx + fx * "
                "x_view / depth, v = cy - fy * y_view / depth (camera_focal = [fx, fy], camera_principal_point = "
                "[cx, cy] in crop pixels); x_ndc = 2u/S - 1, y_ndc = 1 - 2v/S; ")
    else:
        proj = f"camera: {type(camera).__name__} (camera_* arrays are its fields); "
    crop = ("NDC spans the crop with +y up; crop pixel u = (x_ndc + 1) * S/2, v = (1 - y_ndc) * S/2 (origin at the "
            "crop's top-left corner); image pixel = crop_to_image @ [u, v, 1] (crop_matrix is its inverse).")
    return frame + proj + crop
