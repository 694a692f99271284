"""facedet3d.networks: Eq. 4, DetH / D_Exp shapes and conditioning, frozen feature networks with loud warnings."""

from __future__ import annotations

import pytest
import torch

from facedet3d.networks import AgeNet, DetH, ExpressionDiscriminator, FaceFeatures, blend_details, uv_grid


def _inputs(b=2, s=32):
    g = torch.Generator().manual_seed(0)
    return dict(detail=torch.randn(b, 1, s, s, generator=g) * 0.3, detail_mask=torch.ones(b, 1, s, s),
                source_aus=torch.rand(b, 17, generator=g), target_aus=torch.rand(b, 17, generator=g),
                shape=torch.randn(b, 80, generator=g), face_id=torch.randn(b, 512, generator=g),
                age=torch.randn(b, 64, generator=g))


def small_deth() -> DetH:
    return DetH(base_channels=8, max_channels=16, num_down=2, num_bottleneck=1, vector_channels=4)


def test_eq4_blend():
    h, d = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), -1.0)
    m = torch.tensor([[[[0.0, 1.0], [0.25, 0.5]]]])
    torch.testing.assert_close(blend_details(h, m, d), torch.tensor([[[[-1.0, 2.0], [-0.25, 0.5]]]]))


def test_deth_output_is_the_eq4_blend_and_depends_on_every_input():
    torch.manual_seed(0)
    net = small_deth()
    x = _inputs()
    out = net(**x)
    assert out.detail.shape == out.mask.shape == out.hallucination.shape == (2, 1, 32, 32)
    assert 0 <= out.mask.min() and out.mask.max() <= 1
    assert out.hallucination.abs().max() <= net.max_displacement_mm
    torch.testing.assert_close(out.detail, blend_details(out.hallucination, out.mask, x["detail"]))
    for name in ("target_aus", "source_aus", "shape", "face_id", "age", "detail"):
        changed = dict(x, **{name: x[name] + 0.5})
        assert (net(**changed).detail - out.detail).abs().max() > 1e-6, name
    masked = net(**dict(x, detail_mask=torch.zeros_like(x["detail_mask"])))
    assert masked.detail.abs().max() == 0  # nothing outside the valid texels
    with pytest.raises(ValueError, match="divisible"):
        net(**dict(x, detail=torch.zeros(2, 1, 30, 30)))


def test_expression_discriminator_heads():
    d = ExpressionDiscriminator(channels=(8, 16, 16))
    out = d(torch.randn(3, 1, 32, 32))
    assert out.global_logit.shape == (3,) and out.pixel_logits.shape == (3, 1, 32, 32)
    assert out.heads["au"].shape == (3, 17) and 0 <= out.heads["au"].min() and out.heads["au"].max() <= 1
    assert [t.shape for t in d.logits(torch.randn(3, 1, 32, 32))] == [(3,), (3, 1, 32, 32)]


def test_uv_grid_orientation():
    g = uv_grid(4, torch.zeros(1))
    assert g.shape == (1, 2, 4, 4)
    assert g[0, 0, 0, 0] < g[0, 0, 0, -1]  # u grows to the right
    assert g[0, 1, 0, 0] > g[0, 1, -1, 0]  # v is up: the first row is the top


def test_face_features_warn_and_are_frozen(capsys, tmp_path):
    feats = FaceFeatures()
    err = capsys.readouterr().err
    assert "`model.init_args.facenet_weights`" in err and "`model.init_args.age_weights`" in err
    assert "RANDOM" in err
    assert all(not p.requires_grad for p in feats.parameters())
    face_id, age = feats(torch.rand(2, 3, 64, 64))
    assert face_id.shape == (2, 512) and age.shape == (2, 64)
    torch.testing.assert_close(face_id.norm(dim=1), torch.ones(2))
    again, _ = FaceFeatures()(torch.rand(2, 3, 64, 64) * 0 + 0.5)
    same, _ = FaceFeatures()(torch.rand(2, 3, 64, 64) * 0 + 0.5)
    torch.testing.assert_close(again, same)  # seeded: every process builds the same random network
    age_net = AgeNet()
    torch.save(age_net.state_dict(), tmp_path / "age.pt")
    loaded = FaceFeatures(age_weights=str(tmp_path / "age.pt"))
    assert "age_weights" not in capsys.readouterr().err.split("FaceNet")[-1]
    torch.testing.assert_close(loaded.age_net.features.weight, age_net.features.weight)
    with pytest.raises(FileNotFoundError):
        FaceFeatures(facenet_weights=str(tmp_path / "missing.pt"))


def test_deth_decoder_coords_option_reaches_every_decoder_block():
    torch.manual_seed(0)
    net = DetH(base_channels=8, max_channels=16, num_down=2, num_bottleneck=1, vector_channels=4, decoder_coords=True)
    assert all(b.conv1.in_channels == b.norm1.num_features for b in (*net.bottleneck, *net.up))
    assert net.up[0].norm1.num_features == 16 + 2 and net.bottleneck[0].norm1.num_features == 16 + 2
    x = _inputs()
    out = net(**x)
    assert out.detail.shape == (2, 1, 32, 32)
    out.detail.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
