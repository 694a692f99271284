"""UV rasterization: attribute/position/normal maps, masks, UV maps back to vertices, gutter dilation."""

from __future__ import annotations

import pytest
import torch

from facelab.uv import UVMapper, dilate_uv_map, rasterize_uv


def _texel_centres(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(size) + 0.5) / size
    return c[None].expand(size, -1), (1 - c)[:, None].expand(-1, size)  # u, v; row 0 is v = 1


def test_position_map_of_a_plane_is_its_uv_layout(make_grid):
    verts, faces, uv, faces_uv = make_grid(6)
    mapper = UVMapper(faces, uv, faces_uv, size=16)
    assert mapper.mask.shape == (1, 1, 16, 16) and mapper.mask.all()  # the layout covers [0, 1]^2
    pos = mapper.position_map(verts[None])
    u, v = _texel_centres(16)
    torch.testing.assert_close(pos[0, 0], 2 * u - 1, atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0, 1], 2 * v - 1, atol=1e-5, rtol=0)
    assert (pos[0, 2] == 0).all()
    normals = mapper.normal_map(verts[None])
    torch.testing.assert_close(normals[0, 2], torch.ones(16, 16))
    assert rasterize_uv(uv, faces_uv, (8, 12)).pix_to_face.shape == (1, 8, 12)


def test_maps_and_vertices_round_trip(make_grid):
    verts, faces, uv, faces_uv = make_grid(8, height=lambda x, y: 0.3 * (1 - x**2 - y**2))
    mapper = UVMapper(faces, uv, faces_uv, size=64)
    # A per-vertex attribute linear in (x, y) survives the trip exactly (bilinear sampling of a linear map)...
    linear = (verts[:, :2] @ torch.tensor([[0.5], [-2.0]]) + 0.25)[None]
    back = mapper.to_vertices(mapper.attribute_map(linear))
    inner = (uv > 1 / 64).all(1) & (uv < 1 - 1 / 64).all(1)
    torch.testing.assert_close(back[0, inner], linear[0, inner], atol=1e-5, rtol=0)
    # ...and positions of a curved surface come back to within the map's resolution.
    pos = mapper.to_vertices(mapper.position_map(verts[None]))
    assert (pos[0] - verts).abs().max() < 0.02
    batched = mapper.attribute_map(torch.stack([linear[0], 2 * linear[0]]), background=-1.0)
    assert batched.shape == (2, 1, 64, 64)
    torch.testing.assert_close(batched[1], 2 * batched[0])


def test_seam_vertices_average_their_uv_copies_and_partial_layouts_mask(make_cylinder):
    verts, faces, uv, faces_uv = make_cylinder(around=12, rows=4)
    mapper = UVMapper(faces, uv, faces_uv, size=48, num_verts=verts.shape[0])
    assert mapper.vert_uv_pairs.shape[0] == verts.shape[0] + 5  # one extra UV copy per seam vertex
    normals = mapper.normal_map(verts[None])
    m = mapper.mask[0, 0] > 0
    pos = mapper.position_map(verts[None])
    radial = torch.nn.functional.normalize(pos[0, [0, 2]], dim=0)
    cos = normals[0, 0] * radial[0] + normals[0, 2] * radial[1]
    assert cos[m].min() > 0.95 and normals[0, 1][m].abs().max() < 1e-5
    height = mapper.to_vertices(pos[:, 1:2])
    inner = verts[:, 1].abs() < 0.99
    torch.testing.assert_close(height[0, inner, 0], verts[inner, 1], atol=1e-5, rtol=0)
    # A layout that covers half the square leaves the rest invalid.
    half = UVMapper(faces, uv * 0.5, faces_uv, size=32)
    assert half.mask[..., :16, 16:].sum() == 0 and half.mask[..., 16:, :16].mean() > 0.9


def test_dilation_fills_the_gutter_and_keeps_valid_texels():
    values = torch.arange(36.0).view(1, 1, 6, 6)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 2:4, 2:4] = 1
    out = dilate_uv_map(values, mask, iterations=1)
    torch.testing.assert_close(out[..., 2:4, 2:4], values[..., 2:4, 2:4])
    torch.testing.assert_close(out[0, 0, 1, 1], values[0, 0, 2, 2])  # only one valid neighbour
    torch.testing.assert_close(out[0, 0, 1, 2], (values[0, 0, 2, 2] + values[0, 0, 2, 3]) / 2)
    assert out[0, 0, 0, 0] == 0  # two texels away: not reached in one iteration
    assert dilate_uv_map(values, mask, iterations=3)[0, 0, 0, 0] != 0


def test_maps_of_the_synthetic_head_layout():
    head_module = pytest.importorskip("facelab.morphable.synthetic.head")
    head = head_module.build_head(size="tiny", n_identity=1, n_expression=1)
    faces, uv, faces_uv = (torch.as_tensor(a) for a in (head.faces, head.uv, head.faces_uv))
    verts = torch.as_tensor(head.verts, dtype=torch.float32)[None]
    mapper = UVMapper(faces, uv, faces_uv, size=64, num_verts=verts.shape[1])
    mask = mapper.mask[0, 0] > 0
    assert 0.2 < mask.float().mean() < 1.0
    pos = mapper.position_map(verts)
    lo, hi = verts[0].amin(0), verts[0].amax(0)
    inside = (pos[0].permute(1, 2, 0)[mask] >= lo - 1e-6).all() & (pos[0].permute(1, 2, 0)[mask] <= hi + 1e-6).all()
    assert inside and (pos[0][:, ~mask] == 0).all()
    normals = mapper.normal_map(verts)
    torch.testing.assert_close(normals[0].norm(dim=0)[mask], torch.ones(int(mask.sum())))
    back = mapper.to_vertices(pos)
    assert (back[0] - verts[0]).norm(dim=1).median() < 0.01  # metres, on a coarse 64^2 map
