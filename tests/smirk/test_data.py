"""SMIRK on real-data batches: a ``facelab preprocess`` cache through ``CachedFaceDataModule`` becomes a
``SmirkBatch`` (105 mediapipe points in NDC +y up, FAN where present, the hull mask) and trains a pretraining step.

Two tiny caches: synthetic FLAME renders written with the cache writer (their true landmarks are known), and the
real astronaut photo run through ``facelab preprocess`` (MTCNN + mediapipe)."""

from __future__ import annotations

import argparse
import math

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from facelab.data.datasets import CachedFaceDataModule, FaceCropSample
from facelab.errors import MissingAssetError
from smirk.data import SmirkBatch, as_smirk_batch, flame_mediapipe_indices
from smirk.module import SmirkModule

SIZE, N = 64, 4


def datamodule(root, image_size: int = SIZE, batch_size: int = N) -> CachedFaceDataModule:
    dm = CachedFaceDataModule([str(root)], batch_size=batch_size, num_workers=0, image_size=image_size,
                              num_batches=1)
    dm.setup("fit")
    return dm


def test_flame_mediapipe_indices_are_the_models(flame, tmp_path):
    indices = flame_mediapipe_indices("synthetic")
    assert indices.shape == (105,) and torch.equal(indices, flame.mp_indices.cpu())
    with pytest.raises(MissingAssetError, match="flame_path"):
        flame_mediapipe_indices(tmp_path)


def test_cached_crops_become_smirk_batches_in_ndc(synthetic_cache, synthetic_truth):
    raw = next(iter(datamodule(synthetic_cache).train_dataloader()))
    batch = as_smirk_batch(raw)
    assert isinstance(batch, SmirkBatch) and batch.image.shape == (N, 3, SIZE, SIZE)
    truth = synthetic_truth
    order = raw.index  # the sampler shuffles; sources sort as render_0 .. render_3
    torch.testing.assert_close(batch.landmarks_mp, truth.landmarks_mp_ndc[order], atol=1e-4, rtol=0)
    assert batch.ground_truth is None and batch.mica_image.shape == (N, 3, 112, 112)
    assert torch.equal(batch.fan_valid, order % 2 == 0)
    valid = batch.fan_valid
    torch.testing.assert_close(batch.landmarks_fan[valid], truth.landmarks68_ndc[order][valid], atol=1e-4, rtol=0)
    assert batch.hull_mask.shape == (N, 1, SIZE, SIZE)
    assert torch.equal(batch.hull_mask, (truth.hull_mask[order] > 0.5).float())


def test_face_crop_batches_without_usable_landmarks_fail_clearly(synthetic_cache):
    raw = next(iter(datamodule(synthetic_cache).train_dataloader()))
    with pytest.raises(ValueError, match="mediapipe face-mesh landmarks"):
        as_smirk_batch(FaceCropSample(raw.image, raw.landmarks_mp[:, :68], raw.landmarks_fan, raw.has_fan, raw.mask,
                                      raw.dataset, raw.index))
    with pytest.raises(ValueError, match="no mediapipe landmarks"):
        as_smirk_batch(FaceCropSample(raw.image, torch.zeros_like(raw.landmarks_mp), raw.landmarks_fan, raw.has_fan,
                                      raw.mask, raw.dataset, raw.index))
    clip = FaceCropSample.collate([raw, raw])  # (2, B, ...): a time axis, as video samples with T > 1 have
    with pytest.raises(ValueError, match="single images"):
        as_smirk_batch(clip)
    no_fan = FaceCropSample(raw.image, raw.landmarks_mp, raw.landmarks_fan, torch.zeros_like(raw.has_fan), raw.mask,
                            raw.dataset, raw.index)
    assert as_smirk_batch(no_fan).landmarks_fan is None and as_smirk_batch(no_fan).fan_valid is None


def test_pretraining_step_on_the_cache(synthetic_cache):
    torch.manual_seed(0)
    module = SmirkModule(phase="pretrain", image_size=SIZE, log_images_every_n_steps=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=CachedFaceDataModule([str(synthetic_cache)], batch_size=N, num_workers=0,
                                                        image_size=SIZE, num_batches=1))
    assert trainer.global_step == 1
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/loss_")}
    assert {"train/loss_landmark_mp", "train/loss_landmark_fan", "train/loss_total"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())


@pytest.fixture(scope="module")
def photo_cache(tmp_path_factory):
    """The astronaut photo (public domain, scikit-image) through ``facelab preprocess``: MTCNN + mediapipe."""
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("mediapipe")
    pytest.importorskip("facenet_pytorch")
    from facelab.cli.preprocess import add_parser

    inputs, out = tmp_path_factory.mktemp("photo"), tmp_path_factory.mktemp("photo_cache")
    Image.fromarray(skimage_data.astronaut()[:320, 90:410]).save(inputs / "astronaut.png")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["preprocess", "--no-progress", "--input", str(inputs), "--out", str(out),
                              "--size", str(SIZE)])
    assert args.func(args) == 0
    return out


def test_real_photo_landmarks_are_ndc_y_up(photo_cache):
    batch = as_smirk_batch(next(iter(datamodule(photo_cache, batch_size=1).train_dataloader())))
    assert batch.landmarks_mp.shape == (1, 105, 2) and batch.landmarks_fan is None
    position = {int(mp): k for k, mp in enumerate(flame_mediapipe_indices())}
    y = batch.landmarks_mp[0, :, 1]
    brow, eye, nose_tip, lower_lip = (y[position[i]] for i in (105, 159, 1, 17))
    assert brow > eye > nose_tip > lower_lip  # +y up: the face reads top to bottom with decreasing y
    x = batch.landmarks_mp[0, :, 0]
    assert x[position[33]] < x[position[263]]  # subject's right eye corner on the image's left
    assert batch.hull_mask.mean() > 0.2 and batch.landmarks_mp.abs().max() < 1


def test_mica_input_is_the_arcface_aligned_crop(synthetic_cache):
    """Real crops carry MICA's input: the ArcFace-aligned 112x112 crop from mediapipe's five points, in [-1, 1]
    (issue 9: nothing filled ``mica_image`` before)."""

    from facelab.metrics.identity import ARCFACE_TEMPLATE, arcface_transform
    from smirk.data import MP_FIVE_POINTS, mica_input

    raw = next(iter(datamodule(synthetic_cache).train_dataloader()))
    crop = mica_input(raw.image, raw.landmarks_mp)
    assert crop.shape == (N, 3, 112, 112) and crop.min() >= -1 and crop.max() <= 1
    assert torch.equal(crop, as_smirk_batch(raw).mica_image)
    five = torch.stack([raw.landmarks_mp[0, list(ids)].mean(0) for ids in MP_FIVE_POINTS])
    five_px = ((five + 1) / 2 * SIZE - 0.5).numpy()
    m = arcface_transform(five_px, 112)
    mapped = five_px @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE).mean() < 6  # a similarity fit of a face's points onto the template
    # the crop shows the face: its centre is brighter than the zero padding of a crop far off the face
    assert crop[:, :, 40:72, 40:72].mean() > -0.9
