"""ASM ground truth: the synthetic world and the 300W-LP layout (written by the stand-in), bad input, the DataModule."""

import pytest
import scipy.io
import torch

from dualstream.data import (
    AsmDataModule,
    AsmSample,
    Lp300wDataset,
    SyntheticAsmDataset,
    angle2matrix_3ddfa,
    load_topology,
    read_300wlp_mat,
    read_face3d_bfm,
    write_300wlp_standin,
)
from facelab.errors import AssetFormatError, MissingAssetError


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("lp")
    images = write_300wlp_standin(root, num_images=3, seed=1, corrupt=True)
    return root, images


def test_synthetic_asm_ground_truth():
    ds = SyntheticAsmDataset(3, model_path="synthetic:tiny", image_size=64, uv_size=32, render_wrinkles=False)
    samples = ds.__getitems__([0, 1])
    batch = AsmSample.collate(samples)
    assert batch.image.shape == (2, 3, 64, 64) and batch.asm_id.shape == (2, 3, 32, 32)
    assert batch.weight_mask.shape == (2, 1, 32, 32) and batch.sh.shape == (2, 27)
    face = ds.chart_mask[0, 0] > 0
    z = batch.asm_id[:, 2][:, face]
    assert z.amin(1).abs().max() < 1e-4  # z shifted to min 0
    # the full map is the world's full-face map shifted by the same z, so A_id + A_exp reproduces its x, y exactly
    raw = ds.world.generate([0])[0]
    assert torch.allclose(batch.asm_full[0, :2][:, face], raw.position_uv[:2][:, face], atol=1e-4)
    assert batch.asm_exp[:, :, face].abs().amax() > 0.05  # expressions present
    # landmarks agree with the ASM read back at the keypoint vertices
    codec = load_topology("synthetic:tiny").codec(32, 64)
    verts = codec.to_vertices(batch.asm_full)
    kp = ds.model.keypoints
    assert (verts[:, kp, :2] - batch.landmarks).norm(dim=-1).median() < 1.5
    assert batch.visibility.mean() > 0.1 and batch.pose_valid.all()


def test_300wlp_layout_round_trip(standin):
    root, images = standin
    ds = Lp300wDataset(images, root / "BFM.mat", image_size=64, uv_size=32, jitter=0.0, scale_jitter=0.0)
    assert len(ds) == 3
    reasons = "\n".join(ds.skipped)
    assert "orphan.mat: no image" in reasons and "broken.mat: not a readable MATLAB file" in reasons
    assert "nokeys.mat: key `Shape_Para` is missing" in reasons
    s = ds[0]
    assert s.image.shape == (3, 64, 64) and s.asm_id.shape == (3, 32, 32)
    assert not s.sh_valid and s.albedo_valid and s.pose_valid
    # crop around the keypoints with margin 1.5: the landmark box spans ~1/1.5 of the crop
    box = s.landmarks.amax(0) - s.landmarks.amin(0)
    assert 0.5 < box.mean() / 64 < 0.8
    rec = read_300wlp_mat(images / "0000.mat")
    rot = angle2matrix_3ddfa(rec.pose_para[:3])
    assert torch.allclose(rot @ rot.T, torch.eye(3), atol=1e-5)
    from facelab.rotations import axis_angle_to_matrix

    assert torch.allclose(axis_angle_to_matrix(s.pose[None])[0], rot, atol=1e-4)
    # the neutral face of the stand-in differs from the full face by the expression
    assert s.asm_exp.abs().amax() > 0.1


def test_jitter_is_deterministic_per_index(standin):
    root, images = standin
    a = Lp300wDataset(images, root / "BFM.mat", image_size=32, uv_size=16, seed=3)
    b = Lp300wDataset(images, root / "BFM.mat", image_size=32, uv_size=16, seed=3)
    assert torch.equal(a[1].landmarks, b[1].landmarks)
    c = Lp300wDataset(images, root / "BFM.mat", image_size=32, uv_size=16, jitter=0.0, scale_jitter=0.0)
    assert not torch.equal(a[1].landmarks, c[1].landmarks)


def test_missing_and_corrupt_files(tmp_path, standin):
    root, images = standin
    with pytest.raises(MissingAssetError, match="300W-LP folder not found"):
        Lp300wDataset(tmp_path / "nope", root / "BFM.mat")
    with pytest.raises(MissingAssetError, match="face3d BFM model not found.*\n.*bfm_path"):
        read_face3d_bfm(tmp_path / "BFM.mat")
    with pytest.raises(MissingAssetError, match="BFM UV layout not found"):
        (tmp_path / "m").mkdir()
        import shutil

        shutil.copy(root / "BFM.mat", tmp_path / "m" / "BFM.mat")
        Lp300wDataset(images, tmp_path / "m" / "BFM.mat")
    with pytest.raises(AssetFormatError, match="not a readable MATLAB file"):
        read_300wlp_mat(images / "broken.mat")
    bad = tmp_path / "bad.mat"
    scipy.io.savemat(str(bad), {"Pose_Para": torch.zeros(1, 5).numpy(), "Shape_Para": 0, "Exp_Para": 0})
    with pytest.raises(AssetFormatError, match="`Pose_Para` has 5 values, expected 7"):
        read_300wlp_mat(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingAssetError, match="no usable 300W-LP"):
        Lp300wDataset(empty, root / "BFM.mat")
    not_bfm = tmp_path / "x.mat"
    scipy.io.savemat(str(not_bfm), {"a": 1})
    with pytest.raises(AssetFormatError, match="no struct `model`"):
        read_face3d_bfm(not_bfm)


def test_topology_of_the_face3d_layout(standin):
    root, _ = standin
    topo = load_topology(str(root / "BFM.mat"))
    assert topo.keypoints.shape == (68,) and topo.uv.shape[1] == 2
    assert topo.weight_mask(16).max() == 16


def test_datamodule_sources(standin):
    root, images = standin
    dm = AsmDataModule(source="synthetic", model_path="synthetic:tiny", image_size=32, uv_size=16, num_train=4,
                       num_val=2, batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (2, 3, 32, 32) and batch.asm_exp.shape == (2, 3, 16, 16)
    lp = AsmDataModule(source="300wlp", lp_root=str(images), lp_bfm_path=str(root / "BFM.mat"), image_size=32,
                       uv_size=16, num_val=1, batch_size=2)
    assert next(iter(lp.train_dataloader())).image.shape == (2, 3, 32, 32)
    assert len(lp.val_dataloader().dataset) == 1
    with pytest.raises(ValueError, match="lp_root"):
        AsmDataModule(source="300wlp")
