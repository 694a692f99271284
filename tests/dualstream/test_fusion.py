"""The fusion module (Eq. 19-23): ASM vertices lifted into a perspective camera, the render, the losses."""

from __future__ import annotations

import pytest
import torch

from dualstream.data import load_topology
from dualstream.fusion import (
    Fusion,
    FusionLossWeights,
    FusionOutput,
    five_points,
    fusion_losses,
    geometry_stream_args,
    landmark_alignment_loss,
    lift_to_camera,
    pixel_loss,
    visibility_mask,
)


def test_lifted_vertices_project_back_onto_their_asm_pixels():
    g = torch.Generator().manual_seed(0)
    verts = torch.rand(2, 50, 3, generator=g) * torch.tensor([64.0, 64.0, 20.0])
    world, camera = lift_to_camera(verts, 64, camera_distance=3.0)
    pix = camera.project_pixels(world)
    torch.testing.assert_close(pix, verts[..., :2], atol=1e-3, rtol=0)
    ndc = camera.project(world)
    nearer = verts[..., 2] > verts[..., 2].mean(1, keepdim=True)  # larger z = toward the camera = smaller depth
    assert (ndc[..., 2][nearer] < ndc[..., 2][~nearer].min()).any()


def test_pixel_and_landmark_losses():
    image = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    assert pixel_loss(image, image, mask) < 1e-3
    other = image.clone()
    other[..., 0, 0] += 5  # outside the mask: ignored (occlusion-aware)
    assert pixel_loss(image, other, mask) < 1e-3
    assert pixel_loss(image, image + torch.tensor([0.3, 0.4, 0.0])[:, None, None], mask) == pytest.approx(0.5, 1e-3)
    a = torch.zeros(1, 68, 2)
    assert landmark_alignment_loss(a, a + torch.tensor([3.0, 4.0])) == pytest.approx(5.0)
    assert five_points(torch.rand(3, 68, 2)).shape == (3, 5, 2)


def test_visibility_from_data_or_the_landmark_hull():
    lmk = torch.tensor([[[8.0, 8.0], [24.0, 8.0], [24.0, 24.0], [8.0, 24.0]] * 17])
    given = torch.ones(1, 1, 32, 32)
    assert visibility_mask(32, given, lmk)[1] == "data"
    hull, source = visibility_mask(32, None, lmk)
    assert source == "landmark_hull" and hull.shape == (1, 1, 32, 32)
    assert hull[0, 0, 16, 16] == 1 and hull[0, 0, 2, 2] == 0


def test_fusion_renders_the_asm_mesh_with_its_texture():
    topo = load_topology("synthetic")
    codec = topo.codec(32, 64)
    fusion = Fusion(topo.faces, topo.uv, topo.faces_uv, topo.keypoints, 64)
    # the mean face, frontal, in the middle of the crop (image-aligned pixels: y down, z toward the camera)
    v = topo.mean_shape
    scale = 40.0 / float(v[:, 0].max() - v[:, 0].min())
    verts = torch.stack([32 + scale * v[:, 0], 32 - scale * v[:, 1], scale * (v[:, 2] - v[:, 2].min())], -1)[None]
    texture = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    sh = torch.zeros(1, 27)
    sh[:, [0, 9, 18]] = 1.0 / 0.8862  # ambient only: shading 1 (Deep3DFaceRecon band-0 constant)
    render, lmk = fusion(verts, texture, sh)
    assert render.mask.sum() > 200 and lmk.shape == (1, 68, 2)
    covered = render.mask[0, 0] > 0
    assert float(render.image.detach()[0, :, covered].mean()) == pytest.approx(0.5, abs=0.1)
    out = FusionOutput(verts=verts, verts_id=verts, texture=texture, albedo_map=texture, regions=torch.ones(1, 1, 4, 4),
                       render=render, landmarks_pix=lmk)
    losses = fusion_losses(torch.rand(1, 3, 64, 64), out, lmk + 1.0, torch.ones(1, 1, 64, 64), None,
                           FusionLossWeights())
    assert set(losses) == {"pixel", "landmark"} and float(losses["landmark"]) == pytest.approx(2**0.5, 1e-4)
    losses["pixel"].backward()
    assert texture.grad.abs().sum() > 0
    assert codec.to_vertices(codec.from_vertices(verts)).shape == verts.shape


def test_geometry_args_from_the_dotted_cli_form_are_typed_and_unknown_keys_named():
    # jsonargparse keeps `--model.init_args.geometry_args.width=0.25` of a dict parameter as the string "0.25"
    args = geometry_stream_args({"width": "0.25", "decoder_width": 1, "expression_asm": "false",
                                 "vggface_weights": None})
    assert args == {"width": 0.25, "decoder_width": 1.0, "expression_asm": False, "vggface_weights": None}
    assert isinstance(args["decoder_width"], float)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['widht'\].*decoder_width"):
        geometry_stream_args({"widht": 0.5})
    with pytest.raises(ValueError, match="geometry_args.width"):
        geometry_stream_args({"width": "wide"})
    with pytest.raises(ValueError, match="geometry_args.expression_asm"):
        geometry_stream_args({"expression_asm": 1})
