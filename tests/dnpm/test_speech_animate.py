"""``facelab animate --method dnpm``: ARKit CSV + .npy, per-frame proxy meshes and an MP4 with audio."""

from __future__ import annotations

import argparse

import lightning as L
import numpy as np
import pytest
import torch

from dnpm.animate import add_arguments, run
from dnpm.arkit import read_live_link_csv
from dnpm.module_speech import SpeechModule
from dnpm.speech_data import SpeechDataError, SpeechDataModule, synthesize_utterance, write_wav


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    torch.manual_seed(0)
    model = SpeechModule(model_path="synthetic:tiny", d_model=16, max_frames=30, period=10)
    dm = SpeechDataModule(batch_size=2, num_train=2, num_val=1, num_test=1, seconds=0.5)
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, dm)
    path = tmp / "speech.ckpt"
    trainer.save_checkpoint(path)
    return path


def _options(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items() if v is not True]
    args += [f"--{k.replace('_', '-')}" for k, v in kw.items() if v is True]
    return parser.parse_args(args)


def test_animate_long_audio_writes_csv_meshes_and_video(ckpt, tmp_path):
    audio, _ = synthesize_utterance(0, seconds=1.5)  # 45 frames > max_frames 30: windows
    write_wav(tmp_path / "a.wav", audio)
    out = tmp_path / "out"
    assert run(_options(ckpt=ckpt, audio=tmp_path / "a.wav", out=out, render_size=32, mesh_every=10, overlap=10)) == 0
    take = read_live_link_csv(out / "arkit.csv", fps=30)
    arkit = np.load(out / "arkit.npy")
    assert arkit.shape == (45, 52) and take.coefficients.shape == (45, 52)
    np.testing.assert_allclose(take.coefficients, arkit, atol=1e-6)
    assert sorted(p.name for p in (out / "meshes").iterdir()) == [f"proxy_{n:05d}.obj" for n in (0, 10, 20, 30, 40)]
    pytest.importorskip("imageio_ffmpeg")
    assert (out / "animation.mp4").stat().st_size > 1000


def test_animate_bad_inputs(ckpt, tmp_path):
    write_wav(tmp_path / "silent.wav", np.zeros(16000))
    with pytest.raises(SpeechDataError, match="silent"):
        run(_options(ckpt=ckpt, audio=tmp_path / "silent.wav", out=tmp_path / "o", no_video=True))
    assert not (tmp_path / "o").exists()
    audio, _ = synthesize_utterance(0, seconds=0.5)
    write_wav(tmp_path / "a.wav", audio)
    np.save(tmp_path / "id.npy", np.zeros(3))
    with pytest.raises(ValueError, match="identity|expected"):
        run(_options(ckpt=ckpt, audio=tmp_path / "a.wav", out=tmp_path / "o", id=tmp_path / "id.npy"))
    assert not (tmp_path / "o").exists()


def test_animate_with_detailed3dmm(ckpt, tmp_path):
    from dnpm.module_detailed3dmm import Detailed3DMMModule

    torch.manual_seed(0)
    gen = dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32)
    d3 = Detailed3DMMModule(
        resolution=16,
        hidden=(16,) * 5,
        allow_random_init=True,
        generator=gen,
        map_scale_mm=0.08,
        log_images_every_n_steps=0,
    )
    d3_path = tmp_path / "d3.ckpt"
    torch.save({"state_dict": d3.state_dict(), "hyper_parameters": dict(d3.hparams)}, d3_path)
    audio, _ = synthesize_utterance(2, seconds=0.5)
    write_wav(tmp_path / "a.wav", audio)
    out = tmp_path / "out"
    assert (
        run(
            _options(
                ckpt=ckpt,
                detail_ckpt=d3_path,
                audio=tmp_path / "a.wav",
                out=out,
                render_size=32,
                mesh_every=10,
                overlap=10,
                no_video=True,
            )
        )
        == 0
    )
    names = sorted(p.name for p in (out / "meshes").iterdir())
    assert names == ["detailed_00000.obj", "detailed_00010.obj", "proxy_00000.obj", "proxy_00010.obj"]
    assert (out / "meshes" / "detailed_00000.obj").stat().st_size > (out / "meshes" / "proxy_00000.obj").stat().st_size
