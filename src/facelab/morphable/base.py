"""The interface every morphable model shares, and the small ops they all use.

Glossary of shapes: ``B`` batch, ``V`` vertices, ``F`` faces (triangles), ``T`` UV coordinates, ``J`` joints,
``L`` landmarks, ``K`` components of a linear basis.

Coordinate frame of every model's output: right-handed, +y up, the face looks along +z; FLAME/BFM-sized models
keep their native units (FLAME metres, BFM Deep3DFaceRecon units, ICT centimetres) and say so in ``units``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from facelab.rotations import axis_angle_to_matrix


@dataclass
class MorphableParams:
    """Coefficients of a morphable model, with the same field names in every family.

    Family subclasses (:class:`~facelab.morphable.flame.FlameParams`, ``BfmParams``, ``BilinearParams``,
    ``IctParams``) add their own optional fields after these three (FLAME: joint poses and eyelids).

    Attributes:
        identity: (B, K_id) identity coefficients (FLAME ``shape``, BFM ``id``, FaceScape identity offsets, ICT
            identity weights); N(0, 1) prior in every family.
        expression: (B, K_exp) expression coefficients (N(0, 1) PCA coefficients for FLAME/BFM, blendshape
            weights in [0, 1] for FaceScape/ICT: see :attr:`MorphableModel.expression_range`).
        albedo: (B, K_alb) colour coefficients, N(0, 1) prior (models with a colour basis); None skips the albedo.
    """

    identity: Tensor
    expression: Tensor
    albedo: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.identity.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        """The fields that hold tensors (None fields left out), by name."""
        return {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}

    def _map(self, fn) -> MorphableParams:
        return replace(self, **{name: fn(t) for name, t in self.tensors().items()})

    def detach(self) -> MorphableParams:
        """A copy of the same type with every tensor detached."""
        return self._map(Tensor.detach)

    def to(self, *args, **kwargs) -> MorphableParams:
        """A copy of the same type with every tensor moved/cast by ``Tensor.to``."""
        return self._map(lambda t: t.to(*args, **kwargs))


@dataclass
class MeshOutput:
    """What a morphable model's forward returns.

    Attributes:
        verts: (B, V, 3) vertex positions in the model frame.
        landmarks68: (B, 68, 3) iBUG-68 landmarks (FLAME: 17 yaw-dependent contour points then 51 static).
        landmarks_mp: (B, 105, 3) the mediapipe-subset landmarks where the model has that embedding.
        joints: (B, J, 3) posed joint locations (skinned models only).
        albedo: (B, V, 3) per-vertex colour in [0, 1] (models with a colour basis only).
    """

    verts: Tensor
    landmarks68: Tensor | None = None
    landmarks_mp: Tensor | None = None
    joints: Tensor | None = None
    albedo: Tensor | None = None

    def to(self, *args, **kwargs) -> MeshOutput:
        return type(self)(**{f.name: _maybe_to(getattr(self, f.name), *args, **kwargs) for f in fields(self)})

    def rotated(self, rotation: Tensor) -> MeshOutput:
        """The output rotated about the model origin by ``rotation`` (B, 3, 3) (every point field; albedo kept)."""
        rot_t = rotation.transpose(-1, -2)
        points = ("verts", "landmarks68", "landmarks_mp", "joints")
        return replace(self, **{k: getattr(self, k) @ rot_t for k in points if getattr(self, k) is not None})


def _maybe_to(x, *args, **kwargs):
    return x.to(*args, **kwargs) if isinstance(x, Tensor) else x


def barycentric_points(verts: Tensor, faces: Tensor, face_idx: Tensor, bary: Tensor) -> Tensor:
    """Points given as (face, barycentric coordinates) on a batch of meshes.

    Args:
        verts: (B, V, 3).
        faces: (F, 3) long.
        face_idx: (L,) or (B, L) long, the face each point lies on.
        bary: (L, 3) or (B, L, 3) barycentric coordinates.

    Returns:
        (B, L, 3) the points.
    """
    corner_ids = faces[face_idx]  # (L,3) or (B,L,3)
    if corner_ids.dim() == 2:
        tri = verts[:, corner_ids]  # (B, L, 3 corners, 3 xyz)
    else:
        b = torch.arange(verts.shape[0], device=verts.device)[:, None, None]
        tri = verts[b, corner_ids]
    return (tri * bary.to(verts.dtype).unsqueeze(-1)).sum(dim=-2)


def faces_in_region(faces: Tensor, vertex_ids: Tensor) -> Tensor:
    """Indices of the faces whose three corners all lie in ``vertex_ids`` (a named vertex region)."""
    inside = torch.zeros(int(faces.max()) + 1, dtype=torch.bool, device=faces.device)
    inside[vertex_ids] = True
    return torch.nonzero(inside[faces].all(dim=1)).squeeze(1)


class MorphableModel(nn.Module):
    """Base class of FLAME, BFM, bilinear and ICT models: one API over every family.

    Subclasses register these buffers (all on the module, so ``.to(device, dtype)`` moves them):
        faces: (F, 3) long, triangles, counter-clockwise seen from outside (front faces point out).
        uv: (T, 2) float UV coordinates in [0, 1], v up (OBJ convention); empty (0, 2) if the model has none.
            (ICT-FaceKit keeps its UDIM layout: tile k at u in [k, k + 1]; its face is tile 0.)
        faces_uv: (F, 3) long, per-corner indices into ``uv`` (UV seams make these differ from ``faces``).
    and fill ``self.regions``: named vertex regions (``dict[str, Tensor]`` of long vertex ids, registered as
    buffers ``region_<name>``).

    What every model answers, so that generic code (fitting, the synthetic world) never asks for the family:

    - :attr:`params_type` and :attr:`pose_fields` (the family's optional parameter fields this model uses),
      :meth:`make_params`, :meth:`neutral_params`, :meth:`random_params`;
    - :attr:`num_identity`, :attr:`num_expression`, :attr:`num_albedo` (0: no colour basis),
      :attr:`expression_range` (None: N(0, 1) coefficients; ``(0, 1)``: blendshape weights);
    - ``forward(params) -> MeshOutput`` and :meth:`forward_posed` (with a head rotation: FLAME's root joint, a
      rigid rotation of the output for the others);
    - :attr:`has_skeleton`, :attr:`has_eyelids`, :attr:`jaw_open_component` (the expression component that
      opens the jaw of a model without a jaw joint), :attr:`mediapipe_embedding`, :attr:`has_uv`, ``regions``,
      ``units``; :attr:`is_synthetic` and :attr:`synthetic_expression_offset` for the generated stand-ins.
    """

    faces: Tensor
    uv: Tensor
    faces_uv: Tensor
    units: str = "m"
    #: K_id, the width of ``params.identity`` (set by each model).
    num_identity: int
    #: K_exp, the width of ``params.expression`` (set by each model).
    num_expression: int
    #: K_alb, the width of ``params.albedo``; 0 when the model has no colour basis.
    num_albedo: int = 0
    #: The family's parameter dataclass (a :class:`MorphableParams` subclass).
    params_type: ClassVar[type[MorphableParams]] = MorphableParams
    #: None: expression coefficients are N(0, 1) PCA coefficients; (lo, hi): blendshape weights in that range.
    expression_range: ClassVar[tuple[float, float] | None] = None
    #: The model poses joints (FLAME: global, neck, jaw, eyes) through fields of its params.
    has_skeleton: ClassVar[bool] = False
    #: Index of the procedural head's first expression component in the generated stand-in (see
    #: :attr:`synthetic_expression_offset`); the components before it are the stand-in's own (a jaw opening).
    _synthetic_expression_start: ClassVar[int] = 0
    #: ``(k, radians)`` of the stand-in's jaw-opening expression component (see :attr:`jaw_open_component`).
    _synthetic_jaw_open: ClassVar[tuple[int, float] | None] = None

    def __init__(self) -> None:
        super().__init__()
        self._region_names: list[str] = []
        #: Built from a generated stand-in (``model_path="synthetic..."``), whose components have known meanings.
        self.is_synthetic = False
        #: The model has eyelid blendshapes driven by an ``eyelids`` parameter field (FLAME with SMIRK's files).
        self.has_eyelids = False

    def register_constant(self, name: str, value, dtype: torch.dtype | None = None) -> None:
        """Register asset data as a non-persistent buffer: ``.to()`` moves and casts it, checkpoints leave it out
        (it is rebuilt from the asset files, which are large and often licensed).

        Args:
            name: buffer name. value: array-like. dtype: default ``torch.get_default_dtype()``.
        """
        array = np.ascontiguousarray(value)
        self.register_buffer(name, torch.as_tensor(array, dtype=dtype or torch.get_default_dtype()), persistent=False)

    def register_topology(self, faces, uv=None, faces_uv=None) -> None:
        """Register ``faces`` (F, 3) and the per-corner UV layout ``uv`` (T, 2) / ``faces_uv`` (F, 3) (empty when
        the model has no UVs)."""
        self.register_constant("faces", faces, torch.long)
        self.register_constant("uv", np.zeros((0, 2)) if uv is None else np.reshape(uv, (-1, 2)))
        self.register_constant("faces_uv", np.zeros((0, 3)) if faces_uv is None else np.reshape(faces_uv, (-1, 3)),
                               torch.long)

    def register_region(self, name: str, vertex_ids) -> None:
        self.register_buffer(f"region_{name}", torch.as_tensor(vertex_ids, dtype=torch.long), persistent=False)
        if name not in self._region_names:
            self._region_names.append(name)

    def register_regions(self, regions: dict) -> None:
        """Register every ``name -> vertex ids`` entry of ``regions`` (see :meth:`register_region`)."""
        for name, ids in regions.items():
            self.register_region(name, ids)

    @property
    def regions(self) -> dict[str, Tensor]:
        """Named vertex regions: name -> (N,) long vertex ids."""
        return {name: getattr(self, f"region_{name}") for name in self._region_names}

    def region_faces(self, name: str) -> Tensor:
        """(F_r,) indices of the faces entirely inside the named vertex region."""
        if name not in self._region_names:
            raise KeyError(f"{type(self).__name__} has no region '{name}'; it has {sorted(self._region_names)}")
        return faces_in_region(self.faces, getattr(self, f"region_{name}"))

    @property
    def num_verts(self) -> int:
        raise NotImplementedError

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    # ------------------------------------------------------------------------------------------ common API
    @property
    def has_uv(self) -> bool:
        """Whether the model has a UV layout (``uv`` / ``faces_uv`` non-empty)."""
        return self.uv.numel() > 0 and self.faces_uv.numel() > 0

    @property
    def pose_fields(self) -> tuple[str, ...]:
        """Names of the optional fields of :attr:`params_type` this model uses (FLAME: its joint poses, and
        ``eyelids`` when the eyelid blendshapes are loaded); () for the linear models."""
        return ()

    @property
    def mediapipe_embedding(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(mp_indices (L,), face_idx (L,), bary (L, 3))``: the mediapipe face-mesh points (indices into its
        478) embedded on this mesh, or None where the model has no such embedding."""
        return None

    @property
    def jaw_open_component(self) -> tuple[int, float] | None:
        """``(k, radians)``: expression component ``k`` opens the jaw by ``radians`` per unit, for a model that
        opens its jaw with a blendshape whose meaning is known (the generated BFM / FaceScape stand-ins); None
        for FLAME (``jaw_pose[:, 0]`` opens the jaw) and for unlabelled bases."""
        return self._synthetic_jaw_open if self.is_synthetic else None

    @property
    def synthetic_expression_offset(self) -> int | None:
        """For a generated stand-in, the index of the first of the procedural head's expression components in
        ``params.expression`` (their meanings: ``facelab.data.wrinkles.HEAD_EXPRESSION_TABLE``); None for a
        model read from real assets."""
        return self._synthetic_expression_start if self.is_synthetic else None

    def _like(self) -> Tensor:
        """A buffer whose device and dtype the parameters of this model take."""
        raise NotImplementedError

    def make_params(self, identity: Tensor, expression: Tensor, albedo: Tensor | None = None,
                    **extra: Tensor | None) -> MorphableParams:
        """This family's params from the common blocks.

        Args:
            identity: (B, K_id). expression: (B, K_exp). albedo: (B, K_alb) or None.
            **extra: the family's optional fields (:attr:`pose_fields`, e.g. FLAME's ``jaw_pose`` (B, 3)); None
                values are left unset.

        Raises:
            ValueError: a field this model does not use (the message lists :attr:`pose_fields`).
        """
        unknown = sorted(k for k, v in extra.items() if v is not None and k not in self.pose_fields)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no parameter fields {unknown}; its optional fields are "
                             f"{list(self.pose_fields)}")
        given = {k: v for k, v in extra.items() if v is not None}
        return self.params_type(identity=identity, expression=expression, albedo=albedo, **given)

    def _pose_widths(self) -> dict[str, int]:
        """Width of each field of :attr:`pose_fields`."""
        return {}

    def neutral_params(self, batch_size: int = 1) -> MorphableParams:
        """The mean face: zero identity, neutral expression, zero albedo (with a colour basis) and zero poses, as
        tensors on this model's device and dtype (ready to be optimised)."""
        z = self._like().new_zeros
        alb = z(batch_size, self.num_albedo) if self.num_albedo else None
        poses = {k: z(batch_size, n) for k, n in self._pose_widths().items()}
        return self.make_params(z(batch_size, self.num_identity), z(batch_size, self.num_expression), alb, **poses)

    def random_params(self, batch_size: int, generator: torch.Generator | None = None, identity_scale: float = 1.0,
                      expression_scale: float = 1.0, albedo_scale: float = 1.0) -> MorphableParams:
        """Samples of the model's prior on this model's device and dtype.

        identity ~ N(0, identity_scale^2); expression ~ N(0, expression_scale^2) for PCA expressions, or
        ``lo + (hi - lo) * U(0, 1) * expression_scale`` for blendshape weights (:attr:`expression_range`);
        albedo ~ N(0, albedo_scale^2) where the model has a colour basis; poses zero.

        Args:
            batch_size: B.
            generator: the random source (its device is where the samples are drawn; then moved).
        """
        like = self._like()
        dev = generator.device if generator is not None else torch.device("cpu")

        def normal(k: int, scale: float) -> Tensor:
            return (torch.randn(batch_size, k, generator=generator, device=dev) * scale).to(like)

        if self.expression_range is None:
            expression = normal(self.num_expression, expression_scale)
        else:
            lo, hi = self.expression_range
            u = torch.rand(batch_size, self.num_expression, generator=generator, device=dev).to(like)
            expression = lo + (hi - lo) * u * expression_scale
        identity = normal(self.num_identity, identity_scale)
        albedo = normal(self.num_albedo, albedo_scale) if self.num_albedo else None
        poses = {k: like.new_zeros(batch_size, n) for k, n in self._pose_widths().items()}
        return self.make_params(identity, expression, albedo, **poses)

    def as_params(self, params: MorphableParams) -> MorphableParams:
        """``params`` as this family's type: a plain :class:`MorphableParams` is converted, the family's own type
        passes through.

        Raises:
            TypeError: params of another family (e.g. ``FlameParams`` given to a BFM).
        """
        if isinstance(params, self.params_type):
            return params
        if type(params) is MorphableParams:
            return self.params_type(identity=params.identity, expression=params.expression, albedo=params.albedo)
        raise TypeError(f"{type(self).__name__} takes {self.params_type.__name__} (or MorphableParams), "
                        f"got {type(params).__name__}")

    def check_params(self, params: MorphableParams) -> None:
        """Raise a ValueError naming the field when a block's shape does not fit this model.

        identity must be (B, K_id), expression (B, K_exp), albedo (B, K_alb) or None (and None without a colour
        basis), each field of :attr:`pose_fields` (B, width) or None.
        """
        name = self.params_type.__name__
        if params.identity.dim() != 2:
            raise ValueError(f"{name}.identity must be (B, {self.num_identity}), got {tuple(params.identity.shape)}")
        b = params.identity.shape[0]
        blocks = [("identity", params.identity, self.num_identity),
                  ("expression", params.expression, self.num_expression)]
        if params.albedo is not None:
            if not self.num_albedo:
                raise ValueError(f"{name}.albedo given but {type(self).__name__} has no colour basis (num_albedo=0)")
            blocks.append(("albedo", params.albedo, self.num_albedo))
        blocks += [(k, getattr(params, k), n) for k, n in self._pose_widths().items() if getattr(params, k) is not None]
        for field, t, n in blocks:
            if t.shape != (b, n):
                raise ValueError(f"{name}.{field} must be (B, {n}) = ({b}, {n}) for this model (B from identity), "
                                 f"got {tuple(t.shape)}")

    def forward_posed(self, params: MorphableParams, head_pose: Tensor | None = None) -> MeshOutput:
        """The meshes under a head rotation, whatever the family.

        Args:
            params: this family's params.
            head_pose: (B, 3) axis-angle head rotation, or None. Skinned models (FLAME) rotate their root joint
                (``global_pose``, which must then be unset in ``params``); the others rotate the output rigidly
                about the model origin.

        Returns:
            MeshOutput in the model frame.
        """
        if head_pose is None:
            return self(params)
        return self(params).rotated(axis_angle_to_matrix(head_pose))
