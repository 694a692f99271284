"""facedet3d.data: the Eq. 1 inputs of the synthetic world (pairs), the FDS map reader, layout remapping, AUs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facedet3d.data import (
    DetailMapError,
    DetailPairBatch,
    FaceDetailBatch,
    SyntheticDetailDataset,
    decode_fds,
    encode_fds,
    load_detail_npz,
    random_patch,
    read_fds_map,
    read_openface_action_units,
    remap_uv_layout,
    save_detail_npz,
)
from facelab.data.wrinkles import AU_NAMES
from facelab.uv import UVMapper


@pytest.fixture(scope="module")
def pairs():
    torch.set_num_threads(1)
    ds = SyntheticDetailDataset(num_samples=6, image_size=32, texture_size=32, map_size=32, seed=3)
    return ds, DetailPairBatch.collate(ds.__getitems__([0, 1, 2, 3]))


def test_pairs_are_one_identity_with_two_expressions(pairs):
    ds, b = pairs
    src, tgt = b.source, b.target
    assert b.same_identity.all() and src.detail.shape == (4, 1, 32, 32) and src.texture.shape == (4, 3, 32, 32)
    torch.testing.assert_close(src.shape, tgt.shape)  # same identity ...
    torch.testing.assert_close(src.albedo, tgt.albedo)
    torch.testing.assert_close(src.sh, tgt.sh)
    torch.testing.assert_close(src.camera, tgt.camera)
    assert (src.expression - tgt.expression).abs().mean() > 0.1  # ... two independent keyframes
    assert (src.action_units - tgt.action_units).abs().sum(1).min() > 0.05
    assert ((src.detail - tgt.detail).abs() * src.detail_mask).sum() > 0  # their wrinkles differ
    assert src.action_units.shape == (4, len(AU_NAMES)) and 0 <= src.action_units.min() <= src.action_units.max() <= 1
    assert (src.detail * (1 - src.detail_mask)).abs().max() == 0  # zero outside the UV charts
    assert 0.05 < src.skin_mask.mean() < 0.9 and 0.05 < src.texture_mask.mean() < 1


def test_proxy_mesh_projects_onto_the_face(pairs):
    """G_P from the coefficients lands on the rendered face (landmark-free check: the projected mesh covers the
    skin mask's centre of mass)."""
    ds, b = pairs
    mesh = b.source.proxy_mesh(ds.model)
    ndc = b.source.camera_object().project(mesh.verts)[..., :2]
    assert mesh.verts.shape == (4, ds.model.num_verts, 3) and mesh.albedo.shape == mesh.verts.shape
    centre_ndc = ndc.mean(1)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    w = b.source.skin_mask[:, 0]
    cx = (w * xs).sum((1, 2)) / w.sum((1, 2))
    cy = (w * ys).sum((1, 2)) / w.sum((1, 2))
    pix = torch.stack([(centre_ndc[:, 0] + 1) * 16, (1 - centre_ndc[:, 1]) * 16], 1)
    assert (pix - torch.stack([cx, cy], 1)).norm(dim=1).max() < 8


def test_single_faces_and_npz_roundtrip(pairs, tmp_path):
    ds, _ = pairs
    single = SyntheticDetailDataset(num_samples=2, image_size=32, texture_size=32, map_size=16, pairs=False,
                                    model=ds.model)
    face = single[1]
    assert isinstance(face, FaceDetailBatch) and face.detail.shape == (1, 16, 16)
    save_detail_npz(tmp_path / "f.npz", face, "x.png")
    back = load_detail_npz(tmp_path / "f.npz")
    torch.testing.assert_close(back.detail, face.detail)
    assert back.face_id is None and back.camera_model == "weak"
    assert not list(tmp_path.glob(".*tmp*"))


def _png16(path, arr):
    Image.fromarray(arr.astype(np.uint16)).save(path)


def test_fds_codec_and_reader(tmp_path):
    d = np.linspace(-0.5, 0.5, 64 * 64, dtype=np.float32).reshape(64, 64)
    np.testing.assert_allclose(decode_fds(encode_fds(d)), d, atol=2e-5)
    _png16(tmp_path / "a.png", encode_fds(d))
    mask = np.zeros((64, 64), np.uint8)
    mask[8:56, 8:56] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    detail, valid = read_fds_map(tmp_path / "a.png", tmp_path / "a_mask.png", size=64, scale_mm=2.0)
    assert detail.shape == valid.shape == (1, 64, 64) and detail.dtype == torch.float32
    np.testing.assert_allclose(detail[0, 8:56, 8:56].numpy(), 2 * d[8:56, 8:56], atol=1e-4)
    assert detail[0, 0, 0] == 0 and valid.sum() == 48 * 48


@pytest.mark.parametrize("case, reason", [
    ("missing", "missing_detail_map"), ("eight_bit", "wrong_dtype"), ("rgb16", "wrong_dtype"),
    ("wrong_size", "wrong_size"), ("not_square", "wrong_size"), ("nan", "nan_detail_map"),
    ("corrupt", "corrupt_detail_map"), ("mask_size", "wrong_size"), ("empty_mask", "empty_mask"),
    ("int_npy", "wrong_dtype"),
])
def test_bad_detail_maps_are_clear_errors(tmp_path, case, reason):
    path, mask = tmp_path / "m.png", None
    if case == "eight_bit":
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    elif case == "rgb16":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    elif case == "wrong_size":
        _png16(path, np.full((16, 16), 40000))
    elif case == "not_square":
        _png16(path, np.full((32, 16), 40000))
    elif case == "nan":
        path = tmp_path / "m.npy"
        a = np.zeros((32, 32), np.float32)
        a[3, 3] = np.nan
        np.save(path, a)
    elif case == "corrupt":
        path.write_bytes(b"\x89PNG not really")
    elif case == "mask_size":
        _png16(path, np.full((32, 32), 40000))
        mask = tmp_path / "m_mask.png"
        Image.fromarray(np.ones((16, 16), np.uint8)).save(mask)
    elif case == "empty_mask":
        _png16(path, np.full((32, 32), 40000))
        mask = tmp_path / "m_mask.png"
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    elif case == "int_npy":
        path = tmp_path / "m.npy"
        np.save(path, np.zeros((32, 32), np.int32))
    with pytest.raises(DetailMapError) as err:
        read_fds_map(path, mask, size=32)
    assert err.value.reason == reason and (mask or path).name in str(err.value)


def test_remap_uv_layout_identity_and_mirror():
    """Remapping from the BFM layout itself is the identity inside the charts; from a mirrored layout (u -> 1 - u)
    it mirrors the map back."""
    from facelab.morphable import load_model

    m = load_model("bfm", "synthetic")
    dst = UVMapper(m.faces, m.uv, m.faces_uv, 64, num_verts=m.num_verts)
    u = torch.linspace(-1, 1, 64)
    ramp = (u[None, :] * torch.ones(64, 1))[None, None]
    full = torch.ones_like(ramp)
    same, valid = remap_uv_layout(ramp, full, m.uv, m.faces_uv, dst)
    inside = (valid > 0) & (dst.mask > 0)
    assert inside.float().mean() > 0.3
    assert (same - ramp)[inside].abs().max() < 0.05
    mirrored_uv = m.uv.clone()
    mirrored_uv[:, 0] = 1 - mirrored_uv[:, 0]
    back, valid = remap_uv_layout(ramp.flip(-1), full, mirrored_uv, m.faces_uv, dst)
    inside = (valid > 0) & (dst.mask > 0)
    assert (back - ramp)[inside].abs().max() < 0.05
    with pytest.raises(DetailMapError, match="topology"):
        remap_uv_layout(ramp, full, m.uv, m.faces_uv[:10], dst)


def test_openface_csv(tmp_path):
    header = ["frame", " face_id"] + [f" {n}_r" for n in AU_NAMES]
    rows = [["1", "0"] + ["2.5"] * 17, ["1", "1"] + ["5.0"] * 16 + ["7.0"]]
    (tmp_path / "a.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    torch.testing.assert_close(read_openface_action_units(tmp_path / "a.csv"), torch.full((17,), 0.5))
    torch.testing.assert_close(read_openface_action_units(tmp_path / "a.csv", row=1), torch.ones(17))  # clipped
    (tmp_path / "b.csv").write_text("frame,AU01_r\n1,2\n")
    with pytest.raises(ValueError, match="AU02_r"):
        read_openface_action_units(tmp_path / "b.csv")
    with pytest.raises(ValueError, match="row 5"):
        read_openface_action_units(tmp_path / "a.csv", row=5)


def test_random_patch_pairs_low_and_high():
    g = torch.Generator().manual_seed(0)
    detail = torch.randn(1, 64, 64)
    mask = torch.ones(1, 64, 64)
    p = random_patch(detail, mask, 32, 4, g)
    assert p.high.shape == (1, 32, 32) and p.low.shape == (1, 8, 8)
    torch.testing.assert_close(p.low, torch.nn.functional.avg_pool2d(p.high[None], 4)[0])
    with pytest.raises(ValueError, match="divisible"):
        random_patch(detail, mask, 30, 4, g)
