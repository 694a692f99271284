"""DualStream's fusion module (paper §III-C, Eq. 19-23): ASMs + stylised albedo -> a textured mesh -> a render.

* Mesh: the identity and expression ASMs of the geometry stream are decoded to positions and summed (Eq. 2), and
  each vertex reads its position at its UV (:meth:`dualstream.asm.AsmCodec.to_vertices`, "recovers the coordinates
  ... of each vertex ... in the way of [14]"). The texture stream's stylised albedo map ``Î_a`` is the mesh's UV
  texture (the same BFM UV layout), generated from the albedo coefficients the geometry stream's PSN predicts.
* Render, Eq. 19, ``I_R = R(I_g, Î_a, p_l, p_h)``: :class:`facelab.render.MeshRenderer` (hard rasterization,
  deferred shading: triangle ids and barycentrics per pixel), full perspective, second-order SH with the predicted
  illumination ``p_l`` (Deep3DFaceRecon layout). The ASMs are image-aligned position maps (PRNet): they already
  hold the head pose ``p_h`` and the projection, so the vertices are lifted into the frame of a pinhole camera at
  ``camera_distance`` crop sides with the focal length that maps them back exactly onto their ASM pixels
  (:func:`lift_to_camera`): the perspective render reproduces the ASMs' image positions and uses their depth for
  visibility and normals. The predicted pose ``p_h`` is thus not applied a second time (doing so would rotate an
  already posed face); it is the PSN's output supervised in stage 1 and written out by ``facelab reconstruct``.
* Losses, Eq. 20-23 (:func:`fusion_losses`):

  - Eq. 20, occlusion-aware pixel loss ``L_pix = 1/(W H) sum ||(I_o - I_R) ⊙ M||_2`` (per-pixel Euclidean norm
    over RGB, averaged over the pixels of the visibility mask ``M`` that the render covers). ``M``: the true
    segmentation on synthetic data (visible skin, no occluders), the landmark hull on 300W-LP, or on other real
    data the hull of the detected landmarks (the fallback for a face parser, :func:`visibility_mask`).
  - Eq. 21, identity loss ``L_id = 1 - <F(I_o), F(I_R)> / (|F(I_o)| |F(I_R)|)`` with a face-recognition network
    (:class:`facelab.losses.IdentityLoss`, ArcFace IResNet-50 from local weights; the render is composited over
    the photo so the network sees a face in context; both are aligned by the photo's five landmarks).
  - Eq. 22, landmark alignment ``L_ali = 1/K sum_k ||H(I_o)_k - H(I_R)_k||_2`` (pixels): ``H(I_o)`` are the photo's
    68 landmarks (the dataset's: truth or a detector's), ``H(I_R)`` the rendered mesh's 68 keypoint vertices (the
    render's exact landmarks, where the paper runs the alignment network on the render).
  - Eq. 23, ``L_em = l1 L_pix + l2 L_id + l3 L_ali`` with ``l1, l2, l3 = 0.1, 2, 1e-2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facelab.losses import IdentityLoss
from facelab.masks import convex_hull_mask
from facelab.render import MeshRenderer, PerspectiveCamera, RenderOutput

__all__ = ["FusionLossWeights", "FusionOutput", "Fusion", "build_geometry_stream", "five_points",
           "geometry_stream_args", "fusion_losses", "lift_to_camera", "pixel_loss", "landmark_alignment_loss",
           "visibility_mask"]

#: iBUG-68 indices of the five ArcFace points: eye centres (mean of each eye's six points), nose tip, mouth corners.
_LEFT_EYE, _RIGHT_EYE, _NOSE, _MOUTH_L, _MOUTH_R = list(range(36, 42)), list(range(42, 48)), 30, 48, 54


def build_geometry_stream(model_path: str = "synthetic", uv_size: int = 256, **kwargs) -> nn.Module:
    """The geometry stream of :mod:`dualstream.geometry` for the BFM at ``model_path`` (``num_albedo`` from the
    model unless given; other keyword arguments are :class:`dualstream.geometry.GeometryStream`'s)."""
    from dualstream.data import load_topology
    from dualstream.geometry import GeometryStream

    kwargs = geometry_stream_args(kwargs)
    kwargs.setdefault("num_albedo", load_topology(model_path).num_albedo)
    return GeometryStream(uv_size=uv_size, **kwargs)


def geometry_stream_args(args: dict) -> dict:
    """``geometry_args`` (a YAML/CLI dict) checked against :class:`dualstream.geometry.GeometryStream`'s signature:
    an unknown key raises with the valid ones; a value given as text (jsonargparse keeps the dotted CLI form
    ``--model.init_args.geometry_args.width=0.25`` of a ``dict`` parameter as the string ``"0.25"``) is read as YAML
    and must then have the annotated type (int, float, bool, str or None)."""
    import inspect
    import typing

    import yaml

    from dualstream.geometry import GeometryStream

    hints = typing.get_type_hints(GeometryStream.__init__)
    valid = [k for k in inspect.signature(GeometryStream.__init__).parameters if k not in ("self", "uv_size")]
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ValueError(f"geometry_args: unknown key(s) {unknown}; the geometry stream takes {valid}")
    out = {}
    for key, value in args.items():
        hint = hints[key]
        allowed = tuple(t for t in typing.get_args(hint) or (hint,))
        if isinstance(value, str) and str not in allowed:
            value = yaml.safe_load(value)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            raise ValueError(f"geometry_args.{key}: expected {hint}, got {value!r}")
        out[key] = value
    return out


@dataclass
class FusionLossWeights:
    """Eq. 23's weights (paper 0.1, 2, 1e-2).

    Attributes:
        pixel: ``lambda_1`` of the occlusion-aware pixel loss (Eq. 20).
        identity: ``lambda_2`` of the identity loss (Eq. 21).
        landmark: ``lambda_3`` of the landmark alignment loss (Eq. 22, pixels).
    """

    pixel: float = 0.1
    identity: float = 2.0
    landmark: float = 1e-2


def five_points(landmarks68: Tensor) -> Tensor:
    """(B, 68, 2) -> (B, 5, 2) ArcFace points (left eye, right eye, nose tip, left and right mouth corner)."""
    return torch.stack([landmarks68[:, _LEFT_EYE].mean(1), landmarks68[:, _RIGHT_EYE].mean(1),
                        landmarks68[:, _NOSE], landmarks68[:, _MOUTH_L], landmarks68[:, _MOUTH_R]], dim=1)


def lift_to_camera(verts_img: Tensor, image_size: int, camera_distance: float = 10.0
                   ) -> tuple[Tensor, PerspectiveCamera]:
    """Image-aligned vertices (crop pixels ``x`` right, ``y`` down, ``z`` toward the camera) -> world points of a
    pinhole camera whose projection of them is exactly ``(x, y)``.

    The camera sits at ``D = camera_distance * image_size`` pixels in front of the face's mean depth with focal
    length ``D`` (so the crop spans the same field of view at any distance); a point at relative depth ``z'`` is
    placed at ``X = (x - c) (D - z') / D``, ``Y = (c - y) (D - z') / D``, ``Z = z'``, which projects back to
    ``(x, y)``.

    Args:
        verts_img: (B, V, 3). image_size: crop side ``H``. camera_distance: ``D / H``.

    Returns:
        (B, V, 3) world points, and the (B-batched) :class:`facelab.render.PerspectiveCamera`.
    """
    b = verts_img.shape[0]
    c, d = image_size / 2.0, camera_distance * image_size
    z = verts_img[..., 2] - verts_img[..., 2].mean(dim=1, keepdim=True)
    factor = (d - z) / d
    world = torch.stack([(verts_img[..., 0] - c) * factor, (c - verts_img[..., 1]) * factor, z], dim=-1)
    kw = {"device": verts_img.device, "dtype": verts_img.dtype}
    camera = PerspectiveCamera(focal=torch.full((b, 2), d, **kw), principal_point=torch.full((b, 2), c, **kw),
                               image_size=(image_size, image_size), rotation=torch.eye(3, **kw).expand(b, 3, 3),
                               translation=torch.tensor([0.0, 0.0, -d], **kw).expand(b, 3))
    return world, camera


def visibility_mask(image_size: int, visibility: Tensor | None, landmarks_pix: Tensor) -> tuple[Tensor, str]:
    """The visibility mask ``M`` of Eq. 20 and its source.

    Args:
        image_size: ``H``. visibility: (B, 1, H, W) from the data (synthetic segmentation, 300W-LP hull) or None.
        landmarks_pix: (B, 68, 2) the photo's landmarks (for the fallback).

    Returns:
        ``(mask (B, 1, H, W), "data" | "landmark_hull")``.
    """
    if visibility is not None:
        return visibility, "data"
    return convex_hull_mask(landmarks_pix, (image_size, image_size)).to(landmarks_pix), "landmark_hull"


def pixel_loss(image: Tensor, render: Tensor, mask: Tensor) -> Tensor:
    """Eq. 20: mean over the masked pixels of ``||I_o - I_R||_2`` (RGB). image, render: (B, 3, H, W); mask
    (B, 1, H, W). Returns a scalar (0 when the mask is empty)."""
    norm = ((image - render) ** 2).sum(dim=1, keepdim=True).add(1e-8).sqrt()
    return (norm * mask).sum() / mask.sum().clamp_min(1.0)


def landmark_alignment_loss(target_pix: Tensor, pred_pix: Tensor) -> Tensor:
    """Eq. 22: mean Euclidean distance of (B, K, 2) landmarks (pixels)."""
    return (target_pix - pred_pix).norm(dim=-1).mean()


@dataclass
class FusionOutput:
    """What the fusion of one batch produced.

    Attributes:
        verts: (B, V, 3) image-aligned vertices of the full face (crop pixels). verts_id: the same, identity only.
        texture: (B, 3, S, S) the stylised albedo map ``Î_a``. albedo_map: (B, 3, S, S) ``I_ua``.
        regions: (B, n, h, w) SSRPM's regions. render: the :class:`facelab.render.RenderOutput` of Eq. 19.
        landmarks_pix: (B, 68, 2) the rendered mesh's landmarks (pixels).
    """

    verts: Tensor
    verts_id: Tensor
    texture: Tensor
    albedo_map: Tensor
    regions: Tensor
    render: RenderOutput
    landmarks_pix: Tensor


class Fusion(nn.Module):
    """Eq. 19: the mesh of ASMs + the stylised texture, rendered (module docstring).

    Args:
        faces, uv, faces_uv: the BFM topology and UV layout. keypoints: (68,) landmark vertex ids.
        image_size: crop side. camera_distance: the pinhole camera's distance in crop sides.

    Shapes:
        ``forward(verts (B, V, 3), texture (B, 3, S, S), sh (B, 27))`` -> ``(RenderOutput, landmarks (B, 68, 2))``.
    """

    def __init__(self, faces: Tensor, uv: Tensor, faces_uv: Tensor, keypoints: Tensor, image_size: int,
                 camera_distance: float = 10.0) -> None:
        super().__init__()
        self.renderer = MeshRenderer(faces, image_size=image_size, uv=uv, faces_uv=faces_uv)
        self.register_buffer("keypoints", torch.as_tensor(keypoints).long(), persistent=False)
        self.image_size, self.camera_distance = int(image_size), float(camera_distance)

    def forward(self, verts: Tensor, texture: Tensor, sh: Tensor) -> tuple[RenderOutput, Tensor]:
        world, camera = lift_to_camera(verts, self.image_size, self.camera_distance)
        render = self.renderer(world, camera, texture=texture, sh_coeffs=sh)
        return render, verts[:, self.keypoints, :2]


def fusion_losses(image: Tensor, out: FusionOutput, landmarks_pix: Tensor, mask: Tensor,
                  identity: IdentityLoss | None, weights: FusionLossWeights) -> dict[str, Tensor]:
    """Eq. 20-22 (Eq. 23 weights them): ``pixel``, ``identity`` (when a network is given and weighted), ``landmark``.

    Args:
        image: (B, 3, H, W) the photo ``I_o``. out: the fusion. landmarks_pix: (B, 68, 2) the photo's landmarks.
        mask: (B, 1, H, W) visibility ``M``. identity: the face-recognition loss. weights: Eq. 23's weights.
    """
    render = out.render
    losses = {"pixel": pixel_loss(image, render.image, mask * render.mask)}
    if identity is not None and weights.identity:
        composite = render.image * render.mask + image * (1.0 - render.mask)
        losses["identity"] = identity(composite, image, landmarks=five_points(landmarks_pix))
    losses["landmark"] = landmark_alignment_loss(landmarks_pix, out.landmarks_pix)
    return losses
