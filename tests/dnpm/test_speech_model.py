"""The FaceFormer-style speech network: ALiBi bias, alignment mask, causality, autoregression, windowed inference."""

from __future__ import annotations

import pytest
import torch

from dnpm.speech_model import (
    FaceFormerDecoder,
    PeriodicPositionalEncoding,
    SpeechToArkit,
    alibi_bias,
    alibi_slopes,
    alignment_mask,
)


def _randomize_output(net) -> None:
    """The output layer is zero-initialised (every prediction 0): give it weights so outputs depend on inputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = net.out if isinstance(net, FaceFormerDecoder) else net.decoder.out
        out.weight.copy_(0.3 * torch.randn(out.weight.shape, generator=g))


def test_alibi_slopes_and_bias():
    assert torch.allclose(alibi_slopes(4), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))
    assert alibi_slopes(6).shape == (6,) and (alibi_slopes(6) > 0).all()
    b = alibi_bias(4, 7, period=3)
    assert b.shape == (4, 7, 7)
    assert torch.isinf(b[:, 0, 1:]).all() and torch.isinf(b.triu(1)[:, torch.ones(7, 7).triu(1).bool()]).all()
    # within one period of the query no penalty; each older period one more slope
    assert b[0, 6, 6] == 0 and b[0, 6, 4] == 0 and b[0, 6, 3] == -0.25 and b[0, 6, 0] == -0.5
    assert b[3, 6, 0] == -2 * 2**-8


def test_alignment_mask_is_causal():
    m = alignment_mask(5, 5)
    assert m.shape == (5, 5) and torch.equal(torch.isfinite(m), torch.eye(5, dtype=torch.bool))
    w = alignment_mask(5, 5, width=2)
    allowed = torch.isfinite(w)
    assert allowed[4, 2:].all() and not allowed[4, :2].any() and not allowed.triu(1).any()


def test_periodic_positional_encoding():
    ppe = PeriodicPositionalEncoding(8, period=5, dropout=0.0)
    x = ppe(torch.zeros(1, 12, 8))
    assert (
        torch.allclose(x[0, 0], x[0, 5]) and torch.allclose(x[0, 2], x[0, 7]) and not torch.allclose(x[0, 0], x[0, 1])
    )


def test_decoder_has_no_future_leaks():
    torch.manual_seed(0)
    dec = FaceFormerDecoder(d_model=16, num_heads=4, period=4, max_frames=40, alignment_width=2).eval()
    _randomize_output(dec)
    speech, targets = torch.randn(2, 20, 16), torch.rand(2, 20, 52)
    t = 9
    speech2, targets2 = speech.clone(), targets.clone()
    speech2[:, t + 1 :] = torch.randn(2, 20 - t - 1, 16)
    targets2[:, t:] = torch.rand(2, 20 - t, 52)  # target t is the input of frame t + 1 only
    with torch.no_grad():
        a, b = dec(speech, targets), dec(speech2, targets2)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])
    g1, g2 = dec.generate(speech), dec.generate(speech2)
    assert torch.allclose(g1[:, : t + 1], g2[:, : t + 1], atol=1e-6) and not torch.allclose(g1, g2)


def test_generate_matches_teacher_forcing_on_its_own_outputs():
    torch.manual_seed(0)
    dec = FaceFormerDecoder(d_model=16, num_heads=4, period=5, max_frames=40).eval()
    _randomize_output(dec)
    speech = torch.randn(2, 17, 16)
    y = dec.generate(speech)
    assert y.shape == (2, 17, 52)
    assert torch.allclose(dec(speech, y), y, atol=1e-5)
    with pytest.raises(ValueError, match="max_frames"):
        dec.generate(torch.randn(1, 41, 16))


def test_zero_initialised_output():
    net = SpeechToArkit(d_model=16, max_frames=60).eval()
    assert torch.count_nonzero(net.generate(torch.randn(1, 8000))) == 0


def test_encoder_frozen_cnn_and_frame_rate():
    net = SpeechToArkit(d_model=16, max_frames=60, freeze_feature_extractor=True)
    assert not any(p.requires_grad for p in net.encoder.wav2vec.feature_extractor.parameters())
    # the default for a random encoder (no wav2vec_path): its CNN trains (a frozen random CNN is a random projection)
    assert all(p.requires_grad for p in SpeechToArkit(d_model=16).encoder.wav2vec.feature_extractor.parameters())
    assert all(p.requires_grad for p in net.encoder.wav2vec.encoder.parameters())
    feats = net.encoder(torch.randn(2, 16000), 30)
    assert feats.shape == (2, 30, 16)
    with pytest.raises(ValueError, match="receptive field"):
        net.encoder(torch.randn(1, 200), 1)


def test_windowed_inference():
    torch.manual_seed(0)
    net = SpeechToArkit(d_model=16, period=10, max_frames=40).eval()
    _randomize_output(net)
    audio = torch.randn(16000)  # 30 frames: fits in one window
    single = net.generate(audio[None])[0]
    assert torch.equal(net.predict(audio, overlap=10), single)
    long = torch.randn(16000 * 3)  # 90 frames > max_frames: windows of 40 starting every 30 frames
    y = net.predict(long, overlap=10)
    assert y.shape == (90, 52) and torch.isfinite(y).all()
    first = net.generate(long[None, : 40 * 16000 // 30], 40)[0]
    assert torch.allclose(y[:30], first[:30], atol=1e-6)  # before the first overlap: window 1 alone
    done = []
    net.predict(long, overlap=10, progress=done.append)
    assert sum(done) == 90
    with pytest.raises(ValueError, match="overlap"):
        net.predict(long, overlap=40)
