"""Geometry stream networks (Eq. 1-3) and losses (Eq. 4-8): shapes, weights, symmetry 0 on a symmetric map."""

import pytest
import torch

from dualstream.asm import AsmCodec
from dualstream.data import FaceTopology
from dualstream.geometry import AttributeDecoder, GeometryStream, ParametricSubNetwork, VGGFaceEncoder
from dualstream.geometry_losses import (
    asm_loss,
    mirror_uv_grid,
    mirror_vertex_ids,
    symmetry_loss_aligned,
)
from facelab.rotations import axis_angle_to_matrix


def _grid_mesh(n=11):
    """A symmetric UV layout: an n x n grid, the surface a symmetric bump (x across, z up the middle)."""
    u, v = torch.meshgrid(torch.linspace(0.05, 0.95, n), torch.linspace(0.05, 0.95, n), indexing="xy")
    uv = torch.stack([u.reshape(-1), v.reshape(-1)], 1)
    idx = torch.arange(n * n).view(n, n)
    a, b, c, d = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1), idx[1:, 1:].reshape(-1), idx[1:, :-1].reshape(-1)
    faces = torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])
    x = (uv[:, 0] - 0.5) * 40
    y = -(uv[:, 1] - 0.5) * 40
    z = 10 * torch.exp(-((uv[:, 0] - 0.5) ** 2) * 8) * (1 + uv[:, 1])
    return uv, faces, torch.stack([x, y, z], 1)


def test_encoder_decoder_psn_shapes_and_layers():
    enc = VGGFaceEncoder(None, width=0.125)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.features) == 13
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    dec = AttributeDecoder(256, 512, width=0.0625)
    ups = [m for m in dec.net if isinstance(m, torch.nn.Upsample)]
    assert len(ups) == 8 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in dec.net) == 7  # 7 CBR + tanh output
    out = dec(torch.randn(2, 512))
    assert out.shape == (2, 3, 256, 256) and out.abs().max() <= 1
    psn = ParametricSubNetwork(80)
    assert sum(isinstance(m, torch.nn.Linear) for m in psn.net) == 2
    albedo, sh, pose = psn(torch.randn(2, 512))
    assert albedo.shape == (2, 80) and sh.shape == (2, 27) and pose.shape == (2, 3)
    with pytest.raises(ValueError, match="power of two"):
        AttributeDecoder(48)


def test_stream_output_and_ablation():
    s = GeometryStream(uv_size=16, num_albedo=5, width=0.125, decoder_width=0.125)
    o = s(torch.rand(2, 3, 32, 32))
    assert o.a_id.shape == o.a_exp.shape == (2, 3, 16, 16) and o.latent.shape == (2, 512)
    one = GeometryStream(uv_size=16, num_albedo=5, width=0.125, decoder_width=0.125, expression_asm=False)
    assert one(torch.rand(1, 3, 32, 32)).a_exp is None and one.decoder_exp is None
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        s(torch.rand(2, 32, 32))


def test_missing_weights_warn_and_weights_load(tmp_path, capsys):
    VGGFaceEncoder(None, width=0.125)
    err = capsys.readouterr().err
    assert "model.init_args.vggface_weights" in err and "random initialisation" in err
    full = VGGFaceEncoder(None)
    dag = {f"conv{b}_{i}.weight": full.features[k].weight.detach() * 0 + 0.5 for (b, i), k in
           zip([(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3), (5, 1), (5, 2), (5, 3)],
               (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), strict=True)}
    dag.update({k.replace("weight", "bias"): torch.zeros(v.shape[0]) for k, v in dag.items()})
    dag["fc6.weight"] = torch.zeros(1)
    torch.save(dag, tmp_path / "vgg_face_dag.pth")
    enc = VGGFaceEncoder(str(tmp_path / "vgg_face_dag.pth"))
    assert torch.all(enc.features[28].weight == 0.5)
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a VGG16"):
        VGGFaceEncoder(str(tmp_path / "bad.pth"))


def test_symmetry_loss_zero_on_a_symmetric_map_in_any_pose():
    uv, faces, verts = _grid_mesh()
    codec = AsmCodec(faces, uv, faces, 32, 64)
    grid, valid = mirror_uv_grid(codec, mirror_vertex_ids(verts))
    # values are pixels on a ~40 px face; what remains is the piecewise-linear interpolation (the grid's diagonals
    # do not mirror onto themselves)
    flip = symmetry_loss_aligned(codec.from_vertices(verts[None]), grid, valid, align=False)
    assert flip < 0.02  # frontal: the flip + reflection alone
    rot = axis_angle_to_matrix(torch.tensor([[0.2, 0.6, -0.1]]))[0]
    posed = codec.from_vertices((verts @ rot.T + torch.tensor([30.0, 20.0, 5.0]))[None])
    assert symmetry_loss_aligned(posed, grid, valid) < 0.03
    assert symmetry_loss_aligned(posed, grid, valid, align=False) > 0.5  # the pose is what the alignment removes
    lopsided = verts.clone()
    lopsided[:, 2] += 5 * (uv[:, 0] > 0.6)
    assert symmetry_loss_aligned(codec.from_vertices(lopsided[None]), grid, valid) > 0.2


def test_symmetry_grid_is_the_flip_on_a_symmetric_layout():
    uv, faces, verts = _grid_mesh()
    codec = AsmCodec(faces, uv, faces, 32, 64)
    grid, valid = mirror_uv_grid(codec, mirror_vertex_ids(verts))
    on = valid[0, 0] > 0
    cols = torch.arange(32).expand(32, 32)
    expected_x = (31 - cols + 0.5) / 32 * 2 - 1
    assert (grid[0, ..., 0][on] - expected_x[on]).abs().max() < 1e-4


def test_asm_loss_weights_the_identity_term():
    a = torch.zeros(1, 3, 4, 4)
    t = torch.zeros(1, 3, 4, 4)
    t[0, 0, 0, 0] = 1.0
    w = torch.ones(1, 1, 4, 4)
    w[0, 0, 0, 0] = 16
    assert asm_loss(a, None, t, t, w, torch.ones_like(w)) == pytest.approx(16 / 16)
    assert asm_loss(a, a, t, t, w, torch.ones_like(w)) == pytest.approx(17 / 16)


def test_topology_mirror_on_the_stand_in():
    from dualstream.data import load_topology

    topo: FaceTopology = load_topology("synthetic:tiny")
    ids = mirror_vertex_ids(topo.mean_shape)
    assert ids.shape == (topo.num_verts,) and (ids[ids] == torch.arange(topo.num_verts)).float().mean() > 0.8


def test_untrained_copy_is_a_seeded_fresh_network_and_leaves_the_rng_alone():
    stream = GeometryStream(uv_size=16, num_albedo=5, width=0.0625, decoder_width=0.0625)
    with torch.no_grad():
        for p in stream.parameters():
            p.add_(1.0)  # "trained"
    state = torch.random.get_rng_state()
    a, b = stream.untrained_copy(0), stream.untrained_copy(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a.state_dict(), b.state_dict())
    trained, fresh = dict(stream.named_parameters()), dict(a.named_parameters())
    assert all(not torch.equal(trained[k], v) for k, v in fresh.items() if v.numel() > 1)
    conv = a.encoder.features[0].weight
    assert abs(float(conv.std()) - (2.0 / (conv.shape[0] * 9)) ** 0.5) < 0.5 * (2.0 / (conv.shape[0] * 9)) ** 0.5
